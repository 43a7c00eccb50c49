"""Broken, foreign and unsafe model folders: one line and exit 2, or one warning line
and the run goes on; never a traceback, never a hub call, never an unchecked pickle."""

from __future__ import annotations

import json
import logging
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from driftscope.cli import app
from driftscope.errors import ModelError
from driftscope.models import load_base, load_tuned

runner = CliRunner()
HUB_ID = "meta-llama/Llama-3-8B"


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def assert_one_line_error(result, *needles):
    """Exit 2 with `error: reason` (and its hint line) and nothing else printed."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error: ") and len(lines) <= 2, result.output
    for needle in needles:
        assert needle in lines[0], result.output


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _narrow_llama(tokenizer_dir: Path, out: Path) -> Path:
    """A tiny Llama of half the width of the family's, with the same tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=False, eos_token_id=0, pad_token_id=1, bos_token_id=None)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


class _Payload:
    """Unpickling this touches a file: what a hostile adapter_model.bin would do, harmlessly."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@pytest.fixture(scope="module")
def bad(family, tmp_path_factory) -> dict[str, Path]:
    """Broken and foreign folders made from the tiny family."""
    from safetensors.torch import load_file

    root = tmp_path_factory.mktemp("bad-models")
    out = {"empty": root / "empty"}
    out["empty"].mkdir()
    out["truncated"] = _copy(family["tuned"], root / "truncated")
    weights = out["truncated"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    out["corrupted"] = _copy(family["tuned"], root / "corrupted")
    weights = out["corrupted"] / "model.safetensors"
    weights.write_bytes(b"\xff" * 16 + weights.read_bytes()[16:])
    out["invalid-config"] = _copy(family["tuned"], root / "invalid-config")
    (out["invalid-config"] / "config.json").write_text('{"model_type": "llama", "hidden_size": ')
    out["config-not-weights"] = _copy(family["tuned"], root / "config-not-weights")
    _edit_json(out["config-not-weights"] / "config.json", num_hidden_layers=3)
    out["no-tokenizer"] = _copy(family["base"], root / "no-tokenizer")
    for f in out["no-tokenizer"].iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            f.unlink()
    out["narrow"] = _narrow_llama(family["base"], root / "narrow")
    out["pickle-adapter"] = _copy(family["lora"], root / "pickle-adapter")
    torch.save(load_file(out["pickle-adapter"] / "adapter_model.safetensors"), out["pickle-adapter"] / "adapter_model.bin")
    (out["pickle-adapter"] / "adapter_model.safetensors").unlink()
    out["hub-adapter"] = _copy(family["lora"], root / "hub-adapter")
    _edit_json(out["hub-adapter"] / "adapter_config.json", base_model_name_or_path=HUB_ID)
    out["sibling-adapter"] = _copy(family["lora"], root / "sibling-adapter")  # names family["base"] too
    out["suite"] = root / "suite.jsonl"
    out["suite"].write_text("".join(json.dumps(p) + "\n" for p in [
        {"id": "a", "prompt": "The capital of France is", "answer": "Paris"},
        {"id": "b", "prompt": "Q: What is 2 plus 3?\nA:", "answer": "5"},
    ]))
    return out


def compare(family, bad, base, tuned, out: Path, *extra):
    return cli("compare", base, tuned, "--out", out, "--probes", bad["suite"], "--no-html", "--no-layers", *extra)


# --- broken folders: one line, exit 2, nothing written -------------------------------

BROKEN = {  # folder -> what the one line says, for compare and for weights (None: weights reads it fine)
    "truncated": ("model.safetensors: not a readable safetensors file",) * 2,
    "corrupted": ("model.safetensors: not a readable safetensors file",) * 2,
    "invalid-config": ("is not a valid JSON file", "config.json: not valid JSON"),
    "config-not-weights": ("the weights lack model.layers.2.", None),
    "empty": ("not a model folder",) * 2,
    "no-tokenizer": ("no tokenizer files", None),
}


@pytest.mark.parametrize("side", ["BASE", "TUNED"])
@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_folder_is_one_line_for_compare(family, bad, tmp_path, name, side):
    if name == "no-tokenizer" and side == "TUNED":
        pytest.skip("a TUNED folder without a tokenizer uses BASE's, by design")
    base, tuned = (bad[name], family["tuned"]) if side == "BASE" else (family["base"], bad[name])
    assert_one_line_error(compare(family, bad, base, tuned, tmp_path / "runs"), str(bad[name]), BROKEN[name][0])
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("side", ["BASE", "TUNED"])
@pytest.mark.parametrize("name", [n for n, (_, weights) in BROKEN.items() if weights])
def test_broken_folder_is_one_line_for_weights(family, bad, tmp_path, name, side):
    base, tuned = (bad[name], family["tuned"]) if side == "BASE" else (family["base"], bad[name])
    parquet = tmp_path / "w.parquet"
    assert_one_line_error(cli("weights", base, tuned, "--parquet", parquet), str(bad[name]), BROKEN[name][1])
    assert not parquet.exists()


def test_config_that_does_not_fit_the_weights_names_the_tensor(bad):
    """Before: transformers initialised the missing layer at random and printed a multi-line report."""
    with pytest.raises(ModelError, match=r"the weights lack model\.layers\.2\.\S+ \(9 tensors missing\)"):
        load_base(bad["config-not-weights"], "cpu")
    wider = bad["config-not-weights"].parent / "wider-config"
    _copy(bad["config-not-weights"], wider)
    _edit_json(wider / "config.json", num_hidden_layers=2, intermediate_size=128)
    with pytest.raises(ModelError, match=r"model\.layers\.0\.mlp\.down_proj\.weight is \(32, 64\) in the weights, "
                                         r"\(32, 128\) by config\.json"):
        load_base(wider, "cpu")


# --- models of another shape ---------------------------------------------------------

def test_wrong_base_adapter_names_the_tensor_and_both_shapes(family, bad, tmp_path):
    """Before: "... (Error(s) in loading state_dict for PeftModel:)", with neither tensor nor shapes."""
    r = compare(family, bad, bad["narrow"], family["lora"], tmp_path / "runs")
    assert_one_line_error(r, "adapter does not fit the base model",
                          "model.layers.0.self_attn.q_proj.lora_A.weight is (4, 32) in the adapter, (4, 16) on the base")


def test_weights_refuses_models_of_another_shape(family, bad, tmp_path):
    """Before: "21 of 21 tensors changed". compare goes on (the distributions compare fine) and says why
    there are no weight figures."""
    V = len(json.loads((family["base"] / "tokenizer.json").read_text())["model"]["vocab"])
    shapes = f"model.embed_tokens.weight is ({V}, 32) in BASE, ({V}, 16) in TUNED"
    assert_one_line_error(cli("weights", family["base"], bad["narrow"]), "differ in shape", shapes)
    r = compare(family, bad, family["base"], bad["narrow"], tmp_path / "runs", "--name", "narrow")
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "runs" / "narrow" / "summary.json").read_text())
    assert shapes in summary["checkpoints"][0]["figures"]["weights"]["note"]


# --- adapters naming another base ----------------------------------------------------

@contextmanager
def printed_logs():
    """Logging as the CLI user has it: no handler on the root logger (pytest installs its own),
    so a warning reaches stderr through logging's last-resort handler, message only."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()
    try:
        yield
    finally:
        root.handlers[:] = saved


def _warnings(output: str, needle: str) -> list[str]:
    return [line for line in output.splitlines() if needle in line]


def test_adapter_naming_a_hub_model_warns_once_and_goes_on(family, bad, tmp_path):
    with printed_logs():
        r = compare(family, bad, family["base"], bad["hub-adapter"], tmp_path / "runs", "--name", "hub")
    assert r.exit_code == 0, r.output
    lines = _warnings(r.output, HUB_ID)
    assert lines == [f"adapter {bad['hub-adapter']} names base model {HUB_ID!r}, but BASE is {family['base']}: "
                     "applied to it anyway (check it is the model the adapter was trained on)"], r.output
    summary = json.loads((tmp_path / "runs" / "hub" / "summary.json").read_text())
    assert summary["models"]["tuned"][0]["warning"] == lines[0]
    assert summary["notes"][0] == lines[0]


def test_adapter_on_its_own_base_or_an_identical_copy_says_nothing(family, caplog):
    base = load_base(family["base"], "cpu")
    copy = load_base(family["copy"], "cpu")  # the same weights and configs, another folder
    with caplog.at_level(logging.WARNING, logger="driftscope"):
        assert load_tuned(family["lora"], base).warning is None
        assert load_tuned(family["lora"], copy).warning is None
    assert not caplog.records


def test_adapter_as_base_is_merged_and_said(family, bad, tmp_path):
    """BASE an adapter: merged into the base it names, said in one line and in summary.json. A sibling
    adapter given as TUNED goes on the plain base (M+A against M+A here: no drift), not on top of BASE's."""
    with printed_logs():
        r = compare(family, bad, family["lora"], bad["sibling-adapter"], tmp_path / "runs", "--name", "adapter-base")
    assert r.exit_code == 0, r.output
    lines = _warnings(r.output, "is a PEFT adapter")
    assert lines == [f"BASE {family['lora']} is a PEFT adapter: compared as merged into the base model it names, "
                     f"{family['base']}"], r.output
    summary = json.loads((tmp_path / "runs" / "adapter-base" / "summary.json").read_text())
    assert summary["models"]["base"]["warning"] == lines[0] and summary["notes"] == lines
    assert "warning" not in summary["models"]["tuned"][0]
    assert summary["checkpoints"][0]["figures"]["kl"]["max"] < 1e-6


# --- pickles ----------------------------------------------------------------------------

def test_pickle_adapter_needs_allow_pickle(family, bad, tmp_path):
    """Before: adapter_model.bin loaded through peft without the flag."""
    r = compare(family, bad, family["base"], bad["pickle-adapter"], tmp_path / "runs")
    assert_one_line_error(r, "adapter weights are a pickle file (adapter_model.bin), not safetensors")
    assert "--allow-pickle" in r.output
    base = load_base(family["base"], "cpu")
    pickled = load_tuned(bad["pickle-adapter"], base, allow_pickle=True)
    safe = load_tuned(family["lora"], base)
    ids = torch.tensor([[5, 17, 42, 9]])
    torch.testing.assert_close(pickled.model(ids).logits, safe.model(ids).logits, rtol=0, atol=0)


def test_allow_pickle_loads_adapters_with_weights_only(family, bad, tmp_path):
    hostile = _copy(bad["pickle-adapter"], tmp_path / "hostile")
    marker = tmp_path / "unpickled"
    state = torch.load(hostile / "adapter_model.bin", weights_only=True)
    torch.save({**state, "payload": _Payload(marker)}, hostile / "adapter_model.bin")
    base = load_base(family["base"], "cpu")
    with pytest.raises(ModelError, match="adapter_model.bin: refused by weights_only loading"):
        load_tuned(hostile, base, allow_pickle=True)
    assert not marker.exists()


# --- offline -----------------------------------------------------------------------------

def test_loading_never_reaches_a_hub(family, tmp_path, monkeypatch):
    """Offline by default in the library, not only under the tests' HF_HUB_OFFLINE: with the hub's
    offline switch off and every connection refused, local folders load, fast. Relative folder names
    look like hub ids; an adapter folder missing its weights made peft ask the hub for them."""
    import socket

    import huggingface_hub.constants

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("the test allows no network")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for name in ("base", "tuned", "lora"):
        _copy(family[name], tmp_path / name)
    (_copy(family["lora"], tmp_path / "weightless") / "adapter_model.safetensors").unlink()
    monkeypatch.chdir(tmp_path)
    started = time.perf_counter()
    base = load_base("base", "cpu")
    assert load_tuned("tuned", base).kind == "model" and load_tuned("lora", base).kind == "adapter"
    with pytest.raises(ModelError, match="no adapter weights"):
        load_tuned("weightless", base)
    assert attempts == []
    assert time.perf_counter() - started < 10
