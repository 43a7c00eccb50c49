"""The built-in held-out probe suites (probes/*.jsonl written by probes/_generate.py).

The generator is re-run into a temporary folder and must reproduce the checked-in
files byte for byte. Every suite then loads through driftscope.probes.load_suite
and the checkable answers are recomputed here independently of the generator:
arithmetic evaluated, counts recounted, dates through datetime, unit conversions
from this file's own factor table, string formats redone, Python values evaluated.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import operator
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from driftscope.probes import load_suite

ROOT = Path(__file__).resolve().parent.parent
PROBES = ROOT / "probes"
SUITES = [
    "world_knowledge", "arithmetic", "counting", "reading_comprehension", "yes_no",
    "format_following", "python_completion", "multilingual", "commonsense", "units_dates",
]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("probes")
    subprocess.run([sys.executable, str(PROBES / "_generate.py"), "--out", str(out)],
                   check=True, capture_output=True, timeout=120)
    return out


def test_generator_reproduces_checked_in_files(regenerated):
    written = sorted(p.stem for p in regenerated.glob("*.jsonl"))
    assert written == sorted(SUITES)
    for name in SUITES:
        fresh = (regenerated / f"{name}.jsonl").read_bytes()
        checked_in = (PROBES / f"{name}.jsonl").read_bytes()
        assert fresh == checked_in, f"probes/{name}.jsonl is stale: run python probes/_generate.py"


# -- every suite ---------------------------------------------------------------


@pytest.mark.parametrize("name", SUITES)
def test_suite_loads_and_is_well_formed(name):
    path = PROBES / f"{name}.jsonl"
    header = json.loads(path.read_text(encoding="utf-8").splitlines()[0])["_suite"]
    suite = load_suite(path)
    assert suite.name == name == header["name"]
    assert suite.version == "1.1"  # 1.1: 3-shot on plain prompts by default
    assert suite.description and "\n" not in suite.description
    assert load_suite(name).path == str(path)  # found by name as a built-in suite
    assert len(suite) >= 100
    assert suite.n_with_answer == len(suite)
    ids = [p.id for p in suite.probes]
    assert len(set(ids)) == len(ids)
    prompts = [p.prompt for p in suite.probes]
    assert len(set(prompts)) == len(prompts), "duplicate prompt"
    for p in suite.probes:
        # scored text is prompt + " " + answer: no trailing space on the prompt, no
        # leading space on the answer (a prompt may end in a newline: REPL items)
        assert p.prompt == p.prompt.rstrip(" \t"), p.id
        assert p.answer == p.answer.strip(), p.id
        assert p.task and p.task != name
        if p.is_choice:
            assert p.tags[0] == "mc", p.id
            assert 2 <= len(p.choices) <= 4, p.id
            assert p.answer in p.choices, p.id
            assert all(c == c.strip() and c for c in p.choices), p.id
            # no choice is a prefix of another (log-likelihood would favour the shorter)
            assert not any(a != b and b.startswith(a) for a in p.choices for b in p.choices), p.id
            if name != "format_following":  # there the case is the point
                folded = [c.casefold() for c in p.choices]
                assert len(set(folded)) == len(folded), p.id
        else:
            assert p.tags[0] == "free", p.id
            assert len(p.answer.split()) <= 3 and len(p.answer) <= 24, (p.id, p.answer)


def test_mix_of_multiple_choice_and_free_answers():
    kinds = {}
    for name in SUITES:
        probes = load_suite(PROBES / f"{name}.jsonl").probes
        kinds[name] = (sum(p.is_choice for p in probes), sum(not p.is_choice for p in probes))
    assert sum(mc for mc, _ in kinds.values()) > 500
    assert sum(free for _, free in kinds.values()) > 500
    assert sum(1 for mc, free in kinds.values() if mc and free) >= 4
    for name in ("world_knowledge", "commonsense", "yes_no"):
        assert kinds[name][1] == 0
    for name in ("arithmetic", "counting"):
        assert kinds[name][0] == 0


def test_answer_positions_are_mixed():
    """The gold answer is not always the first (or last) choice."""
    for name in ("world_knowledge", "commonsense", "multilingual", "python_completion"):
        positions = [p.choices.index(p.answer) for p in load_suite(PROBES / f"{name}.jsonl").probes if p.is_choice]
        counts = [positions.count(i) for i in range(3)]
        assert min(counts) >= len(positions) // 8, (name, counts)


# -- independent re-checks -----------------------------------------------------


def probes_of(name):
    return load_suite(PROBES / f"{name}.jsonl").probes


def question(prompt: str) -> str:
    m = re.fullmatch(r"Q: (.*)\nA:", prompt, re.S)
    assert m, prompt
    return m.group(1)


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def evaluate(expr: str) -> Fraction:
    """+ - * / over integer literals, nothing else."""

    def ev(node):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        raise AssertionError(f"unexpected expression {expr!r}")

    return ev(ast.parse(expr, mode="eval").body)


def test_arithmetic_answers():
    probes = probes_of("arithmetic")
    words = {" plus ": " + ", " minus ": " - ", " times ": " * ", " divided by ": " / "}
    for p in probes:
        expr = re.fullmatch(r"What is (.*)\?", question(p.prompt)).group(1)
        for w, sym in words.items():
            expr = expr.replace(w, sym)
        value = evaluate(expr)
        assert value.denominator == 1 and value >= 0, p.id
        assert p.answer == str(value.numerator), p.id


def test_counting_answers():
    for p in probes_of("counting"):
        if p.task == "letter":
            letter, word = re.fullmatch(r'How many times does the letter "(.)" appear in "(\w+)"\?', question(p.prompt)).groups()
            truth = sum(1 for ch in word if ch == letter)
        elif p.task == "length":
            truth = len(re.fullmatch(r'How many letters are in the word "(\w+)"\?', question(p.prompt)).group(1))
        elif p.task == "list":
            truth = len(re.fullmatch(r"How many words are in this list: (.*)\?", question(p.prompt)).group(1).split(", "))
        elif p.task == "occurrence":
            target, text = re.fullmatch(r'How many times does the word "(\w+)" appear in "([\w ]+)"\?', question(p.prompt)).groups()
            truth = text.split().count(target)
        elif p.task == "repeat":
            truth = len(re.fullmatch(r"Count the words: ([\w ]+)\.\nAnswer:", p.prompt).group(1).split())
        else:
            raise AssertionError(f"unchecked counting task {p.task}")
        assert p.answer == str(truth), p.id


def test_reading_comprehension_answers():
    for p in probes_of("reading_comprehension"):
        passage, q = re.fullmatch(r"Passage: (.*)\nQuestion: (.*)\nAnswer:", p.prompt, re.S).groups()
        assert p.answer in passage, p.id  # the answer is always stated in the passage
        if p.task == "age":
            (n1, a1), (n2, a2) = re.findall(r"(\w+) is (\d+) years old", passage)
            older = n1 if int(a1) > int(a2) else n2
            younger = n2 if older == n1 else n1
            assert p.answer == (older if q == "Who is older?" else younger), p.id
        elif p.task == "count":
            bought = {food: k for k, food in re.findall(r"(\d+) (\w+)", passage)}
            food = re.fullmatch(r"How many (\w+) did \w+ buy\?", q).group(1)
            assert p.answer == bought[food], p.id
        elif p.task == "color":
            owned = {(who, obj): col for who, col, obj in re.findall(r"(\w+) has an? (\w+) (\w+)", passage)}
            who, obj = re.fullmatch(r"What color is (\w+)'s (\w+)\?", q).groups()
            assert p.answer == owned[(who, obj)], p.id
        elif p.task == "giver":
            giver, receiver = re.fullmatch(r"(\w+) gave an? \w+ to (\w+)\.", passage).groups()
            assert p.answer == (receiver if q.startswith("Who received") else giver), p.id
        elif p.task == "pet":
            pets = dict(re.findall(r"a (dog|cat) named (\w+)", passage))
            kind = re.fullmatch(r"What is the name of \w+'s (dog|cat)\?", q).group(1)
            assert p.answer == pets[kind], p.id
        elif p.task == "place":
            went = dict(re.findall(r"On (\w+), \w+ went to (the \w+)\.", passage))
            day = re.fullmatch(r"Where did \w+ go on (\w+)\?", q).group(1)
            assert p.answer == went[day], p.id
        elif p.task == "job":
            jobs = {who: job for who, job in re.findall(r"(\w+) works as a (\w+)", passage)}
            who = re.fullmatch(r"What is (\w+)'s job\?", q).group(1)
            assert p.answer == jobs[who], p.id
        else:
            raise AssertionError(f"unchecked reading task {p.task}")


def test_yes_no_answers():
    probes = probes_of("yes_no")
    yes = sum(p.answer == "yes" for p in probes)
    assert abs(yes - len(probes) / 2) <= len(probes) * 0.05
    for p in probes:
        assert p.choices == ("yes", "no"), p.id
        q = question(p.prompt)
        if p.task == "compare":
            a, rel, b = re.fullmatch(r"Is (\d+) (greater|less) than (\d+)\?", q).groups()
            truth = int(a) > int(b) if rel == "greater" else int(a) < int(b)
        elif p.task == "parity":
            n, kind = re.fullmatch(r"Is (\d+) an (even|odd) number\?", q).groups()
            truth = (int(n) % 2 == 0) == (kind == "even")
        elif p.task == "sum":
            a, b, c = map(int, re.fullmatch(r"Is (\d+) \+ (\d+) equal to (\d+)\?", q).groups())
            truth = a + b == c
        elif p.task == "starts_with":
            word, letter = re.fullmatch(r'Does the word "(\w+)" start with the letter "(\w)"\?', q).groups()
            truth = word.startswith(letter)
        elif p.task == "syllogism":
            quant = re.fullmatch(r"(All|No) (\w+) are (\w+)\. \w+ is one of the \2\. Is \w+ one of the \3\?", q).group(1)
            truth = quant == "All"
        elif p.task == "capital":
            assert re.fullmatch(r"Is [\w ,.]+ the capital of [\w ]+\?", q), p.id
            continue  # hand-written facts (the same table as world_knowledge)
        elif p.task == "animal_class":
            assert re.fullmatch(r"Is an? \w+ an? (mammal|bird|fish|reptile|amphibian|insect)\?", q), p.id
            continue
        else:
            raise AssertionError(f"unchecked yes/no task {p.task}")
        assert p.answer == ("yes" if truth else "no"), p.id


NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
).split()
TENS = {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "one hundred": 100}


def number_value(words: str) -> int:
    return NUMBER_WORDS.index(words) if words in NUMBER_WORDS else TENS[words]


def test_format_following_answers():
    for p in probes_of("format_following"):
        instruction, arg = re.fullmatch(r"(.*): (.*)\nAnswer:", p.prompt).groups()
        expected = {
            "uppercase": lambda w: w.upper(),
            "lowercase": lambda w: w.lower(),
            "capitalize": lambda w: w[:1].upper() + w[1:].lower(),
            "first_letter": lambda w: w[0],
            "last_letter": lambda w: w[-1],
            "repeat": lambda w: f"{w} {w}",
            "reverse": lambda w: "".join(reversed(w)),
            "brackets": lambda w: "[" + w + "]",
            "quotes": lambda w: '"' + w + '"',
            "to_digits": lambda w: str(number_value(w)),
            "to_words": lambda n: next(k for k in NUMBER_WORDS + list(TENS) if number_value(k) == int(n)),
        }
        assert p.task in expected, f"unchecked format task {p.task}"
        assert p.answer == expected[p.task](arg), p.id
        if p.task == "lowercase":
            assert arg == arg.upper()
        if p.task == "reverse":
            assert arg != arg[::-1]


PY_OPS = {"add": "+", "subtract": "-", "multiply": "*", "divide": "/", "power": "**",
          "remainder": "%", "floor_divide": "//", "is_equal": "==", "is_greater": ">", "is_less": "<"}


def test_python_answers():
    n_eval = 0
    for p in probes_of("python_completion"):
        if p.prompt.startswith(">>> "):
            expr = p.prompt[4:]
            assert expr.endswith("\n") and "\n" not in expr[:-1] and "__" not in expr, p.id
            value = eval(compile(expr, p.id, "eval"), {"__builtins__": {"len": len, "max": max, "min": min, "sum": sum, "sorted": sorted, "abs": abs, "list": list, "range": range, "int": int}})
            assert p.answer == repr(value), p.id
            assert not p.answer.startswith("-")  # a minus sign would vanish under normalised match
            n_eval += 1
        elif p.task == "function_op":
            name, x, y, x2 = re.fullmatch(r"def (\w+)\((\w), (\w)\):\n    return (\w)", p.prompt).groups()
            assert x == x2
            assert p.answer == f"{PY_OPS[name]} {y}", p.id
            for c in p.choices:
                op, var = c.split(" ")
                assert var == y and op in PY_OPS.values()
                compile(f"{x} {c}", p.id, "eval")
        else:
            assert p.is_choice, p.id
    assert n_eval >= 100


def test_multilingual_round_trips():
    probes = probes_of("multilingual")
    forward = {}
    for p in probes:
        if p.task.startswith("to_") and p.task != "to_english":
            lang, english = re.fullmatch(r'What is the (\w+) word for "([\w ]+)"\?', question(p.prompt)).groups()
            assert p.tags[1] == lang
            forward[(lang, english)] = p.answer
    assert {lang for lang, _ in forward} == {"French", "Spanish", "German"}
    n_back = 0
    for p in probes:
        if p.task == "to_english":
            lang, word = re.fullmatch(r'What is the English word for the (\w+) word "(\w+)"\?', question(p.prompt)).groups()
            assert forward[(lang, p.answer)] == word, p.id
            # the foreign word translates back to exactly one English word here
            assert [e for (lg, e), w in forward.items() if lg == lang and w == word] == [p.answer], p.id
            n_back += 1
    assert n_back >= 30


UNIT_FACTORS = {  # (from, to): how many `to` in one `from`
    ("meter", "centimeter"): 100, ("kilometer", "meter"): 1000, ("kilogram", "gram"): 1000,
    ("hour", "minute"): 60, ("minute", "second"): 60, ("day", "hour"): 24, ("week", "day"): 7,
    ("liter", "milliliter"): 1000, ("foot", "inch"): 12, ("yard", "foot"): 3,
    ("year", "month"): 12, ("centimeter", "millimeter"): 10,
}
PLURAL = {"foot": "feet", "inch": "inches"}


def unit(word: str) -> str:
    singular = {PLURAL.get(u, u + "s"): u for pair in UNIT_FACTORS for u in pair}
    return singular.get(word, word)


def parse_date(text: str) -> dt.date:
    day, month, year = re.fullmatch(r"(\d{1,2}) (\w+) (\d{4})", text).groups()
    return dt.date(int(year), MONTHS.index(month) + 1, int(day))


def test_units_dates_answers():
    for p in probes_of("units_dates"):
        q = question(p.prompt)
        if p.task in ("convert", "convert_back"):
            to, n, frm = re.fullmatch(r"How many (\w+) are in (\d+) (\w+)\?", q).groups()
            to, frm = unit(to), unit(frm)
            value = Fraction(int(n) * UNIT_FACTORS[(frm, to)]) if (frm, to) in UNIT_FACTORS else Fraction(int(n), UNIT_FACTORS[(to, frm)])
            assert value.denominator == 1 and p.answer == str(value.numerator), p.id
        elif p.task == "month_days":
            month, year = re.fullmatch(r"How many days are in (\w+) (\d{4})\?", q).groups()
            m = MONTHS.index(month) + 1
            first = dt.date(int(year), m, 1)
            nxt = dt.date(int(year) + (m == 12), m % 12 + 1, 1)
            assert p.answer == str((nxt - first).days), p.id
        elif p.task == "leap_year":
            year = int(re.fullmatch(r"Is (\d{4}) a leap year\?", q).group(1))
            try:
                dt.date(year, 2, 29)
                leap = True
            except ValueError:
                leap = False
            assert p.answer == ("yes" if leap else "no"), p.id
        elif p.task == "weekday":
            d = parse_date(re.fullmatch(r"What day of the week was (.*)\?", q).group(1))
            assert p.answer == d.strftime("%A") and p.answer in WEEKDAYS, p.id
            assert all(c in WEEKDAYS for c in p.choices)
        elif p.task == "month_after":
            k, month = re.fullmatch(r"Which month comes (?:(\d) months )?after (\w+)\?", q).groups()
            assert p.answer == MONTHS[(MONTHS.index(month) + int(k or 1)) % 12], p.id
        elif p.task == "day_after":
            m = re.fullmatch(r"Which day comes after (\w+)\?|Which day of the week is (\d) days after (\w+)\?", q)
            day, k = (m.group(1), 1) if m.group(1) else (m.group(3), int(m.group(2)))
            assert p.answer == WEEKDAYS[(WEEKDAYS.index(day) + k) % 7], p.id
        elif p.task == "date_add":
            k, start = re.fullmatch(r"What is the date (\d+) days after (.*)\?", q).groups()
            assert parse_date(p.answer) == parse_date(start) + dt.timedelta(days=int(k)), p.id
            for c in p.choices:
                parse_date(c)
        elif p.task == "days_between":
            a, b = re.fullmatch(r"How many days after (.*) is (.*)\?", q).groups()
            assert p.answer == str((parse_date(b) - parse_date(a)).days), p.id
        else:
            raise AssertionError(f"unchecked units/dates task {p.task}")


def test_hand_written_choices_are_distinct_facts():
    """Multiple-choice facts: answer present once, no distractor equal to it up to case/space."""
    for name in ("world_knowledge", "commonsense"):
        for p in probes_of(name):
            norm = [re.sub(r"\W", "", c.casefold()) for c in p.choices]
            assert len(set(norm)) == len(norm), p.id
            assert p.choices.count(p.answer) == 1


def test_options_named_in_a_prompt_are_the_choices():
    """'Which of these ...: a, b or c?' lists exactly the choices."""
    n = 0
    for name in SUITES:
        for p in probes_of(name):
            if "Which of these" in p.prompt:
                listed = re.fullmatch(r"Q: Which of these [^:]*: (.*)\?\nA:", p.prompt).group(1)
                first, last = listed.rsplit(" or ", 1)
                assert sorted(first.split(", ") + [last]) == sorted(p.choices), p.id
                n += 1
    assert n >= 10


def test_probes_list_shows_every_suite_with_its_counts_in_80_columns():
    from typer.testing import CliRunner

    from driftscope.cli import app

    res = CliRunner().invoke(app, ["probes", "list"], env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    for name in SUITES + ["general"]:
        suite = load_suite(PROBES / f"{name}.jsonl")
        row = next(line for line in lines if line.split() and line.split()[0] == name)
        n_mc = sum(p.is_choice for p in suite.probes)
        assert row.split()[1:5] == [suite.version, str(len(suite)), str(suite.n_with_answer), str(n_mc)]


def test_the_default_probes_are_the_571_choice_items_the_readme_measured():
    """No --probes: world_knowledge, yes_no and commonsense, every item multiple choice
    (scored by choice log-likelihood, the primary metric); README "The default probes"."""
    from driftscope.inputs import load_suites

    suites = load_suites(None)
    assert [s.name for s in suites] == ["world_knowledge", "yes_no", "commonsense"]
    items = [p for s in suites for p in s.probes]
    assert len(items) == 571 and all(p.choices and p.answer in p.choices for p in items)
