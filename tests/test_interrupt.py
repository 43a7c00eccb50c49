"""Ctrl-C and failed writes: a run folder appears whole or not at all, nothing
temporary is left behind, and the message says what was written.

The SIGINT tests run `python -m driftscope compare` in subprocesses, all four
at once (loading, drift, accuracy, writing), each held at its phase by the
test-only hook DRIFTSCOPE_TEST_PAUSE (driftscope.result.pause_if_testing).
"""

import json
import os
import signal
import subprocess
import sys

import polars as pl
import pytest

from driftscope.errors import Interrupted, OutputError
from driftscope.result import DriftResult, atomic_write, check_writable

PHASES = ("loading", "drift", "accuracy", "writing")


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def interrupted(family, tmp_path_factory):
    """{phase: (returncode, stderr, out folder, index bytes before)} for a compare
    sent SIGINT while held in that phase."""
    from driftscope.report import write_index

    root = tmp_path_factory.mktemp("interrupt")
    suite = root / "one.jsonl"
    suite.write_text(json.dumps({"id": "q", "prompt": "Q: What is 2 plus 3?\nA:", "answer": "5"}) + "\n")
    # A parent that ignores SIGINT (started in the background) would pass that on to its children.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    procs = {}
    try:
        for phase in PHASES:
            out = root / phase
            out.mkdir()
            write_index(out)  # the runs index that must stay as it was
            cmd = [sys.executable, "-m", "driftscope", "compare", str(family["base"]), str(family["tuned"]),
                   "--probes", str(suite), "--out", str(out), "--name", "run", "--no-weights", "--no-layers"]
            if phase != "accuracy":
                cmd.append("--no-accuracy")  # the other phases are reached sooner without it
            env = {**os.environ, "DRIFTSCOPE_TEST_PAUSE": phase}
            procs[phase] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env),
                            out, (out / "index.html").read_bytes())
    finally:
        signal.signal(signal.SIGINT, previous)
    results = {}
    for phase, (proc, out, index) in procs.items():
        seen = []
        for line in proc.stderr:  # blocks until the child reaches its phase (or ends)
            seen.append(line)
            if line.strip() == f"driftscope-test-pause: {phase}":
                proc.send_signal(signal.SIGINT)
                break
        _, rest = proc.communicate(timeout=60)
        results[phase] = (proc.returncode, "".join(seen) + rest, out, index)
    return results


@pytest.mark.parametrize("phase", PHASES)
def test_ctrl_c_in_any_phase_leaves_nothing_and_says_so(interrupted, phase):
    code, stderr, out, index = interrupted[phase]
    assert f"driftscope-test-pause: {phase}" in stderr, stderr  # the signal came in that phase
    assert code == 130, stderr
    assert "interrupted: nothing was written" in stderr and "Traceback" not in stderr, stderr
    assert listing(out) == ["index.html"]  # no run folder, no temporary folder
    assert (out / "index.html").read_bytes() == index


def small_result() -> DriftResult:
    return DriftResult({"schema_version": 1, "checkpoints": []}, {"t": pl.DataFrame({"x": [1, 2]})}, {"name": "r"})


def test_ctrl_c_after_the_rename_says_the_run_was_written(tmp_path, monkeypatch):
    import driftscope.report

    def interrupt(folder):
        raise KeyboardInterrupt

    monkeypatch.setattr(driftscope.report, "write_index", interrupt)
    with pytest.raises(Interrupted) as e:
        small_result().to_dir(tmp_path / "r", index=True)
    assert e.value.written.startswith(f"the run was written to {tmp_path / 'r'}, but the runs index was not updated")
    assert listing(tmp_path) == ["r"] and listing(tmp_path / "r") == ["meta.json", "summary.json", "tables"]


@pytest.mark.parametrize("failure", [ValueError, KeyboardInterrupt])
def test_a_failed_write_leaves_no_temporary_file_and_the_old_file_whole(tmp_path, failure):
    target = tmp_path / "gates.json"
    target.write_text("old")

    def writer(path):
        path.write_text("half")
        raise failure

    with pytest.raises(failure):
        atomic_write(target, writer)
    assert listing(tmp_path) == ["gates.json"] and target.read_text() == "old"


def test_a_failed_run_folder_leaves_nothing(tmp_path, monkeypatch):
    result = small_result()
    result.tables["bad"] = "not a table"  # fails after summary.json and the first table are written
    with pytest.raises(AttributeError):
        result.to_dir(tmp_path / "r")
    assert listing(tmp_path) == []


def test_overwrite_swaps_the_whole_run_folder(tmp_path):
    small_result().to_dir(tmp_path / "r")
    (tmp_path / "r" / "stale.txt").write_text("from the old run")
    small_result().to_dir(tmp_path / "r", overwrite=True)
    assert listing(tmp_path) == ["r"] and "stale.txt" not in listing(tmp_path / "r")


def test_writing_onto_a_folder_is_one_line_and_leaves_nothing(tmp_path):
    (tmp_path / "junit.xml").mkdir()
    with pytest.raises(OutputError, match="junit.xml is a folder"):
        atomic_write(tmp_path / "junit.xml", "<xml/>", flag="--junit")
    with pytest.raises(OutputError, match="is a folder"):
        check_writable(tmp_path / "junit.xml")
    assert listing(tmp_path) == ["junit.xml"] and listing(tmp_path / "junit.xml") == []


def test_writability_is_tried_for_real_and_leaves_nothing(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_writable(tmp_path / "file" / "runs", folder=True, flag="--out")
    check_writable(tmp_path / "new" / "deeper", folder=True)  # creatable: fine, and not left created
    assert listing(tmp_path) == ["file"]


@pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="needs /sys, which no one can create files in")
def test_an_unwritable_folder_is_one_line(tmp_path):
    with pytest.raises(OutputError, match="cannot write /sys/kernel/index.html"):
        atomic_write("/sys/kernel/index.html", "x")
    with pytest.raises(OutputError, match="cannot write --out /sys/kernel/driftscope-runs"):
        check_writable("/sys/kernel/driftscope-runs", folder=True, flag="--out")


def test_one_atomic_writer():
    """Every module writes files through driftscope.result.atomic_path."""
    from pathlib import Path

    import driftscope

    package = Path(driftscope.__file__).parent
    for path in package.rglob("*.py"):
        if path.name == "result.py":
            continue
        text = path.read_text()
        for banned in ("os.replace(", "_replace_atomically", "mkstemp(", "mkdtemp(", ".tmp-"):
            assert banned not in text, f"{path}: {banned} (write through driftscope.result.atomic_path or atomic_write)"
