"""Release gates: threshold rules over summary.json figures -> pass/fail table.

A gates file is TOML, one [[gate]] table per rule:

    extends = "default"              # optional: start from the built-in preset

    [[gate]]
    figure = "kl.p99"                # overall, or suites.<suite>.<figure>, or suites.*.<figure>
    at_most = 2.0                    # exactly one of at_most / at_least / one_of / none_of
    message = "tail drift too large" # optional: shown when the rule does not pass
    name = "tail KL"                 # optional: the rule's name in reports

A rule is checked on every checkpoint of a run (or one chosen label). A figure
the run holds as null, or a verdict the run could not decide ("inconclusive",
"no-answers"), makes the rule inconclusive rather than failed. Unknown figures,
suites or classes and malformed rules are GateErrors naming file, line and rule.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from driftscope.verdict import VERDICTS
from driftscope.gates_io import (  # noqa: F401  (re-exported: the gates API in one place)
    EXIT_FAIL, EXIT_INCONCLUSIVE, EXIT_PASS, EXIT_USAGE, TABLE_SCHEMA, GateError, exit_code, outcome,
    to_junit, to_markdown, to_text, write_gate_files,
)

try:  # Python 3.11+; tomli is the same parser for 3.10
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib

DEFAULT_PRESET = Path(__file__).with_name("gates_default.toml")

OPERATORS = ("at_most", "at_least", "one_of", "none_of")
_SYMBOL = {"at_most": "<=", "at_least": ">=", "one_of": "in", "none_of": "not in"}
_UNDECIDED = frozenset({"inconclusive", "no-answers"})  # the run could not give a verdict

# Every figure a rule may name, as a path inside one checkpoint's figures.
_STATS = ("mean", "se", "median", "p90", "p95", "p99", "p99_9", "max", "n")
_CLASS_FIELDS = ("base", "tuned", "shift", "shift_se", "log_odds_shift")
FIGURES: tuple[str, ...] = (
    "n_probes", "n_positions", "top1_agreement", "top1_agreement_se",
    "n_items", "items_lost", "items_gained", "nonfinite_positions", "truncated_prompts", "new_token_mass",
    *(f"{d}.{s}" for d in ("kl", "kl_reverse", "js", "entropy_base", "entropy_tuned", "base_top1_rank",
                           "p_gold", "q_gold") for s in _STATS),
    *(f"classes.<class>.{f}" for f in _CLASS_FIELDS),
    "kl_split.between", "kl_split.within", "kl_split.between_share",
    "accuracy_base", "accuracy_tuned", "accuracy_change",
    "accuracy_change_ci.lo", "accuracy_change_ci.hi", "mcnemar_p", "recovered", "verdict",
    "accuracy_corrected", "explained", "weights.rel_change",
    "n_choice_items", "free_accuracy_base", "free_accuracy_tuned", "free_accuracy_change", "free_mcnemar_p",
)
# Figures that need gold answers: a suites.* rule skips suites with verdict "no-answers".
_NEEDS_ANSWERS = frozenset({"accuracy_base", "accuracy_tuned", "accuracy_change", "accuracy_corrected",
                            "accuracy_change_ci", "mcnemar_p", "recovered", "explained", "verdict",
                            "n_items", "items_lost", "items_gained", "n_choice_items", "free_accuracy_base",
                            "free_accuracy_tuned", "free_accuracy_change", "free_mcnemar_p"})
FIGURES_HINT = (
    "figures: n_probes, n_positions, top1_agreement, n_items, items_lost, items_gained, nonfinite_positions, "
    "truncated_prompts, new_token_mass, weights.rel_change, "
    "{kl,kl_reverse,js,entropy_base,entropy_tuned,base_top1_rank,p_gold,q_gold}.{mean,se,median,p90,p95,p99,p99_9,max,n}, "
    "classes.<class>.{base,tuned,shift,shift_se,log_odds_shift}, kl_split.{between,within,between_share}, "
    "accuracy_{base,tuned,corrected,change}, accuracy_change_ci.{lo,hi}, mcnemar_p, recovered, explained, verdict "
    "(accuracy is primary: choice log-likelihood for choice items, free answer for the rest), n_choice_items, "
    "free_accuracy_{base,tuned,change}, free_mcnemar_p (free answers of the choice items); "
    "each also per suite as suites.<suite>.<figure> or suites.*.<figure>"
)
_RULE_KEYS = ("figure", *OPERATORS, "message", "name")
_ABSENT = object()  # a schema figure missing from the run: undecided, like null


@dataclass(frozen=True)
class Figure:
    path: str  # as written in the rule
    suite: str | None  # None: overall; "*": every suite of the run
    keys: tuple[str, ...]  # path inside one checkpoint's figures, e.g. ("kl", "p99")

    @property
    def kind(self) -> str:
        return "verdict" if self.keys == ("verdict",) else "number"


def _is_figure(keys: list[str] | tuple[str, ...]) -> bool:
    keys = list(keys)
    if len(keys) == 3 and keys[0] == "classes" and keys[1]:
        keys[1] = "<class>"  # any class name, or * for every class
    return ".".join(keys) in FIGURES


def parse_figure(text: str) -> Figure | None:
    """A figure path -> Figure, or None when the schema has no such figure.

    Suite names may contain dots: the figure is the longest valid tail.
    """
    text = text.strip()
    segs = re.sub(r"\.p99\.9$", ".p99_9", text).split(".")  # p99.9 reads naturally
    if segs[0] == "suites":
        for i in range(2, len(segs)):
            if _is_figure(segs[i:]) and all(segs[1:i]):
                return Figure(text, ".".join(segs[1:i]), tuple(segs[i:]))
        return None
    return Figure(text, None, tuple(segs)) if _is_figure(segs) else None


@dataclass(frozen=True)
class Rule:
    index: int  # 1-based, within its file
    figure: Figure
    operator: str
    threshold: float | tuple[str, ...]
    message: str = ""
    name: str = ""
    source: str = "<gates>"
    line: int | None = None  # of the [[gate]] header

    @property
    def where(self) -> str:
        at = f"{self.source}:{self.line}" if self.line else self.source
        return f"{at} (rule {self.index})"

    @property
    def threshold_text(self) -> str:
        t = self.threshold
        return ", ".join(t) if isinstance(t, tuple) else _fmt(t)

    @property
    def label(self) -> str:
        shown = f"[{self.threshold_text}]" if isinstance(self.threshold, tuple) else self.threshold_text
        return self.name or f"{self.figure.path} {_SYMBOL[self.operator]} {shown}"


@dataclass(frozen=True)
class Gates:
    source: str  # "default" or the file it was read from
    rules: tuple[Rule, ...]

    def __len__(self) -> int:
        return len(self.rules)

    def __iter__(self):  # -> Iterator[Rule]
        return iter(self.rules)


def _fmt(x: object) -> str:
    if isinstance(x, float):
        return f"{x:.6g}"
    return str(x)


# ---------------------------------------------------------------- loading


def load_gates(spec: str | Path | Gates) -> Gates:
    """"default" (the built-in preset) or a path to a gates TOML file -> Gates."""
    if isinstance(spec, Gates):
        return spec
    if str(spec) == "default":
        return parse_gates(DEFAULT_PRESET.read_text(encoding="utf-8"), "default")
    path = Path(spec)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "not found"
        raise GateError(f"gates file {what}: {path}",
                        "pass a TOML file of [[gate]] rules, or --gates default")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise GateError(f"cannot read gates file {path}: {e}", "save it as UTF-8 text") from None
    return parse_gates(text, str(path))


def parse_gates(text: str, source: str = "<gates>") -> Gates:
    """TOML text -> Gates; `source` names the file in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"at line (\d+)", str(e))
        at = f"{source}:{m.group(1)}" if m else source
        raise GateError(f"{at}: not valid TOML: {e}", "the format: driftscope gate --help, or the README's section \"Release gates in CI\"") from None
    extra = sorted(set(data) - {"gate", "extends", "description"})
    if extra:
        raise GateError(f"{source}: unknown top-level key {extra[0]!r}",
                        "rules go in [[gate]] tables; the top level takes only extends and description")
    rules: list[Rule] = []
    if "extends" in data:
        if data["extends"] != "default" or source == "default":
            raise GateError(f"{source}: extends must be \"default\", got {data['extends']!r}")
        rules.extend(load_gates("default").rules)
    raw = data.get("gate", [])
    if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
        raise GateError(f"{source}: 'gate' must be a list of tables", "write each rule under a [[gate]] header")
    lines = text.splitlines()
    for i, (table, span) in enumerate(zip(raw, _rule_spans(lines, len(raw))), start=1):
        rules.append(_parse_rule(table, i, source, span, lines))
    if not rules:
        raise GateError(f"{source}: no gate rules", "add a [[gate]] table with a figure and one of "
                        "at_most / at_least / one_of / none_of, or use --gates default")
    return Gates(source, tuple(rules))


_HEADER = re.compile(r"^\s*\[\[\s*gate\s*\]\]\s*(#.*)?$")
_TABLE = re.compile(r"^\s*\[")


def _rule_spans(lines: list[str], n: int) -> list[tuple[int | None, int | None]]:
    """(header line, end line) of each [[gate]], 1-based; unknown if the count differs
    (rules written as an inline array)."""
    starts = [i for i, line in enumerate(lines, start=1) if _HEADER.match(line)]
    if len(starts) != n:
        return [(None, None)] * n
    spans = []
    for s in starts:
        end = next((j for j in range(s + 1, len(lines) + 1) if _TABLE.match(lines[j - 1])), len(lines) + 1)
        spans.append((s, end))
    return spans


def _parse_rule(raw: dict, index: int, source: str, span: tuple, lines: list[str]) -> Rule:
    start, end = span

    def fail(reason: str, key: str | None = None, hint: str | None = None):
        line = start
        if key and start:  # point at the key's own line when we can find it
            pat = re.compile(rf"^\s*(\"?){re.escape(key)}\1\s*=")
            line = next((j for j in range(start, end) if pat.match(lines[j - 1])), start)
        at = f"{source}:{line}" if line else source
        raise GateError(f"{at} (rule {index}): {reason}", hint)

    for key in raw:
        if key not in _RULE_KEYS:
            near = difflib.get_close_matches(key, _RULE_KEYS, n=1)
            fail(f"unknown key {key!r}" + (f" (did you mean {near[0]!r}?)" if near else ""), key,
                 "a rule takes figure, one of at_most / at_least / one_of / none_of, message, name")
    text = raw.get("figure")
    if not isinstance(text, str) or not text.strip():
        fail("no figure" if text is None else "figure must be a string", "figure",
             'name a summary.json figure, e.g. figure = "kl.p99"')
    figure = parse_figure(text)
    if figure is None:
        fail(f"unknown figure {text!r}{_suggest(text)}", "figure", FIGURES_HINT)
    ops = [k for k in OPERATORS if k in raw]
    if not ops:
        fail("no operator", None, "give exactly one of at_most, at_least, one_of, none_of")
    if len(ops) > 1:
        fail(f"more than one operator ({', '.join(ops)})", ops[1],
             "give exactly one per rule; for a range write two rules")
    op, value = ops[0], raw[ops[0]]
    if figure.kind == "verdict":
        if op not in ("one_of", "none_of"):
            fail(f"verdict takes one_of or none_of, not {op}", op)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            fail(f"{op} must be a list of verdicts, got {value!r}", op, "verdicts: " + ", ".join(VERDICTS))
        bad = [v for v in value if v not in VERDICTS]
        if bad:
            fail(f"unknown verdict {bad[0]!r}", op, "verdicts: " + ", ".join(VERDICTS))
        threshold: float | tuple[str, ...] = tuple(value)
    else:
        if op not in ("at_most", "at_least"):
            fail(f"{text} is a number: use at_most or at_least, not {op}", op)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            fail(f"{op} must be a number, got {value!r}", op)
        threshold = float(value)
    for key in ("message", "name"):
        if key in raw and not isinstance(raw[key], str):
            fail(f"{key} must be a string", key)
    return Rule(index, figure, op, threshold, raw.get("message", ""), raw.get("name", ""), source, start)


def _suggest(text: str) -> str:
    segs, prefix, tail = text.split("."), "", text
    if segs[0] == "suites" and len(segs) > 2:
        prefix, tail = f"suites.{segs[1]}.", ".".join(segs[2:])
    names = [f.replace("<class>", "numeric") for f in FIGURES]
    near = difflib.get_close_matches(tail, names, n=1, cutoff=0.6)
    return f" (did you mean {prefix + near[0]!r}?)" if near else ""


# ---------------------------------------------------------------- evaluating


def read_summary(run: str | Path) -> dict:
    """A run folder (or its summary.json) -> the summary dict."""
    path = Path(run)
    path = path / "summary.json" if path.is_dir() else path
    if not path.is_file():
        raise GateError(f"no summary.json at {path}", "pass a driftscope run folder (reports/<run>/)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GateError(f"cannot read {path}: {e}", "re-run driftscope compare to rewrite it") from None


def _checkpoints(summary: dict, label: str | None) -> list[dict]:
    if not isinstance(summary, dict) or summary.get("schema_version") != 1:
        got = summary.get("schema_version") if isinstance(summary, dict) else type(summary).__name__
        raise GateError(f"summary.json schema_version {got!r} is not supported (this driftscope reads 1)",
                        "re-run the comparison with this version of driftscope")
    cps = summary.get("checkpoints")
    if not isinstance(cps, list) or not cps or not all(isinstance(c, dict) for c in cps):
        raise GateError("summary.json has no checkpoints", "the run holds no results to gate")
    if label is None:
        return cps
    chosen = [c for c in cps if c.get("label") == label]
    if not chosen:
        raise GateError(f"no checkpoint labelled {label!r} in this run",
                        "checkpoints: " + ", ".join(str(c.get("label")) for c in cps))
    return chosen


def _lookup(figs: dict, keys: tuple[str, ...]) -> object:
    if keys[0] == "accuracy_change_ci":
        ci = figs.get("accuracy_change_ci", _ABSENT)
        if isinstance(ci, (list, tuple)) and len(ci) == 2:
            return ci[0 if keys[1] == "lo" else 1]
        return ci if ci is None or ci is _ABSENT else _ABSENT
    value: object = figs
    for k in keys:
        if not isinstance(value, dict) or k not in value:
            return _ABSENT
        value = value[k]
    return value


def _resolve(rule: Rule, figs: dict) -> list[tuple[str, object]]:
    """(concrete figure path, observed value) for each place the rule applies."""
    fig = rule.figure
    scopes = [("", figs)]
    if fig.suite is not None:
        suites = figs.get("suites") if isinstance(figs.get("suites"), dict) else {}
        if fig.suite == "*":
            names = [n for n in suites if fig.keys[0] not in _NEEDS_ANSWERS
                     or (suites[n] or {}).get("verdict") != "no-answers"]
            if not names:  # nothing to check is not a pass
                return [(fig.path, None)]
        elif fig.suite in suites:
            names = [fig.suite]
        else:
            raise GateError(f"{rule.where}: suite {fig.suite!r} is not in this run",
                            "suites in the run: " + (", ".join(suites) or "none"))
        scopes = [(f"suites.{n}.", suites[n] if isinstance(suites[n], dict) else {}) for n in names]
    out = []
    for prefix, scope in scopes:
        if fig.keys[0] != "classes":
            out.append((prefix + ".".join(fig.keys), _lookup(scope, fig.keys)))
            continue
        classes = scope.get("classes") if isinstance(scope.get("classes"), dict) else {}
        wanted = fig.keys[1]
        if wanted != "*" and wanted not in classes:
            raise GateError(f"{rule.where}: token class {wanted!r} is not in this run",
                            "classes in the run: " + (", ".join(classes) or "none"))
        for c in (list(classes) if wanted == "*" else [wanted]):
            out.append((f"{prefix}classes.{c}.{fig.keys[2]}", _lookup(classes[c], fig.keys[2:])))
    return out


def _judge(rule: Rule, path: str, value: object, label: str) -> str:
    if value is None or value is _ABSENT:
        return "inconclusive"
    if rule.figure.kind == "verdict":
        if not isinstance(value, str):
            raise GateError(f"summary.json checkpoint {label!r}: {path} is {value!r}, not a verdict")
        listed = rule.threshold
        if value in _UNDECIDED and value not in listed:  # unless the rule names it on purpose
            return "inconclusive"
        return "pass" if (value in listed) == (rule.operator == "one_of") else "fail"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GateError(f"summary.json checkpoint {label!r}: {path} is {value!r}, not a number")
    if math.isnan(value):
        return "inconclusive"
    ok = value <= rule.threshold if rule.operator == "at_most" else value >= rule.threshold
    return "pass" if ok else "fail"


def evaluate(summary: dict, gates: Gates | str | Path, checkpoint: str | None = None) -> pl.DataFrame:
    """Check every rule on every checkpoint (or only `checkpoint`) -> the results table.

    One row per checkpoint, rule and resolved figure (suites.* gives one per
    suite), in TABLE_SCHEMA order; exit_code(table) turns it into 0 / 1 / 3.
    """
    gates = load_gates(gates)
    rows = []
    for cp in _checkpoints(summary, checkpoint):
        label = str(cp.get("label", "?"))
        figs = cp.get("figures")
        if not isinstance(figs, dict):
            raise GateError(f"summary.json checkpoint {label!r} has no figures")
        for rule in gates.rules:
            for path, value in _resolve(rule, figs):
                status = _judge(rule, path, value, label)
                observed = "absent" if value is _ABSENT else "null" if value is None else _fmt(value)
                rows.append({
                    "checkpoint": label, "rule": rule.label, "line": rule.line, "figure": path,
                    "operator": rule.operator, "threshold": rule.threshold_text,
                    "observed": observed, "status": status, "message": rule.message,
                })
    return pl.DataFrame(rows, schema=TABLE_SCHEMA)


def assert_gates(summary_or_run_dir: dict | str | Path, gates: Gates | str | Path,
                 checkpoint: str | None = None, allow_inconclusive: bool = False) -> pl.DataFrame:
    """For a test suite: raise AssertionError listing every rule that did not pass.

    Returns the table when all rules pass (inconclusive ones too, if allowed).
    """
    summary = summary_or_run_dir if isinstance(summary_or_run_dir, dict) else read_summary(summary_or_run_dir)
    table = evaluate(summary, gates, checkpoint)
    bad = table.filter(pl.col("status") == "fail") if allow_inconclusive else \
        table.filter(pl.col("status") != "pass")
    if bad.height:
        c = table["status"].value_counts()
        n = dict(zip(c["status"].to_list(), c["count"].to_list()))
        raise AssertionError(
            f"driftscope gates {outcome(table)}: {n.get('fail', 0)} failed, "
            f"{n.get('inconclusive', 0)} inconclusive of {table.height}\n" + to_text(bad))
    return table
