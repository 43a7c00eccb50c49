"""Accuracy statistics and the verdict rules on constructed correctness."""

import math

import numpy as np
import pytest
from scipy import stats

from driftscope.answers import is_match, normalise
from driftscope.correlations import correlation
from driftscope.verdict import Thresholds, accuracy_figures, mcnemar_exact, sentence

TH = Thresholds(bootstrap=300)


def pairs(n_both, n_lost, n_gained, n_neither):
    base = np.array([1] * n_both + [1] * n_lost + [0] * n_gained + [0] * n_neither, dtype=bool)
    tuned = np.array([1] * n_both + [0] * n_lost + [1] * n_gained + [0] * n_neither, dtype=bool)
    return base, tuned


def test_mcnemar_exact_is_a_binomial_test_on_discordant_pairs():
    base, tuned = pairs(50, 12, 3, 35)
    assert mcnemar_exact(base, tuned) == pytest.approx(stats.binomtest(12, 15, 0.5).pvalue)
    assert mcnemar_exact(*pairs(10, 0, 0, 5)) == 1.0


def test_output_bias_when_correction_recovers_the_drop():
    base, tuned = pairs(60, 30, 0, 10)
    corrected = base.copy()  # every lost item comes back
    f = accuracy_figures(base, tuned, corrected, TH)
    assert f["verdict"] == "output-bias" and f["recovered"] == pytest.approx(1.0)
    assert f["accuracy_change"] == pytest.approx(-0.3)
    assert "free-answer accuracy fell 30.0 points (McNemar p=1.9e-09); 100% returns" in sentence(f)


def test_knowledge_loss_when_nothing_comes_back():
    base, tuned = pairs(60, 30, 0, 10)
    f = accuracy_figures(base, tuned, tuned.copy(), TH)
    assert f["verdict"] == "knowledge-loss" and f["recovered"] == 0
    assert "lost knowledge" in sentence(f)


def test_mixed_between_the_thresholds():
    base, tuned = pairs(60, 30, 0, 10)
    corrected = tuned.copy()
    corrected[60:70] = True  # a third of the 30 lost items return
    f = accuracy_figures(base, tuned, corrected, TH)
    assert f["verdict"] == "mixed" and f["recovered"] == pytest.approx(1 / 3)


def test_lost_items_right_again_after_the_correction_mean_output_bias():
    """The correction brings 25 of 30 lost items back while breaking 15 others:
    recovery is a third, but most of what was lost is answered right again."""
    base, tuned = pairs(60, 30, 0, 10)
    corrected = tuned.copy()
    corrected[60:85] = True
    corrected[:15] = False
    f = accuracy_figures(base, tuned, corrected, TH)
    assert f["recovered"] == pytest.approx(1 / 3) and f["explained"] == pytest.approx(25 / 30)
    assert f["verdict"] == "output-bias"
    assert "83% of the lost items are answered right" in sentence(f)


def test_choice_items_are_named_and_their_free_answers_are_secondary():
    """Choice items count by their choice; the free answers of the same items
    are reported beside, and do not decide."""
    base, tuned = pairs(60, 30, 0, 10)
    is_choice = np.zeros(100, dtype=bool)
    is_choice[:80] = True
    free = (np.ones(100, dtype=bool), np.ones(100, dtype=bool))  # the free answers held
    f = accuracy_figures(base, tuned, tuned.copy(), TH, choice=is_choice, free=free)
    assert f["verdict"] == "knowledge-loss" and f["n_choice_items"] == 80
    assert f["free_accuracy_change"] == 0 and f["free_mcnemar_p"] == 1.0
    assert f["choice_accuracy_change"] == pytest.approx(-20 / 80)  # 20 of the 30 lost items are choice items
    assert "accuracy (80 choice items by log-likelihood, 20 by free answer) fell 30.0 points" in sentence(f)
    assert "choice accuracy moved while free answers held" in f["verdict_reason"]


def test_stable_and_inconclusive_depend_on_the_number_of_items():
    big = pairs(400, 3, 2, 95)
    f = accuracy_figures(*big, big[1], TH)
    assert f["verdict"] == "stable" and math.isnan(f["recovered"])
    small = pairs(3, 2, 0, 1)  # a 33-point drop, but six items cannot show it
    f = accuracy_figures(*small, small[1], TH)
    assert f["verdict"] == "inconclusive" and "too few items (6)" in f["verdict_reason"]
    assert accuracy_figures([], [], [], TH)["verdict"] == "no-answers"


def test_thresholds_are_settable():
    base, tuned = pairs(60, 30, 0, 10)
    corrected = tuned.copy()
    corrected[60:75] = True  # half comes back
    assert accuracy_figures(base, tuned, corrected, TH)["verdict"] == "output-bias"
    strict = Thresholds(bias_recovery=0.9, bootstrap=300)
    assert accuracy_figures(base, tuned, corrected, strict)["verdict"] == "mixed"
    assert Thresholds.from_pairs({"alpha": "0.01"}).alpha == 0.01
    from driftscope.errors import DriftscopeError
    with pytest.raises(DriftscopeError, match="unknown threshold"):
        Thresholds.from_pairs({"nope": "1"})


def test_correlation_matches_scipy_with_intervals():
    rng = np.random.default_rng(0)
    x = rng.normal(size=60)
    y = 0.7 * x + rng.normal(scale=0.5, size=60)
    c = correlation(x, y, n_boot=300)
    assert c["pearson"] == pytest.approx(stats.pearsonr(x, y).statistic)
    assert c["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic)
    assert c["pearson_ci"][0] < c["pearson"] < c["pearson_ci"][1]
    assert math.isnan(correlation([1, 2], [3, 4])["pearson"])  # too few points: no figure, no guess


@pytest.mark.parametrize("generated, gold, ok", [
    (" Paris.", "Paris", True), (" paris is the capital", "Paris", True), (" 10", "1", False),
    ("151\n>>> 2", "151", True), (" Lyon", "Paris", False), ("  yes!", "yes", True),
])
def test_normalised_exact_match(generated, gold, ok):
    assert is_match(generated, gold) is ok
    assert normalise("  A  B. ") == "a b"


# -- numerics (issue 13) ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["continuous", "ties"])
def test_correlation_bootstrap_is_scipys_paired_percentile_bootstrap(kind):
    """Same resamples as scipy.stats.bootstrap(paired=True), scored vectorised: same intervals."""
    from driftscope.correlations import BOOT_BATCH

    rng = np.random.default_rng(1)
    x = rng.normal(size=80)
    y = 0.5 * x + rng.normal(size=80)
    if kind == "ties":  # accuracy changes are -1, 0, +1: heavy ties
        y = np.sign(np.round(y))
    c = correlation(x, y, n_boot=250, seed=7)
    for name, fn in (("pearson", stats.pearsonr), ("spearman", stats.spearmanr)):
        ref = stats.bootstrap((x, y), lambda a, b: fn(a, b).statistic, paired=True, vectorized=False,
                              n_resamples=250, batch=BOOT_BATCH, method="percentile", random_state=np.random.default_rng(7))
        ci = ref.confidence_interval
        assert c[f"{name}_ci"] == pytest.approx([ci.low, ci.high], rel=1e-9), name
    assert c["n"] == 80 and c["n_boot"] == 250 and c["degenerate_resamples"] == 0


def test_degenerate_resamples_are_counted_not_dropped():
    """One changed item in 20: many resamples hold no change at all. Dropping them
    would condition the interval on luck; the interval is undefined and says why."""
    x = np.arange(20.0)
    y = np.zeros(20)
    y[3] = 1.0
    c = correlation(x, y, n_boot=200)
    assert c["n"] == 20 and c["degenerate_resamples"] > 0
    assert all(math.isnan(v) for v in c["pearson_ci"] + c["spearman_ci"])
    assert not math.isnan(c["spearman"])  # the point estimate on the data itself stands
