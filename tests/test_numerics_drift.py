"""Non-finite logits and ids past the vocabulary width in the drift accumulator,
and the verdict that says what was left out."""

import json
import math

import numpy as np
import pytest
import torch

import driftscope
from driftscope.capture import Block
from driftscope.drift import DriftAccumulator
from driftscope.metrics import divergence as D
from driftscope.tokenclasses import build_classes

V = 12
TEXTS = ["<eos>", "1", "2", " 3", ",", ".", " ", "a", "b", " c", "dog", "cat"]


def accumulator(suites=("s1", "s2")):
    table = build_classes(TEXTS, {0})
    probe_suite = ["s1", "s1", "s2", "s2"]
    return DriftAccumulator("t", list(suites), probe_suite, table, V)


def block(gold, probe):
    n = len(gold)
    return Block(torch.arange(n), n, torch.tensor(gold), torch.zeros(n, dtype=torch.long),
                 torch.tensor(probe), torch.zeros(n, dtype=torch.long))


def logprobs(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(n, V, generator=g, dtype=torch.float64) * 2, -1)


def test_non_finite_rows_are_counted_per_scope_and_left_out():
    acc = accumulator()
    logp, logq = logprobs(4, 0), logprobs(4, 1)
    logq[1, 3] = float("nan")  # probe 1 (suite s1)
    logq[2] = float("inf")  # probe 2 (suite s2)
    extra = torch.full((4,), float("-inf"))
    acc.update(block([1, 2, 3, 4], [0, 1, 2, 3]), (logp, extra), (logq, extra))
    f = acc.figures()
    assert f["nonfinite_positions"] == 2 and f["nonfinite_probes"] == 2 and f["n_positions"] == 2
    assert f["suites"]["s1"]["nonfinite_positions"] == 1 and f["suites"]["s2"]["nonfinite_positions"] == 1
    keep = [0, 3]
    want = D.kl(logp[keep], logq[keep]).numpy()
    assert f["kl"]["mean"] == pytest.approx(want.mean(), rel=1e-12)
    assert f["kl"]["max"] == pytest.approx(want.max(), rel=1e-12)
    assert all(math.isfinite(c["shift"]) for c in f["classes"].values())


def test_gold_past_the_width_reads_nan_not_a_crash():
    """A gold id that no LM head scores (a token added without resizing) has no p."""
    acc = accumulator()
    logp, logq = logprobs(2, 2), logprobs(2, 3)
    extra = torch.full((2,), float("-inf"))
    acc.update(block([V + 1, 5], [0, 2]), (logp, extra), (logq, extra))
    rows = acc.rows[0]
    assert np.isnan(rows["p_gold"][0]) and np.isnan(rows["q_gold"][0])
    assert rows["p_gold"][1] == pytest.approx(float(logp[1, 5].exp()))


def test_class_table_and_width_must_agree():
    table = build_classes(TEXTS, {0})
    with pytest.raises(ValueError, match="vocabulary width"):
        DriftAccumulator("t", ["s1"], ["s1"], table, V - 1)


def test_verdict_reason_says_positions_were_left_out():
    from driftscope.verdict import Thresholds, accuracy_figures, sentence

    base = np.array([1] * 60 + [1] * 30 + [0] * 10, dtype=bool)
    tuned = np.array([1] * 60 + [0] * 30 + [0] * 10, dtype=bool)
    f = accuracy_figures(base, tuned, tuned, Thresholds(bootstrap=200), nonfinite=3)
    assert f["verdict"] == "knowledge-loss"
    assert "3 scored positions had non-finite logits and were left out" in f["verdict_reason"]
    f["nonfinite_positions"] = 3
    assert "3 scored positions had non-finite logits" in sentence(f)
    clean = accuracy_figures(base, tuned, tuned, Thresholds(bootstrap=200))
    assert "non-finite" not in clean["verdict_reason"] and "non-finite" not in sentence(clean)
    assert "non-finite" in accuracy_figures([], [], [], Thresholds(), nonfinite=2)["verdict_reason"]


def test_compare_with_non_finite_logits_says_so_in_the_verdict(family, tmp_path):
    """End to end: a tuned model whose logits are NaN wherever the token "zero" came
    before; the figures use the finite positions and the verdict says what was left out."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(family["tuned"])
    broken = tmp_path / "nan-model"
    model = AutoModelForCausalLM.from_pretrained(family["tuned"])
    with torch.no_grad():
        model.get_input_embeddings().weight[tok("zero")["input_ids"][0]] = float("nan")
    model.save_pretrained(broken)
    tok.save_pretrained(broken)
    suite = tmp_path / "nan.jsonl"
    suite.write_text("".join(json.dumps(x) + "\n" for x in [
        {"id": "poisoned", "prompt": "zero one two", "answer": "three"},
        {"id": "clean", "prompt": "The capital of France is", "answer": "Paris"},
        {"id": "clean2", "prompt": "Q: What is 2 plus 3?\nA:", "answer": "5"},
    ]))
    r = driftscope.compare(family["base"], [broken], [str(suite)], out=None, weights=False, layers=False)
    f = r.figures()
    assert f["nonfinite_positions"] > 0 and f["nonfinite_probes"] == 1
    assert math.isfinite(f["kl"]["mean"]) and math.isfinite(f["kl"]["p99"])
    assert "had non-finite logits and were left out" in f["verdict_reason"]
    assert "non-finite logits" in f["verdict_sentence"]
    s = f["suites"]["nan"]
    assert s["nonfinite_positions"] == f["nonfinite_positions"] and "non-finite" in s["verdict_reason"]
