"""Property test of the probe loader: any JSONL, CSV or Parquet input gives a
suite or a one-line ProbeError, never another exception."""

import csv
import io
import json
import tempfile
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from driftscope.errors import ProbeError
from driftscope.probes import ProbeSuite, load_suite

FIELDS = ["id", "prompt", "answer", "choices", "task", "tags"]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

text = st.text(max_size=12)
names = st.sampled_from(FIELDS) | st.sampled_from(["_suite", "extra", ""]) | text
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)
# Mostly plausible rows (so validation is reached), sometimes anything at all.
rows = st.dictionaries(names, json_values, max_size=7) | st.fixed_dictionaries(
    {"id": text | st.integers(), "prompt": text},
    optional={"answer": text | st.integers(), "choices": st.lists(text, max_size=4) | text,
              "tags": st.lists(text, max_size=3) | text, "task": text},
)
json_lines = st.one_of(
    rows.map(lambda r: json.dumps(r, ensure_ascii=False)),
    rows.map(lambda r: json.dumps({"_suite": r})),
    json_values.map(json.dumps),
    st.text(max_size=30),
)


def check(suffix: str, write) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"suite{suffix}"
        write(path)
        try:
            suite = load_suite(path)
        except ProbeError as e:
            assert e.reason and "\n" not in e.reason and "\n" not in (e.hint or ""), repr(e.reason)
            return
    assert isinstance(suite, ProbeSuite) and len(suite) > 0
    assert len({p.id for p in suite.probes}) == len(suite)
    for p in suite.probes:
        assert isinstance(p.prompt, str) and p.prompt
        assert p.answer is None or (isinstance(p.answer, str) and p.answer)
        assert p.choices is None or (len(p.choices) >= 2 and (p.answer is None or p.answer in p.choices))


@SETTINGS
@given(st.lists(json_lines, max_size=6), st.sampled_from(["\n", "\r\n"]))
@example(["[" * 100_000], "\n")  # nested past Python's recursion limit
def test_jsonl(lines, newline):
    check(".jsonl", lambda p: p.write_text(newline.join(lines), encoding="utf-8", newline=""))


@SETTINGS
@given(st.binary(max_size=200), st.sampled_from([".jsonl", ".csv", ".parquet"]))
def test_arbitrary_bytes(data, suffix):
    check(suffix, lambda p: p.write_bytes(data))


cells = st.none() | text | st.lists(text, max_size=3).map(json.dumps) | st.lists(text, max_size=3).map("|".join)


@SETTINGS
@given(st.lists(names, min_size=1, max_size=6), st.lists(st.lists(cells, max_size=7), max_size=5))
def test_csv(header, body):
    def write(path):
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(header)
        for row in body:
            w.writerow(["" if c is None else c for c in row])  # ragged rows too
        path.write_text(buf.getvalue(), encoding="utf-8")

    check(".csv", write)


def _column(draw, n: int):
    kind = draw(st.sampled_from(["str", "int", "float", "bool", "list"]))
    values = {"str": st.none() | text, "int": st.none() | st.integers(-2**63, 2**63 - 1),
              "float": st.none() | st.floats(allow_nan=True), "bool": st.none() | st.booleans(),
              "list": st.none() | st.lists(st.none() | text, max_size=3)}[kind]
    dtype = {"str": pl.String, "int": pl.Int64, "float": pl.Float64, "bool": pl.Boolean,
             "list": pl.List(pl.String)}[kind]
    return pl.Series(draw(st.lists(values, min_size=n, max_size=n)), dtype=dtype)


@st.composite
def frames(draw):
    n = draw(st.integers(0, 4))
    cols = draw(st.lists(st.sampled_from(FIELDS) | text, max_size=6, unique=True))
    return pl.DataFrame({c: _column(draw, n) for c in cols})


@SETTINGS
@given(frames())
def test_parquet(df):
    check(".parquet", df.write_parquet)


# -- a valid suite reads back exactly, whatever its text -----------------------

nonempty = st.text(min_size=1, max_size=10).filter(lambda t: t.strip() == t and t)  # CSV readers may trim a cell


@st.composite
def probes(draw):
    ids = draw(st.lists(nonempty, min_size=1, max_size=4, unique=True))
    out = []
    for pid in ids:
        row = {"id": pid, "prompt": draw(nonempty)}
        if draw(st.booleans()):
            choices = draw(st.lists(nonempty, min_size=2, max_size=3, unique=True))
            row["choices"], row["answer"] = choices, draw(st.sampled_from(choices))
        elif draw(st.booleans()):
            row["answer"] = draw(nonempty)
        row["tags"] = draw(st.lists(nonempty, max_size=2))
        out.append(row)
    return out


def write_as(fmt: str, rows: list[dict], path: Path) -> None:
    if fmt == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        return
    cols = {k: [r.get(k) for r in rows] for k in ("id", "prompt", "answer", "choices", "tags")}
    if fmt == ".csv":
        for k in ("choices", "tags"):
            cols[k] = [None if v is None else json.dumps(v, ensure_ascii=False) for v in cols[k]]
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(cols)
        w.writerows(zip(*cols.values()))
        path.write_text(buf.getvalue(), encoding="utf-8")
    else:
        pl.DataFrame(cols, schema={"id": pl.String, "prompt": pl.String, "answer": pl.String,
                                   "choices": pl.List(pl.String), "tags": pl.List(pl.String)}).write_parquet(path)


@SETTINGS
@given(probes(), st.sampled_from([".jsonl", ".csv", ".parquet"]))
@example([{"id": "a", "prompt": "line\u2028separator", "tags": []}], ".jsonl")  # JSON allows U+2028 in a string
def test_valid_suite_reads_back_exactly(rows, fmt):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"suite{fmt}"
        write_as(fmt, rows, path)
        suite = load_suite(path)
    got = [{"id": p.id, "prompt": p.prompt, "answer": p.answer, "choices": p.choices and list(p.choices),
            "tags": list(p.tags)} for p in suite.probes]
    assert got == [{"answer": None, "choices": None, **r} for r in rows]
