"""lm-evaluation-harness samples -> a driftscope probe suite.

`lm_eval ... --log_samples` writes, per task, samples_<task>_<date>.jsonl: one
object per document (and per filter), holding the requests lm-eval sent the
model (`arguments`: {"gen_args_N": {"arg_0": context, "arg_1": ...}}; before
lm-eval 0.4.3 a list of [context, ...] lists), the gold (`target`, written as a
string) and sha256 hashes of the document, the first prompt and the target.
The requests say which output type the task had:

    loglikelihood, one pair per choice -> a choice item, gold from `target`
    loglikelihood, a single pair       -> a free item, the continuation as answer
    generate_until (arg_1: gen kwargs) -> a free item, `target` as answer
    loglikelihood_rolling (arg_0 only) -> refused: perplexity has no prompt/answer

The prompt is lm-eval's context verbatim (template, description, few-shot
exemplars), except for scored pairs: lm-eval's `_encode_pair` moves the
context's trailing whitespace to the continuation before tokenising, and so do
we. Then prompt + choice is lm-eval's context + continuation character for
character, driftscope's join adds nothing, and its split into tokens (the
continuation is whole[len(context ids):]) is lm-eval's id for id.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from driftscope.errors import OutputError, ProbeError
from driftscope.probes import load_suite

SAMPLES_NAME = re.compile(r"^samples_(?P<task>.+)_(?P<date>\d{4}-\d{2}-\d{2}T[\d.\-]+)\.jsonl$")
NEEDED = ("doc_id", "arguments", "target")
HINT = "pass the samples_<task>_<date>.jsonl that lm_eval --log_samples writes"


@dataclass(frozen=True)
class Imported:
    """A suite ready to write: its `_suite` header, its rows, and the documents
    left out with the reason."""

    header: dict
    items: list[dict]
    skipped: dict[str, list] = field(default_factory=dict)  # reason -> doc ids

    @property
    def name(self) -> str:
        return self.header["name"]

    def counts(self) -> Counter:
        return Counter("choice" if "choices" in item else "free" for item in self.items)


def import_samples(path: str | os.PathLike, name: str | None = None, task: str | None = None,
                   version: str | None = None) -> Imported:
    """Read an lm-eval samples file; --name, --task and --version override what
    the file name and the results file beside it say."""
    path = Path(path)
    samples = read_samples(path)
    from_name, date = _task_from_filename(path)
    task = task or from_name
    results = _results_beside(path, task, date, samples) if task and date else {}
    items, skipped, kinds = _items(path, samples, task or "lm-eval")
    if not items:
        reasons = "; ".join(f"{r} ({len(ids)} docs)" for r, ids in skipped.items())
        raise ProbeError(f"{path}: no document could become a probe: {reasons}")
    version = version or (str(results["version"]) if "version" in results else None)
    header = _header(path, name or task or path.stem, task, version, results, kinds)
    return Imported(header, items, skipped)


def _items(path: Path, samples: list[tuple[int, dict]], task: str) -> tuple[list[dict], dict[str, list], Counter]:
    """Suite rows, the documents skipped by reason, and the output types seen."""
    items, skipped, seen, kinds = [], {}, {}, Counter()
    for lineno, sample in samples:
        reqs = _requests(path, lineno, sample)
        kind = _output_type(path, lineno, reqs)
        doc = str(sample["doc_id"])
        if doc in seen:  # one line per filter (gsm8k: strict-match, flexible-extract), same requests
            if seen[doc] != reqs:
                raise ProbeError(f"{path}:{lineno}: doc_id {doc} appears again with other requests",
                                 "pass the samples of one task run")
            continue
        seen[doc] = reqs
        kinds[kind] += 1
        item = _choice_item(sample, reqs) if kind == "multiple_choice" else _free_item(sample, reqs, kind)
        if isinstance(item, str):
            skipped.setdefault(item, []).append(sample["doc_id"])
            continue
        item["task"] = task
        item["tags"] = ["lm-eval", *(f"{h}={sample[h]}" for h in ("doc_hash", "prompt_hash") if sample.get(h))]
        items.append(item)
    return items, skipped, kinds


def write_suite(imported: Imported, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the suite as JSONL, whole or not at all (a temporary file renamed)."""
    out = Path(out)
    if out.is_dir():
        raise OutputError(f"{out} is a folder", "pass a file path ending in .jsonl")
    if out.suffix != ".jsonl":
        raise OutputError(f"{out}: a suite written from lm-eval samples is JSONL", "name the file *.jsonl")
    if out.exists() and not overwrite:
        raise OutputError(f"{out} already exists", "pass --overwrite or another --out")
    lines = [{"_suite": imported.header}, *imported.items]
    text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    from driftscope.result import atomic_path  # the one atomic writer

    with atomic_path(out) as tmp:  # tmp ends in .jsonl too
        tmp.write_text(text, encoding="utf-8")
        load_suite(tmp)  # what is written is a suite driftscope reads, or nothing is
    return out


# -- reading -----------------------------------------------------------------


def read_samples(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line; every problem one ProbeError."""
    if not path.is_file():
        raise ProbeError(f"samples file not found: {path}" if not path.exists() else f"{path} is not a file", HINT)
    if path.name.startswith("results") and path.suffix == ".json":
        raise ProbeError(f"{path} is an lm-eval results file, not a samples file", HINT + " beside it")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ProbeError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})", HINT) from None
    if not text.strip():
        raise ProbeError(f"{path}: the file is empty", HINT)
    whole = _as_results(text)
    if whole is not None:
        raise ProbeError(f"{path} is an lm-eval results file ({whole}), not a samples file", HINT + " beside it")
    samples = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            detail = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else "nested too deeply"
            raise ProbeError(f"{path}:{lineno}: not valid JSON: {detail}", "one lm-eval sample (a JSON object) per line") from None
        if not isinstance(obj, dict):
            raise ProbeError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}", HINT)
        missing = [k for k in NEEDED if k not in obj]
        if missing:
            raise ProbeError(f"{path}:{lineno}: not an lm-eval sample: no {missing[0]!r}", HINT)
        samples.append((lineno, obj))
    return samples


def _as_results(text: str) -> str | None:
    """What gives a results file away (it is one indented JSON object), or None."""
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    if isinstance(obj, dict) and "results" in obj and "doc_id" not in obj:
        return "it has 'results'"
    return None


def _requests(path: Path, lineno: int, sample: dict) -> list[tuple]:
    """The sample's requests as argument tuples, from either schema."""
    args = sample["arguments"]
    if isinstance(args, dict):  # {"gen_args_0": {"arg_0": ..., "arg_1": ...}, ...}
        args = [_numbered(a) if isinstance(a, dict) else a for a in _numbered(args)]
    if not isinstance(args, list) or not args or not all(isinstance(a, list) and a for a in args):
        raise ProbeError(f"{path}:{lineno}: 'arguments' holds no requests", HINT)
    return [tuple(a) for a in args]


def _numbered(d: dict) -> list:
    """The values of {"x_0": ..., "x_1": ..., "x_10": ...} in number order."""
    def number(key: str) -> int:
        tail = str(key).rsplit("_", 1)[-1]
        return int(tail) if tail.isdigit() else -1

    return [d[k] for k in sorted(d, key=number)]


def _output_type(path: Path, lineno: int, reqs: list[tuple]) -> str:
    first = reqs[0]
    if len(first) == 2 and isinstance(first[0], str) and isinstance(first[1], dict):
        return "generate_until"
    if all(len(r) == 2 and all(isinstance(x, str) for x in r) for r in reqs):
        return "multiple_choice" if len(reqs) > 1 else "loglikelihood"
    what = "loglikelihood_rolling" if len(first) == 1 else f"{len(first)} arguments per request"
    raise ProbeError(f"{path}:{lineno}: unsupported lm-eval output type ({what})",
                     "import multiple_choice, loglikelihood or generate_until tasks")


# -- items ---------------------------------------------------------------------


def _split(context: str, continuation: str) -> tuple[str, str] | None:
    """lm-eval's split: the context's trailing whitespace goes to the continuation.
    None where driftscope cannot reproduce it (its join would add a space)."""
    prompt = context.rstrip()
    continuation = context[len(prompt):] + continuation
    if not prompt or not continuation:
        return None
    if not continuation[0].isspace():
        return None
    return prompt, continuation


UNJOINABLE = ("the continuation starts with no whitespace after a context that ends with none "
              "(target_delimiter ''): driftscope's join would add a space")
EMPTY = "empty context or continuation"


def _choice_item(sample: dict, reqs: list[tuple]) -> dict | str:
    if len({r[0] for r in reqs}) != 1:
        return "the choices differ in context (a multiple-input task such as winogrande)"
    pairs = [_split(ctx, cont) for ctx, cont in reqs]
    if any(p is None for p in pairs):
        return EMPTY if any(not c.strip() or not k for c, k in reqs) else UNJOINABLE
    choices = [c for _, c in pairs]
    if len(set(choices)) != len(choices):
        return "two choices are the same text"
    gold = _gold_index(sample, [c for _, c in reqs])
    if isinstance(gold, str):
        return gold
    return {"id": str(sample["doc_id"]), "prompt": pairs[0][0], "answer": choices[gold], "choices": choices}


def _free_item(sample: dict, reqs: list[tuple], kind: str) -> dict | str:
    context, second = reqs[0]
    if kind == "loglikelihood":  # the continuation is the answer, split as lm-eval scores it
        pair = _split(context, second)
        if pair is None:
            return EMPTY if not context.strip() or not second else UNJOINABLE
        return {"id": str(sample["doc_id"]), "prompt": pair[0], "answer": pair[1]}
    if not context.strip():
        return EMPTY
    item = {"id": str(sample["doc_id"]), "prompt": context}
    target = _first_target(sample["target"])
    if target.strip():
        item["answer"] = target
    return item


def _first_target(target) -> str:
    """A generation target: lm-eval writes str(target); a list of golds keeps its first."""
    if isinstance(target, str) and target.startswith("["):
        try:
            value = ast.literal_eval(target)
        except (ValueError, SyntaxError):
            return target
        return str(value[0]) if isinstance(value, list) and value else target
    return target if isinstance(target, str) else str(target)


def _gold_index(sample: dict, continuations: list[str]) -> int | str:
    """The gold choice. lm-eval's target is an index into the choices, or the
    choice's text (without the target delimiter); the file holds str(target).
    Where a digit string could be either, lm-eval's own per-sample `acc`
    (against its argmax over `filtered_resps`) decides; else the index wins,
    as lm-eval itself reads a digit target as an index."""
    target = sample["target"]
    text = target if isinstance(target, str) else json.dumps(target)
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        value = None
    if isinstance(value, list):
        if len(value) != 1:
            return "several gold answers (driftscope scores one)"
        value = value[0]
    by_index = [value] if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(continuations) else []
    by_text = [j for j, c in enumerate(continuations) if c == text or c.strip() == text.strip()]
    candidates = list(dict.fromkeys(by_index + by_text))
    if len(candidates) > 1:
        agreeing = [j for j in candidates if _agrees_with_acc(sample, j)]
        candidates = agreeing if len(agreeing) == 1 else by_index
    if len(candidates) != 1:
        return "the gold target is not one of the choices" if not candidates else "the gold target is ambiguous"
    return candidates[0]


def _agrees_with_acc(sample: dict, gold: int) -> bool:
    """Whether gold=`gold` reproduces lm-eval's per-sample acc (True when unknown)."""
    try:
        lls = [float(r[0]) for r in sample["filtered_resps"]]
        acc = float(sample["acc"])
    except (KeyError, TypeError, ValueError, IndexError):
        return True
    return (max(range(len(lls)), key=lls.__getitem__) == gold) == (acc == 1.0)


# -- provenance ----------------------------------------------------------------


def _task_from_filename(path: Path) -> tuple[str | None, str | None]:
    m = SAMPLES_NAME.match(path.name)
    return (m["task"], m["date"]) if m else (None, None)


def _results_beside(path: Path, task: str, date: str, samples: list[tuple[int, dict]]) -> dict:
    """Task version, n-shot and run facts from results_<date>.json beside the
    samples, used only when its task hash is that of these samples."""
    results_path = path.with_name(f"results_{date}.json")
    try:
        results = json.loads(results_path.read_text(encoding="utf-8"))
        expected = results["task_hashes"][task]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    hashes = "".join(s.get("doc_hash", "") + s.get("prompt_hash", "") + s.get("target_hash", "") for _, s in samples)
    if hashlib.sha256(hashes.encode("utf-8")).hexdigest() != expected:
        return {}
    config = results.get("configs", {}).get(task, {})
    facts = {"version": results.get("versions", {}).get(task), "n_shot": results.get("n-shot", {}).get(task),
             "output_type": config.get("output_type"), "lm_eval_version": results.get("lm_eval_version"),
             "model": results.get("model_name"), "chat_template": bool(results.get("chat_template")),
             "results_file": results_path.name}
    return {k: v for k, v in facts.items() if v is not None}


def _header(path: Path, name: str, task: str | None, version: str | None, results: dict, kinds: Counter) -> dict:
    facts = {"task": task, "version": version, "samples_file": path.name,
             "samples_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
             "output_types": dict(sorted(kinds.items())),
             **{k: v for k, v in results.items() if k != "version"}}
    where = f"lm-eval task {task or '(unknown)'}" + (f" version {version}" if version else "")
    shots = f", {results['n_shot']}-shot" if "n_shot" in results else ""
    # The contexts are lm-eval's exact text (its exemplars and any chat rendering included): never wrapped again.
    header = {"name": name, "version": version, "description": f"{where}{shots}, imported from {path.name}",
              "chat_template": "off", "lm_eval": {k: v for k, v in facts.items() if v is not None}}
    return {k: v for k, v in header.items() if v is not None}
