"""Scoring against a top-k summary of the base: exact figures equal the paired
path's, and kl stays within its stated bound on every row."""

import math

import pytest
import torch
from torch.distributions import Categorical, kl_divergence

from driftscope.metrics import divergence as D
from driftscope.metrics.topk import (cached_position_figures, default_k, row_offsets, summarise_base, summary_nbytes,
                                     tail_sample)

EXACT = ("entropy_base", "entropy_tuned", "base_top1", "tuned_top1", "top1_agree", "base_top1_rank",
         "p_groups", "q_groups", "p_gold", "q_gold")
N = 24


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one thread is fastest, and does not fight other processes for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def base_rows(vocab: int, temperature: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(N, vocab, generator=g, dtype=torch.float64) * temperature, -1)


def tuned_rows(logp: torch.Tensor, family: str, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(logp.shape, generator=g, dtype=torch.float64)
    if family == "noise":
        return torch.log_softmax(logp + 0.3 * noise, -1)
    if family == "temperature":
        return torch.log_softmax(logp / 1.3, -1)
    if family == "lowrank":
        w = torch.randn(logp.shape[1], 8, generator=g, dtype=torch.float64)
        return torch.log_softmax(logp + 0.3 * noise[:, :8] @ w.T, -1)
    raise ValueError(family)


def groups_for(vocab: int) -> tuple[torch.Tensor, slice]:
    """(V, G): 3 overlapping membership columns, then a 4-class partition."""
    g = torch.Generator().manual_seed(7)
    member = (torch.rand(vocab, 3, generator=g) < 0.2).double()
    part = torch.nn.functional.one_hot(torch.randint(0, 4, (vocab,), generator=g), 4).double()
    return torch.cat([member, part], 1), slice(3, 7)


def gold_for(vocab: int) -> torch.Tensor:
    gold = torch.randint(0, vocab, (N,), generator=torch.Generator().manual_seed(3))
    gold[:3] = torch.tensor([-1, vocab, vocab + 5])  # no gold; ids beyond the head
    return gold


def paired(logp, logq, groups, gold):
    """What drift.py takes from position_figures, by name."""
    f = D.position_figures(logp, logq, groups)
    has = (gold >= 0) & (gold < logp.shape[1])
    g = torch.where(has, gold, 0)[:, None]
    f["p_gold"] = torch.where(has, f["p"].gather(1, g).squeeze(1), math.nan)
    f["q_gold"] = torch.where(has, f["q"].gather(1, g).squeeze(1), math.nan)
    return f


def score(logp, logq, k, partition=True, dtype=torch.float64):
    groups, part = groups_for(logp.shape[1])
    gold = gold_for(logp.shape[1])
    summary = summarise_base(logp, k, groups, gold, dtype=dtype)
    cached = cached_position_figures(summary, logq, groups, gold, part if partition else None)
    return cached, paired(logp, logq, groups, gold), part


@pytest.mark.parametrize("temperature", [0.5, 3.0, 12.0])
@pytest.mark.parametrize("vocab,k", [(1000, 1), (1000, 16), (3000, 100), (3000, 3000)])
def test_exact_figures_equal_the_paired_path(temperature, vocab, k):
    logp = base_rows(vocab, temperature)
    cached, full, part = score(logp, tuned_rows(logp, "noise"), k)
    for name in EXACT:
        torch.testing.assert_close(cached[name].double(), full[name].double(), rtol=0, atol=1e-12, equal_nan=True, msg=name)
    between = D.between_class(cached["p_groups"][:, part], cached["q_groups"][:, part])
    torch.testing.assert_close(between, D.between_class(full["p_groups"][:, part], full["q_groups"][:, part]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("family", ["noise", "temperature", "lowrank"])
@pytest.mark.parametrize("temperature", [0.5, 3.0, 12.0])
@pytest.mark.parametrize("k", [4, 32, 256])
@pytest.mark.parametrize("partition", [True, False])
def test_kl_error_within_its_bound_on_every_row(family, temperature, k, partition):
    logp = base_rows(2000, temperature, seed=k)
    for dtype in (torch.float64, torch.float32):  # float32: the stored top-k's rounding is in the bound
        cached, full, _ = score(logp, tuned_rows(logp, family), k, partition, dtype)
        err = (cached["kl"] - full["kl"]).abs()
        assert torch.all(err <= cached["kl_bound"]), (err - cached["kl_bound"]).max()
        assert torch.all(cached["js"] <= math.log(2)) and torch.all(cached["kl_reverse"] >= 0)


def test_kl_against_torch_distributions():
    logp = base_rows(1500, 3.0)
    logq = tuned_rows(logp, "lowrank")
    truth = kl_divergence(Categorical(logits=logp), Categorical(logits=logq))
    full_k, _, _ = score(logp, logq, 1500)
    torch.testing.assert_close(full_k["kl"], truth, rtol=1e-10, atol=1e-12)
    cached, _, _ = score(logp, logq, 64)
    assert torch.all((cached["kl"] - truth).abs() <= cached["kl_bound"])
    assert (cached["kl"] - truth).abs().mean() < 0.05 * truth.mean()  # the tail model, not only the bound


def test_bound_shrinks_as_k_grows_and_vanishes_at_full_vocabulary():
    logp = base_rows(2000, 3.0)
    logq = tuned_rows(logp, "noise")
    bounds = [score(logp, logq, k)[0]["kl_bound"] for k in (8, 32, 128, 512)]
    for smaller, larger in zip(bounds[1:], bounds):
        assert smaller.mean() < 0.8 * larger.mean()
        assert torch.all(smaller <= larger + 1e-9)
    cached, full, _ = score(logp, logq, 2000)
    assert cached["kl_bound"].max() < 1e-10
    for name in ("kl", "kl_reverse", "js"):
        torch.testing.assert_close(cached[name], full[name], rtol=0, atol=1e-12, msg=name)


@pytest.mark.parametrize("k", [1, 16, 200])
def test_a_shift_of_class_masses_is_exact(k):
    """q / p constant within each partition class: nothing about the tail is unknown."""
    logp = base_rows(2000, 3.0)
    groups, part = groups_for(2000)
    shift = groups[:, part] @ torch.tensor([0.0, 1.5, -0.7, 0.3], dtype=torch.float64)
    cached, full, _ = score(logp, torch.log_softmax(logp + shift, -1), k)
    for name in ("kl", "kl_reverse", "js"):
        torch.testing.assert_close(cached[name], full[name], rtol=1e-9, atol=1e-12, msg=name)


def test_identical_models_give_zero():
    logp = base_rows(1000, 3.0)
    cached, _, _ = score(logp, logp, 16)
    for name in ("kl", "kl_reverse", "js"):
        assert cached[name].abs().max() < 1e-12, name
    assert torch.all(cached["top1_agree"] == 1) and torch.all(cached["base_top1_rank"] == 1)


def test_summary_shapes_and_dtypes():
    logp = base_rows(500, 3.0)
    groups, _ = groups_for(500)
    s = summarise_base(logp, 32, groups, gold_for(500))
    assert s["top_ids"].shape == (N, 32) and s["top_ids"].dtype == torch.int32
    assert s["top_logp"].dtype == torch.float32 and torch.all(s["top_logp"][:, :-1] >= s["top_logp"][:, 1:])
    assert s["groups"].shape == s["tail_groups"].shape == (N, groups.shape[1])
    torch.testing.assert_close(s["tail_mass"] + s["top_logp"].double().exp().sum(-1), torch.ones(N, dtype=torch.float64), rtol=0, atol=1e-6)
    assert sum(v.nbytes for v in s.values()) == summary_nbytes(N, 32, groups.shape[1])


def test_a_row_that_is_not_finite_is_flagged_and_summarised_as_uniform():
    logp = base_rows(200, 3.0)
    logp[2, 5] = math.nan
    logp[4, :] = -math.inf
    s = summarise_base(logp, 8)
    assert s["finite"].tolist() == [i not in (2, 4) for i in range(N)]
    assert torch.isfinite(s["entropy"]).all() and abs(s["entropy"][2].item() - math.log(200)) < 1e-12


def test_the_tail_sample_draws_each_id_in_proportion_to_its_tail_mass():
    """Averaged over the sampling offset u, each id is drawn s r_v times: the sample is unbiased."""
    logp = base_rows(50, 2.0)[:2]
    p = logp.exp()
    top = logp.topk(5, -1).indices
    p_tail = p.scatter(1, top, 0.0)
    tail_mass = p_tail.sum(-1)
    grid = 4000
    counts = torch.zeros_like(p)
    for u in (torch.arange(grid, dtype=torch.float64) + 0.5) / grid:
        ids = tail_sample(p_tail, tail_mass, 7, torch.full((2,), float(u)))
        counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=torch.float64))
    torch.testing.assert_close(counts / grid, 7 * p_tail / tail_mass[:, None], rtol=0, atol=2e-3)
    assert counts.gather(1, top).sum() == 0  # never a top-k id


def test_the_sampled_tail_estimates_kl_without_bias_where_the_tail_model_misses():
    """A fine-tune that reshuffles the tail (log q/p unrelated to log p): the tail model
    (no sample) misses KL by a bias; the sampled estimate, averaged over offsets,
    equals the exact KL (torch.distributions) to its Monte Carlo error."""
    logp = base_rows(4000, 2.5)
    g = torch.Generator().manual_seed(5)
    logq = torch.log_softmax(logp + 1.5 * torch.randn(logp.shape, generator=g, dtype=torch.float64), -1)
    exact = kl_divergence(Categorical(logits=logp), Categorical(logits=logq))
    groups, part = groups_for(4000)
    model = cached_position_figures(summarise_base(logp, 16, groups, samples=0), logq, groups, partition=part)["kl"]
    runs = [cached_position_figures(summarise_base(logp, 16, groups, samples=16, offsets=torch.full((N,), (i + 0.5) / 40)),
                                    logq, groups, partition=part) for i in range(40)]
    sampled = torch.stack([r["kl"] for r in runs]).mean(0)
    assert all(torch.all((r["kl"] - exact).abs() <= r["kl_bound"]) for r in runs)  # each within its bound
    assert abs(sampled.mean() / exact.mean() - 1) < 0.005
    assert abs(model.mean() / exact.mean() - 1) > 3 * abs(sampled.mean() / exact.mean() - 1)


def test_the_offset_of_a_row_depends_on_where_it_is_alone():
    a = row_offsets(torch.tensor([0, 3, 3, 7]), torch.tensor([0, 0, 2, 1]))
    b = row_offsets(torch.tensor([3, 7]), torch.tensor([2, 1]))
    assert torch.equal(a[2:], b) and torch.all((a >= 0) & (a < 1)) and len(set(a.tolist())) == 4


def test_default_k_keeps_the_cache_within_one_percent_of_a_uint16_file():
    assert default_k(49152) == 32 and default_k(262144) == 256 and default_k(32000) == 16
    for vocab in (32000, 49152, 128256, 262144):
        assert summary_nbytes(1, default_k(vocab), 10) + 16 <= 0.01 * 2 * vocab
    assert default_k(100) == 16 and default_k(10) == 10
