"""Accuracy statistics, bias-correction recovery and the verdict.

Pure functions over per-item correctness arrays; no models, no I/O.

Every figure here is on each item's *primary* correctness: an item with
choices is scored by choice log-likelihood (the argmax of the summed
log-likelihoods, as lm-eval's `acc`), an item without by its greedy free
answer. A choice item's free answer is a secondary figure (`free_accuracy_*`,
on the choice items only); when it moves apart from the choice accuracy of
the same items, the reason and the sentence say so: the output changed while
the ranking of the choices did not (or the reverse).

The verdict, per suite and overall, from paired per-item correctness:

    no-answers      the suite has no gold answers: drift figures only
    stable          no significant drop, and the bootstrap interval of the change
                    rules out a drop larger than `stable_margin`; or a
                    significant gain (the test itself rules out a drop); the
                    sentence says which
    inconclusive    no significant drop, but too few items to rule one out
    output-bias     a significant drop, and removing the tuned model's constant
                    output shift recovers at least `bias_recovery` of it; or at
                    least that share of the lost items is answered right after
                    the correction (`explained`)
    knowledge-loss  a significant drop that the correction recovers less than
                    `loss_recovery` of
    mixed           a significant drop with recovery in between

"Significant" is an exact McNemar test at `alpha`; a drop must also be at
least `min_drop`. The sentence never calls a change "within noise" unless
p >= alpha, calls a significant gain a gain with its p, and names the metric.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np
import polars as pl
from scipy import stats

VERDICTS = ("stable", "output-bias", "knowledge-loss", "mixed", "inconclusive", "no-answers")
METRICS = ("choice", "free", "mixed")  # what a scope's primary accuracy was measured on


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


def significant_drop(change: float, p: float, th: Thresholds) -> bool:
    return p < th.alpha and change <= -th.min_drop


def moved(change: float | None, p: float | None, th: Thresholds) -> bool:
    """A significant change of at least min_drop either way (for comparing two metrics)."""
    return change is not None and p is not None and p < th.alpha and abs(change) >= th.min_drop


def accuracy_figures(base, tuned, corrected, th: Thresholds, seed: int = 0, choice=None, free=None,
                     nonfinite: int = 0) -> dict:
    """Figures and verdict for one group of items.

    base, tuned, corrected: (n,) bool primary correctness (choice log-likelihood
    argmax for choice items, free answer otherwise; `corrected` is the tuned
    model's with its output shift removed). `choice`: optional (n,) bool, the
    items scored among their choices (None: none). `free`: optional (base,
    tuned) bool correctness of the free answers, of every item (n,) or of the
    choice items only; compared on the choice items with their choice
    accuracy. `nonfinite`: scored positions of the group whose logits were not
    finite; they were left out of every figure, and the reason says so.
    """
    base, tuned, corrected = (np.asarray(x, dtype=bool) for x in (base, tuned, corrected))
    n = len(base)
    if n == 0:
        reason = "no items with gold answers" + (f"; {nonfinite_note(nonfinite)}" if nonfinite else "")
        return {"n_items": 0, "verdict": "no-answers", "verdict_reason": reason}
    choice = np.zeros(n, dtype=bool) if choice is None else np.asarray(choice, dtype=bool)
    acc_b, acc_t, acc_c = base.mean(), tuned.mean(), corrected.mean()
    change = acc_t - acc_b
    p = mcnemar_exact(base, tuned)
    lo, hi = bootstrap_change(base, tuned, th.bootstrap, seed)
    dropped = significant_drop(change, p, th)
    lost = base & ~tuned
    out = {
        "n_items": n,
        "accuracy_metric": METRICS[0] if choice.all() else METRICS[1] if not choice.any() else METRICS[2],
        "accuracy_base": acc_b,
        "accuracy_tuned": acc_t,
        "accuracy_corrected": acc_c,
        "accuracy_change": change,
        "accuracy_change_ci": [lo, hi],
        "mcnemar_p": p,
        "items_lost": int(lost.sum()),
        "items_gained": int(np.sum(~base & tuned)),
        "recovered": recovery(acc_b, acc_t, acc_c) if dropped else math.nan,
        # per item: the share of the lost items that the correction answers right again
        "explained": float((lost & corrected).sum() / lost.sum()) if dropped and lost.any() else math.nan,
        **format_figures(base, tuned, choice, free),
    }
    out["verdict"], out["verdict_reason"] = decide(out, th)
    note = format_note(out, th)
    if note:
        out["verdict_reason"] += f"; {note}"
    if nonfinite:
        out["verdict_reason"] += f"; {nonfinite_note(nonfinite)}"
    return out


FORMAT_KEYS = ("choice_accuracy_base", "choice_accuracy_tuned", "choice_accuracy_change", "choice_mcnemar_p",
               "free_accuracy_base", "free_accuracy_tuned", "free_accuracy_change", "free_mcnemar_p", "format_gap_p")


def format_figures(base: np.ndarray, tuned: np.ndarray, choice: np.ndarray, free) -> dict:
    """The choice items scored two ways: among their choices (their primary
    correctness) and by their free answers. None where the group has no choice
    items (or no free answers were given)."""
    out = {"n_choice_items": int(choice.sum()), **dict.fromkeys(FORMAT_KEYS)}
    if not choice.any():
        return out
    pairs = {"choice": (base[choice], tuned[choice])}
    if free is not None:
        free = [np.asarray(x, dtype=bool) for x in free]
        pairs["free"] = tuple(x[choice] if len(x) == len(choice) else x for x in free)
    for name, (b, t) in pairs.items():
        out.update({f"{name}_accuracy_base": b.mean(), f"{name}_accuracy_tuned": t.mean(),
                    f"{name}_accuracy_change": t.mean() - b.mean(), f"{name}_mcnemar_p": mcnemar_exact(b, t)})
    if "free" in pairs:  # does each item's free-answer change differ from its choice change?
        delta = {name: t.astype(int) - b.astype(int) for name, (b, t) in pairs.items()}
        out["format_gap_p"] = sign_test(delta["free"] - delta["choice"])
    return out


def format_note(f: dict, th: Thresholds) -> str | None:
    """When the choice items' free answers and their choice accuracy move apart
    (their per-item changes differ: sign test at `alpha`, by at least
    `min_drop`), a clause saying so with both figures: an output-distribution
    change in itself. None when they agree."""
    fc, fp, cc, cp = (f.get(k) for k in ("free_accuracy_change", "free_mcnemar_p", "choice_accuracy_change", "choice_mcnemar_p"))
    gap_p = f.get("format_gap_p")
    if gap_p is None or not (gap_p < th.alpha and abs(fc - cc) >= th.min_drop):
        return None
    vf, vc = _how(fc, fp, th), _how(cc, cp, th)
    if vc == "held" and vf in ("rose", "fell"):
        lead = "answers changed format while choice accuracy held"
    elif vf == "held" and vc in ("rose", "fell"):
        lead = "choice accuracy moved while free answers held"
    elif vf == vc:
        lead = f"free answers and choice accuracy both {vf}, by different amounts"
    else:
        lead = f"free answers {vf} while choice accuracy {vc}"
    where = f" (on the {f['n_choice_items']} choice items)" if f.get("accuracy_metric") == "mixed" else ""
    return (f"{lead}{where}: free accuracy {100 * fc:+.1f} points (p={fp:.2g}), "
            f"choice accuracy {100 * cc:+.1f} points (p={cp:.2g}); they differ at p={gap_p:.2g}")


def _how(change: float, p: float, th: Thresholds) -> str:
    if moved(change, p, th):
        return "rose" if change > 0 else "fell"
    return "held" if abs(change) < th.min_drop else "did not change significantly"


def sign_test(gain: np.ndarray) -> float:
    """Two-sided exact sign test that (n,) paired differences are centred on 0 (zeros dropped)."""
    up, down = int(np.sum(gain > 0)), int(np.sum(gain < 0))
    return 1.0 if up + down == 0 else float(stats.binomtest(up, up + down, 0.5).pvalue)


def nonfinite_note(n: int) -> str:
    return f"{n} scored positions had non-finite logits and were left out of every figure"


def decide(f: dict, th: Thresholds) -> tuple[str, str]:
    change, p, (lo, hi), rec = f["accuracy_change"], f["mcnemar_p"], f["accuracy_change_ci"], f["recovered"]
    explained = f.get("explained", math.nan)
    on = f"{metric_words(f)}: "
    interval = f"95% interval of the change {lo:+.1%} to {hi:+.1%}"
    if not significant_drop(change, p, th):
        if p < th.alpha and change > 0:  # the test itself rules out a drop
            return "stable", f"{on}significant gain (McNemar p={p:.3g}); {interval}"
        what = (f"no significant change (McNemar p={p:.3g})" if p >= th.alpha else
                f"a significant drop smaller than min_drop={th.min_drop:.0%} (McNemar p={p:.3g})")
        if not math.isnan(lo) and lo >= -th.stable_margin:
            return "stable", f"{on}{what}; {interval}"
        return "inconclusive", (f"{on}{what} but the 95% interval reaches {lo:+.1%}: "
                                f"too few items ({f['n_items']}) to rule out a drop over {th.stable_margin:.0%}")
    on += f"significant drop (McNemar p={p:.3g}); "
    if rec >= th.bias_recovery:
        return "output-bias", f"{on}the bias correction recovers {rec:.0%} (>= {th.bias_recovery:.0%})"
    if explained >= th.bias_recovery:
        return "output-bias", (f"{on}{explained:.0%} of the lost items are answered right after the correction "
                               f"(>= {th.bias_recovery:.0%})")
    best = max(rec, explained) if not math.isnan(explained) else rec
    if best < th.loss_recovery:
        return "knowledge-loss", (f"{on}the bias correction recovers only {rec:.0%} and "
                                  f"{_pct(explained)} of the lost items come back (< {th.loss_recovery:.0%})")
    return "mixed", (f"{on}the bias correction recovers {rec:.0%} and {_pct(explained)} of the lost "
                     f"items come back: between {th.loss_recovery:.0%} and {th.bias_recovery:.0%}")


def _pct(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.0%}"


def metric_words(f: dict) -> str:
    """The metric a scope's accuracy was measured on, in words."""
    metric = f.get("accuracy_metric", "free")
    if metric == "choice":
        return "choice log-likelihood accuracy"
    if metric == "free":
        return "free-answer accuracy"
    n_choice = f["n_choice_items"]
    return f"accuracy ({n_choice} choice items by log-likelihood, {f['n_items'] - n_choice} by free answer)"


def sentence(f: dict, th: Thresholds | None = None) -> str:
    """The verdict in a sentence a reviewer understands (and a note on non-finite
    logits). `th`: the thresholds the verdict was decided with."""
    th = th or Thresholds()
    n = f.get("nonfinite_positions") or 0
    return _verdict_sentence(f, th) + (f" Note: {nonfinite_note(n)}." if n else "")


def change_clause(change: float, p: float, th: Thresholds) -> str:
    """'rose/fell X points (McNemar p=...)' when the test says it moved, 'within noise' only when it does not."""
    if p >= th.alpha:
        return f"moved {100 * change:+.1f} points, within noise (McNemar p={p:.2g})"
    if change > 0:
        return f"rose {100 * change:.1f} points (McNemar p={p:.2g}), a significant gain"
    small = "" if change <= -th.min_drop else f", less than min_drop ({100 * th.min_drop:.1f} points)"
    return f"fell {-100 * change:.1f} points (McNemar p={p:.2g}){small}"


def _verdict_sentence(f: dict, th: Thresholds) -> str:
    v = f.get("verdict")
    if v == "no-answers":
        if "skipped" in f.get("verdict_reason", ""):
            return "Drift figures only: the accuracy pass was skipped (--no-accuracy); accuracy and the verdict need answers."
        return "No gold answers in these probes: drift figures only; accuracy and the verdict need answers."
    what = f"Held-out {metric_words(f)}"
    note = format_note(f, th)
    note = f" {note[0].upper()}{note[1:]}." if note else ""
    change = f["accuracy_change"]
    if v == "stable":
        return f"{what} {change_clause(change, f['mcnemar_p'], th)}: stable.{note}"
    if v == "inconclusive":
        lo = f["accuracy_change_ci"][0] * 100
        return (f"{what} {change_clause(change, f['mcnemar_p'], th)}; with {f['n_items']} items a drop of up to "
                f"{-lo:.1f} points cannot be ruled out: inconclusive.{note}")
    numeric = f.get("classes", {}).get("numeric", {}).get("shift")
    shift = f" ({100 * numeric:+.1f} pt numeric mass)" if numeric is not None and not math.isnan(numeric) else ""
    rec, explained = f.get("recovered"), f.get("explained")
    back = f"{rec:.0%} returns when the output shift{shift} is removed" if rec is not None and not math.isnan(rec) else "no recovery figure"
    if v == "output-bias" and (rec is None or math.isnan(rec) or rec < explained):
        back = f"{explained:.0%} of the lost items are answered right again once the output shift{shift} is removed"
    tail = {"output-bias": "output bias, not lost knowledge.",
            "knowledge-loss": "lost knowledge, not just output bias.",
            "mixed": "part output bias, part lost knowledge."}[v]
    return f"{what} {change_clause(change, f['mcnemar_p'], th)}; {back}: {tail}{note}"


def add_verdicts(figures: dict, items: pl.DataFrame, th: Thresholds, seed: int) -> None:
    """Accuracy figures and verdicts into a checkpoint's figures (overall and per suite).

    `items`: the items table of one checkpoint; items without a gold answer
    (null correctness) are left out."""
    items = items.filter(pl.col("base_primary_correct").is_not_null())
    groups = [(figures, items)] + [(figures["suites"][s], items.filter(pl.col("suite") == s)) for s in figures["suites"]]
    for target, df in groups:
        acc = accuracy_figures(df["base_primary_correct"].to_numpy(), df["tuned_primary_correct"].to_numpy(),
                               df["corrected_primary_correct"].to_numpy(), th, seed,
                               choice=(df["primary"] == "choice").to_numpy(),
                               free=(df["base_correct"].to_numpy(), df["tuned_correct"].to_numpy()),
                               nonfinite=target.get("nonfinite_positions", 0))
        target.update(acc)
        target["verdict_sentence"] = sentence(target, th)
