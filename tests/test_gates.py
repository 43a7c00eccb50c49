"""Release gates: rules file -> results table -> exit code, JUnit, Markdown, run files."""

from __future__ import annotations

import copy
import json
import textwrap
import xml.etree.ElementTree as ET

import polars as pl
import pytest

from driftscope.errors import DriftscopeError
from driftscope.gates import (
    FIGURES, TABLE_SCHEMA, GateError, assert_gates, evaluate, exit_code, load_gates,
    parse_figure, read_summary, to_junit, to_markdown, to_text, write_gate_files,
)


def stats(mean: float, p99: float) -> dict:
    return {"mean": mean, "se": mean / 10, "median": mean / 2, "p90": p99 / 3, "p95": p99 / 2,
            "p99": p99, "p99_9": p99 * 1.5, "max": p99 * 2, "n": 400}


def figures(kl_mean=0.05, kl_p99=0.8, top1=0.9, numeric_shift=0.01, acc_change=-0.01,
            verdict="stable", suites=True) -> dict:
    f = {
        "n_probes": 200, "n_positions": 400,
        "kl": stats(kl_mean, kl_p99), "kl_reverse": stats(kl_mean, kl_p99), "js": stats(0.01, 0.2),
        "top1_agreement": top1,
        "classes": {
            "numeric": {"base": 0.1, "tuned": 0.1 + numeric_shift, "shift": numeric_shift,
                        "shift_se": 0.002, "log_odds_shift": 0.1},
            "punctuation": {"base": 0.2, "tuned": 0.2, "shift": 0.0, "shift_se": 0.001,
                            "log_odds_shift": 0.0},
        },
        "kl_split": {"between": 0.01, "within": 0.04, "between_share": 0.2},
        "accuracy_base": 0.7, "accuracy_tuned": 0.7 + acc_change, "accuracy_change": acc_change,
        "accuracy_change_ci": [acc_change - 0.02, acc_change + 0.02],
        "mcnemar_p": 0.4, "recovered": None, "verdict": verdict,
    }
    if suites:
        f["suites"] = {
            "arithmetic": figures(kl_mean, kl_p99, top1, numeric_shift, acc_change, verdict, False),
            "trivia": figures(kl_mean, kl_p99, top1, numeric_shift, acc_change, verdict, False),
        }
    return f


def make_summary(*labels: str, **kw) -> dict:
    """A schema_version 1 summary with one checkpoint per label, all with the same figures."""
    labels = labels or ("tuned",)
    return {
        "schema_version": 1,
        "models": {"base": {"path": "base/"}, "tuned": [{"path": f"{lb}/"} for lb in labels]},
        "suites": [{"name": "arithmetic", "version": "1", "hash": "x", "n_probes": 100},
                   {"name": "trivia", "version": "1", "hash": "y", "n_probes": 100}],
        "settings": {},
        "checkpoints": [{"label": lb, "path": f"{lb}/", "figures": figures(**kw)} for lb in labels],
    }


def gates_file(tmp_path, body: str, name: str = "gates.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body).lstrip("\n"), encoding="utf-8")
    return path


def one_rule(tmp_path, figure: str, op: str, value: str):
    return load_gates(gates_file(tmp_path, f'[[gate]]\nfigure = "{figure}"\n{op} = {value}\n'))


def status_of(summary, gates) -> list[str]:
    return evaluate(summary, gates)["status"].to_list()


# ---------------------------------------------------------------- operators


@pytest.mark.parametrize("figure, op, value, passes", [
    ("kl.p99", "at_most", "1.0", True),
    ("kl.p99", "at_most", "0.5", False),
    ("kl.p99", "at_most", "0.8", True),  # the bound itself passes
    ("top1_agreement", "at_least", "0.85", True),
    ("top1_agreement", "at_least", "0.95", False),
    ("verdict", "one_of", '["stable", "output-bias"]', True),
    ("verdict", "one_of", '["output-bias"]', False),
    ("verdict", "none_of", '["knowledge-loss", "mixed"]', True),
    ("verdict", "none_of", '["stable"]', False),
    ("classes.numeric.shift", "at_most", "0.05", True),
    ("suites.arithmetic.accuracy_change", "at_least", "-0.02", True),
    ("suites.arithmetic.accuracy_change", "at_least", "0", False),
    ("accuracy_change_ci.lo", "at_least", "-0.05", True),
    ("accuracy_change_ci.hi", "at_most", "0", False),
    ("kl.n", "at_least", "100", True),
])
def test_each_operator_passes_and_fails(tmp_path, figure, op, value, passes):
    table = evaluate(make_summary(), one_rule(tmp_path, figure, op, value))
    assert table["status"].to_list() == ["pass" if passes else "fail"]
    assert exit_code(table) == (0 if passes else 1)


def test_table_columns_and_values(tmp_path):
    gates = load_gates(gates_file(tmp_path, """
        [[gate]]
        figure = "kl.p99"
        at_most = 0.5
        message = "tail drift too large"
    """))
    table = evaluate(make_summary(kl_p99=0.75), gates)
    assert dict(table.schema) == TABLE_SCHEMA
    row = table.row(0, named=True)
    assert row == {"checkpoint": "tuned", "rule": "kl.p99 <= 0.5", "line": 1, "figure": "kl.p99",
                   "operator": "at_most", "threshold": "0.5", "observed": "0.75",
                   "status": "fail", "message": "tail drift too large"}


def test_rule_name_replaces_the_generated_label(tmp_path):
    gates = load_gates(gates_file(tmp_path, '[[gate]]\nname = "tail"\nfigure = "kl.p99"\nat_most = 1\n'))
    assert evaluate(make_summary(), gates)["rule"].to_list() == ["tail"]


def test_suite_wildcard_gives_a_row_per_suite(tmp_path):
    summary = make_summary()
    summary["checkpoints"][0]["figures"]["suites"]["trivia"]["accuracy_change"] = -0.2
    table = evaluate(summary, one_rule(tmp_path, "suites.*.accuracy_change", "at_least", "-0.05"))
    assert table["figure"].to_list() == ["suites.arithmetic.accuracy_change", "suites.trivia.accuracy_change"]
    assert table["status"].to_list() == ["pass", "fail"]


def test_suite_wildcard_skips_suites_without_answers(tmp_path):
    summary = make_summary()
    trivia = summary["checkpoints"][0]["figures"]["suites"]["trivia"]
    trivia.update(verdict="no-answers", accuracy_change=None)
    table = evaluate(summary, one_rule(tmp_path, "suites.*.verdict", "none_of", '["knowledge-loss"]'))
    assert table["figure"].to_list() == ["suites.arithmetic.verdict"]
    # ...but KL figures still cover every suite
    assert evaluate(summary, one_rule(tmp_path, "suites.*.kl.mean", "at_most", "1")).height == 2


def test_class_wildcard_and_dotted_suite_names(tmp_path):
    table = evaluate(make_summary(), one_rule(tmp_path, "classes.*.shift", "at_most", "0.05"))
    assert table["figure"].to_list() == ["classes.numeric.shift", "classes.punctuation.shift"]
    summary = make_summary()
    f = summary["checkpoints"][0]["figures"]
    f["suites"]["mmlu.algebra"] = f["suites"].pop("arithmetic")
    fig = parse_figure("suites.mmlu.algebra.kl.p99")
    assert (fig.suite, fig.keys) == ("mmlu.algebra", ("kl", "p99"))
    assert status_of(summary, one_rule(tmp_path, "suites.mmlu.algebra.kl.p99", "at_most", "1")) == ["pass"]


def test_p99_9_may_be_written_p99_dot_9(tmp_path):
    assert parse_figure("kl.p99.9").keys == ("kl", "p99_9")
    assert parse_figure("suites.a.b.js.p99.9").suite == "a.b"
    assert status_of(make_summary(), one_rule(tmp_path, "kl.p99.9", "at_most", "1.5")) == ["pass"]


def test_every_documented_figure_parses():
    for name in FIGURES:
        assert parse_figure(name.replace("<class>", "numeric")) is not None, name
        assert parse_figure("suites.s." + name.replace("<class>", "numeric")) is not None, name


# ---------------------------------------------------------------- exit codes


def test_exit_code_0_when_all_pass():
    table = evaluate(make_summary(), "default")
    assert set(table["status"]) == {"pass"}
    assert exit_code(table) == 0


def test_exit_code_1_when_a_rule_fails_even_beside_inconclusive(tmp_path):
    gates = load_gates(gates_file(tmp_path, """
        [[gate]]
        figure = "kl.mean"
        at_most = 0.01
        [[gate]]
        figure = "recovered"
        at_least = 0.5
    """))
    table = evaluate(make_summary(), gates)
    assert table["status"].to_list() == ["fail", "inconclusive"]
    assert exit_code(table) == 1


def test_exit_code_2_is_a_driftscope_error(tmp_path):
    with pytest.raises(GateError) as e:
        load_gates(tmp_path / "nope.toml")
    assert isinstance(e.value, DriftscopeError) and e.value.exit_code == 2


def test_exit_code_3_for_null_figure(tmp_path):
    table = evaluate(make_summary(), one_rule(tmp_path, "recovered", "at_least", "0.5"))
    assert table["observed"].to_list() == ["null"]
    assert exit_code(table) == 3


def test_exit_code_3_for_inconclusive_verdict(tmp_path):
    for rule in ('none_of = ["knowledge-loss"]', 'one_of = ["stable"]'):
        gates = load_gates(gates_file(tmp_path, f'[[gate]]\nfigure = "verdict"\n{rule}\n'))
        for verdict in ("inconclusive", "no-answers"):
            table = evaluate(make_summary(verdict=verdict), gates)
            assert table["status"].to_list() == ["inconclusive"], (rule, verdict)
            assert exit_code(table) == 3


def test_naming_inconclusive_on_purpose_decides_it(tmp_path):
    gates = one_rule(tmp_path, "verdict", "one_of", '["stable", "inconclusive"]')
    assert status_of(make_summary(verdict="inconclusive"), gates) == ["pass"]


def test_absent_and_nan_figures_are_inconclusive(tmp_path):
    summary = make_summary()
    del summary["checkpoints"][0]["figures"]["kl_split"]
    summary["checkpoints"][0]["figures"]["top1_agreement"] = float("nan")
    gates = load_gates(gates_file(tmp_path, """
        [[gate]]
        figure = "kl_split.between_share"
        at_most = 0.5
        [[gate]]
        figure = "top1_agreement"
        at_least = 0.5
    """))
    table = evaluate(summary, gates)
    assert table["observed"].to_list() == ["absent", "nan"]
    assert table["status"].to_list() == ["inconclusive", "inconclusive"]


# ---------------------------------------------------------------- bad input -> GateError naming rule and line


def error_for(tmp_path, body: str) -> str:
    with pytest.raises(GateError) as e:
        load_gates(gates_file(tmp_path, body))
    return str(e.value)


def test_unknown_figure_names_rule_line_and_suggests(tmp_path):
    msg = error_for(tmp_path, """
        [[gate]]
        figure = "kl.mean"
        at_most = 1

        [[gate]]
        figure = "kl.mena"
        at_most = 1
    """)
    assert msg.startswith(f"{tmp_path / 'gates.toml'}:6 (rule 2): unknown figure 'kl.mena'")
    assert "did you mean 'kl.mean'" in msg
    assert "did you mean 'suites.x.kl.mean'" in error_for(tmp_path, '[[gate]]\nfigure = "suites.x.kl.maen"\nat_most = 1\n')


def test_unknown_suite_and_class_are_errors_at_evaluation(tmp_path):
    gates = one_rule(tmp_path, "suites.arithmatic.accuracy_change", "at_least", "0")
    with pytest.raises(GateError, match=r"gates.toml:1 \(rule 1\): suite 'arithmatic' is not in this run") as e:
        evaluate(make_summary(), gates)
    assert "arithmetic, trivia" in str(e.value)
    with pytest.raises(GateError, match="token class 'emoji' is not in this run"):
        evaluate(make_summary(), one_rule(tmp_path, "classes.emoji.shift", "at_most", "0"))


def test_two_operators(tmp_path):
    msg = error_for(tmp_path, '[[gate]]\nfigure = "kl.mean"\nat_most = 1\nat_least = 0\n')
    assert ":4 (rule 1): more than one operator (at_most, at_least)" in msg


def test_no_operator(tmp_path):
    msg = error_for(tmp_path, '# comment\n[[gate]]\nfigure = "kl.mean"\nmessage = "x"\n')
    assert ":2 (rule 1): no operator" in msg


def test_no_figure(tmp_path):
    assert ":1 (rule 1): no figure" in error_for(tmp_path, "[[gate]]\nat_most = 1\n")


@pytest.mark.parametrize("figure, op, value, expected", [
    ("kl.mean", "at_most", '"0.5"', "at_most must be a number"),
    ("kl.mean", "at_least", "true", "at_least must be a number"),
    ("kl.mean", "at_most", "nan", "at_most must be a number"),
    ("kl.mean", "one_of", '["stable"]', "kl.mean is a number: use at_most or at_least"),
    ("verdict", "at_most", "1", "verdict takes one_of or none_of"),
    ("verdict", "one_of", "[]", "one_of must be a list of verdicts"),
    ("verdict", "none_of", "[1, 2]", "none_of must be a list of verdicts"),
    ("verdict", "none_of", '["knowlege-loss"]', "unknown verdict 'knowlege-loss'"),
])
def test_wrong_threshold_type(tmp_path, figure, op, value, expected):
    msg = error_for(tmp_path, f'[[gate]]\nfigure = "{figure}"\n{op} = {value}\n')
    assert f":3 (rule 1): {expected}" in msg


def test_unknown_rule_key_suggests(tmp_path):
    msg = error_for(tmp_path, '[[gate]]\nfigure = "kl.mean"\nat_mots = 1\n')
    assert ":3 (rule 1): unknown key 'at_mots' (did you mean 'at_most'?)" in msg


def test_malformed_toml_names_the_line(tmp_path):
    msg = error_for(tmp_path, '[[gate]]\nfigure = "kl.mean"\nat_most 1\n')
    assert msg.startswith(f"{tmp_path / 'gates.toml'}:3: not valid TOML")


def test_empty_file(tmp_path):
    assert "no gate rules" in error_for(tmp_path, "")
    assert "no gate rules" in error_for(tmp_path, "# only a comment\n")


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(GateError, match="gates file not found"):
        load_gates(tmp_path / "missing.toml")
    with pytest.raises(GateError, match="gates file is a folder"):
        load_gates(tmp_path)


def test_bad_top_level(tmp_path):
    assert "unknown top-level key 'gates'" in error_for(tmp_path, '[[gates]]\nfigure = "kl.mean"\nat_most = 1\n')
    assert "'gate' must be a list of tables" in error_for(tmp_path, '[gate]\nfigure = "kl.mean"\nat_most = 1\n')
    assert 'extends must be "default"' in error_for(tmp_path, 'extends = "other.toml"\n')


def test_bad_summary(tmp_path):
    gates = load_gates("default")
    with pytest.raises(GateError, match="schema_version 2 is not supported"):
        evaluate({**make_summary(), "schema_version": 2}, gates)
    with pytest.raises(GateError, match="no checkpoints"):
        evaluate({**make_summary(), "checkpoints": []}, gates)
    summary = make_summary()
    summary["checkpoints"][0]["figures"]["kl"]["mean"] = "big"
    with pytest.raises(GateError, match="kl.mean is 'big', not a number"):
        evaluate(summary, gates)
    with pytest.raises(GateError, match="no summary.json"):
        read_summary(tmp_path)


# ---------------------------------------------------------------- presets and extends


def test_default_preset_rules_and_lines():
    gates = load_gates("default")
    assert gates.source == "default" and len(gates) >= 6
    assert all(r.line and r.message and r.name for r in gates)
    figs = {r.figure.path for r in gates}
    assert {"verdict", "accuracy_change", "kl.p99", "top1_agreement"} <= figs


def test_default_preset_catches_damage():
    cases = {"knowledge loss": dict(verdict="knowledge-loss", acc_change=-0.1),
             "tail drift": dict(kl_p99=3.0), "numeric tilt": dict(numeric_shift=0.2),
             "argmax flips": dict(top1=0.6)}
    for what, kw in cases.items():
        assert exit_code(evaluate(make_summary(**kw), "default")) == 1, what


def test_extends_default_adds_rules(tmp_path):
    gates = load_gates(gates_file(tmp_path, """
        extends = "default"
        [[gate]]
        figure = "n_probes"
        at_least = 500
    """))
    assert len(gates) == len(load_gates("default")) + 1
    assert gates.rules[-1].where == f"{tmp_path / 'gates.toml'}:2 (rule 1)"
    assert exit_code(evaluate(make_summary(), gates)) == 1


# ---------------------------------------------------------------- checkpoints


def test_multi_checkpoint_rows_per_checkpoint(tmp_path):
    summary = make_summary("step-100", "step-200", "step-300")
    summary["checkpoints"][2]["figures"]["kl"]["p99"] = 5.0
    gates = one_rule(tmp_path, "kl.p99", "at_most", "2")
    table = evaluate(summary, gates)
    assert table["checkpoint"].to_list() == ["step-100", "step-200", "step-300"]
    assert table["status"].to_list() == ["pass", "pass", "fail"]
    assert exit_code(table) == 1
    only = evaluate(summary, gates, checkpoint="step-200")
    assert only["checkpoint"].to_list() == ["step-200"] and exit_code(only) == 0
    with pytest.raises(GateError, match="no checkpoint labelled 'step-999'") as e:
        evaluate(summary, gates, checkpoint="step-999")
    assert "step-100, step-200, step-300" in str(e.value)


# ---------------------------------------------------------------- outputs


def failing_table(tmp_path) -> pl.DataFrame:
    summary = make_summary("step-100", "step-200", verdict="inconclusive")
    summary["checkpoints"][1]["figures"]["kl"]["p99"] = 5.0
    gates = load_gates(gates_file(tmp_path, """
        [[gate]]
        figure = "kl.p99"
        at_most = 2
        message = "tail <drift> & co"
        [[gate]]
        figure = "verdict"
        none_of = ["knowledge-loss"]
        [[gate]]
        figure = "top1_agreement"
        at_least = 0.5
    """))
    return evaluate(summary, gates)


def test_junit_parses_and_counts(tmp_path):
    table = failing_table(tmp_path)
    root = ET.fromstring(to_junit(table))
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("6", "1", "2")
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["driftscope gates: step-100", "driftscope gates: step-200"]
    assert [s.get("failures") for s in suites] == ["0", "1"]
    failures = root.findall(".//failure")
    assert len(failures) == 1 and "tail <drift> & co" in failures[0].get("message")
    assert len(root.findall(".//skipped")) == 2
    assert len(root.findall(".//testcase")) == 6


def test_junit_case_names_distinct_for_wildcards(tmp_path):
    table = evaluate(make_summary(), one_rule(tmp_path, "suites.*.kl.mean", "at_most", "1"))
    names = [c.get("name") for c in ET.fromstring(to_junit(table)).iter("testcase")]
    assert len(set(names)) == 2


def test_markdown_has_every_row(tmp_path):
    table = failing_table(tmp_path)
    md = to_markdown(table, make_summary("step-100", "step-200"))
    assert md.startswith("### ❌ driftscope gates failed")
    assert "1 failed, 2 inconclusive" in md and "`base/`" in md
    rows = [line for line in md.splitlines() if line.startswith("| step-")]
    assert len(rows) == table.height == 6
    assert any("kl.p99 <= 2" in r and "5" in r and "fail" in r for r in rows)
    assert "tail <drift> & co" in md
    assert to_markdown(evaluate(make_summary(), "default")).startswith("### ✅ driftscope gates passed")


def test_markdown_escapes_pipes(tmp_path):
    gates = load_gates(gates_file(tmp_path, '[[gate]]\nname = "a|b"\nfigure = "kl.mean"\nat_most = 1\n'))
    assert "a\\|b" in to_markdown(evaluate(make_summary(), gates))


def test_text_table(tmp_path):
    text = to_text(failing_table(tmp_path))
    assert text.splitlines()[0].split() == ["checkpoint", "rule", "figure", "observed", "threshold", "status"]
    assert "tail <drift> & co" in text


def test_write_gate_files(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    table = failing_table(tmp_path)
    paths = write_gate_files(run, table, source="gates.toml")
    doc = json.loads(paths["json"].read_text())
    assert doc["exit_code"] == 1 and doc["outcome"] == "failed" and doc["gates"] == "gates.toml"
    assert doc["counts"] == {"pass": 3, "fail": 1, "inconclusive": 2}
    assert len(doc["results"]) == 6
    assert pl.read_parquet(paths["table"]).equals(table)
    assert sorted(p.name for p in run.rglob("*")) == ["gates.json", "gates.parquet", "tables"]
    with pytest.raises(GateError, match="run folder not found"):
        write_gate_files(tmp_path / "nope", table)


# ---------------------------------------------------------------- assert helper


def test_assert_gates_passes_and_returns_table(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps(make_summary()))
    assert exit_code(assert_gates(run, "default")) == 0
    assert exit_code(assert_gates(make_summary(), load_gates("default"))) == 0


def test_assert_gates_lists_failed_rules(tmp_path):
    with pytest.raises(AssertionError) as e:
        assert_gates(make_summary(kl_p99=3.0, top1=0.5), "default")
    msg = str(e.value)
    assert msg.startswith("driftscope gates failed: 2 failed, 0 inconclusive")
    assert "p99 KL <= 2 nats" in msg and "top-1 agreement >= 0.8" in msg
    assert "mean KL" not in msg  # passing rules are not listed


def test_assert_gates_inconclusive(tmp_path):
    summary = make_summary(verdict="inconclusive")
    with pytest.raises(AssertionError, match="inconclusive"):
        assert_gates(summary, "default")
    assert exit_code(assert_gates(summary, "default", allow_inconclusive=True)) == 3


def test_gates_are_reusable_and_summary_untouched():
    summary = make_summary()
    before = copy.deepcopy(summary)
    gates = load_gates("default")
    assert evaluate(summary, gates).equals(evaluate(summary, gates))
    assert summary == before
