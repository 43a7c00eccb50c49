"""Does the accuracy change go with the drift? Pearson and Spearman across items,
suites and checkpoints, with paired bootstrap intervals. Pure: arrays in, dicts out."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
from scipy import stats

from driftscope.verdict import Thresholds

def item_correlations(items: pl.DataFrame, th: Thresholds, seed: int) -> dict:
    """Across items: primary accuracy change (-1, 0, +1) against next-token KL and numeric shift."""
    df = items.filter(pl.col("base_primary_correct").is_not_null())
    change = df["tuned_primary_correct"].cast(pl.Int8).to_numpy() - df["base_primary_correct"].cast(pl.Int8).to_numpy()
    return {
        "kl": correlation(df["kl_next"].to_numpy(), change, th.bootstrap, seed),
        "numeric_shift": correlation(df["numeric_shift_next"].to_numpy(), change, th.bootstrap, seed),
    }


def group_correlations(rows: list[dict], th: Thresholds, seed: int) -> dict:
    """Across suites or checkpoints: primary accuracy change against KL mean and each class shift."""
    rows = [r for r in rows if r.get("accuracy_change") is not None and not np.isnan(r["accuracy_change"])]
    change = [r["accuracy_change"] for r in rows]
    out = {"kl": correlation([r["kl"]["mean"] for r in rows], change, th.bootstrap, seed)}
    if rows:
        for cls in rows[0]["classes"]:
            out[f"{cls}_shift"] = correlation([r["classes"][cls]["shift"] for r in rows], change, th.bootstrap, seed)
    return out


BOOT_BATCH = 100  # resamples drawn and scored at once: memory is (BOOT_BATCH, n) whatever n_boot is


def correlation(x, y, n_boot: int = 1000, seed: int = 0) -> dict:
    """Pearson and Spearman with 95% percentile bootstrap intervals (pairs resampled).

    The resamples are scipy.stats.bootstrap's (paired=True, batch=BOOT_BATCH,
    method="percentile", the same generator), scored vectorised. A resample in
    which x or y is constant has no correlation: it is counted in
    `degenerate_resamples` and kept as NaN, so the interval is NaN (as
    scipy.stats.bootstrap's is) rather than conditioned on the resamples that
    happened to vary. `n` is the number of finite pairs.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = len(x)
    out = {"n": n, "pearson": math.nan, "pearson_ci": [math.nan, math.nan], "spearman": math.nan,
           "spearman_ci": [math.nan, math.nan], "n_boot": 0, "degenerate_resamples": 0}
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    out["pearson"] = float(stats.pearsonr(x, y).statistic)
    out["spearman"] = float(stats.spearmanr(x, y).statistic)
    if n >= 5 and n_boot > 0:
        pearson, spearman = bootstrap_correlations(x, y, n_boot, seed)
        out["n_boot"] = n_boot
        out["degenerate_resamples"] = int(np.isnan(pearson).sum())
        out["pearson_ci"] = [float(v) for v in np.quantile(pearson, [0.025, 0.975])]
        out["spearman_ci"] = [float(v) for v in np.quantile(spearman, [0.025, 0.975])]
    return out


def bootstrap_correlations(x: np.ndarray, y: np.ndarray, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n_boot,) Pearson and Spearman coefficients of paired resamples; NaN where a side is constant."""
    rng = np.random.default_rng(seed)
    pearson, spearman = [], []
    for start in range(0, n_boot, BOOT_BATCH):
        idx = rng.integers(0, len(x), (min(BOOT_BATCH, n_boot - start), len(x)))  # (B, n)
        xs, ys = x[idx], y[idx]
        pearson.append(_row_corr(xs, ys))
        spearman.append(_row_corr(stats.rankdata(xs, axis=-1), stats.rankdata(ys, axis=-1)))
    return np.concatenate(pearson), np.concatenate(spearman)


def _row_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row pair of (B, n) arrays; NaN where a row is constant."""
    degenerate = (np.ptp(a, axis=-1) == 0) | (np.ptp(b, axis=-1) == 0)
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    num = (a * b).sum(-1)
    den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    r = np.divide(num, den, out=np.zeros_like(num), where=~degenerate)
    return np.where(degenerate, math.nan, np.clip(r, -1.0, 1.0))
