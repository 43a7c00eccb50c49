"""A tokenizer longer than the LM head (tokens added without resize_token_embeddings,
as CodeLlama ships: 32,004 tokens, 32,000 head rows): one vocabulary width for every
vocabulary-sized structure, and the ids beyond the head reported as such."""

import json
import shutil

import pytest

import driftscope
from driftscope.tokenclasses import classes_for, vocab_width

ADDED = ["<tool>", "<call>", "<result>"]


@pytest.fixture(scope="module")
def long_tokenizer_family(family, tmp_path_factory):
    """base/ and tuned/ of the tiny family, each with 3 tokens added to its
    tokenizer and the model left as it was (no resize)."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("long-tok")
    out = {}
    for name in ("base", "tuned"):
        shutil.copytree(family[name], root / name)
        tok = AutoTokenizer.from_pretrained(root / name)
        tok.add_tokens(ADDED)
        tok.save_pretrained(root / name)
        out[name] = root / name
    return out


def test_class_table_has_the_runs_width(long_tokenizer_family):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(long_tokenizer_family["base"])
    model = AutoModelForCausalLM.from_pretrained(long_tokenizer_family["base"])
    rows = model.get_output_embeddings().weight.shape[0]
    assert len(tok) == rows + len(ADDED)
    width = vocab_width(tok, [model])
    assert width == rows
    table = classes_for(tok, width=width)
    assert table.membership.shape[0] == table.partition.shape[0] == len(table.texts) == width
    assert table.beyond_head == len(ADDED)
    assert classes_for(tok).beyond_head == 0 and classes_for(tok).width == len(tok)
    with pytest.raises(ValueError):
        classes_for(tok, width=len(tok) + 1)


def test_compare_runs_and_reports_tokens_beyond_the_head(long_tokenizer_family, tmp_path):
    from transformers import AutoModelForCausalLM

    probes = tmp_path / "p.jsonl"
    probes.write_text("".join(json.dumps(x) + "\n" for x in [
        {"id": "a", "prompt": "Q: What is 2 plus 3?\nA:", "answer": "5"},
        {"id": "b", "prompt": "The capital of France is", "answer": "Paris", "choices": ["Paris", "Tokyo"]},
        {"id": "c", "prompt": "I counted 1, 2, 3,", "answer": "4"},
        {"id": "d", "prompt": "Is the sun a star? Answer yes or no.\nA:", "answer": "yes", "choices": ["yes", "no"]},
    ]))
    r = driftscope.compare(long_tokenizer_family["base"], [long_tokenizer_family["tuned"]], [str(probes)],
                           out=tmp_path / "runs", name="long", html=False, weights=False)
    f = r.figures()
    assert f["tokens_beyond_head"] == len(ADDED)
    assert f["kl"]["n"] == f["n_positions"] > 0 and f["kl"]["mean"] > 0 and f["verdict"]
    assert r.tables["layers"].height > 0  # the layer figures ran on the same width
    rows = AutoModelForCausalLM.from_pretrained(long_tokenizer_family["base"]).get_output_embeddings().weight.shape[0]
    assert r.tables["tokens"]["token_id"].max() < rows  # movers over the head's ids only
    saved = json.loads((r.path / "summary.json").read_text())
    assert saved["checkpoints"][0]["figures"]["tokens_beyond_head"] == len(ADDED)
