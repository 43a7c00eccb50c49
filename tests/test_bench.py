"""The benchmark command and the per-phase peak memory it reports."""

import json
import platform

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from driftscope.cli import app
from driftscope.memory import PhasePeaks, release_free_memory


def _rss_anon_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise OSError("no RssAnon")


def test_phase_peaks_measure_each_phase_on_its_own():
    m = PhasePeaks()
    if not m.resettable:
        pytest.skip("this OS cannot reset a process's peak memory")
    big = np.ones(256 * 2**20 // 8)  # 256 MiB, every page written
    del big
    m.mark("big")
    m.mark("small")
    assert m.peaks["big"] - m.peaks["small"] > 200
    assert m.peaks["run"] == m.peaks["big"]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_memory_pinned_below_a_live_block_goes_back_to_the_os():
    blocks = [np.ones(100 * 1024 // 8) for _ in range(3000)]  # 300 MB of heap blocks (under the mmap threshold)
    pinned = blocks[::16]  # every 16th outlives the rest, as table rows outlive a batch
    del blocks
    before = _rss_anon_mb()
    release_free_memory()
    assert before - _rss_anon_mb() > 150
    assert len(pinned) == 188


def test_bench_times_both_passes_and_reports_memory(family, tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "tmpdir"  # where $TMPDIR would be: the probe files go there, and must not stay
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(app, ["bench", str(family["base"]), str(family["tuned"]), "--sizes", "4,8",
                                   "--batch-size", "4", "--no-accuracy", "--repeat", "2", "--json", str(out),
                                   "--no-peers"])
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())
    assert [r["probes"] for r in rows] == [4, 8] and [r["batches"] for r in rows] == [1, 2]
    for r in rows:
        for one in r["runs"]:  # each run's own ratio; the row holds the medians
            assert one["bare_s"] > 0 and one["drift_s"] > 0 and one["ratio"] == pytest.approx(one["drift_s"] / one["bare_s"])
        assert r["ratio"] == pytest.approx(np.median([one["ratio"] for one in r["runs"]]))
        assert 0 < r["drift_pass_peak_mb"] <= r["compare_peak_mb"] and 0 < r["bare_pass_peak_mb"] <= r["bare_peak_mb"]
        assert r["tables_mb"] > 0 and r["accuracy_s"] == 0
        assert r["repeat"] == 2 and len(r["runs"]) == 2
        lo, hi = r["drift_pass_peak_range_mb"]
        assert lo <= r["drift_pass_peak_mb"] <= hi and [lo, hi] == sorted(x["drift_pass_peak_mb"] for x in r["runs"])
        if platform.system() == "Linux":  # resident size after the first and the last batch
            assert abs(r["drift_retained_mb"]) < 100
    assert "from 4 to 8 probes" in res.output and "8 probes" in res.output and "range over runs" in res.output
    assert list(scratch.iterdir()) == []  # no driftscope-bench-* folder left behind


def test_bench_models_without_a_gguf_is_bad_input_and_writes_nothing(tmp_path):
    res = CliRunner().invoke(app, ["bench-models", str(tmp_path / "pair"), "--gguf", str(tmp_path / "none.gguf")])
    assert res.exit_code == 2 and "no SmolLM2 GGUF" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "pair").exists()


def test_bench_rejects_bad_sizes(family):
    for sizes in ("ten", "0"):
        res = CliRunner().invoke(app, ["bench", str(family["base"]), str(family["tuned"]), "--sizes", sizes])
        assert res.exit_code == 2 and "--sizes" in res.output
    res = CliRunner().invoke(app, ["bench", str(family["base"]), str(family["tuned"]), "--mmap-threshold-kb", "0"])
    assert res.exit_code == 2 and "--mmap-threshold-kb 0" in res.output


def test_bench_json_that_cannot_be_written_fails_before_measuring(family, tmp_path):
    res = CliRunner().invoke(app, ["bench", str(family["base"]), str(family["tuned"]), "--json", str(tmp_path)])
    assert res.exit_code == 2 and f"--json {tmp_path} is a folder" in res.output and "measured" not in res.output


def test_bench_mmap_threshold_reaches_both_workers(family, tmp_path):
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(app, ["bench", str(family["base"]), str(family["tuned"]), "--sizes", "4", "--batch-size", "4",
                                   "--no-accuracy", "--mmap-threshold-kb", "128", "--json", str(out), "--no-peers"])
    assert res.exit_code == 0, res.output
    (row,) = json.loads(out.read_text())
    assert row["mmap_threshold_kb"] == 128 and row["runs"][0]["mmap_threshold_kb"] == 128  # what both workers saw (they must agree)
    assert "MALLOC_MMAP_THRESHOLD_" in res.output  # in the table title


def test_bench_peers_time_the_hand_written_loop_and_compare_without_layers(family, tmp_path):
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(app, ["bench", str(family["base"]), str(family["copy"]), "--sizes", "6", "--batch-size", "4",
                                   "--no-accuracy", "--json", str(out)])
    assert res.exit_code == 0, res.output
    (row,) = json.loads(out.read_text())
    for key in ("handwritten_s", "handwritten_load_s", "compare_load_s", "drift_no_layers_s", "capture_s",
                "cached_score_s", "bare_base_s", "bare_tuned_s"):
        assert row[key] > 0, key
    assert row["bare_base_s"] + row["bare_tuned_s"] <= row["bare_s"]
    assert 0 < row["cache_size_ratio"]
    assert row["choice_run_s"] > 0 and row["choice_items"] >= 1  # the whole CLI run on the choice items
    assert "hand-written loop s" in res.output and "no layers / hand loop" in res.output
    assert "scored vs capture s" in res.output


def test_the_hand_written_loop_measures_the_same_kl_as_compare(family, tmp_path):
    """The peer is a fair one: on the same prompts its next-token KL is compare's."""
    import driftscope
    from driftscope.bench import probe_file
    from driftscope.peers.handwritten import main as handwritten

    probes = probe_file(12, tmp_path)
    mine = handwritten(str(family["base"]), str(family["tuned"]), str(probes), 4)
    r = driftscope.compare(family["base"], [family["tuned"]], [probes], out=None, layers=False, accuracy=False,
                           weights=False, chat_template="off")
    kl_next = r.tables["positions"].filter(kind="next")["kl"]
    assert mine["positions"] == 12
    assert mine["kl_mean"] == pytest.approx(kl_next.mean(), rel=1e-5)


@pytest.mark.parametrize("recipe, moved", [("attn", "self_attn."), ("gate_up", ("gate_proj", "up_proj"))])
def test_a_recipe_fine_tune_moves_only_its_modules(family, tmp_path, recipe, moved):
    """bench_models' study recipes: a self-attention-only (or gate/up-only) counting tune
    changes those weights and nothing else."""
    from safetensors.torch import load_file

    from driftscope.bench_models import counting_finetune

    counting_finetune(family["base"], tmp_path / recipe, steps=2, lr=1e-2, batch=2, recipe=recipe, log=lambda m: None)
    before, after = load_file(family["base"] / "model.safetensors"), load_file(tmp_path / recipe / "model.safetensors")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    want = {k for k in before if (moved in k if isinstance(moved, str) else any(m in k for m in moved))}
    assert want and changed == want


def test_the_choice_file_holds_the_items_lm_eval_scores(tmp_path):
    """The whole-run peer of lm-eval scores the same items: those with choices, header kept."""
    from driftscope.bench import choice_probe_file, probe_file
    from driftscope.peers.lmeval import choice_items
    from driftscope.probes import load_suite

    full = probe_file(40, tmp_path)
    path, n = choice_probe_file(full)
    suite = load_suite(path)
    assert n == len(suite.probes) == len(choice_items(full)) > 0
    assert all(p.choices for p in suite.probes)
