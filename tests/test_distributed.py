"""torchrun data parallelism on CPU (gloo): 2 processes write the summary 1
process writes, byte for byte; a rank that fails stops both, said once."""

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
