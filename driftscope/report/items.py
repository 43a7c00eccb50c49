"""The items explorer: the items table -> capped, worst-first rows for the page.

Columns are found by name and type, so the explorer shows correctness and the
models' answers once the items table carries them (correct_base/correct_tuned,
pred_*, generation_*, ...), and simply leaves them out before.
"""

from __future__ import annotations

import math

import polars as pl

from driftscope.report.html import esc, section

MAX_ROWS = 2000  # worst items embedded; the full table stays in tables/items.parquet
MAX_PROMPT = 600  # characters of a prompt embedded
MAX_TEXT = 300  # characters of an answer or generation embedded

KNOWN_TEXT = ("prompt", "answer")
HIDDEN = {"checkpoint", "suite", "probe_id", "probe_index", "prompt", "answer", "n_prompt_tokens", "truncated_tokens",
          "n_positions", "logp_answer", "logq_answer"}
NUMBERS = (("kl_next", "KL next", "KL(base‖tuned) at the position after the prompt"),
           ("kl_mean", "KL mean", "mean KL over the item's scored positions"),
           ("js_next", "JS next", "Jensen-Shannon at the next position"),
           ("numeric_shift_next", "numeric shift", "tuned minus base numeric-token mass at the next position"),
           ("dlogp_answer", "Δ log p(answer)", "log q(answer) − log p(answer), teacher-forced"))


def _correct_col(cols: list[str], who: str) -> str | None:
    for name in (f"correct_{who}", f"{who}_correct", f"is_correct_{who}", f"correct_{who}_mc", f"correct_{who}_gen"):
        if name in cols:
            return name
    return None


def _clip(text, limit: int) -> tuple[str | None, bool]:
    if text is None:
        return None, False
    text = str(text)
    return (text[:limit] + "…", True) if len(text) > limit else (text, False)


def _round(v):
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, float):
        return None if not math.isfinite(v) else float(f"{v:.4g}")
    return v


def explorer_data(items: pl.DataFrame, labels: list[str], max_rows: int = MAX_ROWS) -> dict | None:
    """Columns, rows (worst first, at most max_rows) and what was left out."""
    if items is None or items.height == 0:
        return None
    cols = items.columns
    df = items
    if {"logp_answer", "logq_answer"} <= set(cols):
        df = df.with_columns((pl.col("logq_answer") - pl.col("logp_answer")).alias("dlogp_answer"))
    base_c, tuned_c = _correct_col(cols, "base"), _correct_col(cols, "tuned")
    change = next((c for c in ("correct_change", "correctness_change") if c in cols), None)
    if change is None and base_c and tuned_c:
        df = df.with_columns((pl.col(tuned_c).cast(pl.Int8) - pl.col(base_c).cast(pl.Int8)).alias("correct_change"))
        change = "correct_change"

    several = "checkpoint" in cols and df["checkpoint"].n_unique() > 1
    spec: list[dict] = []
    if several:
        spec.append({"key": "checkpoint", "label": "checkpoint", "type": "id"})
    spec += [{"key": k, "label": lb, "type": "id"} for k, lb in (("suite", "suite"), ("probe_id", "id")) if k in cols]
    spec += [{"key": k, "label": "gold answer" if k == "answer" else k, "type": "text"} for k in KNOWN_TEXT if k in cols]
    # the models' answers or generations: every other text column
    spec += [{"key": c, "label": c.replace("_", " "), "type": "text"}
             for c, t in df.schema.items() if t == pl.String and c not in HIDDEN and c not in ("checkpoint",)]
    spec += [{"key": c, "label": c.replace("_", " "), "type": "bool"} for c in (base_c, tuned_c) if c]
    if change:
        spec.append({"key": change, "label": "correctness", "type": "change", "help": "tuned vs base: lost, gained or same"})
    spec += [{"key": k, "label": lb, "type": "num", "help": h} for k, lb, h in NUMBERS if k in df.columns]
    spec += [{"key": c, "label": c.replace("_", " "), "type": "bool"} for c, t in df.schema.items()
             if t == pl.Boolean and c not in HIDDEN and c not in (base_c, tuned_c) and all(s["key"] != c for s in spec)]

    order = [pl.col(change).fill_null(0)] if change else []
    desc = [False] if change else []
    for k in ("kl_next", "kl_mean"):
        if k in df.columns:
            order.append(pl.col(k).fill_nan(None))
            desc.append(True)
    if order:
        df = df.sort(order, descending=desc, nulls_last=True)
    total = df.height
    shown = df.head(max_rows)
    clipped = 0
    rows = []
    for r in shown.select([s["key"] for s in spec]).iter_rows():
        row = []
        for s, v in zip(spec, r):
            if s["type"] == "text":
                v, cut = _clip(v, MAX_PROMPT if s["key"] == "prompt" else MAX_TEXT)
                clipped += cut
            row.append(_round(v))
        rows.append(row)
    checkpoints = df["checkpoint"].unique(maintain_order=True).to_list() if "checkpoint" in cols else []
    checkpoints = [lb for lb in labels if lb in checkpoints] + [lb for lb in checkpoints if lb not in labels]
    return {"columns": spec, "rows": rows, "total": total, "shown": len(rows), "clipped_texts": clipped,
            "checkpoints": checkpoints if several else [],
            "checkpoint_column": [s["key"] for s in spec].index("checkpoint") if several else -1,
            "order": "lost correctness first, then highest KL" if change else "highest KL first"}


def items_section(data: dict | None) -> str:
    if not data:
        return ""
    note = f"{data['shown']:,} of {data['total']:,} rows, {data['order']}."
    if data["shown"] < data["total"]:
        note += (f" Only the worst {data['shown']:,} are embedded to keep this page small; "
                 "every item is in tables/items.parquet.")
    if data["clipped_texts"]:
        note += f" {data['clipped_texts']:,} long texts are cut short (…)."
    controls = ('<div class="controls"><input id="ds-items-q" type="search" placeholder="search prompts, answers, ids…" '
                'aria-label="search items"><select id="ds-items-ckpt" aria-label="checkpoint"><option value="">all checkpoints</option>'
                '</select><span id="ds-items-count" class="note"></span></div>')
    body = (f'<p class="note">{esc(note)}</p>{controls}<div class="scroll"><table id="ds-items-table"><thead></thead>'
            '<tbody></tbody></table></div><div class="controls"><button id="ds-items-more" hidden>show more</button></div>')
    return section("items", "Items explorer", body, "Every probe with its drift; click a header to sort, type to search.")
