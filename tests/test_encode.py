"""Tokenisation and truncation: the answer is cut from the joined text (as
lm-eval does), truncation keeps BOS and the chat header, decoding fits the
context, and a max length with no room for a prompt is refused."""

import json

import polars as pl
import pytest
import torch
from typer.testing import CliRunner

import tiny
from driftscope.answers import batches_for, choice_logliks, choice_sequences, decoding_budget, generate_all
from driftscope.capture import decoding_prompt, encode, encode_all, make_batches, token_ids
from driftscope.cli import app
from driftscope.errors import DriftscopeError
from driftscope.probes import Probe

LONG = "the weather today is sunny and the cat liked the warm sun " * 30  # ~400 tokens
CHAT = "<s>The weather today is sunny. Q: {{ messages[0]['content'] }} A:"  # header "<s>The weather ... Q: "


@pytest.fixture(scope="module")
def llama_sp():
    """A SentencePiece (Unigram) tokenizer laid out as Llama-2's is on the Hub:
    normaliser Prepend('▁') + Replace(' ', '▁'), BOS added. Like sentencepiece's
    add_dummy_prefix, it gives " green" on its own a stray '▁' token."""
    from tokenizers import SentencePieceUnigramTokenizer, decoders, normalizers, processors
    from transformers import LlamaTokenizerFast

    sp = SentencePieceUnigramTokenizer()
    sp.train_from_iterator(tiny.CORPUS * 4, vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                           unk_token="<unk>", show_progress=False)
    inner = sp._tokenizer
    inner.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    inner.pre_tokenizer = None
    inner.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    inner.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", inner.token_to_id("<s>"))])
    tok = LlamaTokenizerFast(tokenizer_object=inner, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    assert tok.convert_ids_to_tokens(tok(" green", add_special_tokens=False)["input_ids"])[0] == "▁"  # the stray token
    return tok


@pytest.fixture(scope="module")
def tiny_gpt2(llama_sp):
    """GPT-2 (absolute positions) with a 32-token context, on the BOS tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(llama_sp), n_positions=32, n_embd=16, n_layer=1, n_head=2,
                                       bos_token_id=llama_sp.bos_token_id, eos_token_id=llama_sp.eos_token_id)).eval()
    assert sum(p.numel() for p in model.parameters()) < tiny.TINY_MAX_PARAMS
    return model


def probe(prompt, answer=None, choices=None):
    return Probe("p", prompt, "s", answer, tuple(choices) if choices else None)


def lm_eval_pair(tok, context, continuation):
    """lm-eval's HFLM._encode_pair (0.4.x), BOS added as with add_bos_token=True."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok(context + continuation)["input_ids"]
    ctx = tok(context)["input_ids"]
    return ctx, whole[len(ctx):]


# -- the joined split ---------------------------------------------------------------


@pytest.mark.parametrize("prompt, answer", [
    ("Q: What colour is grass? A:", "green"),
    ("The capital of France is", "Paris"),
    ("I counted 1, 2, 3,", "4"),
])
def test_answer_tokens_are_the_tail_of_the_joined_tokenization(llama_sp, prompt, answer):
    whole = llama_sp(prompt + " " + answer)["input_ids"]
    e = encode(probe(prompt, answer), 0, llama_sp, False, 128)
    assert list(e.ids) == whole  # what the model sees is prompt + " " + answer tokenised as one text
    assert list(e.ids[e.n_prompt:]) == whole[len(llama_sp(prompt)["input_ids"]):]
    assert lm_eval_pair(llama_sp, prompt, " " + answer) == (list(e.ids[:e.n_prompt]), list(e.ids[e.n_prompt:]))


def test_trailing_whitespace_that_merges_moves_to_the_answer(llama_sp, bpe_tokenizer):
    for tok in (llama_sp, bpe_tokenizer):
        e = encode(probe("A: ", "green"), 0, tok, False, 128)
        ctx, cont = lm_eval_pair(tok, "A: ", "green")
        assert (list(e.ids[:e.n_prompt]), list(e.ids[e.n_prompt:])) == (ctx, cont)
        assert list(e.ids) == tok("A: green")["input_ids"]


def test_a_newline_that_stays_its_own_token_stays_with_the_prompt(bpe_tokenizer):
    """A REPL or chat prompt ends in a newline: the next position is after it."""
    e = encode(probe(">>> 50 + 12\n", "62"), 0, bpe_tokenizer, False, 128)
    assert list(e.ids[:e.n_prompt]) == bpe_tokenizer(">>> 50 + 12\n")["input_ids"]
    assert bpe_tokenizer.decode(list(e.ids[e.n_prompt:])) == "62"


def test_choices_are_split_and_scored_as_lm_eval_scores_them(llama_sp):
    prompt, choices = "Q: What colour is grass? A:", ["green", "blue", "red yellow"]
    seqs, keys = choice_sequences([probe(prompt, "green", choices)], llama_sp, False, 128)
    assert keys == [(0, 0), (0, 1), (0, 2)]
    model = tiny.tiny_llama(len(llama_sp)).eval()
    ll, count, _ = choice_logliks(model, batches_for(seqs, 2, llama_sp, "cpu"), len(seqs), len(llama_sp), keys=keys)
    for s, c in zip(seqs, choices):
        ctx, cont = lm_eval_pair(llama_sp, prompt, " " + c)
        assert (list(s.ids[:s.n_prompt]), list(s.ids[s.n_prompt:])) == (ctx, cont)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0].double(), -1)
        expected = sum(float(logp[len(ctx) - 1 + k, t]) for k, t in enumerate(cont))
        assert ll[seqs.index(s)] == pytest.approx(expected, abs=1e-4)
        assert count[seqs.index(s)] == len(cont)


# -- truncation -------------------------------------------------------------------------


def test_truncation_keeps_bos_the_answer_and_the_prompt_end(llama_sp):
    prompt = LONG + "Q: What colour is grass? A:"
    full = llama_sp(prompt)["input_ids"]
    e = encode(probe(prompt, "green"), 0, llama_sp, False, 32)
    assert len(e.ids) == 32 and e.ids[0] == llama_sp.bos_token_id and e.n_head == 1
    assert list(e.ids[e.n_prompt:]) == llama_sp(prompt + " green")["input_ids"][len(full):]
    assert e.truncated == len(full) - e.n_prompt
    kept = list(e.ids[:e.n_prompt])
    back = (e.n_prompt - 1) - (e.n_prompt - 1) // 2
    assert kept[1:] == full[1 : 1 + (e.n_prompt - 1) // 2] + full[-back:]  # the middle of the content went


def test_truncation_keeps_the_chat_header(llama_sp):
    llama_sp.chat_template = CHAT
    try:
        text = llama_sp.apply_chat_template([{"role": "user", "content": LONG}], tokenize=False, add_generation_prompt=True)
        full = token_ids(llama_sp, text, False)
        header = token_ids(llama_sp, "<s>The weather today is sunny. Q:", False)
        e = encode(probe(LONG), 0, llama_sp, True, 24)
    finally:
        llama_sp.chat_template = None
    assert len(e.ids) == 24 and e.n_head >= len(header)
    assert list(e.ids[: len(header)]) == header and list(e.ids[-3:]) == full[-3:]  # header and " A:" kept


def test_decoding_fits_absolute_positions(llama_sp, tiny_gpt2):
    """Before: a prompt cut to the whole context plus the new tokens ran past
    GPT-2's position table (IndexError)."""
    long = probe(LONG + "Q: What colour is grass? A:", "green")
    encoded = encode_all([long, probe("Q: What colour is grass? A:", "green")], llama_sp, False, 32)
    for e in encoded:
        budget = decoding_budget(e)
        prompt = decoding_prompt(e, budget)
        assert len(prompt) + budget <= 32 and prompt[0] == llama_sp.bos_token_id
    [texts] = generate_all(tiny_gpt2, llama_sp, encoded, batch_size=2)
    assert set(texts) == {0, 1}


def test_decoding_budget_leaves_a_prompt_token(llama_sp):
    e = encode(probe(LONG, "green yellow blue"), 0, llama_sp, False, 3)  # BOS + 1 prompt token + 1 answer token
    assert e.n_head == 1 and e.n_prompt == 2 and e.n_answer == 1
    assert decoding_budget(e) == 1 and len(decoding_prompt(e, 1)) == 2


def test_200k_character_prompt_is_cut_with_bounded_tensors(llama_sp):
    huge = probe("x " * 100_000 + "Q: What colour is grass? A:", "green")
    encoded = encode_all([huge], llama_sp, False, 64)
    (batch,) = make_batches(encoded, 4, 0)
    assert batch.input_ids.shape[1] == 64 and encoded[0].truncated > 100_000 - 64


def test_max_length_without_room_for_a_prompt_is_refused(llama_sp):
    with pytest.raises(DriftscopeError, match="--max-length 2 leaves no room for a prompt"):
        encode_all([probe("Q: A:", "green")], llama_sp, False, 2)  # BOS, then nothing
    assert len(encode_all([probe("Q: A:", "green")], llama_sp, False, 3)) == 1


# -- through the CLI ------------------------------------------------------------------------

runner = CliRunner()


def cli(family, tmp_path, suite, *extra):
    r = runner.invoke(app, [str(a) for a in ("compare", family["base"], family["tuned"], "--out", tmp_path / "runs",
                                             "--probes", suite, "--no-weights", "--no-layers", *extra)])
    assert "Traceback" not in r.output, r.output
    return r


def suite_file(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("value", ["1", "0", "-5"])
def test_cli_refuses_a_max_length_with_no_room(family, tmp_path, value):
    """Before: --max-length 1 cut every prompt to nothing (both models 0%, verdict
    stable), and 0 silently meant the whole context."""
    suite = suite_file(tmp_path / "s.jsonl", [{"id": "a", "prompt": "Q: What colour is grass?\nA:", "answer": "green"}])
    r = cli(family, tmp_path, suite, f"--max-length={value}")
    assert r.exit_code == 2, r.output
    assert f"--max-length {value} leaves no room for a prompt: a probe needs 2 tokens at least" in r.output
    assert "use --max-length 2 or more" in r.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_cli_200k_character_prompt_is_cut_and_counted(family, tmp_path):
    rows = [{"id": "huge", "prompt": "the weather today is sunny. " * 7143 + "Is the sun a star?\nA:", "answer": "yes"},
            {"id": "short", "prompt": "Q: What colour is grass?\nA:", "answer": "green"}]
    assert len(rows[0]["prompt"]) > 200_000
    r = cli(family, tmp_path, suite_file(tmp_path / "huge.jsonl", rows), "--name", "huge")
    assert r.exit_code == 0, r.output
    assert "1 prompts were longer than the context" in r.output
    run = tmp_path / "runs" / "huge"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["checkpoints"][0]["figures"]["truncated_prompts"] == 1
    items = pl.read_parquet(run / "tables" / "items.parquet").sort("probe_id")
    assert items["n_prompt_tokens"].max() < summary["settings"]["max_length"]
    assert items["truncated_tokens"].to_list() == [items["truncated_tokens"][0], 0] and items["truncated_tokens"][0] > 30_000
