"""Choice log-likelihoods with each item's prompt run once (driftscope.choices) equal
those of the full prompt + choice sequences (answers.choice_logliks, itself checked
against lm-eval's split and a direct log-softmax in test_encode.py), on tiny random
models of several families, for plain and bias-corrected scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers.cache_utils  # noqa: F401
import transformers as tf

from driftscope.answers import batches_for, choice_logliks, greedy, greedy_variants, pick
from driftscope.capture import Encoded
from driftscope.choices import choice_logliks_shared, shared_prompt_groups
from test_architectures import CASES, VOCAB, tiny

PAD = 0


class _Tok:  # all batches_for needs of a tokenizer
    pad_token_id = PAD


def items(n: int, seed: int = 0, ragged: bool = True) -> tuple[list[Encoded], list[tuple[int, int]]]:
    """n items of random ids: a prompt of 3-12 tokens and 2-4 choices of 1-4 tokens each."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))  # noqa: E731
    seqs, keys = [], []
    for i in range(n):
        prompt = torch.randint(3, VOCAB, (rand(3, 12),), generator=g).tolist()
        for j in range(rand(2, 4)):
            choice = torch.randint(3, VOCAB, (rand(1, 4) if ragged else 1,), generator=g).tolist()
            seqs.append(Encoded(len(seqs), tuple(prompt + choice), len(prompt), len(choice), 0))
            keys.append((i, j))
    return seqs, keys


def offsets_fn(n_items: int, seed: int = 1):
    table = torch.randn(n_items, VOCAB, generator=torch.Generator().manual_seed(seed)) * 0.5
    return lambda probe, a=0, b=None: table[probe, a:b]


def both(model, seqs, keys, offsets_of=None, batch_size=3):
    full = choice_logliks(model, batches_for(seqs, batch_size, _Tok, "cpu"), len(seqs), VOCAB, offsets_of, keys)
    shared = choice_logliks_shared(model, seqs, keys, batch_size, PAD, VOCAB, offsets_of)
    return full, shared


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2", "phi", "gpt_neox"])
def test_a_shared_prompt_scores_as_the_full_sequences(family):
    model = tiny(CASES[family][0]())
    seqs, keys = items(10)
    groups, rest = shared_prompt_groups(seqs, keys)
    assert len(groups) == 10 and rest == []
    (ll, count, corr), (ll2, count2, corr2) = both(model, seqs, keys, offsets_fn(10))
    assert np.array_equal(count, count2) and count.sum() == sum(e.n_answer for e in seqs)
    np.testing.assert_allclose(ll2, ll, rtol=0, atol=2e-5)
    np.testing.assert_allclose(corr2, corr, rtol=0, atol=2e-5)
    assert pick(ll2, keys, 10) == pick(ll, keys, 10)
    assert pick(ll2, keys, 10, count2) == pick(ll, keys, 10, count)


def test_single_token_choices_need_no_second_pass():
    model = tiny(CASES["llama"][0]())
    seqs, keys = items(6, ragged=False)
    (ll, count, _), (ll2, count2, _) = both(model, seqs, keys)
    assert np.array_equal(count, count2) and set(count2) == {1}
    np.testing.assert_allclose(ll2, ll, rtol=0, atol=2e-5)


def test_items_whose_choices_do_not_share_the_prompt_take_the_full_sequences():
    """A prompt cut differently for each choice (max_length) cannot be shared: those
    items go the old way, in place among the others."""
    model = tiny(CASES["llama"][0]())
    seqs, keys = items(5)
    s = next(k for k, (i, _) in enumerate(keys) if i == 2)  # item 2's first choice: its prompt loses a token
    e = seqs[s]
    seqs[s] = Encoded(e.index, e.ids[1:], e.n_prompt - 1, e.n_answer, 1)
    groups, rest = shared_prompt_groups(seqs, keys)
    assert len(groups) == 4 and {keys[r][0] for r in rest} == {2}
    (ll, count, corr), (ll2, count2, corr2) = both(model, seqs, keys, offsets_fn(5))
    assert np.array_equal(count, count2)
    np.testing.assert_allclose(ll2, ll, rtol=0, atol=2e-5)
    np.testing.assert_allclose(corr2, corr, rtol=0, atol=2e-5)


def test_an_adapter_scores_the_same_both_ways():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    model = get_peft_model(tiny(CASES["llama"][0]()), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                  init_lora_weights=False)).eval()
    seqs, keys = items(6, seed=4)
    (ll, _, _), (ll2, _, _) = both(model, seqs, keys)
    np.testing.assert_allclose(ll2, ll, rtol=0, atol=2e-5)
    with model.disable_adapter():  # the base, through the same wrapper
        (lb, _, _), (lb2, _, _) = both(model, seqs, keys)
    np.testing.assert_allclose(lb2, lb, rtol=0, atol=2e-5)
    assert np.abs(lb - ll).max() > 1e-3  # the adapter moved the scores


def test_a_cache_that_cannot_be_copied_per_choice_falls_back(monkeypatch):
    model = tiny(CASES["llama"][0]())
    seqs, keys = items(4)
    monkeypatch.delattr(tf.cache_utils.Cache, "batch_select_indices")
    (ll, count, _), (ll2, count2, _) = both(model, seqs, keys)
    assert np.array_equal(count, count2)
    np.testing.assert_allclose(ll2, ll, rtol=0, atol=2e-5)


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_decoding_variants_from_one_prefill_equal_separate_decodes(family):
    """The tuned and the bias-corrected answers decode from one prefill (greedy_variants):
    each equals its own greedy decode and transformers' generate with the offset
    subtracted from the logits, row by row, with per-row budgets and EOS."""
    model = tiny(CASES[family][0]())
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (3, 9, 5, 12)]
    budgets, eos = [4, 7, 1, 6], 5
    table = torch.randn(len(prompts), VOCAB, generator=g) * 3.0
    plain, corrected = greedy_variants(model, prompts, budgets, PAD, eos, [None, table], VOCAB)
    assert plain == greedy(model, prompts, budgets, PAD, eos)
    assert corrected == greedy(model, prompts, budgets, PAD, eos, table, VOCAB)
    assert plain != corrected  # the offsets are large enough to change some answer

    class Shift(tf.LogitsProcessor):
        def __init__(self, row):
            self.row = row

        def __call__(self, input_ids, scores):
            return scores - self.row

    for r, (p, n) in enumerate(zip(prompts, budgets)):
        for got, shift in ((plain, None), (corrected, [Shift(table[r])])):
            ids = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                 do_sample=False, max_new_tokens=n, eos_token_id=eos, pad_token_id=PAD,
                                 logits_processor=tf.LogitsProcessorList(shift or []))
            assert got[r] == ids[0, len(p):].tolist()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_rows_that_finish_early_leave_the_batch_and_the_rest_decode_the_same(family):
    """A row ended by `done_at` (answers: once settled) stops at that token and leaves the
    batch (its KV cache rows with it); the other rows decode exactly as without it."""
    model = tiny(CASES[family][0]())
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (4, 7, 11, 5, 8)]
    budgets = [9, 9, 3, 9, 6]
    table = torch.randn(len(prompts), VOCAB, generator=g)
    free = greedy_variants(model, prompts, budgets, PAD, None, [None, table], VOCAB)
    stop_at = {0: 2, 1: 5, 3: 1}  # row -> the token after which it is done; rows 2 and 4 run to their budget
    ends = [row[:k] for v in free for r, row in enumerate(v) for q, k in stop_at.items() if q == r]
    got = greedy_variants(model, prompts, budgets, PAD, None, [None, table], VOCAB, lambda ids: ids in ends)
    for v in range(2):
        for r, row in enumerate(free[v]):
            if r in stop_at:
                assert got[v][r] == row[: len(got[v][r])] and 1 <= len(got[v][r]) <= stop_at[r]
            else:
                assert got[v][r] == row
    assert got != free


@pytest.mark.parametrize("cap", [None, 30.0])
def test_the_streamed_head_equals_a_float64_log_softmax_across_chunks(cap, monkeypatch):
    """A plain head's gold log-probs stream the vocabulary in chunks with a running max
    (here 256 ids, then 44 whose logits sit 50 nats above): equal to log_softmax over
    whole rows in float64, plain and corrected."""
    import driftscope.choices as C

    g = torch.Generator().manual_seed(5)
    V, d, n = 300, 8, 7
    # float64 weights: both sides round the same products to the same float32 logits
    head = torch.nn.Linear(d, V + 4, bias=True, dtype=torch.float64)  # 4 rows past the vocabulary width: left out
    head.weight.data = torch.randn(V + 4, d, generator=g, dtype=torch.float64)
    head.bias.data = torch.zeros(V + 4, dtype=torch.float64)
    head.bias.data[256:] = 50.0
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    gold = torch.tensor([0, 5, 255, 256, 299, 17, 280])
    probe = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    table = torch.randn(3, V, generator=g)
    offsets_of = lambda p, a=0, b=None: table[p, a:b]  # noqa: E731
    monkeypatch.setattr(C, "CHUNK_ELEMENTS", 1)  # the smallest chunk: 256 ids
    plain, corr = C._streamed(head, cap, x, gold, probe, V, offsets_of)
    with torch.inference_mode():
        z = head(x)[:, :V].float()
    z = (torch.tanh(z / cap) * cap if cap else z).double()
    logp = torch.log_softmax(z, -1)
    want = logp.gather(-1, gold[:, None]).squeeze(-1)
    want_corr = torch.log_softmax(logp - table[probe].double(), -1).gather(-1, gold[:, None]).squeeze(-1)
    np.testing.assert_allclose(plain, want.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(corr, want_corr.numpy(), rtol=1e-12, atol=1e-12)
