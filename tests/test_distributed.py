"""torchrun data parallelism on CPU (gloo): 2 processes write the summary 1
process writes, byte for byte; a rank that fails stops both, said once."""

import json
import os
import subprocess
import sys

import polars as pl
import pytest


def run(args, tmp_path, procs: int, env=None, name="run"):
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"] if procs > 1 \
        else [sys.executable]
    cmd = [*launch, "-m", "driftscope", "compare", *map(str, args), "--out", str(tmp_path), "--name", name, "--no-html"]
    # one thread each: float32 sums are then done in the same order in every process
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=300)


@pytest.fixture(scope="module")
def both(family, tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    args = [family["base"], family["tuned"], family["lora"], "--probes", "general"]
    single, double = run(args, root, 1, name="one"), run(args, root, 2, name="two")
    assert single.returncode == 0, single.stderr
    assert double.returncode == 0, double.stderr
    return root, single, double


def test_two_processes_write_the_summary_one_writes(both):
    root, _, double = both
    assert (root / "two" / "summary.json").read_bytes() == (root / "one" / "summary.json").read_bytes()
    assert double.stdout.count("run written to") == 1  # rank 0 reports, rank 1 stays quiet


def test_every_table_row_once(both):
    """Per-position and per-item rows are the single process's exactly; the per-class
    and per-token means, merged across ranks (Chan's pairwise update, not Welford's
    one at a time), agree to rounding (summary.json's 10 digits: identical)."""
    from polars.testing import assert_frame_equal

    root, _, _ = both
    for table in ("positions", "items", "classes", "tokens", "layers", "components"):
        one = pl.read_parquet(root / "one" / "tables" / f"{table}.parquet")
        two = pl.read_parquet(root / "two" / "tables" / f"{table}.parquet")
        exact = table in ("positions", "items")
        assert_frame_equal(two, one, check_exact=exact, rel_tol=1e-12, abs_tol=1e-15)


def test_the_processes_are_in_meta_not_in_the_summary(both):
    import json

    root, _, _ = both
    meta = json.loads((root / "two" / "meta.json").read_text())
    assert meta["processes"] == {"world_size": 2, "backend": "gloo"} and meta["timings"]["merge_s"] >= 0
    assert json.loads((root / "one" / "meta.json").read_text())["processes"] == {"world_size": 1, "backend": None}


def test_a_failing_rank_stops_both_and_is_said_once(family, tmp_path):
    done = run([family["base"], family["tuned"]], tmp_path, 2, env={"DRIFTSCOPE_TEST_FAIL_RANK": "1"}, name="fail")
    assert done.returncode != 0
    assert done.stderr.count("error: rank 1: the probe shard cannot be read") == 1
    assert not (tmp_path / "fail").exists()


def launch(cmd_args, procs: int, accelerate: bool = False):
    launch_ = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"] if procs > 1 \
        else [sys.executable]
    if accelerate:  # accelerate's multi-process launcher is torchrun underneath; on CPU the backend is gloo
        launch_ = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(procs),
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*launch_, "-m", "driftscope", *map(str, cmd_args)], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.fixture(scope="module")
def cached_runs(family, tmp_path_factory):
    """A base cache captured by 1 and by 2 processes; compare --base-cache and --sequential on 2 processes."""
    root = tmp_path_factory.mktemp("dist-cached")
    probes = ["--probes", "general"]
    for procs in (1, 2):
        done = launch(["capture", family["base"], *probes, "--out", root / f"cache{procs}"], procs)
        assert done.returncode == 0, done.stderr
    models = [family["base"], family["tuned"], family["lora"]]
    for procs in (1, 2):  # 2 processes through accelerate launch
        done = launch(["compare", "--base-cache", root / "cache1", *models, *probes, "--out", root, "--name",
                       f"cached{procs}", "--no-html"], procs, accelerate=procs == 2)
        assert done.returncode == 0, done.stderr
    done = launch(["compare", "--sequential", *models, *probes, "--out", root, "--name", "sequential2", "--no-html"], 2)
    assert done.returncode == 0, done.stderr
    return root


def test_a_cache_captured_by_two_processes_is_the_one_process_cache(cached_runs):
    from safetensors.torch import load_file

    one, two = (load_file(cached_runs / f"cache{n}" / "base.safetensors") for n in (1, 2))
    assert one.keys() == two.keys()
    for key in one:  # rows in the same order; the vocabulary sums summed in another order: equal to rounding
        assert torch_close(two[key], one[key]), key
    one, two = (json.loads((cached_runs / f"cache{n}" / "items.json").read_text())["answers"] for n in (1, 2))
    assert two["texts"] == one["texts"] and two["choice_counts"] == one["choice_counts"]
    # choices batched with other shards' pads: float32 sums in another order
    assert two["choice_ll"].keys() == one["choice_ll"].keys()
    assert all(abs(two["choice_ll"][k] - v) <= 1e-4 * (1 + abs(v)) for k, v in one["choice_ll"].items())


def test_two_processes_score_against_a_cache_as_one_does(cached_runs):
    """Launched by accelerate launch (--base-cache) and torchrun (--sequential)."""
    one, two = (json.loads((cached_runs / name / "summary.json").read_text()) for name in ("cached1", "sequential2"))
    assert (cached_runs / "cached2" / "summary.json").read_bytes() == (cached_runs / "cached1" / "summary.json").read_bytes()
    for name in ("cached2", "sequential2"):
        assert json.loads((cached_runs / name / "meta.json").read_text())["processes"]["world_size"] == 2
    # --sequential on 2 processes: the same figures (only the settings say how it ran)
    assert [c["figures"] for c in two["checkpoints"]] == [c["figures"] for c in one["checkpoints"]]


def torch_close(a, b) -> bool:
    import torch

    if a.dtype.is_floating_point:
        return a.shape == b.shape and torch.allclose(a, b, rtol=1e-12, atol=1e-12, equal_nan=True)
    return torch.equal(a, b)
