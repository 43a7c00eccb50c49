"""The HTML report of a run and the index of runs.

    write_report(run_dir) -> run_dir/report.html     one self-contained file, opens offline
    write_index(reports_dir) -> reports_dir/index.html   every run, newest first

A report is drawn only from the run's summary.json, meta.json and tables, so it
can be rebuilt from a saved run without the models. plotly.js is embedded once
(gzip-compressed and unpacked in the page by default: 1.9 MB instead of 4.8 MB);
no request leaves the page.
"""

from __future__ import annotations

from pathlib import Path

from driftscope.report.index import render_index, write_index
from driftscope.report.items import explorer_data, items_section
from driftscope.report.html import Charts, esc, page
from driftscope.report import sections as S

__all__ = ["render_report", "render_index", "write_index", "write_report"]

SECTIONS = (
    ("headline", "Verdict"), ("suites", "Per suite"), ("drift", "Distribution drift"), ("classes", "Token classes"),
    ("movers", "Token movers"), ("items", "Items"), ("layers", "Layers & weights"), ("checkpoints", "Checkpoints"),
)


def run_title(result) -> str:
    name = result.meta.get("name") or (result.path.name if result.path else "driftscope run")
    return str(name)


def _model(m: dict) -> str:
    """A model's label, its path on hover (the full paths are in the provenance block)."""
    return f'<b title="{esc(m.get("path", ""))}">{esc(m.get("label", "?"))}</b>'


def _subtitle(summary: dict, meta: dict) -> str:
    models = summary.get("models", {})
    tuned = ", ".join(_model(t) for t in models.get("tuned", []))
    suites = ", ".join(str(s.get("name")) for s in summary.get("suites", []))
    return (f'<div class="sub">{_model(models.get("base", {"label": "base"}))} vs {tuned or "?"}'
            f" on {esc(suites or 'no suites')}" + (f" · {esc(meta['created'])}" if meta.get("created") else "") + "</div>")


def render_report(result, compress_js: bool = True) -> str:
    """A DriftResult (in memory, or as read by DriftResult.from_dir) -> the report's HTML text."""
    from driftscope.result import clean

    # summary.json and meta.json hold their numbers as clean() writes them: drawing from the same
    # values makes the report compare writes identical to one rebuilt from the run folder.
    summary, tables, meta = clean(result.summary), result.tables, clean(result.meta)
    charts = Charts()
    labels = S.F.labels_of(summary)
    items = explorer_data(tables.get("items"), labels)
    parts = {
        "headline": S.headline(summary, meta),
        "suites": S.suites_section(summary, tables.get("items")),
        "drift": S.drift_section(summary, tables.get("positions"), charts),
        "classes": S.classes_section(summary, tables.get("classes"), charts),
        "movers": S.movers_section(summary, tables.get("tokens")),
        "items": items_section(items),
        "layers": S.layers_section(summary, tables, charts),
        "checkpoints": S.checkpoints_section(summary, charts),
    }
    if not parts["checkpoints"]:
        corr = S.correlations(summary)  # one checkpoint, several suites: still worth a line
        if corr and parts["suites"]:
            parts["suites"] = parts["suites"].replace("</section>", corr + "</section>")
    nav = [(a, t) for a, t in SECTIONS if parts[a]]
    title = run_title(result)
    header = f"<h1>driftscope: {esc(title)}</h1>" + _subtitle(summary, meta)
    body = "".join(parts[a] for a, _ in SECTIONS)
    footer = ('<footer>Drawn from summary.json and tables/*.parquet of this run; rebuild with '
              "<code>driftscope report RUN_DIR</code>.</footer>")
    return page(f"driftscope: {title}", header, nav, body + footer, charts,
                data={"ds-items": items} if items else None, compress_js=compress_js)


def write_report(run_dir, out: str | Path | None = None, compress_js: bool = True) -> Path:
    """Read a saved run and write its report.html (atomically); returns the file's path.

    `run_dir` is a run folder, or a DriftResult already written with to_dir()
    (its tables are the saved ones; nothing is read twice). `out` defaults to
    <run>/report.html. Raises DriftscopeError when run_dir is not a driftscope run.
    """
    from driftscope.result import DriftResult, atomic_write

    if isinstance(run_dir, DriftResult):
        if run_dir.path is None:
            raise ValueError("write the result with to_dir() first: a report sits in its run folder")
        result, run_dir = run_dir, run_dir.path
    else:
        result = DriftResult.from_dir(run_dir)
    target = Path(out) if out is not None else Path(run_dir) / "report.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(target, render_report(result, compress_js=compress_js))
