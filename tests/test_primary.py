"""Primary accuracy (choice log-likelihood for choice items, free answers for the
rest) and a verdict sentence that is right in every case (issue 16)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import polars as pl
import pytest

from driftscope.verdict import Thresholds, accuracy_figures, add_verdicts, sentence

TH = Thresholds(bootstrap=200)
N = 200  # items per case: enough for a 30-point drop or gain to be significant, and "stable" to be decidable


def case(change: str, kind: str, recovery: str):
    """Primary correctness (base, tuned, corrected) and the choice mask for one case.

    change: drop (60 of 150 right items lost), gain (40 of 50 wrong items won),
    none (3 lost, 3 won). kind: choice / free / mixed (every other item a
    choice item, so the lost items fall on both kinds). recovery: none / part /
    full, the share of the lost items the correction brings back (0, 1/3, 1)."""
    base = np.zeros(N, dtype=bool)
    base[:150] = True
    tuned = base.copy()
    lost = {"drop": np.arange(60), "gain": np.array([], dtype=int), "none": np.arange(3)}[change]
    won = {"drop": np.array([], dtype=int), "gain": np.arange(150, 190), "none": np.arange(150, 153)}[change]
    tuned[lost] = False
    tuned[won] = True
    corrected = tuned.copy()
    back = {"none": 0, "part": len(lost) // 3, "full": len(lost)}[recovery]
    corrected[lost[:back]] = True
    choice = {"choice": np.ones(N, dtype=bool), "free": np.zeros(N, dtype=bool),
              "mixed": np.arange(N) % 2 == 0}[kind]
    return base, tuned, corrected, choice


EXPECTED = {"drop": {"none": "knowledge-loss", "part": "mixed", "full": "output-bias"},
            "gain": dict.fromkeys(("none", "part", "full"), "stable"),
            "none": dict.fromkeys(("none", "part", "full"), "stable")}
METRIC_WORDS = {"choice": "choice log-likelihood accuracy", "free": "free-answer accuracy",
                "mixed": "accuracy (100 choice items by log-likelihood, 100 by free answer)"}
TAILS = {"output-bias": "output bias, not lost knowledge", "knowledge-loss": "lost knowledge, not just output bias",
         "mixed": "part output bias, part lost knowledge"}


@pytest.mark.parametrize("change, kind, recovery",
                         list(itertools.product(("drop", "gain", "none"), ("choice", "free", "mixed"), ("none", "part", "full"))))
def test_verdict_and_sentence_agree_with_the_figures_in_every_case(change, kind, recovery):
    base, tuned, corrected, choice = case(change, kind, recovery)
    # the choice items' free answers move with their choices: no format note here (see below)
    f = accuracy_figures(base, tuned, corrected, TH, choice=choice, free=(base, tuned))
    s = sentence(f, TH)
    p, delta = f["mcnemar_p"], f["accuracy_change"]
    assert f["verdict"] == EXPECTED[change][recovery], (f["verdict_reason"], s)
    assert f["accuracy_metric"] == kind and f["n_choice_items"] == int(choice.sum())
    # the sentence names the metric the change was measured on, and the change as the figures have it
    assert s.startswith(f"Held-out {METRIC_WORDS[kind]} "), s
    assert f"{abs(delta) * 100:.1f} points" in s
    # "within noise" exactly when the test says so; a significant change carries its p
    assert ("within noise" in s) == (p >= TH.alpha), s
    if p < TH.alpha:
        assert f"McNemar p={p:.2g}" in s
    if change == "gain":
        assert p < TH.alpha and "rose" in s and "a significant gain" in s and "fell" not in s
        assert "significant gain" in f["verdict_reason"] and "no significant" not in f["verdict_reason"]
    if change == "drop":
        assert "fell" in s and TAILS[f["verdict"]] in s and "rose" not in s
        assert f"{kind_word(kind)}" in f["verdict_reason"]
    if change == "none":
        assert p >= TH.alpha and "no significant change" in f["verdict_reason"]
    assert "answers changed format" not in s and "free answers" not in f["verdict_reason"].split(":")[-1]


def kind_word(kind: str) -> str:
    return {"choice": "choice log-likelihood", "free": "free-answer", "mixed": "by free answer"}[kind]


def test_a_significant_drop_under_min_drop_is_not_called_noise():
    """With 4,000 items a 1.5-point drop is significant; it is under min_drop, so
    not a finding, but the sentence may not call it noise."""
    base = np.ones(4000, dtype=bool)
    tuned = base.copy()
    tuned[:60] = False
    f = accuracy_figures(base, tuned, tuned, TH)
    s = sentence(f, TH)
    assert f["mcnemar_p"] < TH.alpha and f["verdict"] == "stable"
    assert "within noise" not in s and "fell 1.5 points" in s and "less than min_drop" in s


def test_a_significant_gain_on_few_items_is_a_gain_not_inconclusive():
    base = np.zeros(12, dtype=bool)
    tuned = np.ones(12, dtype=bool)
    f = accuracy_figures(base, tuned, tuned, TH)
    assert f["mcnemar_p"] < TH.alpha and f["verdict"] == "stable"
    assert "rose 100.0 points" in sentence(f, TH)


def test_sentence_follows_the_thresholds_it_was_decided_with():
    base, tuned, corrected, choice = case("none", "free", "none")
    tuned[150:159] = True  # 3 lost, 9 won: p = 0.15
    strict = Thresholds(alpha=0.2, bootstrap=200)
    f = accuracy_figures(base, tuned, tuned, strict)
    assert "rose" in sentence(f, strict) and "within noise" in sentence(f, TH)


# -- free answers against choice accuracy: the format note -------------------------------------


def format_case(n: int, free_b: int, free_t: int, choice_b: int, choice_t: int):
    """n choice items; the first free_b / choice_b are right for the base, the
    first free_t / choice_t for the tuned model."""
    def right(k):
        return np.arange(n) < k
    return right(choice_b), right(choice_t), (right(free_b), right(free_t))


@pytest.mark.parametrize("free_b, free_t, choice_b, choice_t, lead", [
    # the issue's case: terse answers raise free accuracy, choice accuracy holds
    (43, 70, 225, 222, "answers changed format while choice accuracy held"),
    (200, 60, 225, 225, "answers changed format while choice accuracy held"),
    (100, 100, 225, 190, "choice accuracy moved while free answers held"),
    (40, 80, 225, 200, "free answers rose while choice accuracy fell"),
    (200, 60, 225, 200, "free answers and choice accuracy both fell, by different amounts"),
    (100, 100, 225, 223, None),  # nothing moved
    (200, 150, 225, 175, None),  # both fell alike
])
def test_free_and_choice_moving_apart_is_said_with_both_figures(free_b, free_t, choice_b, choice_t, lead):
    cb, ct, free = format_case(253, free_b, free_t, choice_b, choice_t)
    f = accuracy_figures(cb, ct, ct, TH, choice=np.ones(253, dtype=bool), free=free)
    assert f["free_accuracy_change"] == pytest.approx((free_t - free_b) / 253)
    assert f["choice_accuracy_change"] == pytest.approx(f["accuracy_change"])
    s = sentence(f, TH)
    if lead is None:
        assert "free accuracy" not in f["verdict_reason"] and "free accuracy" not in s
        return
    note = (f"{lead}: free accuracy {100 * (free_t - free_b) / 253:+.1f} points (p={f['free_mcnemar_p']:.2g}), "
            f"choice accuracy {100 * (choice_t - choice_b) / 253:+.1f} points (p={f['choice_mcnemar_p']:.2g})")
    assert note in f["verdict_reason"], f["verdict_reason"]
    assert note[0].upper() + note[1:] in s
    # the headline is still the primary metric's: held choices are stable, a choice drop is a drop
    if lead.endswith("choice accuracy held"):
        assert f["verdict"] == "stable" and "within noise" in s
    if "choice accuracy fell" in lead or lead.startswith("choice accuracy moved"):
        assert f["verdict"] != "stable" and s.startswith("Held-out choice log-likelihood accuracy fell")


def test_the_issue_example_reads_right():
    """free 17% -> 28% (p ~ 1e-5) on 253 choice items whose choice accuracy moved -1.2 points:
    before, 'Held-out accuracy moved +10.7 points, within noise: stable'."""
    cb, ct, free = format_case(253, 43, 70, 225, 222)
    f = accuracy_figures(cb, ct, ct, TH, choice=np.ones(253, dtype=bool), free=free)
    s = sentence(f, TH)
    assert s.startswith("Held-out choice log-likelihood accuracy moved -1.2 points, within noise (McNemar p=")
    assert "free accuracy +10.7 points (p=" in s and "+10.7 points, within noise" not in s


# -- the items table and the per-suite figures ------------------------------------------------


def items_frame() -> pl.DataFrame:
    """Two suites: `mc` (choice items: free answers all wrong, choices all right)
    and `free` (free items, 2 of 3 lost), plus one probe without a gold answer."""
    rows = []
    for i in range(40):
        rows.append({"suite": "mc", "primary": "choice", "base_correct": False, "tuned_correct": False,
                     "base_primary_correct": True, "tuned_primary_correct": True, "corrected_primary_correct": True})
    for i in range(30):
        rows.append({"suite": "free", "primary": "free", "base_correct": True, "tuned_correct": i >= 20,
                     "base_primary_correct": True, "tuned_primary_correct": i >= 20, "corrected_primary_correct": i >= 20})
    rows.append({"suite": "free", "primary": None, "base_correct": None, "tuned_correct": None,
                 "base_primary_correct": None, "tuned_primary_correct": None, "corrected_primary_correct": None})
    return pl.DataFrame(rows, schema={"suite": pl.String, "primary": pl.String, **{k: pl.Boolean for k in rows[0] if k not in ("suite", "primary")}})


def test_add_verdicts_scores_the_primary_metric_and_leaves_unanswered_probes_out():
    """Before, a probe without a gold answer counted as wrong for both models
    (its null correctness read as False): the built-in `general` suite has 4."""
    figs = {"suites": {"mc": {}, "free": {}}}
    add_verdicts(figs, items_frame(), TH, 0)
    mc, free = figs["suites"]["mc"], figs["suites"]["free"]
    assert free["n_items"] == 30 and free["accuracy_base"] == 1.0  # the unanswered probe is not an item
    assert free["accuracy_change"] == pytest.approx(-20 / 30) and free["verdict"] == "knowledge-loss"
    assert free["accuracy_metric"] == "free" and free["n_choice_items"] == 0 and free["free_accuracy_change"] is None
    assert mc["accuracy_base"] == 1.0 and mc["accuracy_change"] == 0 and mc["verdict"] == "stable"
    assert mc["free_accuracy_base"] == 0.0 and mc["accuracy_metric"] == "choice"
    assert figs["n_items"] == 70 and figs["accuracy_metric"] == "mixed"
    assert "choice log-likelihood" in mc["verdict_sentence"] and "free-answer" in free["verdict_sentence"]


QUESTIONS = [("Q: What is the capital of France?\nA:", "Paris", ["Tokyo", "Lyon"]),
             ("Q: What colour is grass?\nA:", "green", ["blue", "red"]),
             ("Is the sun a star? Answer yes or no.\nA:", "yes", ["no"]),
             ("Q: How many days are in a week?\nA:", "7", ["5", "12"]),
             ("Q: What is 1 plus 1?\nA:", "2", ["3", "4"])]


@pytest.fixture(scope="module")
def primary_run(family, tmp_path_factory):
    """The tiny base against its full fine-tune on `qa` (free), `qa_mc` (the same
    prompts as choices) and one probe without an answer; drift-only parts off."""
    import json

    from driftscope import compare

    root = tmp_path_factory.mktemp("primary")
    suites = {"qa": [{"id": f"q{i}", "prompt": p, "answer": a} for i, (p, a, _) in enumerate(QUESTIONS)]
                     + [{"id": "bare", "prompt": "Once upon a time"}],
              "qa_mc": [{"id": f"q{i}", "prompt": p, "answer": a, "choices": [a, *o]} for i, (p, a, o) in enumerate(QUESTIONS)]}
    files = []
    for name, rows in suites.items():
        files.append(root / f"{name}.jsonl")
        files[-1].write_text("\n".join(json.dumps(r) for r in [{"_suite": {"name": name}}, *rows]) + "\n", encoding="utf-8")
    return compare(family["base"], [family["tuned"]], files, out=root / "reports", name="primary",
                   layers=False, weights=False, html=False, thresholds=TH)


def test_compare_scores_choice_items_by_log_likelihood(primary_run):
    """End to end: the items table says how each item was scored, and every
    accuracy figure is the mean of that primary correctness."""
    from driftscope import DriftResult

    r = DriftResult.from_dir(primary_run.path)
    all_items = r.tables["items"]
    items = all_items.filter(pl.col("base_primary_correct").is_not_null())
    assert all_items.height == 11 and items.height == 10  # the probe without an answer is no item
    assert set(items["primary"]) == {"choice", "free"}
    for m in ("base", "tuned", "corrected"):
        choice = items.filter(pl.col("primary") == "choice")
        assert (choice[f"{m}_primary_correct"] == choice[f"{m}_choice_correct"]).all()
        free = items.filter(pl.col("primary") == "free")
        assert (free[f"{m}_primary_correct"] == free[f"{m}_correct"]).all()
    f = r.summary["checkpoints"][0]["figures"]
    assert f["n_items"] == 10 and f["suites"]["qa"]["n_items"] == 5
    assert f["accuracy_base"] == pytest.approx(items["base_primary_correct"].mean())
    assert f["accuracy_tuned"] == pytest.approx(items["tuned_primary_correct"].mean())
    mc = f["suites"]["qa_mc"]
    assert mc["accuracy_metric"] == "choice" and mc["n_choice_items"] == 5
    on = items.filter(pl.col("suite") == "qa_mc")
    assert mc["free_accuracy_tuned"] == pytest.approx(on["tuned_correct"].mean())
    assert mc["accuracy_tuned"] == pytest.approx(on["tuned_choice_correct"].mean())
    assert f["suites"]["qa"]["accuracy_metric"] == "free" and f["accuracy_metric"] == "mixed"
    assert f["verdict_sentence"].startswith("Held-out accuracy (5 choice items by log-likelihood, 5 by free answer) ")
    suites = r.tables["suites"]
    assert {"free_accuracy_base", "free_accuracy_tuned", "free_accuracy_change", "free_mcnemar_p"} <= set(suites.columns)


def test_free_accuracy_is_gateable(primary_run, tmp_path):
    from driftscope.gates import evaluate, load_gates, read_summary

    rules = tmp_path / "g.toml"
    rules.write_text('[[gate]]\nfigure = "suites.qa_mc.free_accuracy_change"\nat_least = -1.0\n', encoding="utf-8")
    table = evaluate(read_summary(primary_run.path), load_gates(rules))
    assert set(table["status"]) == {"pass"}
    assert not math.isnan(float(table["observed"][0]))
