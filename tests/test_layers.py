"""Where the drift lives: layer and component figures on tiny random models (offline)."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
import torch
import transformers as tf
from torch import nn

import tiny
from driftscope.architectures import discover
from driftscope.capture import NEXT, Encoded, capture, collate, score
from driftscope.layers import LayerAccumulator, _head_weight, entry_point, try_layer_accumulator, weight_vs_function
from driftscope.metrics import activations as A
from driftscope.metrics import divergence as D
from driftscope.metrics import heads as H
from driftscope.tokenclasses import build_classes
from driftscope.weights import weight_table

V = 64
CLASSES = build_classes([str(i) if 2 <= i < 12 else f"w{i}" for i in range(V)], {0, 1})  # ids 2..11 numeric
MAX_PARAMS = 200_000


def _tiny(config) -> nn.Module:
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config).eval()
    n = sum(p.numel() for p in model.parameters())
    assert n < MAX_PARAMS, f"tiny model is not tiny: {n} parameters"
    return model


DEC = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
           pad_token_id=1, eos_token_id=0, bos_token_id=None)
BUILD = {
    "llama": lambda: tiny.tiny_llama(V, layers=4).eval(),
    "gpt2": lambda: _tiny(tf.GPT2Config(vocab_size=V, n_embd=32, n_layer=3, n_head=4, n_positions=64,
                                        pad_token_id=1, eos_token_id=0, bos_token_id=0)),
    "gpt_neox": lambda: _tiny(tf.GPTNeoXConfig(**DEC)),
    # Gemma 2 normalises each component's output before the residual add, and softcaps the logits.
    "gemma2": lambda: _tiny(tf.Gemma2Config(num_key_value_heads=2, head_dim=8, final_logit_softcapping=5.0, **DEC)),
}


def batches(n_batches: int = 2, size: int = 6, seed: int = 0):
    """Random probes: prompts of 3-6 tokens, answers of 0-3 tokens (0: next position only)."""
    g = torch.Generator().manual_seed(seed)
    out, index = [], 0
    for _ in range(n_batches):
        items = []
        for _ in range(size):
            n_prompt, n_answer = 3 + index % 4, index % 4
            ids = torch.randint(2, V, (n_prompt + n_answer,), generator=g).tolist()
            items.append(Encoded(index, tuple(ids), n_prompt, n_answer, 0))
            index += 1
        out.append(collate(items, pad_id=1))
    return out


def perturb(model: nn.Module, scale: float = 0.05, seed: int = 1) -> nn.Module:
    """A full "fine-tune": every parameter moved by a small relative amount."""
    tuned = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(scale * p.abs().mean() * torch.randn(p.shape, generator=g))
    return tuned


@torch.inference_mode()
def model_next_logprobs(model, data) -> torch.Tensor:
    """The model's own logits (its whole forward, no hooks) at next positions, float64."""
    out = []
    for batch in data:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        nxt = batch.kind == NEXT
        out.append(torch.log_softmax(logits[batch.rows[nxt], batch.cols[nxt], :V].double(), -1))
    return torch.cat(out)


def run(base, tuned, data, **kw):
    """The orchestrator's pattern: one capture per model, base then tuned, then update.
    Returns the accumulator and the pipeline's (logp, logq) at next positions."""
    acc = LayerAccumulator("t", base, tuned, CLASSES, V, **kw)
    ps, qs = [], []
    with capture(base, acc.modules("base")) as sb, acc.own_hooks(sb), capture(tuned, acc.modules("tuned")) as st:
        for batch in data:
            logp, _ = score(base, sb, batch, V)
            logq, _ = score(tuned, st, batch, V)
            acc.update(batch, sb, st)
            nxt = batch.kind == NEXT
            ps.append(logp[nxt].double())
            qs.append(logq[nxt].double())
    return acc, torch.cat(ps), torch.cat(qs)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models():
    return {name: build() for name, build in BUILD.items()}


# -- pure maths ------------------------------------------------------------


def direct_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019) on whole matrices:
    ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F), columns centred."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    return float((yc.T @ xc).norm() ** 2 / ((xc.T @ xc).norm() * (yc.T @ yc).norm()))


def streamed(x, y, chunks=5) -> float:
    s = A.CKAStats(x.shape[1])
    for xa, ya in zip(x.chunk(chunks), y.chunk(chunks)):
        s.update(xa, ya)
    return s.value()


def test_streaming_cka_equals_direct_and_is_invariant():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=g, dtype=torch.float64) + 3.0  # a mean offset: centring matters
    y = x @ torch.randn(16, 16, generator=g, dtype=torch.float64) + 0.5 * torch.randn(200, 16, generator=g, dtype=torch.float64)
    exact = direct_cka(x, y)
    assert 0.05 < exact < 0.99
    assert streamed(x, y) == pytest.approx(exact, abs=1e-12)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64))
    assert streamed(x, 3.7 * y @ q + 11.0) == pytest.approx(exact, abs=1e-12)  # orthogonal, isotropic scale, shift
    assert streamed(x, x) == pytest.approx(1.0, abs=1e-12)
    one, a, b = A.CKAStats(16), A.CKAStats(16), A.CKAStats(16)
    one.update(x, y)
    a.update(x[:70], y[:70])
    b.update(x[70:], y[70:])
    assert a.merge(b).value() == pytest.approx(one.value(), abs=1e-12)
    assert math.isnan(A.CKAStats(16).value())


def test_projected_cka_is_a_debiased_estimate():
    """d > 1024: a fixed Gaussian sketch to 512 dims. Projection alone biases CKA
    down on high-rank data; the stats' correction brings it back near exact."""
    g = torch.Generator().manual_seed(1)
    d = 1100
    x = torch.randn(300, d, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, d, dtype=torch.float64)  # flat spectrum: worst case
    y = x + 2.0 * torch.randn(300, d, generator=g, dtype=torch.float64)
    p = A.random_projection(d, 512, seed=0)
    assert torch.equal(p, A.random_projection(d, 512, seed=0))
    exact = direct_cka(x, y)
    assert direct_cka(x @ p, y @ p) < exact - 0.05  # the naive sketch is biased
    s = A.CKAStats(d, p)
    for xa, ya in zip(x.chunk(4), y.chunk(4)):
        s.update(xa, ya)
    assert s.value() == pytest.approx(exact, abs=0.02)
    same = A.CKAStats(d, p)
    same.update(x, x)
    assert same.value() == pytest.approx(1.0, abs=1e-9)


def _heads(dtype, scale):
    g = torch.Generator().manual_seed(2)
    wb = torch.randn(V, 8, generator=g, dtype=torch.float64) + 0.3  # rows far from centred
    wt = wb + scale * torch.randn(V, 8, generator=g, dtype=torch.float64)
    cb = torch.randn(5, 8, generator=g, dtype=torch.float64)
    ct = cb + 0.2 * torch.randn(5, 8, generator=g, dtype=torch.float64)
    return wb.to(dtype), wt.to(dtype), cb, ct


def _direct(wb, wt, cb, ct):
    """The (N, V) centred logit contributions, in float64: the figures' definition."""
    wb, wt = wb.double(), wt.double()
    return cb @ (wb - wb.mean(0)).T, ct @ (wt - wt.mean(0)).T


@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
@pytest.mark.parametrize("scale", [0.1, 1e-4])
def test_logit_change_through_grams_equals_direct(dtype, rel, scale):
    """The change of a component's centred logit contribution through the (d, d) grams,
    against (N, V) logits: a same head and a tuned one, a large change and a tiny one.
    float32 weights: the products run in float32, yet a head moved by 1e-4 is exact to 1e-5
    (it is read through its difference from the base: nothing cancels)."""
    wb, wt, cb, ct = _heads(dtype, scale)
    sb = H.head_stats(wb, CLASSES.membership, chunk=7)
    change = H.head_change(wb, sb.mu, wt, CLASSES.membership, chunk=7)
    lb, lt = _direct(wb, wt, cb, ct)
    numeric, j = CLASSES.ids("numeric"), CLASSES.names.index("numeric")
    for ch, want in ((None, _direct(wb, wb, ct, ct)[0]), (change, lt)):
        delta_sq, base_sq, shift = H.logit_change(cb, ct, sb, ch)
        torch.testing.assert_close(delta_sq, (want - lb).square().sum(-1), rtol=rel, atol=0)
        torch.testing.assert_close(base_sq, lb.square().sum(-1), rtol=rel, atol=0)
        torch.testing.assert_close(shift[:, j], want[:, numeric].mean(-1) - lb[:, numeric].mean(-1), rtol=rel, atol=1e-12)
    own_sq, _, own_shift = H.logit_change(cb, cb, sb, change)  # the head's own change
    own = _direct(wb, wt, cb, cb)[1] - lb
    torch.testing.assert_close(own_sq, own.square().sum(-1), rtol=rel, atol=0)
    torch.testing.assert_close(own_shift[:, j], own[:, numeric].mean(-1), rtol=rel, atol=0)


def test_a_shifted_head_has_no_own_change():
    """A tuned head that is the base's plus one vector on every row changes no centred
    logit: its own change is rounding, not the float32 rounding of the shift times V."""
    wb, _, cb, _ = _heads(torch.float32, 0.0)
    wt = wb + 5.0 * torch.arange(8, dtype=torch.float32)
    sb = H.head_stats(wb, CLASSES.membership)
    own_sq, base_sq, _ = H.logit_change(cb, cb, sb, H.head_change(wb, sb.mu, wt, CLASSES.membership))
    assert (own_sq.sqrt() / base_sq.sqrt()).max() < 1e-5


def test_head_grams_started_at_load_equal_those_made_later():
    """HeadSums (the base head's Gram on a background thread from load on) gives head_stats
    what it computes itself, for the whole head and for a padded head's first V rows; a
    weight that is not its head's rows gets None (computed as before)."""
    g = torch.Generator().manual_seed(4)
    for rows in (V, V + 5):  # a head padded past the vocabulary width
        head = nn.Linear(8, rows, bias=False)
        head.weight.data = torch.randn(rows, 8, generator=g) + 0.3
        model = SimpleNamespace(get_output_embeddings=lambda h=head: h)
        with_thread = H.head_stats(head.weight[:V].detach(), CLASSES.membership, sums=_sums_of(model, V))
        alone = H.head_stats(head.weight[:V].detach(), CLASSES.membership, chunk=7)
        for a, b in ((with_thread.gram, alone.gram), (with_thread.mu, alone.mu), (with_thread.class_rows, alone.class_rows)):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6 * b.nan_to_num().abs().max().item(), equal_nan=True)  # float32 products
        w = head.weight[:V].detach().double()
        want = (w - w.mean(0)).T @ (w - w.mean(0))
        torch.testing.assert_close(alone.gram, want, rtol=1e-6, atol=1e-6 * want.abs().max().item())
    from driftscope.layers import HeadSums
    assert HeadSums(model).of(head.weight.detach().clone()[:V]) is None


def _sums_of(model, vocab):
    from driftscope.layers import HeadSums

    return HeadSums(model).of(model.get_output_embeddings().weight[:vocab].detach())


def test_rel_l2_and_cosine():
    b = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
    t = torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.0, 2.0]])
    assert A.rel_l2(b, t).tolist() == [0.0, 0.0, pytest.approx(math.sqrt(5))]
    assert A.cosine(b, t).tolist() == [pytest.approx(1.0), 1.0, 0.0]


# -- on models -------------------------------------------------------------


def test_identical_models_show_no_drift(models):
    base = models["llama"]
    acc, _, _ = run(base, copy.deepcopy(base), batches(), cka_exact_max=16, cka_dims=8)  # projected CKA too
    layers, comps = acc.tables()["layers"], acc.tables()["components"]
    assert layers.height == 4 and comps.height == 8 and set(layers["cka_dims"]) == {8}
    assert layers["rel_l2"].to_list() == pytest.approx([0.0] * 4, abs=1e-12)
    assert layers["cosine"].to_list() == pytest.approx([1.0] * 4, abs=1e-12)
    assert layers["cka"].to_list() == pytest.approx([1.0] * 4, abs=1e-9)
    assert layers["lens_kl"].to_list() == pytest.approx([0.0] * 4, abs=1e-12)
    assert layers["lens_numeric_base"].to_list() == pytest.approx(layers["lens_numeric_tuned"].to_list(), abs=1e-12)
    for col in ("rel_change_hidden", "rel_change_logit", "logit_change_rms", "numeric_logit_shift"):
        assert comps[col].to_list() == pytest.approx([0.0] * 8, abs=1e-12)
    head = acc.headline()
    assert head["enters_layer"] is None and head["component"] is None and "No activation drift" in head["sentence"]


@pytest.mark.parametrize("family", list(BUILD))
def test_lens_at_last_layer_is_the_models_distribution(models, family):
    base = models[family]
    tuned = perturb(base, scale=0.3)  # head and final norm moved too: the cross-gram path
    data = batches()
    acc, logp, logq = run(base, tuned, data)
    assert acc.change is not None
    layers = acc.tables()["layers"]
    n_layers = discover(base).num_layers
    assert layers.height == n_layers and acc.tables()["components"].height == 2 * n_layers
    last = layers.row(n_layers - 1, named=True)
    assert last["n_next"] == logp.shape[0] == 12
    # the models' own forward (Gemma 2 softcaps inside it), in float64
    ref_p, ref_q = model_next_logprobs(base, data), model_next_logprobs(tuned, data)
    assert last["lens_kl"] > 1e-4
    assert last["lens_kl"] == pytest.approx(float(D.kl(ref_p, ref_q).mean()), rel=1e-6)
    # the main pipeline's KL at next positions, up to its float32 log-softmax
    assert last["lens_kl"] == pytest.approx(float(D.kl(logp, logq).mean()), rel=1e-3)
    j = CLASSES.names.index("numeric")
    assert last["lens_numeric_base"] == pytest.approx(float(D.class_masses(ref_p, CLASSES.membership).mean(0)[j]), rel=1e-6)
    assert last["lens_numeric_tuned"] == pytest.approx(float(D.class_masses(ref_q, CLASSES.membership).mean(0)[j]), rel=1e-6)
    for col in ("rel_l2", "cosine", "cka", "lens_kl"):
        assert all(math.isfinite(v) for v in layers[col]), col


@pytest.mark.parametrize("family", list(BUILD))
def test_components_are_what_each_block_adds(models, family):
    """h_i - h_(i-1) = attn_i + mlp_i: the hooked outputs are the residual additions
    (Gemma 2: after its post-norms; GPT-NeoX: parallel residual)."""
    base = models[family]
    acc = LayerAccumulator("t", base, base, CLASSES, V)
    batch = batches(1)[0]
    with capture(base, acc.modules("base")) as st:
        score(base, st, batch, V)
    h = st.modules
    for i in range(1, discover(base).num_layers):
        added = h[f"layer.{i}"] - h[f"layer.{i - 1}"]
        assert torch.allclose(added, h[f"attn.{i}"] + h[f"mlp.{i}"], atol=1e-5), i


def test_layer1_mlp_perturbation_enters_at_layer1(models, tmp_path):
    base = models["llama"]
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        w = tuned.model.layers[1].mlp.down_proj.weight
        w.add_(0.5 * w.abs().mean() * torch.randn(w.shape, generator=torch.Generator().manual_seed(3)))
    acc, _, _ = run(base, tuned, batches())
    assert acc.change is None  # the head is untouched: the exact same-head path
    t = acc.tables()
    rel = t["layers"]["rel_l2"].to_list()
    assert rel[0] == 0.0 and all(r > 1e-3 for r in rel[1:])
    assert t["layers"]["lens_kl"][0] == 0.0 and t["layers"]["cka"][0] == pytest.approx(1.0)
    comps = {(r["layer"], r["component"]): r for r in t["components"].iter_rows(named=True)}
    for key in ((0, "attn"), (0, "mlp"), (1, "attn")):
        assert comps[key]["rel_change_hidden"] == 0.0 and comps[key]["logit_change_rms"] == 0.0
    assert comps[(1, "mlp")]["rel_change_hidden"] > 0.1 and comps[(1, "mlp")]["rel_change_logit"] > 0.1
    head = acc.headline()
    assert (head["enters_layer"], head["component"], head["component_layer"]) == (1, "mlp", 1)
    assert "layer 1" in head["sentence"] and "mlp" in head["sentence"]

    # weight vs function on the saved checkpoints: only layer 1's MLP moved
    base.save_pretrained(tmp_path / "base")
    tuned.save_pretrained(tmp_path / "tuned")
    wvf = weight_vs_function(weight_table(tmp_path / "base", tmp_path / "tuned"), t["layers"], t["components"])
    assert wvf["n_layers"] == 4 and wvf["n_components"] == 8
    assert wvf["spearman_layer"] > 0 and wvf["spearman_component"] > 0
    assert "descriptive" in wvf["note"]


def test_peft_adapter_hooks_the_unwrapped_model(models):
    from peft import LoraConfig, get_peft_model

    base = models["llama"]
    torch.manual_seed(4)
    cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "lm_head"], init_lora_weights=False)
    lora = get_peft_model(copy.deepcopy(base), cfg).eval()
    acc, logp, logq = run(base, lora, batches())
    assert list(acc.modules("tuned")) == list(acc.modules("base"))
    last = acc.tables()["layers"].row(3, named=True)
    assert last["lens_kl"] == pytest.approx(float(D.kl(logp, logq).mean()), rel=1e-3)  # LoRA'd head in the lens too
    assert acc.change is not None  # head(I) - head(0) saw the head's LoRA
    comps = acc.tables()["components"]
    assert comps.filter(pl.col("layer") == 0, pl.col("component") == "attn")["rel_change_hidden"][0] > 0


def test_one_base_capture_serves_several_checkpoints(models):
    base = models["llama"]
    t1, t2 = perturb(base, seed=5), perturb(base, seed=6)
    cache: dict = {}
    a1 = LayerAccumulator("a", base, t1, CLASSES, V, shared=cache)
    a2 = LayerAccumulator("b", base, t2, CLASSES, V, shared=cache)
    m1, m2 = a1.modules("base"), a2.modules("base")
    assert list(m1) == list(m2) and all(m1[k] is m2[k] for k in m1)
    assert a1.head_b is a2.head_b  # the base head's grams computed once
    data = batches()
    with capture(base, m1) as sb, capture(t1, a1.modules("tuned")) as s1, capture(t2, a2.modules("tuned")) as s2:
        for batch in data:
            score(base, sb, batch, V)
            for model, st, acc in ((t1, s1, a1), (t2, s2, a2)):
                score(model, st, batch, V)
                acc.update(batch, sb, st)
    # the base's CKA gram X^T X is held and updated once: by a1, read by a2
    assert all(c2._xx is None and c2.xx is c1.xx for c1, c2 in zip(a1.cka, a2.cka))
    assert all(c.xx.abs().sum() > 0 for c in a1.cka)
    solo, _, _ = run(base, t2, data)
    shared, alone = a2.tables()["layers"], solo.tables()["layers"]
    for col in ("rel_l2", "cka", "lens_kl"):
        assert shared[col].to_list() == pytest.approx(alone[col].to_list(), rel=1e-9, abs=1e-15)


def test_memory_is_constant_in_the_number_of_probes(models):
    base = models["llama"]
    tuned = perturb(base)

    def size(acc):
        arrays = [*acc.hid.values(), *acc.lens.values(), *(a for c in acc.cmp.values() for a in c.values())]
        tensors = [getattr(s, k) for s in acc.cka for k in ("xx", "yy", "yx", "sx", "sy")]
        return sum(t.numel() * t.element_size() for t in arrays + tensors)

    small, _, _ = run(base, tuned, batches(1))
    large, _, _ = run(base, tuned, batches(4, seed=9))
    assert large.n_next == 4 * small.n_next and size(large) == size(small)


def test_hooks_are_removed_even_after_an_exception(models):
    base = models["gpt2"]
    acc = LayerAccumulator("t", base, base, CLASSES, V)
    mods = acc.modules("tuned")
    with pytest.raises(RuntimeError, match="boom"):
        with capture(base, mods) as st:
            score(base, st, batches(1)[0], V)
            raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in mods.values())
    assert not base.get_output_embeddings()._forward_pre_hooks


def test_unsupported_architecture_gives_a_note():
    class Mystery(nn.Module):
        config = SimpleNamespace(model_type="mystery")

    acc, note = try_layer_accumulator("odd", Mystery(), Mystery(), CLASSES, V)
    assert acc is None and "odd" in note and "mystery" in note


def test_weight_vs_function_on_tables():
    weights = pl.DataFrame({
        "layer": [0, 0, 1, 1, 2, 2, 3, 3, None],
        "module_type": ["q", "down", "q", "down", "q", "down", "q", "down", "embed"],
        "base_norm": [1.0] * 9,
        "delta_norm": [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 5.0],
    })
    layers = pl.DataFrame({"checkpoint": ["t"] * 4, "layer": [0, 1, 2, 3], "rel_l2": [0.1, 0.3, 0.6, 1.0]})
    comps = pl.DataFrame({"checkpoint": ["t"] * 8, "layer": [0, 0, 1, 1, 2, 2, 3, 3],
                          "component": ["attn", "mlp"] * 4, "rel_change_logit": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]})
    out = weight_vs_function(weights, layers, comps)
    assert out["n_layers"] == 4 and out["spearman_layer"] == pytest.approx(1.0)
    assert out["n_components"] == 8 and out["spearman_component"] == pytest.approx(1.0)
    short = weight_vs_function(weights, layers.head(2))
    assert short["n_layers"] == 2 and short["spearman_layer"] is None and "n=2" in short["note"]
    with pytest.raises(ValueError):
        weight_vs_function(weights, pl.concat([layers, layers.with_columns(pl.lit("u").alias("checkpoint"))]))


def test_entry_point_rule():
    layers = pl.DataFrame({"layer": [0, 1, 2, 3], "rel_l2": [0.01, 0.1, 0.3, 0.4], "lens_kl": [0.0, 0.0, 0.5, 1.0]})
    comps = pl.DataFrame({"layer": [0, 0, 1, 1, 2, 2, 3, 3], "component": ["attn", "mlp"] * 4,
                          "logit_change_rms": [0.1, 0.2, 0.5, 0.3, 9.0, 9.0, 9.0, 9.0]})
    head = entry_point(layers, comps)
    assert head["enters_layer"] == 2 and head["enters_layer_lens_kl"] == 2
    assert (head["component"], head["component_layer"]) in {("attn", 2), ("mlp", 2)}
    head = entry_point(layers, comps, fraction=0.2)
    assert head["enters_layer"] == 1 and (head["component"], head["component_layer"]) == ("attn", 1)
    assert np.isclose(head["final_rel_l2"], 0.4)


def test_lens_runs_on_a_subset_of_layers_and_says_so(models):
    """The lens is capped at `lens_layers` evenly spaced layers (first and last
    kept); the others read NaN, never a made-up 0. Residual figures cover all."""
    base = models["llama"]
    tuned = perturb(copy.deepcopy(base))
    acc, _, _ = run(base, tuned, batches(), lens_layers=2)
    t = acc.tables()["layers"].sort("layer")
    L = t.height
    assert acc.lens_idx == [0, L - 1]
    lens = t["lens_kl"].to_numpy()
    assert np.isfinite(lens[[0, L - 1]]).all() and np.isnan(lens[1:L - 1]).all()
    assert np.isfinite(t["rel_l2"].to_numpy()).all()


# -- the computation before issue 15 ("fast at real vocabularies"), kept as the reference ---------------------
# The layer figures are computed faster now (lens over vocabulary chunks, all layers in one product, ...);
# the figures must not move. OldAccumulator runs the code as it stood, on the same models and batches.


class OldAccumulator(LayerAccumulator):
    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        wb, wt = (_head_weight(arch.lm_head, self.vocab) for arch in (self.base, self.tuned))
        self.old_b = _old_head_stats(wb, self.membership.bool())
        self.old_t = self.old_b if self.change is None else _old_head_stats(wt, self.membership.bool())
        self.cross = None if self.change is None else _old_cross_gram(wt, self.old_t.mu, wb, self.old_b.mu)

    @torch.inference_mode()
    def update(self, batch, base_state, tuned_state):
        hb, ht = base_state.modules, tuned_state.modules
        first = hb["layer.0"]
        if self.device is None:
            self.device = first.device
            self._zero()
        dev = self.device
        if first.shape[0] == 0:
            return
        nxt = (batch.kind.cpu() == NEXT).nonzero().flatten().to(dev)
        self.n_pos += first.shape[0]
        self.n_next += len(nxt)
        f64 = lambda x: x.to(dev, torch.float64)  # noqa: E731
        for i in range(self.L):
            b, t = f64(hb[f"layer.{i}"]), f64(ht[f"layer.{i}"])
            rel = A.rel_l2(b, t)
            self.hid["rel"][i] += rel.sum()
            self.hid["rel_sq"][i] += rel.square().sum()
            self.hid["cos"][i] += A.cosine(b, t).sum()
            if len(nxt):
                self.cka[i].update(b[nxt], t[nxt])
            for c in ("attn", "mlp"):
                cb, ct = f64(hb[f"{c}.{i}"]), f64(ht[f"{c}.{i}"])
                acc = self.cmp[c]
                acc["rel_hidden"][i] += A.rel_l2(cb, ct).sum()
                if len(nxt):
                    delta_sq, base_sq, shift = _old_logit_change(cb[nxt], ct[nxt], self.old_b, self.old_t, self.cross)
                    acc["rel_logit"][i] += A.rel_l2_from_squares(delta_sq, base_sq).sum()
                    acc["rms"][i] += (delta_sq / self.vocab).sqrt().sum()
                    acc["shift"][i] += shift.sum(0)
        _old_own_update(self.own, hb, nxt, self.old_b, f64)
        if len(nxt):
            last = f"layer.{self.L - 1}"
            _old_own_final(self.own, f64(hb[last][nxt]), f64(ht[last][nxt]), f64(base_state.final[nxt]),
                           f64(tuned_state.final[nxt]), self.old_b, self.old_t, self.cross, self.cross is not None)
            self._old_lens(hb, ht, nxt)

    def _old_lens(self, hb, ht, nxt, rows_per_block=8):
        k = len(nxt)
        member = self.membership.to(self.device)
        sides = [torch.cat([states[f"layer.{i}"][nxt] for i in self.lens_idx]) for states in (hb, ht)]
        layer_of = torch.tensor(self.lens_idx, device=self.device).repeat_interleave(k)
        total = len(layer_of)
        for start in range(0, total, rows_per_block):
            n = min(rows_per_block, total - start)
            index = torch.arange(start, start + rows_per_block).clamp_max(start + n - 1)
            weight = (torch.arange(rows_per_block) < n).to(self.device, torch.float64)[:, None]
            logp, logq = (A.lens_logprobs(h[index], arch.final_norm, arch.lm_head, arch.softcap, self.vocab)
                          for h, arch in zip(sides, (self.base, self.tuned)))
            rows = layer_of[index]
            p = logp.exp()
            self.lens["kl"].index_add_(0, rows, D.kl_finite(logp, logq, p) * weight[:, 0])
            self.lens["base"].index_add_(0, rows, (p @ member) * weight)
            self.lens["tuned"].index_add_(0, rows, D.class_masses(logq, member) * weight)


def _old_head_stats(weight, membership):
    w = weight.double()
    mu = w.mean(0)
    count = membership.sum(0).double()[:, None]
    rows = torch.where(count > 0, membership.double().T @ w / count.clamp_min(1) - mu, torch.full((membership.shape[1], w.shape[1]), math.nan))
    return H.HeadStats(mu, w.T @ w - len(w) * torch.outer(mu, mu), rows, len(w))


def _old_cross_gram(w_a, mu_a, w_b, mu_b):
    return w_a.double().T @ w_b.double() - len(w_a) * torch.outer(mu_a, mu_b)


def _old_quad(c, gram, other=None):
    return ((c @ gram) * (c if other is None else other)).sum(-1)


def _old_logit_change(c_base, c_tuned, base, tuned, cross):
    cb, ct = c_base.double(), c_tuned.double()
    base_sq = _old_quad(cb, base.gram)
    if cross is None:
        delta_sq = _old_quad(ct - cb, base.gram)
    else:
        delta_sq = _old_quad(ct, tuned.gram) - 2 * _old_quad(cb, cross.T, ct) + base_sq
    shift = ct @ tuned.class_rows.T - cb @ base.class_rows.T
    return delta_sq.clamp_min(0.0), base_sq.clamp_min(0.0), shift


def _old_own_update(own, base, nxt, head_b, f64):
    for c, us in own.units.items():
        for i in range(len(us)):
            t = own.out.pop(f"{c}.{i}", None)
            if t is None:
                if own.changed[c][i]:
                    own.missed.add((c, i))
                continue
            b, t = f64(base[f"{c}.{i}"]), f64(t)
            own.sums[c]["rel"][i] += A.rel_l2(b, t).sum()
            if len(nxt):
                delta_sq, _, _ = _old_logit_change(b[nxt], t[nxt], head_b, head_b, None)
                own.sums[c]["rms"][i] += (delta_sq / head_b.vocab).sqrt().sum()
    own.out.clear()


def _old_own_final(own, resid_b, resid_t, final_b, final_t, head_b, head_t, cross, head_changed):
    v = head_b.vocab
    own.resid_rms += (_old_quad(resid_t - resid_b, head_b.gram) / v).clamp_min(0).sqrt().sum()
    delta_sq, _, _ = _old_logit_change(final_b, final_t, head_b, head_t, cross)
    own.head["final_rms"] += float((delta_sq / v).sqrt().sum())
    if head_changed:
        own_sq, base_sq, _ = _old_logit_change(final_b, final_b, head_b, head_t, cross)
        own.head["rel"] += float(A.rel_l2_from_squares(own_sq, base_sq).sum())
        own.head["rms"] += float((own_sq / v).sqrt().sum())


def _assert_tables_equal(new, old, rel=1e-9):
    for name in ("layers", "components"):
        a, b = new.tables()[name], old.tables()[name]
        assert a.columns == b.columns and a.height == b.height
        for col in a.columns:
            if a[col].dtype.is_numeric():
                x, y = a[col].to_numpy().astype(float), b[col].to_numpy().astype(float)
                assert np.array_equal(np.isnan(x), np.isnan(y)), (name, col)
                ok = ~np.isnan(x)
                assert x[ok] == pytest.approx(y[ok], rel=rel, abs=1e-15), (name, col)
            else:
                assert a[col].to_list() == b[col].to_list(), (name, col)
    hn, ho = new.headline(), old.headline()
    assert hn.keys() == ho.keys()
    for key in hn:
        if isinstance(hn[key], float):
            assert hn[key] == pytest.approx(ho[key], rel=rel, abs=1e-15), key
        else:
            assert hn[key] == ho[key], key


def _run_pair(base, tuned, data, **kw):
    """The new and the reference accumulators on the same passes (own-change hooks on both)."""
    new = LayerAccumulator("t", base, tuned, CLASSES, V, **kw)
    old = OldAccumulator("t", base, tuned, CLASSES, V, **kw)
    with capture(base, new.modules("base")) as sb, capture(tuned, new.modules("tuned")) as st:
        for batch in data:
            outs = {}
            for acc in (new, old):
                with acc.own_hooks(sb):
                    score(base, sb, batch, V)
                score(tuned, st, batch, V)
                acc.own_pending()
                outs[id(acc)] = (sb, st)
                acc.update(batch, sb, st)
    return new, old


@pytest.mark.parametrize("family", list(BUILD))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_layer_figures_equal_the_computation_before_issue_15(models, family, dtype):
    """Every layer and component figure and the headline, against the code as it
    stood: to 1e-9 relative in float64 (float32: the same float32 logits, so close too)."""
    base = copy.deepcopy(models[family]).to(dtype)
    tuned = perturb(base, scale=0.3)
    new, old = _run_pair(base, tuned, batches(3, size=5), lens_layers=3)
    _assert_tables_equal(new, old, rel=1e-9 if dtype == torch.float64 else 1e-6)


def test_layer_figures_equal_before_with_the_same_head_and_a_lora_head(models):
    from peft import LoraConfig, get_peft_model

    base = copy.deepcopy(models["llama"]).double()
    tuned = copy.deepcopy(base)
    with torch.no_grad():  # only layer 1's MLP moves: the heads are equal (no cross gram)
        tuned.model.layers[1].mlp.down_proj.weight.mul_(1.2)
    new, old = _run_pair(base, tuned, batches(2))
    assert new.change is None
    assert new.lens_rows[True] is not None and new.lens_rows[False] is not None  # layer 0 read out one-sided
    _assert_tables_equal(new, old)
    assert new.tables()["layers"]["lens_kl"][0] == 0.0
    torch.manual_seed(4)
    cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "lm_head"], init_lora_weights=False)
    lora = get_peft_model(copy.deepcopy(base), cfg).eval()
    new, old = _run_pair(base, lora, batches(2))
    _assert_tables_equal(new, old)


def test_a_short_last_batch_pads_its_lens_block_to_8_rows(models, monkeypatch):
    """The first batch settles the lens block (its rows, rounded up to 8); a shorter batch
    after it pads to its own rows rounded up to 8, not to a whole block, with the figures
    equal to the reference's."""
    import driftscope.layers as layers_module

    base = copy.deepcopy(models["llama"]).double()
    tuned = perturb(base, scale=0.3)  # every lens layer two-sided
    blocks = []
    real = A.lens_figures
    monkeypatch.setattr(layers_module.A, "lens_figures", lambda xs, *a, **k: blocks.append(len(xs[0])) or real(xs, *a, **k))
    data = batches(1, size=5) + batches(1, size=1, seed=1)  # 3 lens layers x (5, then 1) next positions
    new, old = _run_pair(base, tuned, data, lens_layers=3)
    assert new.lens_rows == {False: 16, True: None} and blocks == [16, 8]
    _assert_tables_equal(new, old)


def test_lens_figures_equal_the_log_softmax_path_across_rescales():
    """The chunked lens (a running reference max, rescaled when a later chunk's
    logits pass it by more than 64) against log_softmax over whole rows."""
    g = torch.Generator().manual_seed(3)
    r, d = 6, 8
    wp = torch.randn(V, d, generator=g, dtype=torch.float64)
    wq = wp + 0.05 * torch.randn(V, d, generator=g, dtype=torch.float64)
    x = torch.randn(r, d, generator=g, dtype=torch.float64)
    bump = torch.zeros(V, dtype=torch.float64)
    bump[40:] = 90.0  # the last chunks' logits far above the first's: rescaling
    bump[50:] = 300.0
    member = CLASSES.membership.double()
    for cap in (None, 400.0):
        heads = [lambda h, a, b, w=w: (w[a:b] @ h.T + bump[a:b, None]).float() for w in (wp, wq)]
        for chunk in (7, 16, V):
            kl, mp, mq = A.lens_figures((x, x), heads, (cap, cap), V, member, chunk)
            logp, logq = (torch.log_softmax(A._capped(f(x, 0, V).T.float(), cap).double(), -1) for f in heads)
            assert kl.tolist() == pytest.approx(D.kl_finite(logp, logq).tolist(), rel=1e-9)
            assert mp.flatten().tolist() == pytest.approx(D.class_masses(logp, member).flatten().tolist(), rel=1e-9, abs=1e-300)
            assert mq.flatten().tolist() == pytest.approx(D.class_masses(logq, member).flatten().tolist(), rel=1e-9, abs=1e-300)
        same, _, _ = A.lens_figures((x, x), [heads[0], heads[0]], (cap, cap), V, member, 7)
        assert same.tolist() == [0.0] * r
