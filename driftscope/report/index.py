"""reports/index.html: every run under a reports folder, newest first.

Reads only each run's summary.json and meta.json (never the tables), so the
index stays quick with many runs. A folder that is not a readable run is listed
at the end with the reason, rather than hidden.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

from driftscope.report.sections import verdict_class
from driftscope.report.html import Cell, esc, num, page, table

SUPPORTED_SCHEMA = 1


def _created(meta: dict, folder: Path) -> datetime:
    text = str(meta.get("created") or "")
    for parse in (lambda t: datetime.strptime(t, "%Y-%m-%dT%H:%M:%S%z"), datetime.fromisoformat):
        try:
            dt = parse(text)
            return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
        except ValueError:
            pass
    return datetime.fromtimestamp((folder / "summary.json").stat().st_mtime, tz=timezone.utc)


def read_runs(reports_dir: Path) -> tuple[list[dict], list[tuple[str, str]]]:
    """(runs newest first, [(folder, why it is not listed)])."""
    runs, broken = [], []
    for folder in sorted(p for p in reports_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        file = folder / "summary.json"
        if not file.is_file():
            continue
        try:
            summary = json.loads(file.read_text(encoding="utf-8"))
            meta_file = folder / "meta.json"
            meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            broken.append((folder.name, f"unreadable: {e}"))
            continue
        if not isinstance(summary, dict) or summary.get("schema_version") != SUPPORTED_SCHEMA:
            version = summary.get("schema_version") if isinstance(summary, dict) else None
            broken.append((folder.name, f"schema_version {version}, this driftscope reads {SUPPORTED_SCHEMA}"))
            continue
        meta = meta if isinstance(meta, dict) else {}
        runs.append({"folder": folder, "summary": summary, "meta": meta, "created": _created(meta, folder)})
    runs.sort(key=lambda r: (r["created"], r["folder"].name), reverse=True)
    return runs, broken


def _link(folder: Path, name: str) -> Cell:
    """The run's name, linked (relative, percent-encoded) to its report, or to summary.json before it has one."""
    if (folder / "report.html").is_file():
        return Cell(name, None, "run", f"{quote(folder.name)}/report.html")
    return Cell(f"{name} (no report yet)", None, "run", f"{quote(folder.name)}/summary.json")


def render_index(reports_dir: str | Path) -> str:
    reports_dir = Path(reports_dir)
    runs, broken = read_runs(reports_dir)
    headers = ["run", "date", "base", "checkpoint", "suites", "verdict", "KL mean", "KL p99", "top-1 agree",
               "acc. change", "numeric shift", "recovered"]
    rows = []
    for r in runs:
        s, meta = r["summary"], r["meta"]
        name = str(meta.get("name") or r["folder"].name)
        base = str((s.get("models") or {}).get("base", {}).get("path", "?"))
        suites = ", ".join(str(x.get("name")) for x in s.get("suites", []))
        date = r["created"].strftime("%Y-%m-%d %H:%M")
        for c in s.get("checkpoints", []) or [{}]:
            f = c.get("figures", {}) if isinstance(c, dict) else {}
            verdict = f.get("verdict")
            rows.append([
                _link(r["folder"], name), Cell(date, r["created"].timestamp(), "num"), base,
                f"{c.get('label', '?')} ({c.get('path', '')})" if c else "—", suites,
                Cell(str(verdict) if verdict else "—", None, verdict_class(verdict)),
                num((f.get("kl") or {}).get("mean")), num((f.get("kl") or {}).get("p99")),
                num(f.get("top1_agreement"), pct=True), num(f.get("accuracy_change"), pct=True, signed=True),
                num(((f.get("classes") or {}).get("numeric") or {}).get("shift"), pct=True, signed=True),
                num(f.get("recovered"), pct=True),
            ])
    body = table(headers, rows, cls="sortable runs")
    if not runs:
        body = '<p class="note">No runs yet: <code>driftscope compare BASE TUNED</code> writes one here.</p>'
    if broken:
        body += "<h3>Folders not listed</h3>" + table(["folder", "why"], [[n, why] for n, why in broken], cls="")
    header = (f"<h1>driftscope runs</h1><div class=\"sub\">{len(runs)} run{'s' if len(runs) != 1 else ''} in "
              f"<b>{esc(reports_dir.resolve())}</b>, newest first · written {esc(fmt_now())}</div>")
    return page("driftscope runs", header, [], f'<section id="runs"><h2>Runs</h2>{body}</section>', None)


def fmt_now() -> str:
    return datetime.now().astimezone().strftime("%Y-%m-%d %H:%M")


def write_index(reports_dir: str | Path) -> Path:
    """Write reports_dir/index.html (atomically); returns its path."""
    from driftscope.errors import DriftscopeError
    from driftscope.result import atomic_write

    reports_dir = Path(reports_dir)
    if not reports_dir.is_dir():
        raise DriftscopeError(f"{reports_dir}: no such folder", "pass the folder that holds your runs (e.g. reports/)")
    return atomic_write(reports_dir / "index.html", render_index(reports_dir))

