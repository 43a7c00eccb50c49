"""lm-evaluation-harness samples as probe suites (driftscope.lmeval).

The default tests read tests/data/lmeval_samples_*.jsonl, written by lm-eval
0.4.13 itself (`run_lm_eval` below, limit 4/4/3, on the tiny base of
tests/tiny.py): two multiple-choice tasks, one with lm-eval's usual " "
target delimiter, one whose context ends in a space with delimiter "", and a
generate_until task. The opt-in test (`-m lmeval`, lm-eval installed) runs
lm-eval for real and checks driftscope's per-item choice correctness against
lm-eval's per-sample `acc`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from driftscope.capture import join, split_pair
from driftscope.cli import app
from driftscope.errors import ProbeError
from driftscope.lmeval import import_samples, write_suite
from driftscope.probes import load_suite

DATA = Path(__file__).parent / "data"
DATE = "2026-12-01T11-12-47.189092"  # as lm-eval stamps its output files
runner = CliRunner()


def samples(task: str, tmp_path: Path, date: str = DATE) -> Path:
    """A checked-in samples file under the name lm-eval gives it."""
    path = tmp_path / f"samples_{task}_{date}.jsonl"
    shutil.copy(DATA / f"lmeval_samples_{task}.jsonl", path)
    return path


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def requests(sample: dict) -> list[list]:
    return [[a[f"arg_{j}"] for j in range(len(a))] for a in sample["arguments"].values()]


def write_lines(path: Path, objs: list) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objs), encoding="utf-8")
    return path


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def mc_sample(doc_id=0, context="Q: What colour is grass?\nA:", choices=(" red", " green"), target="1", **extra) -> dict:
    args = {f"gen_args_{j}": {"arg_0": context, "arg_1": c} for j, c in enumerate(choices)}
    sample = {"doc_id": doc_id, "doc": {}, "target": target, "arguments": args, "filter": "none",
              "doc_hash": "d" * 64, "prompt_hash": "p" * 64, "target_hash": "t" * 64}
    return {**sample, **extra}


def lm_eval_encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval 0.4.13's TemplateLM._encode_pair for a causal model (tokenizer's own
    special tokens, as its tok_encode with add_bos_token unset)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok.encode(context + continuation)
    ctx = tok.encode(context)
    return ctx, whole[len(ctx):]


# -- real lm-eval output, checked in ---------------------------------------------


def test_real_multiple_choice_samples(tmp_path):
    path = samples("drift_mc", tmp_path)
    imported = import_samples(path)
    assert imported.header["name"] == "drift_mc" and imported.header["lm_eval"]["task"] == "drift_mc"
    assert imported.counts() == {"choice": 4} and not imported.skipped
    for item, sample in zip(imported.items, lines(path)):
        reqs = requests(sample)
        assert item["id"] == str(sample["doc_id"])
        assert item["prompt"] == reqs[0][0]  # lm-eval's context verbatim: exemplar, template
        assert "\n\nQ: " in item["prompt"]  # the 1-shot exemplar is there
        assert item["choices"] == [cont for _, cont in reqs]  # " Paris": lm-eval's delimiter kept
        assert item["answer"] == item["choices"][int(sample["target"])]
        assert f"doc_hash={sample['doc_hash']}" in item["tags"] and f"prompt_hash={sample['prompt_hash']}" in item["tags"]
        for (ctx, cont), choice in zip(reqs, item["choices"]):
            assert "".join(join(item["prompt"], choice)) == ctx + cont


def test_context_trailing_space_moves_to_the_choices(tmp_path):
    """Context "...A: " and continuation "Paris" (target_delimiter ""): lm-eval
    scores " Paris" after "...A:", and so must driftscope."""
    path = samples("drift_mc_space", tmp_path)
    imported = import_samples(path)
    for item, sample in zip(imported.items, lines(path)):
        (ctx, cont), *_ = requests(sample)
        assert ctx.endswith("A: ") and not cont.startswith(" ")
        assert item["prompt"] == ctx[:-1] and item["choices"][0] == " " + cont
        assert item["answer"] == item["choices"][int(sample["target"])]


@pytest.mark.parametrize("task", ["drift_mc", "drift_mc_space"])
@pytest.mark.parametrize("kind", ["bpe", "sp"])
def test_driftscope_splits_tokens_as_lm_eval(task, kind, tmp_path, bpe_tokenizer, sp_tokenizer):
    """Prompt ids and choice ids are lm-eval's, id for id, for both tokenizer styles."""
    tok = bpe_tokenizer if kind == "bpe" else sp_tokenizer
    path = samples(task, tmp_path)
    for item, sample in zip(import_samples(path).items, lines(path)):
        for (ctx, cont), choice in zip(requests(sample), item["choices"]):
            assert split_pair(tok, item["prompt"], choice, True) == lm_eval_encode_pair(tok, ctx, cont)


def test_real_generate_until_samples(tmp_path):
    path = samples("drift_gen", tmp_path)
    imported = import_samples(path)
    assert imported.counts() == {"free": 3}
    assert imported.header["lm_eval"]["output_types"] == {"generate_until": 3}
    for item, sample in zip(imported.items, lines(path)):
        assert item["prompt"] == requests(sample)[0][0]  # generation starts from the context as is
        assert item["answer"] == sample["target"] and "choices" not in item


def test_written_suite_loads(tmp_path):
    imported = import_samples(samples("drift_mc", tmp_path), name="arc-like")
    suite = load_suite(write_suite(imported, tmp_path / "suite.jsonl"))
    assert suite.name == "arc-like" and len(suite) == 4 and all(p.is_choice for p in suite.probes)
    assert suite.probes[0].task == "drift_mc" and suite.version == "unversioned"  # no results file beside it


def test_version_and_shots_from_the_results_file_beside(tmp_path):
    path = samples("drift_mc", tmp_path)
    hashes = "".join(s["doc_hash"] + s["prompt_hash"] + s["target_hash"] for s in lines(path))
    results = {"results": {}, "versions": {"drift_mc": 2.0}, "n-shot": {"drift_mc": 1},
               "configs": {"drift_mc": {"output_type": "multiple_choice"}}, "lm_eval_version": "0.4.13",
               "task_hashes": {"drift_mc": hashlib.sha256(hashes.encode()).hexdigest()}}
    write_lines(tmp_path / f"results_{DATE}.json", [results])
    header = import_samples(path).header
    assert header["version"] == "2.0" and header["lm_eval"]["n_shot"] == 1
    assert "version 2.0, 1-shot" in header["description"]
    assert import_samples(path, version="7").header["version"] == "7"  # --version wins

    results["task_hashes"]["drift_mc"] = "0" * 64  # results of another run: not used
    write_lines(tmp_path / f"results_{DATE}.json", [results])
    assert "version" not in import_samples(path).header


def test_task_and_version_overrides_for_a_renamed_file(tmp_path):
    path = shutil.copy(DATA / "lmeval_samples_drift_mc.jsonl", tmp_path / "mine.jsonl")
    assert import_samples(path).header["name"] == "mine"
    header = import_samples(path, task="arc_easy", version="1.0").header
    assert header["name"] == "arc_easy" and header["version"] == "1.0" and header["lm_eval"]["task"] == "arc_easy"


# -- schema variants ----------------------------------------------------------------


def test_pre_0_4_3_list_arguments(tmp_path):
    sample = mc_sample()
    sample["arguments"] = [["Q: What colour is grass?\nA:", " red"], ["Q: What colour is grass?\nA:", " green"]]
    item = import_samples(write_lines(tmp_path / "s.jsonl", [sample])).items[0]
    assert item["choices"] == [" red", " green"] and item["answer"] == " green"


def test_gold_as_text_and_as_ambiguous_digit(tmp_path):
    items = import_samples(write_lines(tmp_path / "s.jsonl", [
        mc_sample(0, target="green"),
        # choices "1", "2": target "1" is index 1 or the text "1" (index 0); lm-eval's acc says which
        mc_sample(1, choices=(" 1", " 2"), target="1", filtered_resps=[["-1.0", "True"], ["-2.0", "False"]], acc=1.0),
        mc_sample(2, choices=(" 1", " 2"), target="1"),  # nothing to decide by: lm-eval reads a digit as an index
    ])).items
    assert [i["answer"] for i in items] == [" green", " 1", " 2"]


def test_generation_filters_give_one_item_per_doc(tmp_path):
    gen = {"doc_id": 0, "doc": {}, "target": "18", "arguments": {"gen_args_0": {"arg_0": "Q: 9+9?\nA:", "arg_1": {"until": ["\n"]}}}}
    imported = import_samples(write_lines(tmp_path / "s.jsonl", [{**gen, "filter": "strict-match"}, {**gen, "filter": "flexible-extract"}]))
    assert imported.items == [{"id": "0", "prompt": "Q: 9+9?\nA:", "answer": "18", "task": "lm-eval", "tags": ["lm-eval"]}]


def test_single_loglikelihood_request_is_a_free_item(tmp_path):
    sample = mc_sample(choices=("Paris",), context="The capital of France is ", target="Paris")
    item = import_samples(write_lines(tmp_path / "s.jsonl", [sample])).items[0]
    assert (item["prompt"], item["answer"]) == ("The capital of France is", " Paris")


def test_documents_driftscope_cannot_score_are_skipped_with_the_reason(tmp_path):
    ok = mc_sample(0)
    winogrande = mc_sample(1)
    winogrande["arguments"]["gen_args_1"]["arg_0"] = "another context"
    two_golds = mc_sample(2, target="[0, 1]")
    imported = import_samples(write_lines(tmp_path / "s.jsonl", [ok, winogrande, two_golds]))
    assert [i["id"] for i in imported.items] == ["0"]
    assert list(imported.skipped.values()) == [[1], [2]]
    assert "multiple-input" in next(iter(imported.skipped))


def test_no_delimiter_and_no_trailing_space_cannot_be_reproduced(tmp_path):
    path = write_lines(tmp_path / "s.jsonl", [mc_sample(choices=("red", "green"))])
    with pytest.raises(ProbeError, match="join would add a space"):
        import_samples(path)


# -- bad input ------------------------------------------------------------------------


def cli(*args):
    result = runner.invoke(app, ["probes", "import-lm-eval", *map(str, args)])
    assert "Traceback" not in result.output, result.output
    return result


def assert_refused(result, needle, tmp_path):
    assert result.exit_code == 2, result.output
    assert needle in result.output, result.output
    assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) <= 2  # reason, hint
    assert not list(tmp_path.glob("*suite*")), "nothing written"


@pytest.mark.parametrize("make, needle", [
    (lambda d: write_lines(d / f"results_{DATE}.json", [{"results": {}}]), "results file"),
    (lambda d: write_text(d / "r.json", '{\n  "results": {"x": {}},\n  "versions": {}\n}\n'), "results file"),
    (lambda d: write_lines(d / "s.jsonl", [{"doc_id": 0, "target": "", "arguments": {"gen_args_0": {"arg_0": "a text"}}}]),
     "loglikelihood_rolling"),
    (lambda d: write_text(d / "s.jsonl", "\n\n"), "empty"),
    (lambda d: write_text(d / "s.jsonl", '{"doc_id": 0,\n'), "not valid JSON"),
    (lambda d: write_lines(d / "s.jsonl", [{"id": "q1", "prompt": "hi"}]), "not an lm-eval sample"),
    (lambda d: d / "missing.jsonl", "not found"),
], ids=["results-by-name", "results-by-content", "rolling", "empty", "invalid-json", "a-suite", "missing"])
def test_bad_input_is_one_line_exit_2(make, needle, tmp_path):
    assert_refused(cli(make(tmp_path), "--out", tmp_path / "suite.jsonl"), needle, tmp_path)


def test_cli_writes_the_suite_and_keeps_an_existing_one(tmp_path):
    path = samples("drift_mc", tmp_path)
    result = cli(path, "--out", tmp_path / "suite.jsonl")
    assert result.exit_code == 0, result.output
    assert "4 probes (4 multiple-choice, 0 free)" in result.output and "--chat-template off" in result.output
    before = (tmp_path / "suite.jsonl").read_bytes()
    again = cli(path, "--name", "other", "--out", tmp_path / "suite.jsonl")
    assert again.exit_code == 2 and "already exists" in again.output
    assert (tmp_path / "suite.jsonl").read_bytes() == before
    assert cli(path, "--name", "other", "--out", tmp_path / "suite.jsonl", "--overwrite").exit_code == 0
    assert load_suite(tmp_path / "suite.jsonl").name == "other"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_cli_default_out_is_the_task_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli(samples("drift_gen", tmp_path)).exit_code == 0
    assert load_suite(tmp_path / "drift_gen.jsonl").name == "drift_gen"


# -- lm-eval for real (opt-in) --------------------------------------------------------

QUESTIONS = [
    ("What is the capital of France?", ["Paris", "Tokyo", "green", "seven"], 0),
    ("What is the capital of Japan?", ["Paris", "Tokyo", "blue", "ten"], 1),
    ("What colour is grass?", ["red", "blue", "green", "yellow"], 2),
    ("What is 2 plus 3?", ["4", "5", "6", "7"], 1),
    ("How many days are in a week?", ["7", "12", "3", "10"], 0),
    ("How many months are in a year?", ["5", "7", "12", "2"], 2),
    ("Is the sun a star?", ["yes", "no"], 0),
    ("What did the small cat like?", ["the warm sun", "the west wind", "apples", "runners"], 0),
    ("What place did he finish in?", ["3rd", "2nd", "1st", "ten"], 0),
    ("How many apples did I count?", ["seven", "ten", "three", "one hundred"], 1),
    ("Where does the light wind come from?", ["the west", "the sun", "Paris", "Tokyo"], 0),
    ("What is the weather today?", ["sunny", "green", "a star", "7 days"], 0),
] + [(f"What is {a} plus {b}?", [str(a + b + d) for d in (-1, 0, 1, 2)], 1) for a, b in [(1, 1), (2, 2), (3, 4), (1, 5), (2, 6)]]
GENERATION = [("What is 2 plus 3?", "5"), ("What colour is grass?", "green"), ("What is the capital of France?", "Paris"),
              ("Is the sun a star? Answer yes or no.", "yes"), ("How many days are in a week?", "7")]
TASK = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
fewshot_split: test
output_type: {output_type}
doc_to_text: {text}
doc_to_target: "{target}"
metric_list:
  - metric: {metric}
metadata:
  version: {version}
"""
TASKS = {  # name: (data file, output type, doc_to_text (YAML), extra YAML, metric, version)
    "drift_mc": ("mc.jsonl", "multiple_choice", r'"Q: {{question}}\nA:"', 'doc_to_choice: "{{choices}}"', "acc", "2.0"),
    "drift_mc_space": ("mc.jsonl", "multiple_choice", r'"Q: {{question}}\nA: "',
                       'doc_to_choice: "{{choices}}"\ntarget_delimiter: ""', "acc", "1.1"),
    "drift_gen": ("gen.jsonl", "generate_until", r'"Q: {{question}}\nA:"',
                  'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 8\n  do_sample: false', "exact_match", "1.0"),
}


def write_tasks(root: Path) -> Path:
    """Local datasets and task YAMLs: nothing to download."""
    root.mkdir(parents=True, exist_ok=True)
    write_lines(root / "mc.jsonl", [{"question": q, "choices": c, "label": g} for q, c, g in QUESTIONS])
    write_lines(root / "gen.jsonl", [{"question": q, "answer": a} for q, a in GENERATION])
    for task, (data, output_type, text, extra, metric, version) in TASKS.items():
        target = "{{label}}" if output_type == "multiple_choice" else "{{answer}}"
        yaml = TASK.format(task=task, data=root / data, output_type=output_type, text=text, target=target,
                           metric=metric, version=version)
        (root / f"{task}.yaml").write_text(yaml + extra + "\n", encoding="utf-8")
    return root


def run_lm_eval(model: Path, root: Path, tasks: list[str], limit: int | None = None) -> dict[str, Path]:
    """lm_eval on the CPU, one-shot, with --log_samples; returns each task's samples file."""
    include = write_tasks(root / "tasks")
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={model}",
           "--tasks", ",".join(tasks), "--num_fewshot", "1", "--include_path", str(include),
           "--log_samples", "--output_path", str(root / "out"), "--device", "cpu"]
    if limit:
        cmd += ["--limit", str(limit)]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(root / "hf")}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return {t: next((root / "out").glob(f"*/samples_{t}_2*.jsonl")) for t in tasks}


@pytest.fixture(scope="session")  # session, as `family`: so it runs first and skips before the models are built
def lm_eval():
    """lm-eval, or a skip when it is not installed."""
    return pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install lm-eval, then -m lmeval)")


@pytest.mark.lmeval
def test_choice_correctness_equals_lm_eval_acc_on_every_item(lm_eval, family, tmp_path):
    import driftscope
    from lm_eval.models.huggingface import HFLM

    files = run_lm_eval(family["base"], tmp_path, ["drift_mc", "drift_mc_space"])
    suites = [write_suite(import_samples(f), tmp_path / f"{t}.jsonl") for t, f in files.items()]
    result = driftscope.compare(family["base"], [family["copy"]], suites, out=tmp_path / "runs", chat_template="off",
                                html=False, layers=False, weights=False)
    items = result.tables["items"]
    lm = HFLM(pretrained=str(family["base"]), device="cpu")
    for task, path in files.items():
        rows = items.filter(items["suite"] == task)
        correct = dict(zip(rows["probe_id"], rows["base_choice_correct"]))
        logp = dict(zip(rows["probe_id"], rows["logp_answer"]))
        suite = {p.id: p for p in load_suite(tmp_path / f"{task}.jsonl").probes}
        acc = {}
        for sample in lines(path):
            doc = str(sample["doc_id"])
            acc[doc] = sample["acc"]
            gold = int(sample["target"])
            assert logp[doc] == pytest.approx(float(sample["filtered_resps"][gold][0]), abs=1e-4)
            for (ctx, cont), choice in zip(requests(sample), suite[doc].choices):
                assert split_pair(lm.tokenizer, suite[doc].prompt, choice, True) == lm._encode_pair(ctx, cont)
        assert len(acc) == len(QUESTIONS)
        assert {d: float(correct[d]) for d in acc} == acc, task
