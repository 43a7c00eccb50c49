"""Probe suites: data files -> frozen Probe records.

A suite is data, never code: JSONL, CSV or Parquet with the columns

    id (unique in the suite), prompt, answer?, choices?, task?, tags?

A JSONL suite may open with a header line naming it:

    {"_suite": {"name": "arithmetic", "version": "1.0", "description": "..."}}

The header may also set how the suite is run: "fewshot": K (exemplars
prepended to each prompt by default; --fewshot overrides it), "fewshot_chat": K
(the default instead when the prompts go through the chat template) and
"chat_template": "auto" | "on" | "off" (an explicit --chat-template on or off
overrides it; lm-eval imports say "off": their context is already rendered).

Other formats take their name from the file stem. Every problem is a
ProbeError that names the file and the line, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from driftscope.errors import ProbeError

SUFFIXES = (".jsonl", ".csv", ".parquet")
KNOWN = frozenset({"id", "prompt", "answer", "choices", "task", "tags"})  # the fields of a probe
REQUIRED = ("id", "prompt")


@dataclass(frozen=True)
class Probe:
    id: str
    prompt: str
    suite: str
    answer: str | None = None
    choices: tuple[str, ...] | None = None
    task: str = ""
    tags: tuple[str, ...] = ()
    shots: str = ""  # few-shot exemplars rendered before the prompt (driftscope.fewshot), "" for none
    chat: bool | None = None  # the suite's own chat-template choice; None: the run's

    @property
    def text(self) -> str:
        """What the model is shown: the exemplars, then the prompt."""
        return self.shots + self.prompt

    @property
    def is_choice(self) -> bool:
        return self.choices is not None


@dataclass(frozen=True)
class ProbeSuite:
    name: str
    version: str
    description: str
    path: str
    hash: str  # sha256 of the file bytes: what was run
    probes: tuple[Probe, ...]
    fewshot: int = 0  # the header's default number of exemplars
    fewshot_chat: int | None = None  # the header's default with the chat template (None: `fewshot`)
    chat_template: str = "auto"  # the header's chat-template choice: auto, on or off

    def __len__(self) -> int:
        return len(self.probes)

    @property
    def n_with_answer(self) -> int:
        return sum(p.answer is not None for p in self.probes)


def builtin_dirs() -> list[Path]:
    """Where suite names are looked up, first match wins."""
    dirs = []
    if env := os.environ.get("DRIFTSCOPE_PROBES"):
        dirs += [Path(d) for d in env.split(os.pathsep) if d]
    dirs.append(Path(__file__).resolve().parent.parent / "probes")
    return dirs


def resolve_suite(spec: str | os.PathLike) -> Path:
    """A file path, or the name of a suite in the probes folders."""
    path = Path(spec)
    if path.is_file():
        return path
    if path.exists():
        raise ProbeError(f"{path} is not a file", "pass a .jsonl, .csv or .parquet suite")
    if path.suffix in SUFFIXES or os.sep in str(spec):
        raise ProbeError(f"probe file not found: {path}", "check the path")
    for d in builtin_dirs():
        for suffix in SUFFIXES:
            candidate = d / f"{spec}{suffix}"
            if candidate.is_file():
                return candidate
    names = ", ".join(s.name for s in list_suites()) or "none"
    raise ProbeError(f"no probe suite named {spec!r}", f"known suites: {names}")


def load_suite(spec: str | os.PathLike) -> ProbeSuite:
    path = resolve_suite(spec)
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if path.suffix == ".jsonl":
        header, rows = _read_jsonl(path, raw)
    elif path.suffix == ".csv":
        header, rows = {}, _read_table(path, "csv")
    elif path.suffix == ".parquet":
        header, rows = {}, _read_table(path, "parquet")
    else:
        raise ProbeError(f"{path}: unknown probe format {path.suffix!r}", "use .jsonl, .csv or .parquet")
    name = str(header.get("name") or path.stem)
    fewshot, fewshot_chat, chat_mode = _run_settings(path, header)
    chat = {"auto": None, "on": True, "off": False}[chat_mode]
    probes = tuple(replace(p, chat=chat) for p in _validate(path, name, rows))
    return ProbeSuite(
        name=name,
        version=str(header.get("version", "unversioned")),
        description=str(header.get("description", "")),
        path=str(path),
        hash=digest,
        probes=probes,
        fewshot=fewshot,
        fewshot_chat=fewshot_chat,
        chat_template=chat_mode,
    )


def _run_settings(path: Path, header: dict) -> tuple[int, int | None, str]:
    """The header's "fewshot" and "fewshot_chat" (ints >= 0) and "chat_template" (auto, on, off)."""
    fewshot, fewshot_chat = header.get("fewshot", 0), header.get("fewshot_chat")
    for key, k in (("fewshot", fewshot), ("fewshot_chat", fewshot_chat)):
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
            raise ProbeError(f"{path}: _suite {key} must be a whole number >= 0, got {k!r}", f'e.g. "{key}": 3')
    mode = header.get("chat_template", "auto")
    if mode not in ("auto", "on", "off"):
        raise ProbeError(f"{path}: _suite chat_template must be auto, on or off, got {mode!r}", 'e.g. "chat_template": "off"')
    return fewshot, fewshot_chat, mode


def list_suites() -> list[ProbeSuite]:
    """The suites found in the probes folders (a broken one is skipped here;
    `probes validate` shows why)."""
    seen: dict[str, ProbeSuite] = {}
    for d in builtin_dirs():
        if not d.is_dir():
            continue
        for path in sorted(d.iterdir()):
            if path.suffix not in SUFFIXES or path.name.startswith("_"):
                continue
            try:
                suite = load_suite(path)
            except ProbeError:
                continue
            seen.setdefault(suite.name, suite)
    return sorted(seen.values(), key=lambda s: s.name)


# -- reading -----------------------------------------------------------------


def _read_jsonl(path: Path, raw: bytes) -> tuple[dict, list[tuple[int, dict]]]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProbeError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})", "save the file as UTF-8")
    header: dict = {}
    rows: list[tuple[int, dict]] = []
    # Lines end at "\n" only: splitlines() would also cut at U+2028 and the like,
    # which JSON allows inside a string.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ProbeError(f"{path}:{lineno}: not valid JSON: {e.msg}: column {e.colno}",
                             "one JSON object per line") from None
        except RecursionError:
            raise ProbeError(f"{path}:{lineno}: JSON nested too deeply", "one flat JSON object per line") from None
        if not isinstance(obj, dict):
            raise ProbeError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        if "_suite" in obj:
            if rows or header:
                raise ProbeError(f"{path}:{lineno}: the _suite header must be the first line")
            if not isinstance(obj["_suite"], dict):
                raise ProbeError(f"{path}:{lineno}: _suite must be an object with name, version, description")
            header = obj["_suite"]
            continue
        rows.append((lineno, obj))
    return header, rows


def _read_table(path: Path, fmt: str) -> list[tuple[int, dict]]:
    import polars as pl

    try:
        df = pl.read_csv(path, infer_schema=False) if fmt == "csv" else pl.read_parquet(path)
    except (Exception, pl.exceptions.PanicException) as e:  # polars raises many types; all mean "unreadable"
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ProbeError(f"{path}: cannot read as {fmt} ({detail})") from None
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ProbeError(f"{path}: missing column {missing[0]}", f"columns are {', '.join(sorted(KNOWN))}; "
                         f"it has {', '.join(map(repr, df.columns)) or 'none'}")
    first = 2 if fmt == "csv" else 1  # CSV line 1 is the header
    rows = []
    for i, row in enumerate(df.iter_rows(named=True)):
        row = {k: v for k, v in row.items() if k in REQUIRED or (v is not None and v != "")}  # an empty cell is no value
        for key in ("choices", "tags"):
            if isinstance(row.get(key), str):
                row[key] = _split_list(path, first + i, key, row[key])
        rows.append((first + i, row))
    return rows


def _split_list(path: Path, lineno: int, key: str, value: str) -> list:
    """CSV cells hold lists as JSON ('["a", "b"]') or '|'-separated text."""
    if value.startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise ProbeError(f"{path}:{lineno}: {key} is not a JSON list", 'write ["a", "b"] or a|b')
    return value.split("|")


def _validate(path: Path, name: str, rows: list[tuple[int, dict]]) -> tuple[Probe, ...]:
    if not rows:
        raise ProbeError(f"{path}: no probes in the file", "add one probe per line with at least id and prompt")
    known = KNOWN
    probes: list[Probe] = []
    first_line: dict[str, int] = {}
    for lineno, row in rows:
        where = f"{path}:{lineno}"
        unknown = set(row) - known
        if unknown:
            raise ProbeError(f"{where}: unknown field {sorted(unknown)[0]!r}", f"fields are {', '.join(sorted(known))}")
        if "id" not in row or row["id"] in ("", None):
            raise ProbeError(f"{where}: missing id")
        pid = str(row["id"])
        if pid in first_line:
            raise ProbeError(f"{where}: duplicate id {pid!r} (first on line {first_line[pid]})", "ids are unique in a suite")
        first_line[pid] = lineno
        prompt = row.get("prompt")
        if "prompt" not in row:
            raise ProbeError(f"{where}: missing prompt")
        if not isinstance(prompt, str) or not prompt:
            raise ProbeError(f"{where}: prompt must be a non-empty string")
        answer = row.get("answer")
        if answer is not None:
            if isinstance(answer, (int, float)) and not isinstance(answer, bool):
                answer = str(answer)
            if not isinstance(answer, str) or not answer:
                raise ProbeError(f"{where}: answer must be a non-empty string")
        choices = row.get("choices")
        if choices is not None:
            if not isinstance(choices, (list, tuple)) or len(choices) < 2:
                raise ProbeError(f"{where}: choices must be a list of at least two strings")
            choices = tuple(str(c) for c in choices)
            if len(set(choices)) != len(choices):
                raise ProbeError(f"{where}: choices repeat an option")
            if answer is not None and answer not in choices:
                raise ProbeError(f"{where}: answer {answer!r} is not one of the choices {list(choices)}")
        tags = row.get("tags", ())
        if isinstance(tags, str):
            tags = (tags,)
        if not isinstance(tags, (list, tuple)):
            raise ProbeError(f"{where}: tags must be a list of strings")
        probes.append(
            Probe(
                id=pid,
                prompt=prompt,
                suite=name,
                answer=answer,
                choices=choices,
                task=str(row.get("task") or name),
                tags=tuple(str(t) for t in tags),
            )
        )
    return tuple(probes)
