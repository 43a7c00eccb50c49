"""Streaming, mergeable accumulators: memory is constant in the number of probes.

Each reducer takes batches with `update(...)`, combines with another of its
kind with `merge(other)` (for sharded runs), and reports with `summary()`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

QUANTILES = {"median": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99, "p99_9": 0.999}


@dataclass
class Sketch:
    """Moments plus a log-bucketed histogram for quantiles (DDSketch-style).

    A value x > 0 lands in bucket ceil(log(x) / log(gamma)); every quantile is
    returned within a relative error `alpha` of an exact order statistic of the
    non-negative values (0.5% by default). Values below `floor` count as zero.
    Memory is a fixed array whatever the number of values.
    """

    alpha: float = 0.005
    floor: float = 1e-12
    ceil: float = 1e12
    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    vmax: float = -math.inf
    zeros: int = 0
    counts: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]

    def __post_init__(self):
        self.gamma = (1 + self.alpha) / (1 - self.alpha)
        self._lg = math.log(self.gamma)
        self._lo = math.floor(math.log(self.floor) / self._lg)
        hi = math.ceil(math.log(self.ceil) / self._lg)
        if self.counts is None:
            self.counts = np.zeros(hi - self._lo + 1, dtype=np.int64)

    def update(self, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.size == 0:
            return
        if (v < 0).any():
            raise ValueError("Sketch holds non-negative values only")
        self.n += v.size
        self.total += float(v.sum())
        self.total_sq += float((v * v).sum())
        self.vmax = max(self.vmax, float(v.max()))
        small = v < self.floor
        self.zeros += int(small.sum())
        pos = np.clip(v[~small], None, self.ceil)
        idx = np.ceil(np.log(pos) / self._lg).astype(np.int64) - self._lo
        np.add.at(self.counts, np.clip(idx, 0, len(self.counts) - 1), 1)

    def merge(self, other: Sketch) -> Sketch:
        assert (self.alpha, self.floor, self.ceil) == (other.alpha, other.floor, other.ceil)
        self.n += other.n
        self.total += other.total
        self.total_sq += other.total_sq
        self.vmax = max(self.vmax, other.vmax)
        self.zeros += other.zeros
        self.counts += other.counts
        return self

    def quantile(self, q: float) -> float:
        if self.n == 0:
            return math.nan
        rank = q * (self.n - 1)  # 0-based rank of the order statistic (lower)
        if rank < self.zeros:
            return 0.0
        cum = np.cumsum(self.counts)
        b = int(np.searchsorted(cum, rank - self.zeros, side="right"))
        upper = self.gamma ** (b + self._lo)
        # The bucket (upper/gamma, upper]: its midpoint in relative terms.
        return min(2 * upper / (self.gamma + 1), self.vmax)

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else math.nan

    @property
    def se(self) -> float:
        if self.n < 2:
            return math.nan
        var = (self.total_sq - self.n * self.mean**2) / (self.n - 1)
        return math.sqrt(max(var, 0.0) / self.n)

    def summary(self) -> dict:
        out = {"n": self.n, "mean": self.mean, "se": self.se}
        out.update({k: self.quantile(q) for k, q in QUANTILES.items()})
        out["max"] = self.vmax if self.n else math.nan
        return out


@dataclass
class Moments:
    """Count, mean and standard error of a bounded quantity (e.g. agreement 0/1)."""

    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    def update(self, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float64).ravel()
        self.n += v.size
        self.total += float(v.sum())
        self.total_sq += float((v * v).sum())

    def merge(self, other: Moments) -> Moments:
        self.n += other.n
        self.total += other.total
        self.total_sq += other.total_sq
        return self

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else math.nan

    @property
    def se(self) -> float:
        if self.n < 2:
            return math.nan
        var = (self.total_sq - self.n * self.mean**2) / (self.n - 1)
        return math.sqrt(max(var, 0.0) / self.n)


@dataclass
class ClassMass:
    """Per class: mean base mass, mean tuned mass, shift q(c) - p(c), and the
    log-odds shift logit(q(c)) - logit(p(c)) averaged over positions."""

    names: tuple[str, ...]
    eps: float = 1e-9  # keeps log-odds finite for a class with no mass

    def __post_init__(self):
        c = len(self.names)
        self.base = [Moments() for _ in range(c)]
        self.tuned = [Moments() for _ in range(c)]
        self.shift = [Moments() for _ in range(c)]
        self.log_odds = [Moments() for _ in range(c)]

    def update(self, p_mass: np.ndarray, q_mass: np.ndarray) -> None:
        """p_mass, q_mass: (N, C)."""
        p = np.clip(p_mass, self.eps, 1 - self.eps)
        q = np.clip(q_mass, self.eps, 1 - self.eps)
        lo = np.log(q / (1 - q)) - np.log(p / (1 - p))
        for j in range(len(self.names)):
            self.base[j].update(p_mass[:, j])
            self.tuned[j].update(q_mass[:, j])
            self.shift[j].update(q_mass[:, j] - p_mass[:, j])
            self.log_odds[j].update(lo[:, j])

    def merge(self, other: ClassMass) -> ClassMass:
        for mine, theirs in ((self.base, other.base), (self.tuned, other.tuned), (self.shift, other.shift), (self.log_odds, other.log_odds)):
            for a, b in zip(mine, theirs):
                a.merge(b)
        return self

    def summary(self) -> dict:
        return {
            name: {
                "base": self.base[j].mean,
                "tuned": self.tuned[j].mean,
                "shift": self.shift[j].mean,
                "shift_se": self.shift[j].se,
                "log_odds_shift": self.log_odds[j].mean,
            }
            for j, name in enumerate(self.names)
        }


@dataclass
class TokenMovers:
    """Mean p and q of every token over all scored positions: two (V,) sums."""

    vocab: int

    def __post_init__(self):
        self.n = 0
        self.p_sum = np.zeros(self.vocab, dtype=np.float64)
        self.q_sum = np.zeros(self.vocab, dtype=np.float64)

    def update(self, p_sum: np.ndarray, q_sum: np.ndarray, n: int) -> None:
        """Already-summed batch totals (the sum over positions runs on the tensor side)."""
        self.p_sum += p_sum
        self.q_sum += q_sum
        self.n += n

    def merge(self, other: TokenMovers) -> TokenMovers:
        self.p_sum += other.p_sum
        self.q_sum += other.q_sum
        self.n += other.n
        return self

    def top(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Ids of the k largest gainers and the k largest losers (mean q - p)."""
        d = (self.q_sum - self.p_sum) / max(self.n, 1)
        order = np.argsort(d, kind="stable")
        return order[::-1][:k], order[:k]
