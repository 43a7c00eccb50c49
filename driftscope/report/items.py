"""The items explorer: the items table -> capped, worst-first rows for the page.

Columns are those of the items table (README "A run on disk"); the answers and
their correctness appear when the run decoded them (not with --no-accuracy).
"correct" is the primary metric (choice items by choice log-likelihood, free
items by the greedy answer, as the verdict); free-answer correctness beside it.
"""

from __future__ import annotations

import math

import polars as pl

from driftscope.report.html import esc, section

MAX_ROWS = 2000  # worst items embedded; the full table stays in tables/items.parquet
MAX_PROMPT = 600  # characters of a prompt embedded
MAX_TEXT = 300  # characters of an answer or generation embedded

IDS = (("suite", "suite"), ("probe_id", "id"))
TEXTS = (("prompt", "prompt"), ("answer", "gold answer"), ("base_answer", "base answer"), ("tuned_answer", "tuned answer"),
         ("corrected_answer", "corrected answer"), ("base_choice", "base choice"), ("tuned_choice", "tuned choice"))
BOOLS = (("base_primary_correct", "base correct"), ("tuned_primary_correct", "tuned correct"),
         ("corrected_primary_correct", "corrected correct"),
         ("base_correct", "base free correct"), ("tuned_correct", "tuned free correct"),
         ("base_choice_correct", "base choice correct"), ("tuned_choice_correct", "tuned choice correct"),
         ("top1_agree_next", "top-1 agrees"))
NUMBERS = (("kl_next", "KL next", "KL(base‖tuned) at the position after the prompt"),
           ("kl_mean", "KL mean", "mean KL over the item's scored positions"),
           ("js_next", "JS next", "Jensen-Shannon at the next position"),
           ("numeric_shift_next", "numeric shift", "tuned minus base numeric-token mass at the next position"),
           ("dlogp_answer", "Δ log p(answer)", "log q(answer) − log p(answer), teacher-forced"),
           ("kl_continuation_max", "KL later", "largest KL along the base's greedy continuation (--continue)"),
           ("continuation_fork_offset", "forks at", "first continuation token after which the tuned top-1 differs "
                                                    "from the base's (--continue)"))
CHANGE = ("correct_change", "correctness",
          "tuned vs base on the primary metric (choice items: choice log-likelihood; free items: greedy answer): "
          "lost, gained or same")


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
    cols = set(items.columns)
    df = items
    if {"logp_answer", "logq_answer"} <= cols:
        df = df.with_columns((pl.col("logq_answer") - pl.col("logp_answer")).alias("dlogp_answer"))
    change = None
    if {"base_primary_correct", "tuned_primary_correct"} <= cols:
        change = CHANGE[0]
        df = df.with_columns((pl.col("tuned_primary_correct").cast(pl.Int8)
                              - pl.col("base_primary_correct").cast(pl.Int8)).alias(change))

    several = "checkpoint" in cols and df["checkpoint"].n_unique() > 1
    spec: list[dict] = [{"key": "checkpoint", "label": "checkpoint", "type": "id"}] if several else []
    spec += [{"key": k, "label": lb, "type": "id"} for k, lb in IDS if k in cols]
    spec += [{"key": k, "label": lb, "type": "text"} for k, lb in TEXTS if k in cols]
    spec += [{"key": k, "label": lb, "type": "bool"} for k, lb in BOOLS[:7] if k in cols]
    if change:
        spec.append({"key": change, "label": CHANGE[1], "type": "change", "help": CHANGE[2]})
    spec += [{"key": k, "label": lb, "type": "num", "help": h} for k, lb, h in NUMBERS if k in df.columns]
    spec += [{"key": k, "label": lb, "type": "bool"} for k, lb in BOOLS[7:] if k in cols]

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
