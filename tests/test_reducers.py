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


# -- numerics (issue 13) ---------------------------------------------------------


def _large_mean_tiny_spread():
    return 1e6 + np.random.default_rng(3).normal(0, 1e-3, 5000)


@pytest.mark.parametrize("reducer", [Moments, Sketch])
def test_variance_is_exact_with_a_large_mean_and_tiny_spread(reducer):
    """sum(x^2) - n mean^2 loses every digit here (1e12 against 1e-6); Welford/Chan does not."""
    x = _large_mean_tiny_spread()
    r = reducer()
    for chunk in np.array_split(x, 7):
        r.update(chunk)
    assert r.mean == pytest.approx(x.mean(), rel=1e-15)
    assert r.se == pytest.approx(x.std(ddof=1) / np.sqrt(len(x)), rel=1e-6)
    halves = [reducer(), reducer()]
    halves[0].update(x[:1234])
    halves[1].update(x[1234:])
    merged = halves[0].merge(halves[1])
    assert merged.n == r.n
    assert merged.mean == pytest.approx(r.mean, rel=1e-15)
    assert merged.se == pytest.approx(r.se, rel=1e-9)


def test_moments_merge_with_empty_and_single_values():
    a, b = Moments(), Moments()
    a.update(np.array([2.0]))
    assert np.isnan(a.se) and a.mean == 2.0
    a.merge(b)  # empty: nothing changes
    assert (a.n, a.mean) == (1, 2.0)
    b.merge(a)
    b.update(np.array([4.0, 6.0]))
    assert b.mean == pytest.approx(4.0) and b.var == pytest.approx(4.0)


def test_small_run_quantiles_are_numpys():
    """The run that read p90 = p95 = p99 = p99.9 = 0.654 (the 5th of 6 values)
    while max was 6.43 and the mean 1.32."""
    x = np.array([0.05, 0.1, 0.2, 0.5, 0.654, 6.43])
    s = Sketch()
    s.update(x)
    got = s.summary()
    for name, q in QUANTILES.items():
        assert got[name] == pytest.approx(np.quantile(x, q), rel=1e-12), name
    assert got["p99"] == pytest.approx(6.14, abs=0.01)
    assert got["p99"] >= got["mean"] and got["p90"] > 0.654


def _sample(n, rng):
    x = rng.lognormal(-3, 2, n)
    x[rng.random(n) < 0.1] = 0.0  # exact zeros (identical distributions) happen
    return x


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6, 7, 10, 37, 100, 999, 4096, 4097, 5000, 10_000])
def test_quantiles_agree_with_numpy_for_every_size(n):
    rng = np.random.default_rng(n)
    x = _sample(n, rng)
    s = Sketch()
    for chunk in np.array_split(x, min(n, 5)):
        s.update(chunk)
    exact = n <= s.exact_max
    assert (s.exact is not None) == exact
    for q in QUANTILES.values():
        want, got = np.quantile(x, q), s.quantile(q)
        if exact:
            assert got == pytest.approx(want, rel=1e-12, abs=0)
        else:  # the documented bound: within alpha of numpy's linear quantile
            assert abs(got - want) <= s.alpha * want * (1 + 1e-9) + 1e-12, (q, got, want)


def test_sketch_memory_is_bounded_past_the_exact_size():
    s = Sketch(exact_max=100)
    s.update(np.ones(100))
    assert s.exact is not None and len(s.exact) == 100
    s.update(np.ones(1))
    assert s.exact is None  # dropped for good: memory is the fixed histogram
    s.update(np.ones(10))
    assert s.exact is None and s.n == 111


@pytest.mark.parametrize("sizes", [(3, 4), (60, 60), (2000, 10)])
def test_merge_keeps_both_states_right(sizes):
    """exact + exact stays exact while small; past the exact size, and sketch +
    exact, the merged sketch equals one pass over all the values."""
    rng = np.random.default_rng(sum(sizes))
    parts = [_sample(k, rng) for k in sizes]
    one, a, b = Sketch(exact_max=100), Sketch(exact_max=100), Sketch(exact_max=100)
    one.update(np.concatenate(parts))
    a.update(parts[0])
    b.update(parts[1])
    merged = a.merge(b)
    assert (merged.exact is None) == (sum(sizes) > 100) == (one.exact is None)
    assert merged.summary() == pytest.approx(one.summary(), rel=1e-12)
