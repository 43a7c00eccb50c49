"""The base captured once: --sequential and `capture` + --base-cache against the
paired run on tiny real models. KL within its reported bound, every other figure
as the paired run's; a cache that does not match is refused in one line."""

import gc
import json
import subprocess
import sys
import weakref

import pytest
from typer.testing import CliRunner

import driftscope
from driftscope.cli import app
from driftscope.models import load_base

EXACT = ("entropy_base", "entropy_tuned", "p_gold", "q_gold")


@pytest.fixture(scope="module")
def runs(family, tmp_path_factory):
    """The same comparison three ways: paired, sequential, against a cache written by another process."""
    root = tmp_path_factory.mktemp("cached")
    tuned = [family["tuned"], family["lora"]]
    common = dict(out=root / "runs", html=False, layers=False)
    paired = driftscope.compare(family["base"], tuned, ["general"], name="paired", **common)
    sequential = driftscope.compare(family["base"], tuned, ["general"], name="sequential", sequential=True, **common)
    cache = root / "cache"
    done = subprocess.run([sys.executable, "-m", "driftscope", "capture", str(family["base"]), "--probes", "general", "--out", str(cache)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    cached = driftscope.compare(family["base"], tuned, ["general"], name="cached", base_cache=cache, **common)
    return {"paired": paired, "sequential": sequential, "cached": cached, "cache": cache, "root": root}


def figures(run, label):
    return next(c["figures"] for c in run.summary["checkpoints"] if c["label"] == label)


@pytest.mark.parametrize("way", ["sequential", "cached"])
@pytest.mark.parametrize("label", ["tuned", "lora"])
def test_figures_equal_the_paired_run_within_the_bound(runs, way, label):
    a, b = figures(runs[way], label), figures(runs["paired"], label)
    bound = a["kl_cache_bound"]
    assert "kl_cache_bound" not in b and 0 <= bound["mean"] <= bound["max"]
    assert abs(a["kl"]["mean"] - b["kl"]["mean"]) <= bound["mean"] + 1e-9
    assert abs(a["kl"]["max"] - b["kl"]["max"]) <= bound["max"] + 1e-9
    assert a["kl"]["mean"] == pytest.approx(b["kl"]["mean"], rel=0.05)  # the bound is not vacuous here
    for name, c in b["classes"].items():  # class masses are exact
        assert a["classes"][name]["shift"] == pytest.approx(c["shift"], abs=1e-9), name
    for key in EXACT:
        assert a[key]["mean"] == pytest.approx(b[key]["mean"], rel=1e-9, abs=1e-12), key
    assert a["top1_agreement"] == b["top1_agreement"]
    for key in ("accuracy_base", "accuracy_tuned", "accuracy_corrected", "verdict", "n_items"):
        assert a[key] == b[key], key


def test_positions_bound_their_kl_row_by_row(runs):
    cached = runs["cached"].tables["positions"].sort("checkpoint", "probe_index", "offset")
    paired = runs["paired"].tables["positions"].sort("checkpoint", "probe_index", "offset")
    assert cached.height == paired.height
    assert (cached["top1_agree"] == paired["top1_agree"]).all()
    assert ((cached["kl"] - paired["kl"]).abs().max()) <= figures(runs["cached"], "tuned")["kl_cache_bound"]["max"] + \
        figures(runs["cached"], "lora")["kl_cache_bound"]["max"]


def test_a_cache_from_another_process_scores_as_the_in_memory_one(runs):
    for label in ("tuned", "lora"):
        a, b = figures(runs["cached"], label), figures(runs["sequential"], label)
        assert a["kl"] == b["kl"] and a["classes"] == b["classes"] and a["verdict"] == b["verdict"]


def test_the_run_says_how_it_was_scored(runs):
    assert runs["paired"].summary["settings"]["scoring"] == "paired"
    assert runs["cached"].summary["settings"]["scoring"] == "base-cache"
    assert any("no layer figures" in n for n in runs["sequential"].summary["notes"])
    assert runs["cached"].tables.get("weights") is not None  # BASE given: weights compared


def test_without_base_full_checkpoints_score_against_the_cache(runs, family, tmp_path):
    r = driftscope.compare(None, [family["tuned"]], ["general"], base_cache=runs["cache"], out=tmp_path, html=False)
    assert figures(r, "tuned")["kl"] == figures(runs["cached"], "tuned")["kl"]
    assert r.summary["models"]["base"]["kind"] == "cache"
    assert "not compared" in figures(r, "tuned")["weights"]["note"]


def test_release_frees_the_model(family):
    ck = load_base(family["base"])
    ref = weakref.ref(ck.model)
    ck.release()
    gc.collect()
    assert ref() is None and ck.device_dtype()[1] is not None


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_exit_2(result, *needles):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for n in needles:
        assert n in " ".join(result.output.split()), result.output


def test_bad_caches_are_refused_in_one_line(runs, family, tmp_path):
    cache, out = runs["cache"], tmp_path / "runs"
    one_line_exit_2(cli("compare", family["base"], family["tuned"], "--base-cache", cache, "--probes", "arithmetic",
                        "--out", out), "does not match this run: suites")
    one_line_exit_2(cli("compare", family["tuned"], family["tuned"], "--base-cache", cache, "--seed", "3", "--out", out),
                    "does not match this run")
    one_line_exit_2(cli("compare", family["base"], family["tuned"], "--base-cache", cache, "--sequential", "--out", out),
                    "--sequential with --base-cache", "drop --sequential")
    one_line_exit_2(cli("compare", family["lora"], "--base-cache", cache, "--out", out), "an adapter needs its base model")
    one_line_exit_2(cli("compare", family["base"], family["tuned"], "--base-cache", tmp_path / "nothing", "--out", out),
                    "no base cache at")
    assert not out.exists() or not any(out.iterdir())


def test_a_truncated_cache_is_refused(runs, family, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(runs["cache"], broken)
    tensors = broken / "base.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-100])
    one_line_exit_2(cli("compare", family["base"], family["tuned"], "--base-cache", broken, "--out", tmp_path / "r"),
                    "truncated or corrupted")


def test_capture_refuses_an_existing_cache(runs, family):
    one_line_exit_2(cli("capture", family["base"], "--out", runs["cache"]), "already exists", "--overwrite")
    manifest = json.loads((runs["cache"] / "manifest.json").read_text())
    assert manifest["fingerprint"] and manifest["tokenizer"] and manifest["inputs"]
