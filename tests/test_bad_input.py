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
    assert "1 prompts were longer than the context; their start was cut" in r.output
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
    assert compare(family, family["copy"], tmp_path, "--name", "same").exit_code == 0
    before = (tmp_path / "runs" / "same" / "summary.json").read_bytes()
    assert_usage_error(compare(family, family["copy"], tmp_path, "--name", "same"), "already exists", "--overwrite")
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
