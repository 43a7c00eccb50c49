import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import tiny  # noqa: E402


@pytest.fixture(autouse=True)
def _user_paths(tmp_path, monkeypatch):
    """Every user path (cache, reports) points into the test's temp folder."""
    monkeypatch.setenv("DRIFTSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny ops on 2 shared, busy cores: one thread avoids spin-wait stalls (10x here)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def family(tmp_path_factory) -> dict[str, Path]:
    """Tiny base, a fully tuned copy, a LoRA adapter and an identical copy."""
    return tiny.build_family(tmp_path_factory.mktemp("family"))


@pytest.fixture(scope="session")
def bpe_tokenizer(tmp_path_factory):
    return tiny.train_bpe(tmp_path_factory.mktemp("bpe"))


@pytest.fixture(scope="session")
def sp_tokenizer(tmp_path_factory):
    return tiny.train_bpe(tmp_path_factory.mktemp("sp"), sentencepiece=True)


REPORT_QUESTIONS = [  # (prompt, gold answer, the other choices); the first carries markup the report must escape
    ("<script>alert(1)</script> Q: What is 2 plus 3?\nA:", "5", ["4", "6"]),
    ("Q: What is the capital of France?\nA:", "Paris", ["Tokyo", "Lyon"]),
    ("Q: What is the capital of Japan?\nA:", "Tokyo", ["Paris", "Osaka"]),
    ("Q: What colour is grass?\nA:", "green", ["blue", "red"]),
    ("Is the sun a star? Answer yes or no.\nA:", "yes", ["no"]),
    ("Q: How many days are in a week?\nA:", "7", ["5", "12"]),
    ("Q: How many months are in a year?\nA:", "12", ["7", "10"]),
    ("Q: What is 1 plus 1?\nA:", "</script><b>2</b>", ["3", "4"]),
]
REPORT_COUNTS = [f"I counted {', '.join(str(i) for i in range(1, n))}," for n in range(3, 11)]


@pytest.fixture(scope="session")
def report_run(family, tmp_path_factory):
    """One real compare for the report tests: the tiny base against two tuned
    checkpoints named as training steps (step-100: the LoRA adapter, step-200:
    the full fine-tune), on three small suites: `qa` (free answers), `qa_mc`
    (the same prompts as multiple choice) and a counting suite whose name
    carries markup. Returns {"path", "seconds", "labels", "suites"}."""
    import json
    import shutil
    import time

    from driftscope import compare

    root = tmp_path_factory.mktemp("report-run")
    ckpts = [root / "ckpt" / "step-100", root / "ckpt" / "step-200"]
    shutil.copytree(family["lora"], ckpts[0])
    shutil.copytree(family["tuned"], ckpts[1])
    suites = {
        "qa": [{"id": f"q{i}", "prompt": p, "answer": a} for i, (p, a, _) in enumerate(REPORT_QUESTIONS)],
        "qa_mc": [{"id": f"q{i}", "prompt": p, "answer": a, "choices": [a, *other]}
                  for i, (p, a, other) in enumerate(REPORT_QUESTIONS)],
        "counting <b>&</b>": [{"id": f"c{i}", "prompt": p, "answer": str(i + 2)} for i, p in enumerate(REPORT_COUNTS)],
    }
    files = []
    for i, (name, rows) in enumerate(suites.items()):
        files.append(root / f"suite{i}.jsonl")
        head = {"_suite": {"name": name, "version": "1", "description": f"report fixture: {name}"}}
        files[-1].write_text("\n".join(json.dumps(r) for r in [head, *rows]) + "\n", encoding="utf-8")
    started = time.perf_counter()
    result = compare(family["base"], ckpts, files, out=root / "reports", name="real")
    return {"path": result.path, "seconds": time.perf_counter() - started,
            "labels": ["step-100", "step-200"], "suites": list(suites)}
