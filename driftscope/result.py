"""DriftResult: summary figures plus long-format tables; a run folder on disk.

    <run>/summary.json       deterministic: the same inputs and seed give the same bytes
    <run>/meta.json          when and how long (kept out of summary.json for that reason)
    <run>/tables/*.parquet   positions, items, suites, classes, tokens, ...

A run is written to a temporary sibling folder and renamed into place, so an
interrupted write leaves no half run behind.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from driftscope.errors import DriftscopeError

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

    def to_dir(self, path: str | Path, overwrite: bool = False) -> Path:
        path = Path(path)
        if path.exists() and not overwrite:
            raise DriftscopeError(f"{path} already exists", "pass --overwrite, or another --name")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            (tmp / "tables").mkdir(parents=True)
            (tmp / "summary.json").write_text(dumps(self.summary), encoding="utf-8")
            (tmp / "meta.json").write_text(dumps(self.meta), encoding="utf-8")
            for name, df in self.tables.items():
                df.write_parquet(tmp / "tables" / f"{name}.parquet")
            _replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.path = path
        return path

    @classmethod
    def from_dir(cls, path: str | Path) -> DriftResult:
        path = Path(path)
        summary_file = path / "summary.json"
        if not summary_file.is_file():
            raise DriftscopeError(f"{path}: not a driftscope run (no summary.json)", "pass a folder written by driftscope compare")
        try:
            summary = json.loads(summary_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DriftscopeError(f"{summary_file}: not valid JSON (line {e.lineno})", "re-run driftscope compare")
        version = summary.get("schema_version")
        if version != SCHEMA_VERSION:
            raise DriftscopeError(f"{path}: schema_version {version}, this driftscope reads {SCHEMA_VERSION}", "re-run compare with this version")
        meta_file = path / "meta.json"
        meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
        tables = {f.stem: pl.read_parquet(f) for f in sorted((path / "tables").glob("*.parquet"))}
        return cls(summary, tables, meta, path)

    def write_file(self, name: str, text: str) -> Path:
        """Write a file into the saved run folder atomically (gates, report)."""
        if self.path is None:
            raise ValueError("result has not been written to a folder yet")
        return atomic_write(self.path / name, text)


def atomic_write(target: Path, text: str) -> Path:
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)
    return target


def _replace(new: Path, target: Path) -> None:
    """Rename `new` onto `target`; an existing target is swapped out, not lost mid-way."""
    if not target.exists():
        os.rename(new, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.rename(target, old)
    try:
        os.rename(new, target)
    except OSError:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
