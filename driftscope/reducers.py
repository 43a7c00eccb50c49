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
class Moments:
    """Count, mean and standard error, merged with Welford/Chan updates.

    State: n, mu (the mean) and m2 = sum (x - mu)^2. Each batch is reduced to its own
    (n, mean, m2) and combined with the running state by Chan et al.'s
    pairwise formula, the same one `merge` uses, so neither loses precision to
    sum(x^2) - n mean^2 when the spread is small against the mean.
    """

    n: int = 0
    mu: float = 0.0
    m2: float = 0.0

    def update(self, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.size:
            mean = float(v.mean())
            self._combine(v.size, mean, float(np.square(v - mean).sum()))

    def merge(self, other: Moments) -> Moments:
        self._combine(other.n, other.mu, other.m2)
        return self

    def _combine(self, n: int, mean: float, m2: float) -> None:
        if n == 0:
            return
        if self.n == 0:
            self.n, self.mu, self.m2 = n, mean, m2
            return
        total = self.n + n
        delta = mean - self.mu
        self.mu += delta * n / total
        self.m2 += m2 + delta * delta * self.n * n / total
        self.n = total

    @property
    def mean(self) -> float:
        return self.mu if self.n else math.nan

    @property
    def var(self) -> float:
        """Sample variance (n - 1 in the denominator)."""
        return self.m2 / (self.n - 1) if self.n > 1 else math.nan

    @property
    def se(self) -> float:
        return math.sqrt(self.var / self.n) if self.n > 1 else math.nan


EXACT_MAX = 4096  # values kept as they are before the sketch takes over: 32 KiB


@dataclass
class Sketch:
    """Moments, and quantiles of non-negative values: exact while small, then a
    log-bucketed histogram (DDSketch-style).

    Up to `exact_max` values are kept as they are and quantiles are exact, with
    numpy's default (linear) interpolation between order statistics. Past that
    the buffer is dropped and quantiles come from the histogram: a value x > 0
    lands in bucket ceil(log(x) / log(gamma)), each order statistic is read as
    its bucket's midpoint (within a relative error `alpha` of the exact one,
    0.5% by default) and neighbours are interpolated as numpy does, so every
    quantile is within `alpha` of numpy's. Values below `floor` count as zero,
    above `ceil` as `ceil`. Memory is bounded: the histogram is a fixed array
    and the buffer never holds more than `exact_max` values.
    """

    alpha: float = 0.005
    floor: float = 1e-12
    ceil: float = 1e12
    exact_max: int = EXACT_MAX
    vmax: float = -math.inf
    zeros: int = 0
    moments: Moments = field(default_factory=Moments)
    exact: np.ndarray | None = field(default=None, repr=False)  # the values while n <= exact_max; then None
    counts: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]

    def __post_init__(self):
        self.gamma = (1 + self.alpha) / (1 - self.alpha)
        self._lg = math.log(self.gamma)
        self._lo = math.floor(math.log(self.floor) / self._lg)
        hi = math.ceil(math.log(self.ceil) / self._lg)
        if self.counts is None:
            self.counts = np.zeros(hi - self._lo + 1, dtype=np.int64)
        if self.exact is None and self.moments.n == 0:
            self.exact = np.zeros(0)

    @property
    def n(self) -> int:
        return self.moments.n

    @property
    def mean(self) -> float:
        return self.moments.mean

    @property
    def se(self) -> float:
        return self.moments.se

    def update(self, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.size == 0:
            return
        if (v < 0).any():
            raise ValueError("Sketch holds non-negative values only")
        self.moments.update(v)
        self.vmax = max(self.vmax, float(v.max()))
        self._keep(v)
        small = v < self.floor
        self.zeros += int(small.sum())
        pos = np.clip(v[~small], None, self.ceil)
        idx = np.ceil(np.log(pos) / self._lg).astype(np.int64) - self._lo
        np.add.at(self.counts, np.clip(idx, 0, len(self.counts) - 1), 1)

    def _keep(self, v: np.ndarray) -> None:
        """Extend the exact buffer, or drop it for good once n passes exact_max."""
        if self.exact is None:
            return
        self.exact = np.concatenate([self.exact, v]) if self.n <= self.exact_max else None

    def merge(self, other: Sketch) -> Sketch:
        assert (self.alpha, self.floor, self.ceil) == (other.alpha, other.floor, other.ceil)
        both = None if self.exact is None or other.exact is None else np.concatenate([self.exact, other.exact])
        self.moments.merge(other.moments)
        self.exact = both if both is not None and self.n <= self.exact_max else None
        self.vmax = max(self.vmax, other.vmax)
        self.zeros += other.zeros
        self.counts += other.counts
        return self

    def quantile(self, q: float) -> float:
        """numpy's default (linear) quantile: exact while the buffer is kept, else within alpha."""
        if self.n == 0:
            return math.nan
        if self.exact is not None:
            return float(np.quantile(self.exact, q))
        rank = q * (self.n - 1)  # 0-based, fractional: numpy's "linear" method
        lo = math.floor(rank)
        a = self._order_statistic(lo)
        if rank == lo:
            return a
        b = self._order_statistic(lo + 1)
        return a + (rank - lo) * (b - a)

    def _order_statistic(self, k: int) -> float:
        """The k-th smallest value (0-based), within a relative error alpha."""
        if k < self.zeros:
            return 0.0
        cum = np.cumsum(self.counts)
        b = int(np.searchsorted(cum, k - self.zeros, side="right"))
        upper = self.gamma ** (b + self._lo)
        # The bucket (upper/gamma, upper]: its midpoint in relative terms.
        return min(2 * upper / (self.gamma + 1), self.vmax)

    def summary(self) -> dict:
        out = {"n": self.n, "mean": self.mean, "se": self.se}
        out.update({k: self.quantile(q) for k, q in QUANTILES.items()})
        out["max"] = self.vmax if self.n else math.nan
        return out


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
