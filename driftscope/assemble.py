"""From scored checkpoints to a run: per-checkpoint figures, the tables, the
verdicts, correlations and summary.json's content. Pure over what the passes
produced: no model is touched here."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import polars as pl

from driftscope import __version__
from driftscope.correlations import group_correlations, item_correlations
from driftscope.inputs import Inputs
from driftscope.paired import Scorer
from driftscope.probes import Probe, ProbeSuite
from driftscope.result import SCHEMA_VERSION
from driftscope.verdict import Thresholds, add_verdicts, sentence

TABLES = ("positions", "classes", "tokens", "layers", "components")


def checkpoint_figures(scorers: list[Scorer], inputs: Inputs, top_tokens: int) -> tuple[list[dict], dict[str, list]]:
    """summary.json's checkpoints (figures before verdicts) and their tables' parts."""
    truncated = inputs.truncated()
    checkpoints, tables = [], {k: [] for k in TABLES}
    for s in scorers:
        figs = s.acc.figures()
        if s.layers is not None:
            lt = s.layers.tables()
            tables["layers"].append(lt["layers"])
            tables["components"].append(lt["components"])
            figs["layers"] = s.layers.headline()
        figs["truncated_prompts"] = sum(truncated.values())
        for sname, sfig in figs["suites"].items():
            sfig["truncated_prompts"] = truncated.get(sname, 0)
        checkpoints.append({"label": s.ck.label, "path": s.ck.path, "kind": s.ck.kind,
                            "vocab": s.alignment.describe(), "figures": figs})
        tables["positions"].append(s.acc.positions_table(inputs.probe_ids))
        tables["classes"].append(s.acc.classes_table())
        tables["tokens"].append(s.acc.tokens_table(top_tokens))
    return checkpoints, tables


def judge(checkpoints: list[dict], items: pl.DataFrame | None, th: Thresholds, seed: int, accuracy: bool) -> dict:
    """Verdicts into each checkpoint's figures; returns the correlations."""
    correlations: dict = {}
    for c in checkpoints:
        f = c["figures"]
        if items is not None:
            mine = items.filter(pl.col("checkpoint") == c["label"])
            add_verdicts(f, mine, th, seed)
            correlations[c["label"]] = {"items": item_correlations(mine, th, seed),
                                        "suites": group_correlations(list(f["suites"].values()), th, seed)}
        else:
            reason = "no items with gold answers" if accuracy else "the accuracy pass was skipped (--no-accuracy)"
            for target in [f, *f["suites"].values()]:
                target.update({"verdict": "no-answers", "verdict_reason": reason})
                target["verdict_sentence"] = sentence(target)
    if items is not None and len(checkpoints) > 1:
        correlations["checkpoints"] = group_correlations([c["figures"] for c in checkpoints], th, seed)
    return correlations


def assemble(scorers: list[Scorer], inputs: Inputs, answers: list[pl.DataFrame], *, base: dict, base_path: Path | None,
             settings: dict, th: Thresholds, seed: int, top_tokens: int, notes: list[str], weights: bool,
             accuracy: bool) -> tuple[dict, dict[str, pl.DataFrame]]:
    """summary.json's content and the tables. `base`: the base's description
    (Checkpoint.describe()); `base_path` its folder, for the weights (None: no weights)."""
    checkpoints, tables = checkpoint_figures(scorers, inputs, top_tokens)
    correlations: dict = {}
    if weights and base_path is not None:
        add_weights(checkpoints, base_path, tables, correlations)
    elif weights:
        for c in checkpoints:
            c["figures"]["weights"] = {"note": "no BASE folder given with --base-cache: weights not compared"}
    frames = {k: pl.concat(v, how="diagonal_relaxed") for k, v in tables.items() if v}
    frames["items"] = items_table(frames["positions"], inputs.probes, inputs.encoded, pl.concat(answers) if answers else None)
    correlations.update(judge(checkpoints, frames["items"] if answers else None, th, seed, accuracy))
    frames["suites"] = suites_table(checkpoints, inputs.suites)
    summary = {
        "schema_version": SCHEMA_VERSION,
        "driftscope_version": __version__,
        "models": {"base": base, "tuned": [s.ck.describe() for s in scorers]},
        "suites": [
            {"name": x.name, "version": x.version, "hash": x.hash, "description": x.description,
             "n_probes": len(x), "n_with_answer": x.n_with_answer}
            for x in inputs.suites
        ],
        "settings": {**settings, "chat_template": inputs.chat, "max_length": inputs.max_length,
                     "classes": inputs.classes, "by_suite": inputs.by_suite(), "thresholds": asdict(th)},
        "classes": {name: int(inputs.table.membership[:, j].sum()) for j, name in enumerate(inputs.table.names)},
        "checkpoints": checkpoints,
        "correlations": correlations,
        "notes": notes,
    }
    return summary, frames


def add_weights(checkpoints: list[dict], base: Path, tables: dict, correlations: dict) -> None:
    """Weight distance beside function distance, per checkpoint (no forward pass)."""
    from driftscope.correlations import correlation
    from driftscope.errors import DriftscopeError
    from driftscope.layers import weight_vs_function
    from driftscope.weights import weight_summary, weight_table

    rows = []
    for c in checkpoints:
        try:
            wt = weight_table(base, Path(c["path"]))
        except DriftscopeError as e:  # e.g. a DoRA adapter: the run goes on without weights
            c["figures"]["weights"] = {"note": e.reason}
            continue
        tables.setdefault("weights", []).append(wt.with_columns(pl.lit(c["label"]).alias("checkpoint")))
        c["figures"]["weights"] = ws = weight_summary(wt)
        mine = [t for t in tables.get("layers", []) if t.height and t["checkpoint"][0] == c["label"]]
        comps = [t for t in tables.get("components", []) if t.height and t["checkpoint"][0] == c["label"]]
        if mine:
            ws["vs_function"] = weight_vs_function(wt, mine[0], comps[0] if comps else None)
        rows.append((ws["rel_change"], c["figures"]["kl"]["mean"]))
    if len(rows) > 1:
        correlations["weights_vs_kl"] = correlation([r[0] for r in rows], [r[1] for r in rows])


def items_table(positions: pl.DataFrame, probes: list[Probe], encoded, answers: pl.DataFrame | None) -> pl.DataFrame:
    """One row per (checkpoint, probe): drift at the next position and over the
    answer, and each model's answer and correctness where the probe has one.
    With continuation positions (--continue), also the largest KL along the
    base's continuation and the first offset where the tuned top-1 forks from it;
    the other columns leave them out."""
    meta = pl.DataFrame({
        "probe_index": [e.index for e in encoded],
        "prompt": [probes[e.index].prompt for e in encoded],
        "answer": [probes[e.index].answer for e in encoded],
        "n_prompt_tokens": [e.n_prompt for e in encoded],
        "truncated_tokens": [e.truncated for e in encoded],
    }, schema_overrides={"answer": pl.String})
    main, cont = pl.col("kind") != "continuation", pl.col("kind") == "continuation"
    later = []
    if positions.height and (positions["kind"] == "continuation").any():  # --continue: the item's continuation
        later = [pl.col("kl").filter(cont).max().alias("kl_continuation_max"),
                 pl.col("offset").filter(cont & ~pl.col("top1_agree")).min().alias("continuation_fork_offset")]
    agg = positions.group_by("checkpoint", "probe_index").agg(
        pl.col("suite").first(),
        pl.col("probe_id").first(),
        main.sum().alias("n_positions"),
        pl.col("kl").filter(pl.col("kind") == "next").first().alias("kl_next"),
        pl.col("kl").filter(main).mean().alias("kl_mean"),
        pl.col("js").filter(pl.col("kind") == "next").first().alias("js_next"),
        pl.col("top1_agree").filter(pl.col("kind") == "next").first().alias("top1_agree_next"),
        (pl.col("q_numeric") - pl.col("p_numeric")).filter(pl.col("kind") == "next").first().alias("numeric_shift_next"),
        pl.col("p_gold").filter(main).log().sum().alias("logp_answer"),
        pl.col("q_gold").filter(main).log().sum().alias("logq_answer"),
        *later,
    )
    out = agg.join(meta, on="probe_index", how="left")
    if answers is not None:
        out = out.join(answers, on=["checkpoint", "probe_index"], how="left")
    return out.sort("checkpoint", "probe_index")


def suites_table(checkpoints: list[dict], suites: list[ProbeSuite]) -> pl.DataFrame:
    meta = {x.name: x for x in suites}
    rows = []
    for c in checkpoints:
        for name, f in c["figures"]["suites"].items():
            rows.append({
                "checkpoint": c["label"], "suite": name, "version": meta[name].version, "hash": meta[name].hash,
                "n_probes": f["n_probes"], "n_positions": f["n_positions"],
                "kl_mean": f["kl"]["mean"], "kl_p99": f["kl"]["p99"], "js_mean": f["js"]["mean"],
                "top1_agreement": f["top1_agreement"],
                "numeric_base": f["classes"]["numeric"]["base"], "numeric_tuned": f["classes"]["numeric"]["tuned"],
                "numeric_shift": f["classes"]["numeric"]["shift"], "kl_between_share": f["kl_split"]["between_share"],
                **{k: f.get(k) for k in ("accuracy_base", "accuracy_tuned", "accuracy_corrected", "accuracy_change",
                                         "mcnemar_p", "recovered", "verdict", "n_choice_items", "free_accuracy_base",
                                         "free_accuracy_tuned", "free_accuracy_change", "free_mcnemar_p")},
                "accuracy_change_lo": (f.get("accuracy_change_ci") or [None, None])[0],
                "accuracy_change_hi": (f.get("accuracy_change_ci") or [None, None])[1],
            })
    return pl.DataFrame(rows)
