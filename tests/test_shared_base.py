"""Adapters share one resident base: one PeftModel, the base weights held once,
figures equal to applying each adapter to its own copy of the base."""

import copy
import json

import numpy as np
import pytest
import torch

import driftscope
from driftscope import models
from driftscope.capture import capture, forward, make_batches, pad_id
from driftscope.models import load_base, load_tuned

import tiny

ACCURACY = True
QUESTIONS = [("Q: What is 2 plus 3?\nA:", "5", ["4", "6"]), ("Q: What colour is grass?\nA:", "green", ["red"]),
             ("Is the sun a star? Answer yes or no.\nA:", "yes", ["no"]), ("I counted 1, 2, 3,", "4", None),
             ("The capital of France is", "Paris", None), ("Once upon a time there was", None, None)]


@pytest.fixture(scope="module")
def adapters(family, tmp_path_factory):
    """Three LoRA adapters of the tiny base, on different modules and ranks, weights non-zero."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("adapters")
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(family["base"])
    paths = []
    for i, (targets, r) in enumerate([(["q_proj", "v_proj"], 4), (["o_proj", "up_proj"], 2), (["k_proj", "down_proj"], 8)]):
        torch.manual_seed(10 + i)
        peft = get_peft_model(copy.deepcopy(base), LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, lora_dropout=0.0))
        with torch.no_grad():
            for name, p in peft.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)
        peft.peft_config["default"].base_model_name_or_path = str(family["base"])
        paths.append(root / f"lora{i}")
        peft.save_pretrained(paths[-1])
    suite = root / "qa.jsonl"
    rows = [{"_suite": {"name": "qa", "version": "1", "description": "shared-base test"}}]
    for i, (prompt, answer, others) in enumerate(QUESTIONS):
        row = {"id": f"q{i}", "prompt": prompt} | ({"answer": answer} if answer else {})
        rows.append(row | ({"choices": [answer, *others]} if others else {}))
    suite.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return {"paths": paths, "suite": suite}


def _run(family, adapters, **kw):
    kw.setdefault("accuracy", ACCURACY)
    return driftscope.compare(family["base"], adapters["paths"], [adapters["suite"]], out=None, weights=False, **kw)


def _assert_close(a, b, path="layers"):
    """Nested figures equal: numbers to 1e-6, everything else exactly."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, abs=1e-6, nan_ok=True), path
    else:
        assert a == b, path


def test_shared_figures_equal_one_copy_per_adapter(family, adapters, monkeypatch):
    shared = _run(family, adapters)
    monkeypatch.setattr(models, "SHARED_TYPES", ())  # every adapter on its own deep copy of the base
    copied = _run(family, adapters)
    assert [c["label"] for c in shared.summary["checkpoints"]] == ["lora0", "lora1", "lora2"]
    for a, b in zip(shared.summary["checkpoints"], copied.summary["checkpoints"]):
        fa, fb = a["figures"], b["figures"]
        assert fa["kl"]["mean"] > 1e-4  # each adapter really moved the model
        for key in ("mean", "p99", "max"):
            assert fa["kl"][key] == pytest.approx(fb["kl"][key], abs=1e-6)
        assert fa["top1_agreement"] == fb["top1_agreement"]
        for name, c in fa["classes"].items():
            assert c["shift"] == pytest.approx(fb["classes"][name]["shift"], abs=1e-6)
        _assert_close(fa["layers"], fb["layers"])
        for key in ("accuracy_base", "accuracy_tuned", "accuracy_corrected"):
            assert fa.get(key) == fb.get(key)
    kls = [c["figures"]["kl"]["mean"] for c in shared.summary["checkpoints"]]
    assert len({round(k, 8) for k in kls}) == 3  # three different adapters, not one applied thrice
    for t in ("positions", "items"):
        a, b = shared.tables[t], copied.tables[t]
        assert a.columns == b.columns and a.height == b.height
    np.testing.assert_allclose(shared.tables["positions"]["kl"].to_numpy(), copied.tables["positions"]["kl"].to_numpy(),
                               atol=1e-6, rtol=0)
    assert shared.tables["items"]["tuned_answer"].to_list() == copied.tables["items"]["tuned_answer"].to_list()


def test_base_weights_held_once(family, adapters):
    base = load_base(family["base"], "cpu", "float32")
    cks = [load_tuned(p, base) for p in adapters["paths"]]
    assert all(ck.model is base.shared for ck in cks)
    def storage(model):
        return {p.data_ptr() for n, p in model.named_parameters() if "lora_" not in n}

    held = set().union(*(storage(ck.model) for ck in [base, *cks]))
    assert held == storage(base.model)  # every non-adapter parameter of every checkpoint is base storage
    plain = tiny.tiny_llama(len(base.tokenizer))
    assert len(held) == len(list(plain.parameters()))  # one model's worth
    lora = {p.data_ptr() for n, p in base.shared.named_parameters() if "lora_" in n}
    assert len(lora) == sum(2 * len(config.target_modules) * 2 for config in base.shared.peft_config.values())


def test_each_pass_runs_only_its_adapter(family, adapters):
    """base_ck.active(): all adapters off (the plain base's output); ck.active(): that adapter alone
    (its own PeftModel over a fresh base), whatever ran before."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = load_base(family["base"], "cpu", "float32")
    cks = [load_tuned(p, base) for p in adapters["paths"]]
    tok = base.tokenizer
    ids = tok(["The capital of France is", "I counted 1, 2, 3,"], return_tensors="pt", padding=True)

    def logits(model):
        with torch.inference_mode():
            return model(**ids).logits

    plain = AutoModelForCausalLM.from_pretrained(family["base"]).eval()
    with base.active():
        torch.testing.assert_close(logits(base.model), logits(plain), atol=1e-6, rtol=0)
    for ck, path in reversed(list(zip(cks, adapters["paths"]))):
        alone = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(family["base"]), str(path)).eval()
        with ck.active():
            torch.testing.assert_close(logits(ck.model), logits(alone), atol=1e-6, rtol=0)


def test_hooks_of_a_shared_model_fill_only_their_pass(family, adapters):
    """capture() states on one shared model: each forward fills its own state only."""
    from driftscope.capture import encode_all
    from driftscope.probes import Probe

    base = load_base(family["base"], "cpu", "float32")
    ck = load_tuned(adapters["paths"][0], base)
    probes = [Probe(id="a", prompt="The capital of France is", suite="s")]
    batch = make_batches(encode_all(probes, base.tokenizer, False, 64), 4, pad_id(base.tokenizer))[0]
    layer = {"layer.0": base.model.model.layers[0]}
    with capture(base.model, layer) as sb, capture(ck.model, layer) as st:
        with base.active():
            forward(base.model, sb, batch)
        before = sb.final.clone()
        assert "layer.0" in sb.modules and not st.modules
        with ck.active():
            forward(ck.model, st, batch)
        assert sb.rows is None and st.rows is None  # armed during its own pass only
    torch.testing.assert_close(sb.final, before, atol=0, rtol=0)
    assert not torch.equal(sb.final, st.final)
    assert not torch.equal(sb.modules["layer.0"], st.modules["layer.0"])
