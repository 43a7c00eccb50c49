"""Weight distances: the maths against torch, the table on saved tiny checkpoints and LoRA adapters."""

from __future__ import annotations

import json
import math

import peft
import polars as pl
import pytest
import torch
import transformers as tf

from driftscope.errors import ModelError
from driftscope.metrics.weights import lora_delta, lora_scaling, rel_frobenius, relative_change
from driftscope.weights import weight_summary, weight_table

IDS = dict(vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2)
LLAMA = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, **IDS)


def tiny_llama(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**LLAMA)).eval()
    assert sum(p.numel() for p in model.parameters()) < 200_000
    return model


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def expected_rel(base: torch.Tensor, tuned: torch.Tensor) -> float:
    b, t = base.double(), tuned.double()
    return float(torch.linalg.norm(t - b) / torch.linalg.norm(b))


# --- pure maths ---------------------------------------------------------------

def test_rel_frobenius_matches_linalg():
    torch.manual_seed(1)
    for shape in [(7,), (5, 9), (3, 4, 5)]:
        b, t = torch.randn(shape), torch.randn(shape)
        assert float(rel_frobenius(b, t)) == pytest.approx(expected_rel(b, t), rel=1e-12)
        assert float(rel_frobenius(b, b)) == 0.0
    bf = torch.randn(64, 64).bfloat16()
    assert rel_frobenius(bf, bf + 0.01).dtype == torch.float64


def test_relative_change_zero_base():
    assert float(relative_change(0.0, 0.0)) == 0.0
    assert math.isinf(float(relative_change(0.5, 0.0)))
    assert float(rel_frobenius(torch.zeros(3), torch.zeros(3))) == 0.0
    assert math.isinf(float(rel_frobenius(torch.zeros(3), torch.ones(3))))


def test_lora_scaling_and_delta():
    assert lora_scaling(16, 4) == 4.0
    assert lora_scaling(16, 4, use_rslora=True) == 8.0
    A, B = torch.randn(4, 10), torch.randn(6, 4)
    full = 2.0 * (B.double() @ A.double())  # (6, 10)
    torch.testing.assert_close(lora_delta(A, B, 2.0), full)
    torch.testing.assert_close(lora_delta(A, B, 2.0, transpose=True), full.T)
    torch.testing.assert_close(lora_delta(A, B, 2.0, rows=slice(1, 3)), full[1:3])
    torch.testing.assert_close(lora_delta(A, B, 2.0, transpose=True, rows=slice(2, 5)), full.T[2:5])


# --- full checkpoints ------------------------------------------------------------

PERTURBED = ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight", "model.norm.weight")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    model = tiny_llama()
    base = state(model)
    model.save_pretrained(root / "base")
    model.save_pretrained(root / "base_sharded", max_shard_size="20KB")
    torch.manual_seed(2)
    with torch.no_grad():
        for i, name in enumerate(PERTURBED):
            model.get_parameter(name).add_(0.01 * (i + 1) * torch.randn_like(model.get_parameter(name)))
    model.save_pretrained(root / "tuned")
    return root, base, state(model)


def test_weight_table_full(pair):
    root, base, tuned = pair
    table = weight_table(root / "base", root / "tuned")
    assert set(table["tensor"]) == set(base)
    assert table.schema["layer"] == pl.Int32
    for row in table.iter_rows(named=True):
        name = row["tensor"]
        assert row["numel"] == base[name].numel()
        assert row["base_norm"] == pytest.approx(float(torch.linalg.norm(base[name].double())), rel=1e-12)
        if name in PERTURBED:
            assert row["rel_change"] == pytest.approx(expected_rel(base[name], tuned[name]), rel=1e-10)
            assert row["rel_change"] > 0
        else:
            assert row["rel_change"] == 0.0 and row["delta_norm"] == 0.0
    q = table.filter(pl.col("tensor") == PERTURBED[0]).row(0, named=True)
    assert (q["layer"], q["module_type"], q["family"]) == (0, "q", "llama")
    head = table.filter(pl.col("tensor") == "lm_head.weight").row(0, named=True)
    assert head["layer"] is None and head["module_type"] == "head"


def test_weight_table_sharded_index_matches(pair, tmp_path):
    root, _, _ = pair
    assert (root / "base_sharded" / "model.safetensors.index.json").exists()
    single = weight_table(root / "base", root / "tuned")
    sharded = weight_table(root / "base_sharded", root / "tuned")
    assert sharded.equals(single)


def test_weight_table_streams_in_chunks(pair, monkeypatch):
    root, _, _ = pair
    whole = weight_table(root / "base", root / "tuned")
    monkeypatch.setattr("driftscope.weights.CHUNK_ELEMS", 40)  # a few rows per block
    chunked = weight_table(root / "base", root / "tuned")
    for col in ("base_norm", "delta_norm", "rel_change"):
        assert chunked[col].to_list() == pytest.approx(whole[col].to_list(), rel=1e-12)


def test_weight_summary(pair):
    root, base, tuned = pair
    summary = weight_summary(weight_table(root / "base", root / "tuned"))
    delta_sq = sum(float(((tuned[k].double() - base[k].double()) ** 2).sum()) for k in base)
    base_sq = sum(float((base[k].double() ** 2).sum()) for k in base)
    assert summary["rel_change"] == pytest.approx(math.sqrt(delta_sq / base_sq), rel=1e-10)
    assert summary["n_tensors"] == len(base) and summary["n_changed"] == len(PERTURBED)
    json.dumps(summary)  # JSON-ready
    by_type = {g["module_type"]: g for g in summary["by_module_type"]}
    assert by_type["k"]["rel_change"] == 0.0 and by_type["q"]["mean_rel_change"] > 0
    by_layer = {g["layer"]: g for g in summary["by_layer"]}
    assert set(by_layer) == {0, 1} and by_layer[0]["n_tensors"] == 9


def test_resized_embeddings_compare_shared_rows(pair, tmp_path):
    root, base, _ = pair
    model = tf.LlamaForCausalLM.from_pretrained(root / "base")
    model.resize_token_embeddings(112)
    model.save_pretrained(tmp_path / "resized")
    table = weight_table(root / "base", tmp_path / "resized")
    emb = table.filter(pl.col("tensor") == "model.embed_tokens.weight").row(0, named=True)
    assert "(100, 32) vs (112, 32)" in emb["note"]
    assert emb["numel"] == 100 * 32 and emb["rel_change"] == 0.0  # the first 100 rows are untouched
    assert any("embed_tokens" in n for n in weight_summary(table)["notes"])


def test_tensors_outside_the_blocks_on_one_side_are_noted(pair, tmp_path):
    from safetensors.torch import save_file

    root, base, tuned = pair
    odd = dict(tuned)
    del odd["lm_head.weight"]  # e.g. tied on one side, untied on the other
    odd["extra.weight"] = torch.ones(3)
    (tmp_path / "odd").mkdir()
    save_file(odd, str(tmp_path / "odd" / "model.safetensors"))
    rows = {r["tensor"]: r for r in weight_table(root / "base", tmp_path / "odd").iter_rows(named=True)}
    assert rows["lm_head.weight"]["note"] == "only in base" and rows["lm_head.weight"]["numel"] == 100 * 32
    assert rows["extra.weight"]["note"] == "only in tuned"
    assert rows["model.layers.0.self_attn.q_proj.weight"]["rel_change"] > 0


def _saved(tmp_path, name: str, tensors: dict) -> object:
    from safetensors.torch import save_file

    (tmp_path / name).mkdir()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / name / "model.safetensors"))
    return tmp_path / name


def test_models_of_another_shape_are_refused_naming_the_tensor(pair, tmp_path):
    """Before: "21 of 21 tensors changed" on two unrelated architectures."""
    root, base, _ = pair
    narrow = tf.LlamaForCausalLM(tf.LlamaConfig(**{**LLAMA, "hidden_size": 16, "intermediate_size": 32}))
    narrow.save_pretrained(tmp_path / "narrow")
    with pytest.raises(ModelError, match=r"model\.embed_tokens\.weight is \(100, 32\) in BASE, \(100, 16\) in TUNED"):
        weight_table(root / "base", tmp_path / "narrow")
    reshaped = _saved(tmp_path, "reshaped", {**base, "model.norm.weight": base["model.norm.weight"].reshape(4, 8)})
    with pytest.raises(ModelError, match=r"model\.norm\.weight is \(32,\) in BASE, \(4, 8\) in TUNED"):
        weight_table(root / "base", reshaped)


def test_another_depth_is_refused_naming_the_missing_tensor(pair, tmp_path):
    root, base, _ = pair
    shallow = _saved(tmp_path, "shallow", {k: v for k, v in base.items() if ".layers.1." not in k})
    with pytest.raises(ModelError, match=r"model\.layers\.1\.input_layernorm\.weight \(32,\) is in BASE, not in TUNED"):
        weight_table(root / "base", shallow)
    with pytest.raises(ModelError, match=r"model\.layers\.1\.input_layernorm\.weight \(32,\) is in TUNED, not in BASE"):
        weight_table(shallow, root / "base")


def test_bf16_files_accumulate_in_float64(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(4)
    base = {"w": torch.randn(300, 40).bfloat16(), "b": torch.zeros(40, dtype=torch.bfloat16)}
    tuned = {"w": base["w"] + (1e-2 * torch.randn(300, 40)).bfloat16(), "b": torch.ones(40, dtype=torch.bfloat16)}
    for name, tensors in (("base", base), ("tuned", tuned)):
        (tmp_path / name).mkdir()
        save_file(tensors, str(tmp_path / name / "model.safetensors"))
    rows = {r["tensor"]: r for r in weight_table(tmp_path / "base", tmp_path / "tuned").iter_rows(named=True)}
    assert rows["w"]["rel_change"] == pytest.approx(expected_rel(base["w"], tuned["w"]), rel=1e-12)
    assert math.isinf(rows["b"]["rel_change"]) and rows["b"]["family"] is None  # no config.json
    assert weight_summary(weight_table(tmp_path / "base", tmp_path / "tuned"))["by_module_type"][0]["max_rel_change"] > 0


def test_missing_folder_is_a_model_error(tmp_path):
    with pytest.raises(ModelError):
        weight_table(tmp_path / "nope", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no \\*.safetensors"):
        weight_table(tmp_path / "empty", tmp_path / "empty")


def test_broken_files_are_model_errors(pair, tmp_path):
    """A truncated or corrupted safetensors file and an invalid config.json: before, a
    SafetensorError traceback and a table computed as if nothing were wrong."""
    import shutil

    root, _, _ = pair
    for name, damage in {"truncated": lambda b: b[: len(b) // 2], "garbage": lambda b: b"\xff" * 64 + b[64:]}.items():
        broken = tmp_path / name
        shutil.copytree(root / "tuned", broken)
        (broken / "model.safetensors").write_bytes(damage((broken / "model.safetensors").read_bytes()))
        for base_dir, tuned_dir in ((root / "base", broken), (broken, root / "base")):
            with pytest.raises(ModelError, match=f"{name}/model.safetensors: not a readable safetensors file"):
                weight_table(base_dir, tuned_dir)
    bad = tmp_path / "bad-config"
    shutil.copytree(root / "tuned", bad)
    (bad / "config.json").write_text("{not json")
    for base_dir, tuned_dir in ((root / "base", bad), (bad, root / "base")):
        with pytest.raises(ModelError, match="config.json: not valid JSON"):
            weight_table(base_dir, tuned_dir)


# --- LoRA adapters ----------------------------------------------------------------

def _adapt(model, tmp_path, config: peft.LoraConfig, seed: int = 3):
    """Save model as base, wrap with LoRA (B made nonzero), save the adapter; return
    (base dir, adapter dir, base state, merged state) with merged from peft itself."""
    model.save_pretrained(tmp_path / "base")
    base = state(model)
    pm = peft.get_peft_model(model, config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name or "lora_embedding_A" in name:
                p.copy_(0.1 * torch.randn_like(p))
            elif "modules_to_save" in name:
                p.add_(0.05 * torch.randn_like(p))
    pm.save_pretrained(tmp_path / "adapter")
    merged = state(pm.merge_and_unload())
    return tmp_path / "base", tmp_path / "adapter", base, merged


@pytest.mark.parametrize("rslora", [False, True])
def test_lora_adapter_effective_delta(tmp_path, rslora):
    config = peft.LoraConfig(r=4, lora_alpha=8, use_rslora=rslora, alpha_pattern={"v_proj": 16},
                             target_modules=["q_proj", "v_proj", "gate_proj", "embed_tokens"],
                             modules_to_save=["lm_head"])
    base_dir, adapter_dir, base, merged = _adapt(tiny_llama(), tmp_path, config)
    table = weight_table(base_dir, adapter_dir)
    assert set(table["tensor"]) == set(base)
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert {"model.layers.0.self_attn.v_proj.weight", "model.embed_tokens.weight", "lm_head.weight"} <= changed
    for row in table.iter_rows(named=True):
        name = row["tensor"]
        want = float(torch.linalg.norm(merged[name].double() - base[name].double()))
        assert row["delta_norm"] == pytest.approx(want, abs=1e-5), name
        assert (row["delta_norm"] > 0) == (name in changed), name
        assert row["rel_change"] == pytest.approx(want / float(torch.linalg.norm(base[name].double())), abs=1e-5)
    v = table.filter(pl.col("tensor") == "model.layers.1.self_attn.v_proj.weight").row(0, named=True)
    assert v["note"] == f"LoRA r=4 scaling={lora_scaling(16, 4, rslora):g}"  # alpha_pattern honoured


def test_lora_factors_reproduce_merge(tmp_path):
    """lora_delta on the saved factors equals peft's merged-minus-base, element for element."""
    from safetensors.torch import load_file

    config = peft.LoraConfig(r=2, lora_alpha=6, target_modules=["o_proj", "down_proj"])
    _, adapter_dir, base, merged = _adapt(tiny_llama(), tmp_path, config)
    factors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    for layer in (0, 1):
        for module in ("self_attn.o_proj", "mlp.down_proj"):
            key = f"base_model.model.model.layers.{layer}.{module}"
            delta = lora_delta(factors[f"{key}.lora_A.weight"], factors[f"{key}.lora_B.weight"], lora_scaling(6, 2))
            name = f"model.layers.{layer}.{module}.weight"
            torch.testing.assert_close(delta.float(), merged[name] - base[name], atol=1e-5, rtol=0)


def test_lora_gpt2_conv1d_fan_in_fan_out(tmp_path):
    torch.manual_seed(0)
    model = tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, **IDS)).eval()
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True)
    base_dir, adapter_dir, base, merged = _adapt(model, tmp_path, config)
    table = weight_table(base_dir, adapter_dir)
    rows = {r["tensor"]: r for r in table.iter_rows(named=True)}
    for name in ("transformer.h.0.attn.c_attn.weight", "transformer.h.1.mlp.c_fc.weight"):
        key = name if name in rows else name.removeprefix("transformer.")
        want = float(torch.linalg.norm(merged[name].double() - base[name].double()))
        assert want > 0 and rows[key]["delta_norm"] == pytest.approx(want, abs=1e-5)
        assert rows[key]["module_type"] == ("qkv" if "c_attn" in name else "up")
    assert sum(r["delta_norm"] > 0 for r in rows.values()) == 4


def test_dora_adapter_is_refused(tmp_path):
    config = peft.LoraConfig(r=2, target_modules=["q_proj"], use_dora=True)
    base_dir, adapter_dir, _, _ = _adapt(tiny_llama(), tmp_path, config)
    with pytest.raises(ModelError, match="DoRA"):
        weight_table(base_dir, adapter_dir)


def test_adapter_for_another_base_names_the_delta_and_tensor_shapes(tmp_path):
    config = peft.LoraConfig(r=2, target_modules=["q_proj"])
    _, adapter_dir, _, _ = _adapt(tf.LlamaForCausalLM(tf.LlamaConfig(**{**LLAMA, "hidden_size": 16})), tmp_path, config)
    tiny_llama().save_pretrained(tmp_path / "wide")
    with pytest.raises(ModelError, match=r"LoRA delta of model\.layers\.0\.self_attn\.q_proj\.weight is \(16, 16\), "
                                         r"the tensor is \(32, 32\)"):
        weight_table(tmp_path / "wide", adapter_dir)


def test_adapter_folders_that_weights_cannot_read_are_refused(tmp_path):
    from safetensors.torch import load_file

    base_dir, adapter_dir, _, _ = _adapt(tiny_llama(), tmp_path, peft.LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ModelError, match="is a PEFT adapter, not a full checkpoint"):
        weight_table(adapter_dir, base_dir)
    torch.save(load_file(str(adapter_dir / "adapter_model.safetensors")), adapter_dir / "adapter_model.bin")
    (adapter_dir / "adapter_model.safetensors").unlink()
    with pytest.raises(ModelError, match=r"no adapter_model.safetensors in .* \(only adapter_model.bin, a pickle\)"):
        weight_table(base_dir, adapter_dir)
