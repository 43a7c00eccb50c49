"""Divergences against scipy / torch.distributions, and their properties."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr
from scipy.stats import entropy as sp_entropy
from torch.distributions import Categorical, kl_divergence

from driftscope.metrics import divergence as D


def random_logprobs(n=64, v=50, seed=0, peaked=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(n, v, generator=g, dtype=torch.float64) * peaked, -1)


def test_kl_matches_torch_distributions_and_scipy():
    p, q = random_logprobs(seed=1), random_logprobs(seed=2)
    ours = D.kl(p, q)
    ref = kl_divergence(Categorical(logits=p), Categorical(logits=q))
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    sp = rel_entr(p.exp().numpy(), q.exp().numpy()).sum(-1)
    np.testing.assert_allclose(ours.numpy(), sp, rtol=1e-9)


def test_js_and_entropy_match_scipy():
    p, q = random_logprobs(seed=3), random_logprobs(seed=4)
    js_ref = jensenshannon(p.exp().numpy(), q.exp().numpy(), axis=-1) ** 2  # scipy returns the distance
    np.testing.assert_allclose(D.js(p, q).numpy(), js_ref, rtol=1e-8)
    np.testing.assert_allclose(D.entropy(p).numpy(), sp_entropy(p.exp().numpy(), axis=-1), rtol=1e-10)
    torch.testing.assert_close(D.entropy(p), Categorical(logits=p).entropy())


def test_properties():
    p, q = random_logprobs(seed=5, peaked=10.0), random_logprobs(seed=6, peaked=10.0)
    assert torch.all(D.kl(p, p) == 0)
    assert torch.all(D.kl(p, q) >= 0)
    js = D.js(p, q)
    assert torch.all((js >= 0) & (js <= math.log(2) + 1e-12))
    torch.testing.assert_close(D.js(p, q), D.js(q, p))
    # Disjoint supports reach the JS bound ln 2.
    a = torch.log(torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    b = torch.log(torch.tensor([[0.0, 1.0]], dtype=torch.float64))
    assert D.js(a, b).item() == pytest.approx(math.log(2))
    assert D.entropy(a).item() == 0.0


def test_rank_and_agreement():
    q = torch.log(torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]]))
    assert D.rank_under(q, torch.tensor([2, 0])).tolist() == [2.0, 1.0]
    p = torch.log(torch.tensor([[0.2, 0.7, 0.1], [0.1, 0.1, 0.8]]))
    assert D.top1_agree(p, q).tolist() == [1.0, 0.0]


def test_kl_split_is_the_chain_rule():
    p, q = random_logprobs(seed=7, v=12), random_logprobs(seed=8, v=12)
    cls = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 4])
    part = torch.nn.functional.one_hot(cls, 5).to(torch.float64)
    between, within = D.kl_split(p, q, part)
    torch.testing.assert_close(between + within, D.kl(p, q))
    # The between part by hand: KL of the class marginals.
    pc, qc = p.exp() @ part, q.exp() @ part
    torch.testing.assert_close(between, kl_divergence(Categorical(probs=pc), Categorical(probs=qc)))
    # The within part by hand: sum_c p(c) KL(p(.|c) || q(.|c)).
    manual = torch.zeros(p.shape[0], dtype=torch.float64)
    for c in range(5):
        m = cls == c
        if m.sum() > 1:
            pcond = torch.log_softmax(p[:, m], -1)
            qcond = torch.log_softmax(q[:, m], -1)
            manual += pc[:, c] * D.kl(pcond, qcond)
    torch.testing.assert_close(within, manual)
    # A pure output-type shift (rescale whole classes) is all "between".
    shift = torch.log_softmax(p + torch.tensor([2.0, 0, 0, 0, 0], dtype=torch.float64)[cls], -1)
    b2, w2 = D.kl_split(p, shift, part)
    assert torch.all(w2 < 1e-12) and torch.all(b2 > 0)


def test_position_figures_equal_the_single_functions():
    """The fused pass the pipeline runs gives what each function (checked above
    against scipy and torch.distributions) gives on its own, also for identical
    rows and for probabilities that underflow to 0."""
    p, q = random_logprobs(seed=9, v=300, peaked=300.0), random_logprobs(seed=10, v=300, peaked=300.0)
    assert (p.exp() == 0).any()  # some probabilities underflow: the 0 * log 0 = 0 case
    p[0], q[1] = q[0], p[1]
    cls = torch.arange(300) % 4
    groups = torch.nn.functional.one_hot(cls, 4).to(torch.float64)
    f = D.position_figures(p, q, groups)
    for key, ref in [("kl", D.kl(p, q)), ("kl_reverse", D.kl(q, p)), ("js", D.js(p, q)),
                     ("entropy_base", D.entropy(p)), ("entropy_tuned", D.entropy(q)),
                     ("top1_agree", D.top1_agree(p, q)), ("base_top1_rank", D.rank_under(q, p.argmax(-1))),
                     ("p_groups", D.class_masses(p, groups)), ("q_groups", D.class_masses(q, groups))]:
        torch.testing.assert_close(f[key], ref, rtol=1e-9, atol=1e-12, msg=key)
    assert f["kl"][0] == 0 and f["kl_reverse"][1] == 0 and f["js"][0] == 0
    between, within = D.kl_split(p, q, groups)
    torch.testing.assert_close(D.between_class(f["p_groups"], f["q_groups"]), between)
