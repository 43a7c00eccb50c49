"""DriftResult: summary figures plus long-format tables; a run folder on disk.

    <run>/summary.json       deterministic: the same inputs and seed give the same bytes
    <run>/meta.json          when and how long (kept out of summary.json for that reason)
    <run>/tables/*.parquet   positions, items, suites, classes, tokens, ...

A run (report.html included) is written to a temporary sibling folder and
renamed into place as the last step, so an interrupted write leaves no half run
behind. Every file driftscope writes goes through `atomic_path`: a temporary
sibling, renamed onto the target, removed on any failure.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import polars as pl

from driftscope.errors import DriftscopeError, Interrupted, OutputError

SCHEMA_VERSION = 1


def clean(obj, digits: int = 10):
    """JSON-safe and stable: NaN/inf -> null, floats to `digits` significant digits."""
    if isinstance(obj, dict):
        return {str(k): clean(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v, digits) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float):
        if not math.isfinite(obj):
            return None
        return float(f"{obj:.{digits}g}")
    return obj


def dumps(obj) -> str:
    return json.dumps(clean(obj), indent=2, ensure_ascii=False) + "\n"


@dataclass
class DriftResult:
    summary: dict
    tables: dict[str, pl.DataFrame] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def checkpoints(self) -> list[dict]:
        return self.summary["checkpoints"]

    def figures(self, label: str | None = None) -> dict:
        """Figures of one checkpoint (the last one when no label is given)."""
        if label is None:
            return self.checkpoints[-1]["figures"]
        for c in self.checkpoints:
            if c["label"] == label:
                return c["figures"]
        raise KeyError(label)

    def check(self, gates="default", checkpoint: str | None = None) -> pl.DataFrame:
        """Evaluate release gates on this run: one row per rule and checkpoint."""
        from driftscope.gates import evaluate

        return evaluate(self.summary, gates, checkpoint)

    def assert_gates(self, gates="default", checkpoint: str | None = None) -> pl.DataFrame:
        """For test suites: raise AssertionError naming every rule that did not pass."""
        from driftscope.gates import assert_gates

        return assert_gates(self.summary, gates, checkpoint)

    def to_dir(self, path: str | Path, overwrite: bool = False, report: bool = False, index: bool = False) -> Path:
        """Write the run folder: summary, meta, tables and (report=True) report.html
        go into a temporary sibling that is renamed into place as the last step, so
        nothing is visible before the whole run is; then (index=True) the runs index
        of the parent folder is rebuilt."""
        path = Path(path)
        check_run_target(path, overwrite)
        with atomic_path(path, folder=True) as tmp:
            (tmp / "tables").mkdir()
            (tmp / "summary.json").write_text(dumps(self.summary), encoding="utf-8")
            (tmp / "meta.json").write_text(dumps(self.meta), encoding="utf-8")
            for name, df in self.tables.items():
                df.write_parquet(tmp / "tables" / f"{name}.parquet")
            if report:
                from driftscope.report import render_report

                (tmp / "report.html").write_text(render_report(replace(self, path=path)), encoding="utf-8")
            pause_if_testing("writing")
        self.path = path
        if index:
            try:
                from driftscope.report import write_index

                write_index(path.parent)
            except KeyboardInterrupt:
                raise Interrupted(f"the run was written to {path}, but the runs index was not updated "
                                  f"(driftscope report --index {path.parent})") from None
        return path

    @classmethod
    def from_dir(cls, path: str | Path) -> DriftResult:
        path = Path(path)
        summary_file = path / "summary.json"
        if not summary_file.is_file():
            raise DriftscopeError(f"{path}: not a driftscope run (no summary.json)", "pass a folder written by driftscope compare")
        summary = _read_json(summary_file)
        version = summary.get("schema_version")
        if version != SCHEMA_VERSION:
            raise DriftscopeError(f"{path}: schema_version {version}, this driftscope reads {SCHEMA_VERSION}", "re-run compare with this version")
        meta_file = path / "meta.json"
        meta = _read_json(meta_file) if meta_file.is_file() else {}
        tables = {f.stem: _read_table(f) for f in sorted((path / "tables").glob("*.parquet"))}
        return cls(summary, tables, meta, path)

    def write_file(self, name: str, text: str) -> Path:
        """Write a file into the saved run folder atomically (gates, report)."""
        if self.path is None:
            raise ValueError("result has not been written to a folder yet")
        return atomic_write(self.path / name, text)


def _read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DriftscopeError(f"{file}: unreadable ({_first_line(e)})", "re-run driftscope compare") from None
    if not isinstance(data, dict):
        raise DriftscopeError(f"{file}: expected a JSON object, got {type(data).__name__}", "re-run driftscope compare")
    return data


def _read_table(file: Path) -> pl.DataFrame:
    try:
        return pl.read_parquet(file)
    except (Exception, pl.exceptions.PanicException) as e:  # polars raises many types; all mean "unreadable"
        raise DriftscopeError(f"{file}: unreadable table ({_first_line(e)})",
                              "the run folder is damaged: re-run driftscope compare") from None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


# -- writing: the one way driftscope puts a file or a folder on disk -----------


def pause_if_testing(phase: str) -> None:
    """Test hook: with DRIFTSCOPE_TEST_PAUSE=<phase>, say so on stderr and wait, so a
    test can send Ctrl-C at a known point (tests/test_interrupt.py). Otherwise nothing."""
    if os.environ.get("DRIFTSCOPE_TEST_PAUSE") == phase:
        print(f"driftscope-test-pause: {phase}", file=sys.stderr, flush=True)
        time.sleep(60)


def _cannot_write(target: Path, e: OSError, flag: str = "") -> OutputError:
    what = f"{flag} {target}" if flag else str(target)
    return OutputError(f"cannot write {what}: {e.strerror or e}", "pass a path in a folder you can write to")


def _sibling(target: Path, kind: str) -> Path:
    """A fresh hidden name beside `target` (same folder, so a rename stays on one
    filesystem), ending in the target's suffix so readers that go by it still can."""
    return target.with_name(f".{target.stem}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}{target.suffix}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def check_writable(target: str | Path, folder: bool = False, flag: str = "") -> Path:
    """Fail early, with a one-line OutputError, when `target` (a file, or a folder
    when folder=True) could not be written: a file where a folder is needed or the
    reverse, a read-only filesystem. Tries for real (os.access says yes to root)
    and leaves nothing behind, not even the folders it had to create."""
    target = Path(target)
    what = f"{flag} {target}" if flag else str(target)
    if folder and target.exists() and not target.is_dir():
        raise OutputError(f"{what} is a file, not a folder", "pass a folder (it is created if missing)")
    if not folder and target.is_dir():
        raise OutputError(f"{what} is a folder", "pass a file path")
    where = target if folder else target.parent
    existing = next((p for p in (where, *where.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise OutputError(f"{what}: {existing} is a file, not a folder", "pass a path in a folder you can write to")
    created = [p for p in (where, *where.parents) if not p.exists()]
    try:
        where.mkdir(parents=True, exist_ok=True)
        probe = _sibling(where / "probe", "tmp")
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise _cannot_write(target, e, flag) from None
    finally:
        for p in created:  # innermost first
            with contextlib.suppress(OSError):
                p.rmdir()
    return target


def check_run_target(path: str | Path, overwrite: bool = False) -> Path:
    """Before a run: its folder must be new (or overwrite), and --out writable."""
    path = Path(path)
    if path.exists() and (not overwrite or not path.is_dir()):
        raise OutputError(f"{path} already exists", "pass --overwrite, or another --name"
                          if path.is_dir() else "pass another --name or --out")
    check_writable(path.parent, folder=True, flag="--out")
    return path


@contextlib.contextmanager
def atomic_path(target: str | Path, folder: bool = False, flag: str = ""):
    """Yield a fresh temporary path beside `target` to write (a file, or with
    folder=True a folder it has created); when the block ends it is renamed onto
    `target` (an existing one is replaced whole), and on any failure, Ctrl-C
    included, it is removed. OSErrors become a one-line OutputError."""
    target = Path(target)
    if not folder and target.is_dir():
        raise OutputError(f"{f'{flag} ' if flag else ''}{target} is a folder", "pass a file path")
    tmp = _sibling(target, "tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if folder:
            tmp.mkdir()
        yield tmp
        _rename_onto(tmp, target)
    except OutputError:
        raise
    except OSError as e:
        raise _cannot_write(target, e, flag) from None
    finally:
        _remove(tmp)


def atomic_write(target: str | Path, data: str | bytes | Callable[[Path], object], flag: str = "") -> Path:
    """Write `data` (text, bytes, or a function that writes the path it is given,
    e.g. DataFrame.write_parquet) to `target` atomically; see atomic_path."""
    target = Path(target)
    with atomic_path(target, flag=flag) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        elif isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            data(tmp)
    return target


def _rename_onto(new: Path, target: Path) -> None:
    """A file replaces its target atomically; a folder swaps an existing one out
    and puts it back if the second rename fails, so the target is never lost."""
    if not (new.is_dir() and target.is_dir()):
        os.replace(new, target)
        return
    old = _sibling(target, "old")
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)
        raise
    _remove(old)
