"""Accuracy statistics, bias-correction recovery and the verdict.

Pure functions over per-item correctness arrays; no models, no I/O.

The verdict, per suite and overall, from paired per-item correctness:

    no-answers      the suite has no gold answers: drift figures only
    stable          no significant drop, and the bootstrap interval of the change
                    rules out a drop larger than `stable_margin`
    inconclusive    no significant drop, but too few items to rule one out
    output-bias     a significant drop, and removing the tuned model's constant
                    output shift recovers at least `bias_recovery` of it; or at
                    least that share of the lost items is still answered right
                    among its choices or after the correction (`explained`)
    knowledge-loss  a significant drop that the correction recovers less than
                    `loss_recovery` of
    mixed           a significant drop with recovery in between
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np
import polars as pl
from scipy import stats

VERDICTS = ("stable", "output-bias", "knowledge-loss", "mixed", "inconclusive", "no-answers")


@dataclass(frozen=True)
class Thresholds:
    alpha: float = 0.05  # McNemar significance for "accuracy changed"
    min_drop: float = 0.02  # a drop under 2 points is not a finding, whatever p says
    stable_margin: float = 0.05  # "stable" needs the 95% interval above -5 points
    bias_recovery: float = 0.5  # output-bias: at least half the drop comes back
    loss_recovery: float = 0.2  # knowledge-loss: under a fifth comes back
    bootstrap: int = 1000  # resamples for intervals

    # (low, high, whether the ends are allowed, what it is): checked on construction
    RANGES: ClassVar[dict[str, tuple[float, float, bool, str]]] = {
        "alpha": (0, 1, False, "a significance level"),
        "min_drop": (0, 1, True, "an accuracy drop, as a fraction"),
        "stable_margin": (0, 1, True, "an accuracy margin, as a fraction"),
        "bias_recovery": (0, 1, True, "a share of the drop"),
        "loss_recovery": (0, 1, True, "a share of the drop"),
        "bootstrap": (100, 100_000, True, "a number of resamples"),  # fewer cannot place a 2.5% tail
    }

    def __post_init__(self):
        from driftscope.errors import DriftscopeError

        for key, (lo, hi, closed, what) in self.RANGES.items():
            value = getattr(self, key)
            inside = lo <= value <= hi if closed else lo < value < hi  # False for NaN
            if not inside:
                span = f"from {lo:g} to {hi:g}" if closed else f"between {lo:g} and {hi:g}, exclusive"
                raise DriftscopeError(f"--verdict {key}={value:g}: out of range ({what}, {span})",
                                      f"pass --verdict {key}=VALUE {span}")
        if self.loss_recovery > self.bias_recovery:
            raise DriftscopeError(f"--verdict loss_recovery={self.loss_recovery:g} is above bias_recovery={self.bias_recovery:g}",
                                  "recovery under loss_recovery is knowledge loss, at least bias_recovery output bias: "
                                  "keep loss_recovery <= bias_recovery")

    @classmethod
    def from_pairs(cls, pairs: dict[str, str]) -> Thresholds:
        from driftscope.errors import DriftscopeError

        fields = asdict(cls())
        values = {}
        for key, raw in pairs.items():
            if key not in fields:
                raise DriftscopeError(f"--verdict {key}: unknown threshold", f"known: {', '.join(fields)}")
            try:
                values[key] = type(fields[key])(raw)
            except ValueError:
                kind = "a whole number" if isinstance(fields[key], int) else "a number"
                raise DriftscopeError(f"--verdict {key}={raw}: not {kind}", f"e.g. --verdict {key}={fields[key]}") from None
        return cls(**values)


def mcnemar_exact(base: np.ndarray, tuned: np.ndarray) -> float:
    """Two-sided exact McNemar p-value on paired 0/1 correctness."""
    b = int(np.sum(base & ~tuned))  # lost
    c = int(np.sum(~base & tuned))  # gained
    if b + c == 0:
        return 1.0
    return float(stats.binomtest(b, b + c, 0.5).pvalue)


def bootstrap_change(base: np.ndarray, tuned: np.ndarray, n: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of mean(tuned) - mean(base), items resampled in pairs."""
    if len(base) < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(base), size=(n, len(base)))
    diffs = tuned[idx].mean(1) - base[idx].mean(1)
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    return float(lo), float(hi)


def recovery(acc_base: float, acc_tuned: float, acc_corrected: float) -> float:
    """Share of the drop that the bias correction brings back (1 = all of it)."""
    drop = acc_base - acc_tuned
    return (acc_corrected - acc_tuned) / drop if drop > 0 else math.nan


def accuracy_figures(base, tuned, corrected, th: Thresholds, seed: int = 0, restricted=None, still=None,
                     nonfinite: int = 0) -> dict:
    """Figures and verdict for one group of items.

    base, tuned, corrected: (n,) bool correctness of the free answers.
    `restricted`: optional (base, tuned) correctness of the choice items when
    scored among their choices, reported beside free generation. `still`:
    optional (n,) bool, the tuned model's restricted answer is right (False
    for items without choices): a lost item that is `still` right, or right
    after the correction, is explained by output bias. `nonfinite`: scored
    positions of the group whose logits were not finite; they were left out of
    every figure, and the reason says so.
    """
    base, tuned, corrected = (np.asarray(x, dtype=bool) for x in (base, tuned, corrected))
    n = len(base)
    if n == 0:
        reason = "no items with gold answers" + (f"; {nonfinite_note(nonfinite)}" if nonfinite else "")
        return {"n_items": 0, "verdict": "no-answers", "verdict_reason": reason}
    acc_b, acc_t, acc_c = base.mean(), tuned.mean(), corrected.mean()
    change = acc_t - acc_b
    p = mcnemar_exact(base, tuned)
    lo, hi = bootstrap_change(base, tuned, th.bootstrap, seed)
    dropped = p < th.alpha and change <= -th.min_drop
    rec = recovery(acc_b, acc_t, acc_c) if dropped else math.nan
    lost = base & ~tuned
    back = corrected | (np.asarray(still, dtype=bool) if still is not None else np.zeros(n, dtype=bool))
    explained = float((lost & back).sum() / lost.sum()) if dropped and lost.any() else math.nan
    out = {
        "n_items": n,
        "accuracy_base": acc_b,
        "accuracy_tuned": acc_t,
        "accuracy_corrected": acc_c,
        "accuracy_change": change,
        "accuracy_change_ci": [lo, hi],
        "mcnemar_p": p,
        "items_lost": int(np.sum(base & ~tuned)),
        "items_gained": int(np.sum(~base & tuned)),
        "recovered": rec,
        "explained": explained,
    }
    held = None
    if restricted is not None and len(restricted[0]):
        rb, rt = (np.asarray(x, dtype=bool) for x in restricted)
        r_change = rt.mean() - rb.mean()
        r_p = mcnemar_exact(rb, rt)
        held = not (r_p < th.alpha and r_change <= -th.min_drop)
        out["restricted"] = {"n_items": len(rb), "accuracy_base": rb.mean(), "accuracy_tuned": rt.mean(),
                             "accuracy_change": r_change, "mcnemar_p": r_p, "held": held}
    out["verdict"], out["verdict_reason"] = decide(out, th)
    if nonfinite:
        out["verdict_reason"] += f"; {nonfinite_note(nonfinite)}"
    return out


def nonfinite_note(n: int) -> str:
    return f"{n} scored positions had non-finite logits and were left out of every figure"


def decide(f: dict, th: Thresholds) -> tuple[str, str]:
    change, p, (lo, _hi), rec = f["accuracy_change"], f["mcnemar_p"], f["accuracy_change_ci"], f["recovered"]
    explained = f.get("explained", math.nan)
    if not (p < th.alpha and change <= -th.min_drop):
        if not math.isnan(lo) and lo >= -th.stable_margin:
            return "stable", f"no significant drop (McNemar p={p:.3g}); 95% interval of the change {lo:+.1%} to {_hi:+.1%}"
        return "inconclusive", (f"no significant drop (p={p:.3g}) but the 95% interval reaches {lo:+.1%}: "
                                f"too few items ({f['n_items']}) to rule out a drop over {th.stable_margin:.0%}")
    if rec >= th.bias_recovery:
        return "output-bias", f"significant drop (p={p:.3g}); the bias correction recovers {rec:.0%} (>= {th.bias_recovery:.0%})"
    if explained >= th.bias_recovery:
        return "output-bias", (f"significant drop (p={p:.3g}); {explained:.0%} of the lost items are still answered right "
                                f"among their choices or after the correction (>= {th.bias_recovery:.0%})")
    best = max(rec, explained) if not math.isnan(explained) else rec
    if best < th.loss_recovery:
        return "knowledge-loss", (f"significant drop (p={p:.3g}); the bias correction recovers only {rec:.0%} and "
                                  f"{_pct(explained)} of the lost items are still there (< {th.loss_recovery:.0%})")
    return "mixed", (f"significant drop (p={p:.3g}); the bias correction recovers {rec:.0%} and {_pct(explained)} of the lost "
                     f"items are still there: between {th.loss_recovery:.0%} and {th.bias_recovery:.0%}")


def _pct(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.0%}"


def sentence(f: dict) -> str:
    """The verdict in a sentence a reviewer understands (and a note on non-finite logits)."""
    n = f.get("nonfinite_positions") or 0
    return _verdict_sentence(f) + (f" Note: {nonfinite_note(n)}." if n else "")


def _verdict_sentence(f: dict) -> str:
    v = f.get("verdict")
    if v == "no-answers":
        if "skipped" in f.get("verdict_reason", ""):
            return "Drift figures only: the accuracy pass was skipped (--no-accuracy); accuracy and the verdict need answers."
        return "No gold answers in these probes: drift figures only; accuracy and the verdict need answers."
    change = f["accuracy_change"] * 100
    numeric = f.get("classes", {}).get("numeric", {}).get("shift")
    shift = f" ({100 * numeric:+.1f} pt numeric mass)" if numeric is not None and not math.isnan(numeric) else ""
    if v == "stable":
        return f"Held-out accuracy moved {change:+.1f} points, within noise: stable."
    if v == "inconclusive":
        lo = f["accuracy_change_ci"][0] * 100
        return f"Held-out accuracy moved {change:+.1f} points; with {f['n_items']} items a drop of up to {-lo:.1f} points cannot be ruled out: inconclusive."
    rec = f.get("recovered")
    back = f"{rec:.0%} returns when the output shift{shift} is removed" if rec is not None and not math.isnan(rec) else "no recovery figure"
    tail = {"output-bias": "output bias, not lost knowledge.",
            "knowledge-loss": "lost knowledge, not just output bias.",
            "mixed": "part output bias, part lost knowledge."}[v]
    explained = f.get("explained")
    if v == "output-bias" and (rec is None or math.isnan(rec) or rec < explained):
        back = f"{explained:.0%} of the lost items are still answered right among their choices or once the output shift{shift} is removed"
    return f"Held-out accuracy fell {-change:.1f} points; {back}: {tail}"


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
