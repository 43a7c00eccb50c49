"""Bad input: a one-line reason, exit code 2, never a traceback, nothing half-written."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from driftscope.cli import app

runner = CliRunner()


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def compare(family, tuned, tmp_path, *extra):
    return cli("compare", family["base"], tuned, "--out", tmp_path / "runs", *extra)


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def assert_usage_error(result, *needles):
    assert result.exit_code == 2, result.output
    assert not result.output.startswith("\n"), repr(result.output)  # the error comes first
    for needle in needles:
        assert needle in result.output, result.output


def test_missing_path(family, tmp_path):
    assert_usage_error(compare(family, tmp_path / "nope", tmp_path), "no such folder")


def test_folder_that_is_not_a_model(family, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_usage_error(compare(family, tmp_path / "empty", tmp_path), "not a model folder")


def test_adapter_whose_base_cannot_be_found(family, tmp_path):
    orphan = tmp_path / "orphan"
    shutil.copytree(family["lora"], orphan)
    cfg = json.loads((orphan / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "/no/such/base"
    (orphan / "adapter_config.json").write_text(json.dumps(cfg))
    r = cli("compare", orphan, family["tuned"], "--out", tmp_path / "runs")
    assert_usage_error(r, "adapter's base model '/no/such/base' is not a local folder", "pass the base model folder")


def test_incompatible_tokenizers(family, sp_tokenizer, tmp_path):
    other = tmp_path / "other-tok"
    shutil.copytree(family["tuned"], other)
    for f in other.glob("tokenizer*"):
        f.unlink()
    sp_tokenizer.save_pretrained(other)
    assert_usage_error(compare(family, other, tmp_path), "tokenizers differ", "share a tokenizer")


def test_empty_probe_file(family, tmp_path):
    empty = write(tmp_path / "empty.jsonl", [])
    assert_usage_error(compare(family, family["copy"], tmp_path, "--probes", empty), "no probes in the file")
    assert_usage_error(cli("probes", "validate", empty), "no probes")


def test_malformed_line_names_file_and_line(family, tmp_path):
    bad = write(tmp_path / "bad.jsonl", ['{"id": "a", "prompt": "x"}', '{"id": "b", "prompt": "y"', ""])
    assert_usage_error(compare(family, family["copy"], tmp_path, "--probes", bad), f"{bad}:2: not valid JSON")
    dup = write(tmp_path / "dup.jsonl", ['{"id": "a", "prompt": "x"}', '{"id": "a", "prompt": "y"}'])
    assert_usage_error(cli("probes", "validate", dup), f"{dup}:2: duplicate id 'a' (first on line 1)")


def test_answer_not_among_choices(tmp_path):
    bad = write(tmp_path / "mc.jsonl", ['{"id": "a", "prompt": "x", "answer": "c", "choices": ["a", "b"]}'])
    assert_usage_error(cli("probes", "validate", bad), f"{bad}:1: answer 'c' is not one of the choices")


def test_csv_suite_errors_name_the_line(tmp_path):
    bad = tmp_path / "s.csv"
    bad.write_text('id,prompt,answer,choices\na,Q?,x,"[""x"",""y""]"\nb,,y,\n')
    assert_usage_error(cli("probes", "validate", bad), f"{bad}:3: prompt must be a non-empty string")


def test_prompt_longer_than_context_is_cut_and_said(family, tmp_path):
    long = " ".join(["the weather today is sunny"] * 60)  # > 128 tokens of context
    suite = write(tmp_path / "long.jsonl", [json.dumps({"id": "long", "prompt": long, "answer": "yes"}),
                                            json.dumps({"id": "short", "prompt": "Q: Is the sun a star?\nA:", "answer": "yes"})])
    r = compare(family, family["tuned"], tmp_path, "--probes", suite, "--name", "long")
    assert r.exit_code == 0, r.output
    assert "1 prompts were longer than the context; their middle was cut" in r.output
    summary = json.loads((tmp_path / "runs" / "long" / "summary.json").read_text())
    assert summary["checkpoints"][0]["figures"]["truncated_prompts"] == 1


def test_non_finite_logits_are_reported_and_the_run_goes_on(family, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(family["tuned"])
    broken = tmp_path / "nan-model"
    model = AutoModelForCausalLM.from_pretrained(family["tuned"])
    poison = tok("zero")["input_ids"][0]
    with __import__("torch").no_grad():
        model.get_input_embeddings().weight[poison] = float("nan")
    model.save_pretrained(broken)
    tok.save_pretrained(broken)
    suite = write(tmp_path / "nan.jsonl", [json.dumps({"id": "poisoned", "prompt": "zero one two"}),
                                           json.dumps({"id": "clean", "prompt": "The capital of France is"})])
    r = compare(family, broken, tmp_path, "--probes", suite, "--name", "nan")
    assert r.exit_code == 0, r.output
    assert "positions had non-finite logits and were left out" in r.output
    f = json.loads((tmp_path / "runs" / "nan" / "summary.json").read_text())["checkpoints"][0]["figures"]
    assert f["nonfinite_positions"] == 1 and f["n_positions"] == 1


def test_existing_run_is_not_overwritten(family, tmp_path):
    assert compare(family, family["copy"], tmp_path, "--name", "same", "--probes", "general").exit_code == 0
    before = (tmp_path / "runs" / "same" / "summary.json").read_bytes()
    assert_usage_error(compare(family, family["copy"], tmp_path, "--name", "same", "--probes", "general"), "already exists", "--overwrite")
    assert (tmp_path / "runs" / "same" / "summary.json").read_bytes() == before


@pytest.mark.parametrize("args, needle", [
    (["--probes", "no_such_suite"], "no probe suite named 'no_such_suite'"),
    (["--class", "broken"], "expected NAME=REGEX"),
    (["--class", "x=("], "bad regular expression"),
    pytest.param(["--device", "cuda"], "no CUDA device", marks=pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is here")),
    (["--dtype", "float8"], "unknown dtype"),
    (["--chat-template", "on"], "has no chat template"),
    (["--verdict", "nope=1"], "unknown threshold"),
    (["--batch-size", "0"], "must be at least 1"),
])
def test_bad_options(family, tmp_path, args, needle):
    assert_usage_error(compare(family, family["copy"], tmp_path, *args), needle)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# -- thresholds, outputs, damaged runs (issue 13) ------------------------------


@pytest.fixture(scope="module")
def saved_run(family, tmp_path_factory):
    """A small real run folder (no layers, no weights) for the gate and report tests."""
    from driftscope import compare as run_compare

    root = tmp_path_factory.mktemp("saved")
    suite = write(root / "s.jsonl", [json.dumps({"id": "q", "prompt": "Q: What is 2 plus 3?\nA:", "answer": "5"})])
    return run_compare(family["base"], family["copy"], [suite], out=root / "runs", name="run",
                       layers=False, weights=False).path


def no_leftovers(*folders):
    for folder in folders:
        temporary = [p.name for p in folder.iterdir() if p.name.startswith(".") and ".tmp" in p.name]
        assert temporary == [], f"{folder}: {temporary}"


def unwritable_folder():
    """A folder even root cannot create files in (chmod does not stop root)."""
    if not __import__("os").path.isdir("/sys/kernel"):
        pytest.skip("no /sys here")
    return "/sys/kernel"


@pytest.mark.parametrize("pair, needle", [
    ("bootstrap=0", "--verdict bootstrap=0: out of range (a number of resamples, from 100 to 100000)"),
    ("alpha=2", "--verdict alpha=2: out of range (a significance level, between 0 and 1, exclusive)"),
    ("alpha=nan", "--verdict alpha=nan: out of range"),
    ("min_drop=-0.1", "--verdict min_drop=-0.1: out of range (an accuracy drop, as a fraction, from 0 to 1)"),
    ("stable_margin=1.5", "--verdict stable_margin=1.5: out of range"),
    ("bias_recovery=2", "--verdict bias_recovery=2: out of range"),
    ("loss_recovery=0.9", "loss_recovery=0.9 is above bias_recovery=0.5"),
    ("bootstrap=1.5", "--verdict bootstrap=1.5: not a whole number"),
])
def test_verdict_thresholds_are_range_checked(family, tmp_path, pair, needle):
    assert_usage_error(compare(family, family["copy"], tmp_path, "--verdict", pair), needle)
    assert not (tmp_path / "runs").exists()


def refuse_to_load(monkeypatch):
    """The checks under test must come before any model is loaded."""
    import driftscope.run

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the output was checked")

    monkeypatch.setattr(driftscope.run, "load_base", boom)


def test_out_that_cannot_be_written_fails_before_loading(family, tmp_path, monkeypatch):
    refuse_to_load(monkeypatch)
    a_file = write(tmp_path / "a-file", ["x"])
    r = cli("compare", family["base"], family["copy"], "--out", a_file)
    assert_usage_error(r, f"--out {a_file} is a file, not a folder")
    r = cli("compare", family["base"], family["copy"], "--out", a_file / "runs")
    assert_usage_error(r, f"--out {a_file / 'runs'}: {a_file} is a file, not a folder")
    ro = unwritable_folder()
    assert_usage_error(cli("compare", family["base"], family["copy"], "--out", f"{ro}/runs"), f"cannot write --out {ro}/runs")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_existing_run_and_bad_junit_fail_before_loading(family, saved_run, tmp_path, monkeypatch):
    refuse_to_load(monkeypatch)
    r = cli("compare", family["base"], family["copy"], "--out", saved_run.parent, "--name", saved_run.name)
    assert_usage_error(r, "already exists", "--overwrite")
    r = compare(family, family["copy"], tmp_path, "--gates", "default", "--junit", tmp_path)
    assert_usage_error(r, f"--junit {tmp_path} is a folder", "pass a file path")
    no_leftovers(tmp_path, tmp_path.parent)


def test_gate_outputs_that_cannot_be_written(saved_run, tmp_path):
    before = sorted(p.name for p in saved_run.iterdir())
    assert_usage_error(cli("gate", saved_run, "--junit", tmp_path), f"--junit {tmp_path} is a folder")
    assert_usage_error(cli("gate", saved_run, "--markdown", f"{unwritable_folder()}/drift.md"), "cannot write --markdown")
    no_leftovers(tmp_path, tmp_path.parent, saved_run)
    assert sorted(p.name for p in saved_run.iterdir()) == before  # refused before the gates were written


def test_weights_parquet_that_cannot_be_written(family, tmp_path):
    r = cli("weights", family["base"], family["tuned"], "--parquet", tmp_path)
    assert_usage_error(r, f"--parquet {tmp_path} is a folder")
    r = cli("weights", family["base"], family["tuned"], "--parquet", f"{unwritable_folder()}/w.parquet")
    assert_usage_error(r, "cannot write --parquet")
    no_leftovers(tmp_path)
    assert cli("weights", family["base"], family["tuned"], "--parquet", tmp_path / "w.parquet").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.parquet"]


def test_report_on_a_damaged_run(saved_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(saved_run, run)
    table = run / "tables" / "items.parquet"
    table.write_bytes(table.read_bytes()[: table.stat().st_size // 2])
    assert_usage_error(cli("report", run), f"{table}: unreadable table", "re-run driftscope compare")
    (run / "meta.json").write_text("{")
    assert_usage_error(cli("report", run), f"{run / 'meta.json'}: unreadable")
    (run / "summary.json").write_text("[]")
    assert_usage_error(cli("report", run), "expected a JSON object, got list")
    no_leftovers(run, tmp_path)


def test_report_index_on_a_folder_that_cannot_be_written():
    ro = unwritable_folder()
    assert_usage_error(cli("report", "--index", ro), f"cannot write {ro}/index.html")


# -- messages that need their second half --------------------------------------


def test_invalid_json_says_what_and_where(tmp_path):
    bad = write(tmp_path / "bad.jsonl", ['{"id": "a", "prompt": "never closed'])
    assert_usage_error(cli("probes", "validate", bad),
                       f"{bad}:1: not valid JSON: Unterminated string starting at: column 23")


def test_csv_missing_a_column_says_so(tmp_path):
    bad = tmp_path / "s.csv"
    bad.write_text("id,answer\na,x\n")
    assert_usage_error(cli("probes", "validate", bad), f"{bad}: missing column prompt", "it has 'id', 'answer'")
    jsonl = write(tmp_path / "s.jsonl", ['{"id": "a", "answer": "x"}'])
    assert_usage_error(cli("probes", "validate", jsonl), f"{jsonl}:1: missing prompt")


def test_gate_hints_keep_their_brackets(saved_run, tmp_path):
    gates = write(tmp_path / "g.toml", ["threshold = 3"])
    assert_usage_error(cli("gate", saved_run, "--gates", gates), "rules go in [[gate]] tables")
    broken = write(tmp_path / "broken.toml", ["[[gate]", 'figure = "kl.p99"'])
    assert_usage_error(cli("gate", saved_run, "--gates", broken), "not valid TOML",
                       'the README\'s section "Release gates in CI"')
    help_text = " ".join(cli("gate", "--help").output.split())  # as wrapped to the terminal
    for needle in ("[[gate]]", "at_most", "none_of", "suites.*.FIGURE", "Release gates in CI"):
        assert needle in help_text, help_text


def test_names_with_brackets_are_printed_as_they_are(tmp_path):
    suite = write(tmp_path / "s.jsonl", ['{"_suite": {"name": "[bold]odd[/bold] [x]"}}', '{"id": "a", "prompt": "x"}'])
    r = cli("probes", "validate", suite)
    assert r.exit_code == 0 and "suite '[bold]odd[/bold] [x]'" in r.output, r.output


@pytest.mark.parametrize("args", [["/no/such/base", "/no/such/tuned"], ["{base}", "{base}", "--probes", "no_such_suite"]])
def test_compare_errors_start_with_the_error(family, tmp_path, args):
    r = cli("compare", *[a.format(base=family["base"]) for a in args], "--out", tmp_path / "runs")
    assert r.exit_code == 2 and r.output.startswith("error: "), repr(r.output)
