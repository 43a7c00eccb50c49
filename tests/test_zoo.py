"""The zoo: a tiny world, base and fine-tunes with known truth, and the
diagnosis held to that truth.

One small zoo is built per session (well under a minute on two cores); the
demo's settings are the defaults of `demo_config()`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from driftscope.probes import load_suite
from driftscope.zoo import build_zoo, list_zoos, load_manifest, small_config, zoo_path
from driftscope.zoo import world as wd
from driftscope.zoo.build import config_key
from driftscope.zoo.tokenizer import encode


@pytest.fixture(scope="session")
def zoo(tmp_path_factory) -> Path:
    return build_zoo("small", cache_dir=tmp_path_factory.mktemp("zoo-cache"))


@pytest.fixture(scope="session")
def manifest(zoo) -> dict:
    return load_manifest(zoo)


@pytest.fixture(scope="session")
def diagnosis(manifest, tmp_path_factory) -> dict[str, dict]:
    """compare() over every variant on the held-out suites: variant name -> figures."""
    from driftscope.run import compare

    result = compare(
        manifest["base"]["path"],
        [v["path"] for v in manifest["variants"]],
        [manifest["suites"][s] for s in manifest["heldout_suites"]],
        out=tmp_path_factory.mktemp("zoo-reports"),
        name="zoo-test",
    )
    checkpoints = result.summary["checkpoints"]
    assert len(checkpoints) == len(manifest["variants"])
    return {v["name"]: c["figures"] for v, c in zip(manifest["variants"], checkpoints)}


def variant(manifest: dict, name: str) -> dict:
    return next(v for v in manifest["variants"] if v["name"] == name)


# -- the world ------------------------------------------------------------------


def test_world_is_a_function_of_its_seed():
    cfg = small_config().world
    assert wd.make_world(cfg) == wd.make_world(cfg)
    other = wd.make_world(cfg.__class__(**{**cfg.__dict__, "seed": 1}))
    assert other.facts != wd.make_world(cfg).facts


def test_heldout_probes_never_appear_in_training():
    world = wd.make_world(small_config().world)
    trained = {ex.text for src in wd.base_corpus(world).values() for ex in src}
    trained_prompts = {ex.prompt for src in wd.base_corpus(world).values() for ex in src}
    trained_prompts |= {ex.prompt for ex in wd.target_train(world, seed=4)}
    for name, (_, rows) in wd.suite_rows(world).items():
        for r in rows:
            assert r["prompt"] not in trained_prompts, (name, r["prompt"])
            assert f"{r['prompt']} {r['answer']}" not in trained


# -- the checkpoints ------------------------------------------------------------


def test_base_is_tiny_and_loads_offline(manifest):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = manifest["base"]["path"]
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    cfg = model.config
    assert cfg.model_type == "llama"
    h, i, v, layers = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_hidden_layers
    expected = 2 * v * h + layers * (4 * h * h + 3 * h * i + 2 * h) + h  # embed + head, q/k/v/o, gate/up/down, norms
    n = sum(p.numel() for p in model.parameters())
    assert n == expected == manifest["base"]["parameters"]
    assert n < 100_000
    names = {name for name, _ in model.named_parameters()}
    for part in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert f"model.layers.0.self_attn.{part}.weight" in names or f"model.layers.0.mlp.{part}.weight" in names
    vocab_ids = tok.get_vocab()
    text = "Q: what colour is the zorp ? A: red"
    assert tok(text)["input_ids"] == encode(vocab_ids, text)
    prompt = text.rsplit(" ", 1)[0]
    assert tok(text)["input_ids"][: len(tok(prompt)["input_ids"])] == tok(prompt)["input_ids"]


def test_every_variant_is_a_normal_folder(manifest):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    for v in manifest["variants"]:
        folder = Path(v["path"])
        assert (folder / "tokenizer.json").is_file()
        if v["kind"] == "adapter":
            assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
            config = json.loads((folder / "adapter_config.json").read_text())
            assert config["base_model_name_or_path"] == manifest["base"]["path"]
            base = AutoModelForCausalLM.from_pretrained(manifest["base"]["path"])
            model = PeftModel.from_pretrained(base, str(folder))
        else:
            assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
            model = AutoModelForCausalLM.from_pretrained(str(folder))
        with torch.no_grad():
            assert torch.isfinite(model(input_ids=torch.tensor([[2, 5, 6]])).logits).all()


def test_probe_suites_load_and_answers_are_one_token(manifest):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(manifest["base"]["path"])
    unk = tok.unk_token_id
    for name, path in manifest["suites"].items():
        suite = load_suite(path)
        assert suite.name == name and len(suite) >= 10
        for p in suite.probes:
            assert not p.prompt.endswith(" ") and p.prompt.endswith("A:")
            ids = tok(p.answer, add_special_tokens=False)["input_ids"]
            assert len(ids) == 1 and ids[0] != unk
            assert unk not in tok(p.prompt)["input_ids"]


def test_the_base_knows_its_world(manifest):
    figures = manifest["base"]["figures"]
    assert figures["zoo-facts-mc"]["accuracy"] >= 0.85
    assert figures["zoo-facts-free"]["accuracy"] >= 0.8
    assert figures["zoo-counting"]["accuracy"] >= 0.85
    assert figures["zoo-facts-free"]["numeric_mass"] < 0.05


def test_manifest_records_recipe_and_truth(manifest):
    truths = {v["name"]: v["truth"] for v in manifest["variants"]}
    assert truths["control-continue"] == "stable"
    assert truths["control-rewrite"] == "knowledge-loss"
    assert truths["control-offset"] == "output-bias"
    assert {"full", "attn", "mlp-gate-up", "lora"} <= set(truths)
    for v in manifest["variants"]:
        assert v["recipe"]["name"] == v["name"] and v["recipe"]["description"]


def test_controls_do_what_they_say(manifest):
    """The zoo's own plain-torch figures, independent of compare."""
    base = manifest["base"]["figures"]
    cont = variant(manifest, "control-continue")["figures"]
    rewrite = variant(manifest, "control-rewrite")["figures"]
    offset = variant(manifest, "control-offset")["figures"]
    assert abs(cont["zoo-facts-mc"]["accuracy"] - base["zoo-facts-mc"]["accuracy"]) <= 0.08
    assert rewrite["zoo-facts-mc"]["accuracy"] <= base["zoo-facts-mc"]["accuracy"] - 0.2
    # a numeric offset cannot change a choice among non-numbers, nor among numbers
    for suite in ("zoo-facts-mc", "zoo-counting", "zoo-arithmetic"):
        assert offset[suite]["accuracy"] == base[suite]["accuracy"]
    assert offset["zoo-facts-free"]["accuracy"] <= base["zoo-facts-free"]["accuracy"] - 0.3


def test_cache_is_reused_and_keyed_by_config(zoo, tmp_path_factory):
    cache = zoo.parent
    stamp = (zoo / "manifest.json").stat().st_mtime
    t0 = time.perf_counter()
    assert build_zoo("small", cache_dir=cache) == zoo
    assert time.perf_counter() - t0 < 1.0 and (zoo / "manifest.json").stat().st_mtime == stamp
    assert zoo_path("small", cache_dir=cache) == zoo
    assert [z["path"] for z in list_zoos(cache)] == [str(zoo)]
    cfg = small_config()
    assert config_key(cfg) != config_key(cfg.__class__(**{**cfg.__dict__, "rewrite_share": 0.4}))


def test_cache_dir_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DRIFTSCOPE_CACHE", str(tmp_path / "c"))
    assert zoo_path("small").parent == tmp_path / "c"


# -- the diagnosis held to the truth ----------------------------------------------


@pytest.mark.parametrize("name", ["control-continue", "control-rewrite", "control-offset"])
def test_control_verdict_equals_truth(diagnosis, manifest, name):
    assert diagnosis[name]["verdict"] == variant(manifest, name)["truth"]


@pytest.mark.parametrize("other", ["attn", "mlp-gate-up"])
def test_full_tune_drifts_to_numbers_and_forgets_more(diagnosis, other):
    full, part = diagnosis["full"], diagnosis[other]
    assert full["classes"]["numeric"]["shift"] > part["classes"]["numeric"]["shift"]
    assert full["accuracy_change"] < part["accuracy_change"]


@pytest.mark.parametrize("name, component", [("attn", "attn"), ("mlp-gate-up", "mlp")])
def test_where_names_the_component_whose_own_weights_changed(diagnosis, name, component):
    """Issue 16: "where" names the tuned component by its OWN change, not an
    MLP whose output moved only because its input did."""
    where = diagnosis[name]["layers"]
    assert where["own_component"] == component, where["sentence"]
    assert where["own_reaches_threshold"]


def test_a_pure_output_shift_is_recovered_and_a_rewrite_is_not(diagnosis):
    """Issue 3's truths by construction: an offset on the output is output bias
    with (nearly) all of the drop recovered; rewritten facts stay lost."""
    offset, rewrite = diagnosis["control-offset"], diagnosis["control-rewrite"]
    assert offset["accuracy_change"] < -0.1 and offset["recovered"] >= 0.9
    assert offset["classes"]["numeric"]["shift"] > 0.1
    assert rewrite["accuracy_change"] < -0.1 and rewrite["recovered"] < 0.2
    # The overall sentence a reviewer reads says so.
    assert "output bias, not lost knowledge" in offset["verdict_sentence"]
    assert "lost knowledge" in rewrite["verdict_sentence"]


def test_an_identical_copy_reads_stable(manifest):
    from driftscope.run import compare

    base = manifest["base"]["path"]
    f = compare(base, [base], [manifest["suites"]["zoo-facts-free"]], out=None, layers=False, weights=False).figures()
    assert f["kl"]["max"] == 0 and f["accuracy_change"] == 0
    assert f["verdict"] == "stable", f["verdict_reason"]


def test_no_answers_gives_drift_only_with_a_note(manifest, tmp_path):
    from driftscope.run import compare

    src = load_suite(manifest["suites"]["zoo-facts-free"])
    bare = tmp_path / "no-answers.jsonl"
    bare.write_text("".join(json.dumps({"id": p.id, "prompt": p.prompt}) + "\n" for p in src.probes))
    full = variant(manifest, "full")["path"]
    f = compare(manifest["base"]["path"], [full], [bare], out=None, layers=False).figures()
    assert f["kl"]["mean"] > 0 and f["verdict"] == "no-answers"
    assert "accuracy and the verdict need answers" in f["verdict_sentence"]


def test_demo_command_prints_every_variant_in_80_columns(zoo, tmp_path):
    from typer.testing import CliRunner

    from driftscope.cli import app

    res = CliRunner().invoke(app, ["demo", "--size", "small", "--cache", str(zoo.parent), "--out", str(tmp_path)],
                             env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    manifest = load_manifest(zoo)
    for v in manifest["variants"]:  # a table row, then the recipe under the table
        assert any(line.split()[:1] == [v["name"]] for line in lines), v["name"]
        assert any(line.strip().startswith(f"{v['name']}: ") for line in lines), v["name"]
    assert "controls diagnosed right: 3 of 3" in res.output
    for v in manifest["variants"]:  # no cryptic "-": a variant without a truth says it is an experiment
        row = next(line for line in lines if line.split()[:1] == [v["name"]])
        assert row.split()[-1] == ("experiment" if v["truth"] is None else "ok"), row
    assert (tmp_path / "zoo-small" / "report.html").is_file()
