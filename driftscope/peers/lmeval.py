"""lm-evaluation-harness's multiple-choice accuracy on the benchmark's choice items.

    python -m driftscope.peers.lmeval BASE TUNED PROBES.jsonl [BATCH]

What a user already pays for accuracy alone: the probes with choices become a
local lm-eval task (a JSONL file and a task YAML in a temporary folder, no
download; each choice scored after the prompt with lm-eval's usual " "
delimiter), and `lm_eval` runs it once per model (`--model hf`, CPU or the
device given by LM_EVAL_DEVICE). Prints one JSON line: the seconds of both runs
together, the item count and each model's acc. Needs `lm_eval` on PATH (pip
install lm-eval); exits 3 when it is not there, so the bench can say so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TASK = """task: driftscope_bench_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def choice_items(probes: Path) -> list[dict]:
    rows = [json.loads(line) for line in probes.read_text().splitlines() if line.strip()]
    return [{"prompt": r["prompt"], "choices": r["choices"], "gold": r["choices"].index(r["answer"])}
            for r in rows if r.get("choices") and r.get("answer") in r["choices"]]


def run_model(model: str, tasks: Path, out: Path, batch: int) -> float:
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = ["lm_eval", "--model", "hf", "--model_args", f"pretrained={model},dtype=float32", "--tasks",
           "driftscope_bench_mc", "--include_path", str(tasks), "--batch_size", str(batch), "--device",
           os.environ.get("LM_EVAL_DEVICE", "cpu"), "--output_path", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"lm_eval failed on {model}:\n{done.stderr[-2000:]}")
    (result,) = list(out.rglob("results_*.json"))
    acc = json.loads(result.read_text())["results"]["driftscope_bench_mc"]["acc,none"]
    shutil.rmtree(out)
    return acc


def main(base: str, tuned: str, probes: str, batch: int = 16) -> dict:
    if shutil.which("lm_eval") is None:
        print(json.dumps({"error": "lm_eval is not installed (pip install lm-eval)"}))
        sys.exit(3)
    items = choice_items(Path(probes))
    with tempfile.TemporaryDirectory(prefix="driftscope-lmeval-") as tmp:
        tasks = Path(tmp)
        (tasks / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
        (tasks / "task.yaml").write_text(TASK.format(data=tasks / "items.jsonl"))
        start = time.perf_counter()
        accs = [run_model(m, tasks, tasks / f"out{i}", batch) for i, m in enumerate((base, tuned))]
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "items": len(items), "acc_base": accs[0], "acc_tuned": accs[1]}


if __name__ == "__main__":
    args = sys.argv[1:]
    print(json.dumps(main(args[0], args[1], args[2], *(int(a) for a in args[3:]))))
