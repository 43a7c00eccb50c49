"""Local versus inherited change: each component's own change (driftscope.own_change)."""

from __future__ import annotations

import copy

import pytest
import torch

import tiny
from driftscope.capture import capture, score
from driftscope.layers import LayerAccumulator
from driftscope.own_change import OWN_SHARE, same_weights
from test_layers import BUILD, CLASSES, V, batches


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base():
    return tiny.tiny_llama(V, layers=4).eval()


@pytest.fixture(scope="module")
def data():
    return batches()


def _nudge(params, scale: float = 0.3, seed: int = 5) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(scale * p.abs().mean() * torch.randn(p.shape, generator=g))


def run_own(base, tuned, data) -> LayerAccumulator:
    acc = LayerAccumulator("t", base, tuned, CLASSES, V)
    with capture(base, acc.modules("base")) as sb, acc.own_hooks(sb), capture(tuned, acc.modules("tuned")) as st:
        for batch in data:
            score(base, sb, batch, V)
            score(tuned, st, batch, V)
            acc.update(batch, sb, st)
    return acc


def own_of(acc, component):
    comps = acc.tables()["components"].filter(component=component).sort("layer")
    return comps["own_rel_change"].to_list(), comps["own_logit_change_rms"].to_list()


def test_an_identical_copy_has_exactly_zero_own_change_and_names_nothing(base, data):
    acc = run_own(base, copy.deepcopy(base), data)
    for c in ("attn", "mlp"):
        rel, rms = own_of(acc, c)
        assert all(x == 0 for x in rel + rms), c
    head = acc.headline()
    assert head["head_own_logit_change_rms"] == 0
    assert head["own_component"] is None
    assert "No component's own weights changed" in head["sentence"]


def test_a_qv_lora_reads_attention_and_leaves_the_mlp_at_exactly_zero(base, data):
    from peft import LoraConfig, get_peft_model

    tuned = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # lora_B starts at zero: give it a real change
        for n, p in tuned.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(n)))
    acc = run_own(base, tuned.eval(), data)
    rel_a, rms_a = own_of(acc, "attn")
    rel_m, rms_m = own_of(acc, "mlp")
    assert all(x > 0 for x in rel_a + rms_a)
    assert all(x == 0 for x in rel_m + rms_m)  # the MLP's inherited change is not its own
    inherited = acc.tables()["components"].filter(component="mlp")["rel_change_hidden"].to_list()
    assert max(inherited[1:]) > 0  # ... though its output did move
    head = acc.headline()
    assert head["own_component"] == "attn" and head["own_layer"] == 0
    assert head["head_own_logit_change_rms"] == 0
    assert "layer 0's attn" in head["sentence"]


def test_a_gate_up_tune_reads_mlp(base, data):
    tuned = copy.deepcopy(base)
    _nudge([p for n, p in tuned.named_parameters() if "mlp.gate_proj" in n or "mlp.up_proj" in n])
    acc = run_own(base, tuned, data)
    assert all(x == 0 for x in sum(own_of(acc, "attn"), []))
    assert all(x > 0 for x in sum(own_of(acc, "mlp"), []))
    head = acc.headline()
    assert head["own_component"] == "mlp" and head["own_reaches_threshold"]
    assert head["own_share"] >= OWN_SHARE


def test_a_single_layer_tune_is_named_at_its_layer(base, data):
    tuned = copy.deepcopy(base)
    _nudge([tuned.model.layers[2].mlp.down_proj.weight], scale=1.0)
    acc = run_own(base, tuned, data)
    head = acc.headline()
    assert (head["own_layer"], head["own_component"]) == (2, "mlp")
    rel, _ = own_of(acc, "mlp")
    assert rel[2] > 0 and rel[0] == rel[1] == rel[3] == 0


def test_an_lm_head_tune_reads_the_head(base, data):
    tuned = copy.deepcopy(base)
    _nudge([tuned.lm_head.weight])
    acc = run_own(base, tuned, data)
    assert all(x == 0 for c in ("attn", "mlp") for x in sum(own_of(acc, c), []))
    head = acc.headline()
    assert head["own_component"] == "head" and head["own_layer"] is None
    assert head["head_own_logit_change_rms"] > 0
    # nothing else moved: the head's own change IS the final logit change
    assert head["head_own_share"] == pytest.approx(1.0, rel=1e-9)
    assert "LM head" in head["sentence"]


def test_own_equals_a_direct_recomputation(base, data):
    """The tuned MLP on the base's MLP input, against the base MLP: by hand."""
    tuned = copy.deepcopy(base)
    _nudge([tuned.model.layers[1].mlp.up_proj.weight])
    acc = run_own(base, tuned, data)
    ins = []
    hook = base.model.layers[1].mlp.register_forward_pre_hook(lambda m, a: ins.append(a[0]))
    rels = []
    with torch.inference_mode():
        for batch in data:
            ins.clear()
            base(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
            x = ins[0][batch.rows, batch.cols]
            b, t = base.model.layers[1].mlp(x).double(), tuned.model.layers[1].mlp(x).double()
            rels.append((t - b).norm(dim=-1) / b.norm(dim=-1))
    hook.remove()
    rel, _ = own_of(acc, "mlp")
    assert rel[1] == pytest.approx(torch.cat(rels).mean().item(), rel=1e-4)


def test_gemma2_post_norm_is_part_of_the_component():
    base = BUILD["gemma2"]()
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        tuned.model.layers[1].post_feedforward_layernorm.weight.add_(0.5)
    acc = run_own(base, tuned, batches(1))
    rel, _ = own_of(acc, "mlp")
    assert rel[1] > 0 and rel[0] == rel[2] == 0
    assert all(x == 0 for x in own_of(acc, "attn")[0])


def test_same_weights_is_bitwise():
    a = torch.nn.Linear(3, 3)
    b = copy.deepcopy(a)
    assert same_weights(a, b)
    with torch.no_grad():
        b.weight[0, 0] += 1e-7
    assert not same_weights(a, b)


def test_an_adapter_sharing_the_base_reads_its_own_attention(family, tmp_path):
    """models.py loads a LoRA into the base's own modules (one resident base): the
    tuned and base modules are the same objects, so the adapter's own change is
    run with it switched on (own_pending inside active(), as run.py does). Before,
    such a q/v adapter read exactly zero everywhere: 'nothing changed'."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from driftscope.capture import collate, forward
    from driftscope.models import load_base, load_tuned

    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(family["base"]),
                          LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(n)))
    peft.peft_config["default"].base_model_name_or_path = str(family["base"])
    peft.save_pretrained(tmp_path / "qv")
    base = load_base(family["base"], "cpu", "float32")
    ck = load_tuned(tmp_path / "qv", base)
    assert ck.adapter is not None  # really the shared path
    vocab = len(base.tokenizer)
    from driftscope.tokenclasses import classes_for

    table = classes_for(base.tokenizer, {}, vocab)
    acc = LayerAccumulator("qv", base.model, ck.model, table, vocab)
    assert acc.base.attn[0] is acc.tuned.attn[0]
    data = [collate(b.items, 1) for b in batches()]
    with capture(base.model, acc.modules("base")) as sb, acc.own_hooks(sb), \
            capture(ck.model, acc.modules("tuned")) as st:
        for batch in data:
            with base.active():
                forward(base.model, sb, batch)
            with ck.active():
                forward(ck.model, st, batch)
                acc.own_pending()
            acc.update(batch, sb, st)
    assert all(x > 0 for x in sum(own_of(acc, "attn"), []))
    assert all(x == 0 for x in sum(own_of(acc, "mlp"), []))
    head = acc.headline()
    assert head["own_component"] == "attn" and head["head_own_logit_change_rms"] == 0
