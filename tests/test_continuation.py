"""Continuation positions (--continue N): the base's greedy continuation, scored
teacher-forced in both models and reported apart, on the tiny models; checked
against transformers' generate and a direct torch computation."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import driftscope
from driftscope.capture import CONTINUATION, NEXT, encode_all
from driftscope.cli import app
from driftscope.continuation import budget, decode, diverges_later, sequences
from driftscope.models import load_base

N = 6
PROMPTS = ["The capital of France is", "Q: What is 2 plus 3?\nA:", "I counted 1, 2, 3,", "Once upon a time there",
           "The weather today is", "def add(a, b):\n"]


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """Six probes, two with a gold answer (their continuation is scored apart from it)."""
    path = tmp_path_factory.mktemp("cont") / "cont.jsonl"
    rows = [{"_suite": {"name": "cont", "version": "1"}}]
    rows += [{"id": f"p{i}", "prompt": p, **({"answer": "5"} if i == 1 else {"answer": "Paris"} if i == 0 else {})}
             for i, p in enumerate(PROMPTS)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def runs(family, suite, tmp_path_factory, one_thread):
    """The same comparison paired and sequential (the base captured, then scored against)."""
    common = dict(out=None, html=False, layers=False, accuracy=False, continue_n=N)
    tuned = [family["tuned"], family["copy"]]
    return {"paired": driftscope.compare(family["base"], tuned, [suite], **common),
            "sequential": driftscope.compare(family["base"], tuned, [suite], sequential=True, **common)}


def figures(run, label):
    return next(c["figures"] for c in run.summary["checkpoints"] if c["label"] == label)


def continuation_rows(run, label):
    pos = run.tables["positions"]
    return pos.filter((pos["checkpoint"] == label) & (pos["kind"] == "continuation")).sort("probe_index", "offset")


def reference(base, suite) -> dict[int, tuple[list[int], list[int]]]:
    """probe index -> (prompt ids, continuation ids) from transformers' generate(do_sample=False),
    one probe at a time, unpadded; EOS ends a continuation."""
    probes = driftscope.load_suite(str(suite)).probes
    eos = base.tokenizer.eos_token_id
    out = {}
    for e in encode_all(list(probes), base.tokenizer, False, 128):
        prompt = torch.tensor([e.ids[: e.n_prompt]])
        with torch.no_grad():
            ids = base.model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=N,
                                      pad_token_id=base.tokenizer.pad_token_id, eos_token_id=eos)
        new = ids[0, prompt.shape[1]:].tolist()
        out[e.index] = (prompt[0].tolist(), new[: new.index(eos)] if eos in new else new)
    return out


@pytest.fixture(scope="module")
def greedy_ref(family, suite, one_thread):
    return reference(load_base(family["base"]), suite)


def test_the_continuation_is_the_base_greedy_one(family, suite, greedy_ref):
    """Batched, left-padded decoding gives what generate(do_sample=False) gives probe by probe."""
    base = load_base(family["base"])
    encoded = encode_all(list(driftscope.load_suite(str(suite)).probes), base.tokenizer, False, 128)
    got = decode(base, encoded, N, batch_size=4)
    assert {i: list(v) for i, v in got.items()} == {i: c for i, (_, c) in greedy_ref.items()}
    assert any(len(c) == N for _, c in greedy_ref.values())


def test_budget_never_cuts_the_prompt(family):
    base = load_base(family["base"])
    e = encode_all([driftscope.load_suite("general").probes[0]], base.tokenizer, False, 12)[0]
    assert budget(e, 100) == 12 - e.n_prompt and budget(e, 3) == min(3, 12 - e.n_prompt)
    seq = sequences([e], {e.index: (5, 6)})[0]
    assert seq.ids == e.ids[: e.n_prompt] + (5, 6) and seq.continuation and seq.n_answer == 2
    assert sequences([e], {e.index: ()}) == []


def test_figures_match_a_direct_torch_computation(runs, family, greedy_ref):
    """Each continuation position's KL and top-1 agreement, recomputed from both models'
    full logits on prompt + generate's continuation; the summary's figures are theirs."""
    run = runs["paired"]
    base, tuned = load_base(family["base"]), load_base(family["tuned"])
    rows = continuation_rows(run, "tuned")
    kls, agree = [], []
    for i, (prompt, cont) in greedy_ref.items():
        mine = rows.filter(rows["probe_index"] == i)
        assert mine["offset"].to_list() == list(range(1, len(cont) + 1))
        ids = torch.tensor([prompt + cont])
        with torch.no_grad():
            lp = torch.log_softmax(base.model(ids).logits[0].double(), -1)
            lq = torch.log_softmax(tuned.model(ids).logits[0].double(), -1)
        for k in range(1, len(cont) + 1):
            at = len(prompt) - 1 + k  # the position whose input is the k-th continuation token
            p, q = torch.distributions.Categorical(logits=lp[at]), torch.distributions.Categorical(logits=lq[at])
            kls.append(float(torch.distributions.kl_divergence(p, q)))
            agree.append(bool(lp[at].argmax() == lq[at].argmax()))
        assert mine["kl"].to_list() == pytest.approx(kls[len(kls) - len(cont):], rel=1e-5, abs=1e-8)
    f = figures(run, "tuned")["continuation"]
    assert f["n_positions"] == len(kls)
    assert f["kl"]["mean"] == pytest.approx(np.mean(kls), rel=1e-5)
    assert f["kl"]["p99"] == pytest.approx(np.quantile(kls, 0.99), rel=1e-5)
    assert f["top1_agreement"] == pytest.approx(np.mean(agree))


def test_an_identical_copy_has_kl_zero_along_the_continuation(runs):
    for way in ("paired", "sequential"):
        rows = continuation_rows(runs[way], "copy")
        assert rows.height > 0 and rows["kl"].abs().max() <= 1e-9 and rows["top1_agree"].all()
        f = figures(runs[way], "copy")["continuation"]
        assert f["diverges_later"]["share"] == 0 and f["diverges_later"]["forks"] == 0


def test_the_summary_carries_the_figures_apart(runs):
    run = runs["paired"]
    f = figures(run, "tuned")
    c = f["continuation"]
    assert c["tokens"] == N and c["n_positions"] == continuation_rows(run, "tuned").height
    assert {"mean", "p99"} <= set(c["kl"]) and 0 <= c["top1_agreement"] <= 1
    assert {"share", "n", "n_probes", "forks"} <= set(c["diverges_later"])
    pos = run.tables["positions"].filter(run.tables["positions"]["checkpoint"] == "tuned")
    headline = pos.filter(pos["kind"] != "continuation")
    assert f["n_positions"] == headline.height  # the headline figures hold next and answer positions only
    assert f["kl"]["mean"] == pytest.approx(headline["kl"].mean(), rel=1e-9)
    assert set(pos["kind"].unique()) == {"next", "answer", "continuation"}
    items = run.tables["items"]
    assert {"kl_continuation_max", "continuation_fork_offset"} <= set(items.columns)
    assert run.summary["settings"]["continue_n"] == N


def test_paired_and_sequential_agree(runs):
    for label in ("tuned", "copy"):
        a, b = figures(runs["sequential"], label)["continuation"], figures(runs["paired"], label)["continuation"]
        bound = a["kl_cache_bound"]
        assert abs(a["kl"]["mean"] - b["kl"]["mean"]) <= bound["mean"] + 1e-9
        assert a["n_positions"] == b["n_positions"] and a["top1_agreement"] == b["top1_agreement"]
        assert a["diverges_later"]["forks"] == b["diverges_later"]["forks"]
        assert a["diverges_later"]["share"] == b["diverges_later"]["share"]
    a, b = continuation_rows(runs["sequential"], "tuned"), continuation_rows(runs["paired"], "tuned")
    assert a["offset"].to_list() == b["offset"].to_list() and a["top1_agree"].to_list() == b["top1_agree"].to_list()


def test_diverges_later_rule():
    """Probe 0: harmless first token, forks later with a large KL (counts). Probe 1: the same
    fork, but its first token was already off. Probe 2: harmless, forks only at noise level."""
    probe = np.array([0, 0, 0, 1, 1, 2, 2, 3])
    kind = np.array([NEXT, CONTINUATION, CONTINUATION, NEXT, CONTINUATION, NEXT, CONTINUATION, NEXT])
    kl = np.array([0.01, 0.02, 6.0, 2.0, 6.0, 0.01, 1e-6, 5.0])  # next: median 1.005, p90 4.1
    agree = np.array([1, 1, 0, 0, 0, 1, 0, 0], dtype=float)
    d = diverges_later(probe, kind, kl, agree)
    assert (d["n"], d["n_probes"]) == (1, 3) and d["share"] == pytest.approx(1 / 3)
    assert d["forks"] == 1.0


def test_bad_values_exit_2_in_one_line(family, tmp_path):
    def cli(*args):
        return CliRunner().invoke(app, [str(a) for a in args])

    for args, needle in (((family["base"], family["tuned"], "--continue", "-1"), "must be 0 (off)"),
                         ((family["base"], family["tuned"], "--continue", "100000"), "beyond the context")):
        r = cli("compare", *args, "--out", tmp_path / "runs", "--no-accuracy")
        assert r.exit_code == 2 and needle in r.output and "Traceback" not in r.output, r.output
    r = cli("capture", family["base"], "--out", tmp_path / "cache", "--continue", "-3")
    assert r.exit_code == 2 and "must be 0 (off)" in r.output, r.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_saved_cache_feeds_every_checkpoint_the_base_tokens(runs, family, suite, tmp_path, greedy_ref):
    """capture --continue N records the base's tokens; compare --base-cache scores them (no
    base model at hand) as the in-memory capture does, and refuses another N in one line."""
    cache = driftscope.capture_base(family["base"], [suite], tmp_path / "cache", accuracy=False, continue_n=N)
    assert {int(i): v for i, v in cache.items["continuation"].items()} == {i: c for i, (_, c) in greedy_ref.items()}
    got = driftscope.compare(None, [family["tuned"]], [suite], base_cache=tmp_path / "cache", out=None, html=False,
                             accuracy=False, continue_n=N)
    assert figures(got, "tuned")["continuation"] == figures(runs["sequential"], "tuned")["continuation"]
    r = CliRunner().invoke(app, ["compare", str(family["tuned"]), "--base-cache", str(tmp_path / "cache"), "--probes",
                                 str(suite), "--no-accuracy", "--out", str(tmp_path / "runs")])
    assert r.exit_code == 2 and "settings.continue is 6 in the cache, 0 here" in " ".join(r.output.split()), r.output


def test_the_headline_figures_do_not_change(runs, family, suite):
    """Continuation positions are reported apart: every other figure and table is the run's without them."""
    from polars.testing import assert_frame_equal

    plain = driftscope.compare(family["base"], [family["tuned"], family["copy"]], [suite], out=None, html=False,
                               layers=False, accuracy=False)
    for label in ("tuned", "copy"):
        with_it = dict(figures(runs["paired"], label))
        assert with_it.pop("continuation") and with_it == figures(plain, label)
    for table in ("classes", "tokens"):
        assert_frame_equal(runs["paired"].tables[table], plain.tables[table])
    pos = runs["paired"].tables["positions"]
    assert_frame_equal(pos.filter(pos["kind"] != "continuation"), plain.tables["positions"])
