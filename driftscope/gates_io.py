"""Gate results table -> exit code, text, JUnit XML, Markdown, files in the run.

Everything here reads only the long-format table that `gates.evaluate` returns
(one row per rule, checkpoint and resolved figure), so a saved gates table can
be rendered again without the rules or the run.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import polars as pl

from driftscope.errors import DriftscopeError
from driftscope.result import atomic_write

GATES_SCHEMA_VERSION = 1  # of gates.json, apart from the run's summary schema

EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_INCONCLUSIVE = 0, 1, 2, 3

TABLE_SCHEMA = {
    "checkpoint": pl.String,
    "rule": pl.String,  # the rule's name, or "figure op threshold" when it has none
    "line": pl.Int64,  # line of its [[gate]] header in the gates file (null if unknown)
    "figure": pl.String,  # the resolved path: suites.* expands to one row per suite
    "operator": pl.String,  # at_most | at_least | one_of | none_of
    "threshold": pl.String,
    "observed": pl.String,  # "null" when the run could not decide, "absent" when missing
    "status": pl.String,  # pass | fail | inconclusive
    "message": pl.String,
}

class GateError(DriftscopeError):
    """A gates file, a rule, or the run it is checked against is unusable (exit 2)."""


_MARK = {"pass": "✅ pass", "fail": "❌ fail", "inconclusive": "❔ inconclusive"}
_OUTCOME = {EXIT_PASS: "passed", EXIT_FAIL: "failed", EXIT_INCONCLUSIVE: "inconclusive"}


def exit_code(table: pl.DataFrame) -> int:
    """0 all passed, 1 any rule failed, 3 none failed but one could not be decided."""
    statuses = set(table["status"].to_list())
    if "fail" in statuses:
        return EXIT_FAIL
    if "inconclusive" in statuses:
        return EXIT_INCONCLUSIVE
    return EXIT_PASS


def outcome(table: pl.DataFrame) -> str:
    """'passed', 'failed' or 'inconclusive': the word for exit_code(table)."""
    return _OUTCOME[exit_code(table)]


def counts(table: pl.DataFrame) -> dict[str, int]:
    statuses = table["status"].to_list()
    return {s: statuses.count(s) for s in ("pass", "fail", "inconclusive")}


def _op_text(operator: str, threshold: str) -> str:
    return f"{operator.replace('_', ' ')} {threshold}"


def _detail(row: dict) -> str:
    text = f"observed {row['observed']}, wanted {_op_text(row['operator'], row['threshold'])}"
    if row["status"] == "inconclusive":
        text += " (the run could not decide this figure)"
    return f"{text}: {row['message']}" if row["message"] else text


def to_text(table: pl.DataFrame, only_problems: bool = False) -> str:
    """A plain aligned table for a terminal or an assertion message."""
    rows = [r for r in table.to_dicts() if not only_problems or r["status"] != "pass"]
    head = ("checkpoint", "rule", "figure", "observed", "threshold", "status")
    body = [
        (r["checkpoint"], r["rule"], r["figure"], r["observed"],
         _op_text(r["operator"], r["threshold"]), r["status"])
        for r in rows
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip()
             for line in (head, *body)]
    for r in rows:
        if r["status"] != "pass" and r["message"]:
            lines.append(f"  {r['checkpoint']} / {r['rule']}: {r['message']}")
    return "\n".join(lines)


def _case_name(row: dict) -> str:
    # A suites.* rule gives one row per suite: keep the JUnit names distinct.
    return row["rule"] if row["figure"] in row["rule"] else f"{row['rule']} [{row['figure']}]"


def to_junit(table: pl.DataFrame) -> str:
    """JUnit XML: one testsuite per checkpoint, one testcase per row.

    A failed rule is a <failure>; an inconclusive one is <skipped> with the
    reason, so `failures` counts real breaches (the exit code, 3, still tells
    CI the gate did not pass).
    """
    c = counts(table)
    root = ET.Element("testsuites", name="driftscope gates", tests=str(table.height),
                      failures=str(c["fail"]), errors="0", skipped=str(c["inconclusive"]))
    rows = table.to_dicts()
    for label in dict.fromkeys(r["checkpoint"] for r in rows):
        mine = [r for r in rows if r["checkpoint"] == label]
        suite = ET.SubElement(
            root, "testsuite", name=f"driftscope gates: {label}", tests=str(len(mine)),
            failures=str(sum(r["status"] == "fail" for r in mine)), errors="0",
            skipped=str(sum(r["status"] == "inconclusive" for r in mine)))
        for r in mine:
            case = ET.SubElement(suite, "testcase", classname=f"driftscope.gates.{label}",
                                 name=_case_name(r))
            if r["status"] == "fail":
                ET.SubElement(case, "failure", message=_detail(r), type="gate").text = _detail(r)
            elif r["status"] == "inconclusive":
                ET.SubElement(case, "skipped", message=f"inconclusive: {_detail(r)}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _model_name(model: object) -> str:
    if isinstance(model, dict):
        return str(model.get("label") or model.get("name") or model.get("path") or "?")
    return str(model)


def to_markdown(table: pl.DataFrame, summary: dict | None = None) -> str:
    """A summary for a CI job page (GitHub's $GITHUB_STEP_SUMMARY, GitLab notes)."""
    c = counts(table)
    word = outcome(table)
    icon = {"passed": "✅", "failed": "❌", "inconclusive": "❔"}[word]
    lines = [f"### {icon} driftscope gates {word}", ""]
    lines.append(f"{c['pass']} passed, {c['fail']} failed, {c['inconclusive']} inconclusive "
                 f"(exit code {exit_code(table)}).")
    models = (summary or {}).get("models") or {}
    if models.get("base") is not None:
        tuned = models.get("tuned") or []
        tuned = tuned if isinstance(tuned, list) else [tuned]
        names = ", ".join(f"`{_cell(_model_name(t))}`" for t in tuned) or "?"
        lines += ["", f"Base `{_cell(_model_name(models['base']))}`; tuned {names}."]
    lines += ["", "| checkpoint | rule | figure | observed | threshold | status |",
              "|---|---|---|---|---|---|"]
    for r in table.to_dicts():
        cells = (r["checkpoint"], r["rule"], f"`{r['figure']}`", r["observed"],
                 _op_text(r["operator"], r["threshold"]), _MARK[r["status"]])
        lines.append("| " + " | ".join(_cell(x) for x in cells) + " |")
    problems = [r for r in table.to_dicts() if r["status"] != "pass"]
    if problems:
        lines += ["", "**Needs attention**", ""]
        lines += [f"- {_MARK[r['status']]} `{_cell(r['checkpoint'])}` {_cell(r['rule'])}: "
                  f"{_cell(_detail(r))}" for r in problems]
    return "\n".join(lines) + "\n"


def write_gate_files(run_dir: str | Path, table: pl.DataFrame,
                     source: str | None = None) -> dict[str, Path]:
    """Write gates.json and tables/gates.parquet into a run folder, each atomically.

    `source` records where the rules came from ("default" or the gates file).
    A later gate over the same run replaces both files.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise GateError(f"run folder not found: {run}", "pass the folder that holds summary.json")
    doc = {
        "schema_version": GATES_SCHEMA_VERSION,
        "gates": source,
        "outcome": outcome(table),
        "exit_code": exit_code(table),
        "counts": counts(table),
        "results": table.to_dicts(),
    }
    paths = {"json": run / "gates.json", "table": run / "tables" / "gates.parquet"}
    atomic_write(paths["json"], json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    atomic_write(paths["table"], table.write_parquet)
    return paths
