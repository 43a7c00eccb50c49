"""The accuracy pass after the drift pass: answers, correctness, verdicts.

Runs the base once and each tuned checkpoint twice over the items with gold
answers (plain, and with its cross-fitted output offset removed), then folds
per-item correctness into per-suite and overall figures, verdicts and
correlations between accuracy change and drift.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from driftscope import accuracy as A
from driftscope.diagnose import Thresholds, accuracy_figures, correlation, sentence


def answer_items(base_ck, tuned_cks, estimators, probes, encoded, chat, max_length, batch_size, vocab, progress=None):
    """Per-item answers and correctness: one polars frame per tuned checkpoint."""
    tok = base_ck.tokenizer
    device = next(base_ck.model.parameters()).device
    with_answer = [e for e in encoded if probes[e.index].answer is not None]
    seqs, keys = A.choice_sequences(probes, tok, chat, max_length)
    batches = A.batches_for(seqs, batch_size, tok, device) if seqs else []
    tick = (lambda: progress()) if progress else (lambda: None)

    def choices(model, offsets_of=None):
        # One pass gives the plain and, with offsets, the corrected log-likelihoods.
        if not seqs:
            return None, None, None
        return A.choice_logliks(model, batches, len(seqs), vocab, offsets_of, keys)

    def generate(model, offsets_of=None):
        return A.generate_all(model, tok, with_answer, batch_size, offsets_of, vocab)

    base_texts = generate(base_ck.model)
    base_ll, cnt, _ = choices(base_ck.model)
    tick()
    frames = []
    for ck, est in zip(tuned_cks, estimators):
        t_texts = generate(ck.model)
        tick()
        c_texts = generate(ck.model, est.for_probes)
        t_ll, _, c_ll = choices(ck.model, est.for_probes)
        tick()
        frames.append(_items_frame(ck.label, probes, with_answer, keys, cnt,
                                   (base_texts, base_ll), (t_texts, t_ll), (c_texts, c_ll)))
    return frames


def _items_frame(label, probes, with_answer, keys, cnt, base, tuned, corrected) -> pl.DataFrame:
    n = len(probes)
    picks = {name: (A.pick(ll, keys, n) if ll is not None else {}) for name, (_, ll) in
             (("base", base), ("tuned", tuned), ("corrected", corrected))}
    per_token = {name: (A.pick(ll, keys, n, cnt) if ll is not None else {}) for name, (_, ll) in
                 (("base", base), ("tuned", tuned))}
    rows = []
    for e in with_answer:
        p = probes[e.index]
        row = {"checkpoint": label, "probe_index": e.index}
        for name, (texts, _) in (("base", base), ("tuned", tuned), ("corrected", corrected)):
            row[f"{name}_answer"] = texts[e.index]
            row[f"{name}_correct"] = A.is_match(texts[e.index], p.answer)
            if p.choices:
                j = picks[name][e.index]
                row[f"{name}_choice"] = p.choices[j]
                row[f"{name}_choice_correct"] = p.choices[j] == p.answer
        if p.choices:
            for name in ("base", "tuned"):
                row[f"{name}_choice_per_token_correct"] = p.choices[per_token[name][e.index]] == p.answer
        rows.append(row)
    schema = {f"{m}_{k}": t for m in ("base", "tuned", "corrected") for k, t in
              (("answer", pl.String), ("correct", pl.Boolean), ("choice", pl.String), ("choice_correct", pl.Boolean))}
    schema.update({"checkpoint": pl.String, "probe_index": pl.Int64,
                   "base_choice_per_token_correct": pl.Boolean, "tuned_choice_per_token_correct": pl.Boolean})
    return pl.DataFrame(rows, schema=schema)


def add_verdicts(figures: dict, items: pl.DataFrame, th: Thresholds, seed: int) -> None:
    """Accuracy figures and verdicts into a checkpoint's figures (overall and per suite)."""
    groups = [(figures, items)] + [(figures["suites"][s], items.filter(pl.col("suite") == s)) for s in figures["suites"]]
    for target, df in groups:
        mc = df.filter(pl.col("base_choice_correct").is_not_null())
        restricted = (mc["base_choice_correct"].to_numpy(), mc["tuned_choice_correct"].to_numpy()) if mc.height else None
        still = df["tuned_choice_correct"].fill_null(False).to_numpy()
        acc = accuracy_figures(df["base_correct"].to_numpy(), df["tuned_correct"].to_numpy(),
                               df["corrected_correct"].to_numpy(), th, seed, restricted, still,
                               nonfinite=target.get("nonfinite_positions", 0))
        target.update(acc)
        target["verdict_sentence"] = sentence(target)


def item_correlations(items: pl.DataFrame, th: Thresholds, seed: int) -> dict:
    """Across items: accuracy change (-1, 0, +1) against next-token KL and numeric shift."""
    df = items.filter(pl.col("base_correct").is_not_null())
    change = df["tuned_correct"].cast(pl.Int8).to_numpy() - df["base_correct"].cast(pl.Int8).to_numpy()
    return {
        "kl": correlation(df["kl_next"].to_numpy(), change, th.bootstrap, seed),
        "numeric_shift": correlation(df["numeric_shift_next"].to_numpy(), change, th.bootstrap, seed),
    }


def group_correlations(rows: list[dict], th: Thresholds, seed: int) -> dict:
    """Across suites or checkpoints: accuracy change against KL mean and each class shift."""
    rows = [r for r in rows if r.get("accuracy_change") is not None and not np.isnan(r["accuracy_change"])]
    change = [r["accuracy_change"] for r in rows]
    out = {"kl": correlation([r["kl"]["mean"] for r in rows], change, th.bootstrap, seed)}
    if rows:
        for cls in rows[0]["classes"]:
            out[f"{cls}_shift"] = correlation([r["classes"][cls]["shift"] for r in rows], change, th.bootstrap, seed)
    return out
