"""Streaming reducers: quantiles against numpy, merging equals one pass."""

import numpy as np
import pytest

from driftscope.reducers import QUANTILES, ClassMass, Moments, Sketch, TokenMovers


@pytest.mark.parametrize("dist", ["lognormal", "with_zeros", "small"])
def test_sketch_quantiles_within_relative_error(dist):
    rng = np.random.default_rng(0)
    x = {"lognormal": rng.lognormal(-3, 2, 20_000),
         "with_zeros": np.concatenate([np.zeros(3000), rng.exponential(0.5, 7000)]),
         "small": rng.uniform(0, 1, 7)}[dist]
    s = Sketch()
    s.update(x)
    for name, q in QUANTILES.items():
        exact = np.quantile(x, q, method="lower")
        exact_hi = np.quantile(x, q, method="higher")
        got = s.quantile(q)
        assert exact * (1 - 0.011) <= got <= exact_hi * (1 + 0.011) or got == exact == 0, (name, got, exact)
    assert s.mean == pytest.approx(x.mean())
    assert s.se == pytest.approx(x.std(ddof=1) / np.sqrt(len(x)))
    assert s.summary()["max"] == x.max()


def test_sketch_memory_is_fixed_and_merge_equals_one_pass():
    rng = np.random.default_rng(1)
    x = rng.lognormal(0, 1, 10_000)
    one = Sketch()
    one.update(x)
    parts = [Sketch() for _ in range(4)]
    for part, chunk in zip(parts, np.array_split(x, 4)):
        part.update(chunk)
    merged = parts[0]
    for other in parts[1:]:
        merged.merge(other)
    assert merged.summary() == pytest.approx(one.summary())
    assert one.counts.nbytes == Sketch().counts.nbytes  # no growth with data


def test_moments_classmass_movers_merge():
    rng = np.random.default_rng(2)
    p, q = rng.dirichlet(np.ones(3), 50), rng.dirichlet(np.ones(3), 50)
    a, b, whole = ClassMass(("x", "y", "z")), ClassMass(("x", "y", "z")), ClassMass(("x", "y", "z"))
    a.update(p[:20], q[:20])
    b.update(p[20:], q[20:])
    whole.update(p, q)
    merged = a.merge(b).summary()
    for name in ("x", "y", "z"):
        assert merged[name] == pytest.approx(whole.summary()[name])
    assert whole.summary()["y"]["shift"] == pytest.approx((q[:, 1] - p[:, 1]).mean())
    m = Moments()
    m.update(np.array([1.0, 0.0, 1.0, 1.0]))
    assert (m.mean, m.se) == pytest.approx((0.75, np.std([1, 0, 1, 1], ddof=1) / 2))
    t = TokenMovers(4)
    t.update(np.array([0.4, 0.3, 0.2, 0.1]), np.array([0.1, 0.3, 0.2, 0.4]), 1)
    gain, lose = t.top(1)
    assert gain.tolist() == [3] and lose.tolist() == [0]
