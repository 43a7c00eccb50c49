"""Per-item accuracy of the base, the tuned model, and the tuned model with its
constant output shift removed.

- Free answers: greedy decoding of a few tokens (the answer's length and a
  short sentence more), the answer extracted by type as lm-eval's filters
  do (is_match): the first number for numeric answers, the answer as a whole
  word or phrase in the first sentence for text answers, and for a choice
  item no other choice's text there.
- Choice items additionally: log-likelihood of each choice after the prompt
  (summed and per token), the choice's tokens split from the joined text as
  lm-eval splits them (capture.split_pair); the argmax among the choices is
  the restricted answer. Restricted accuracy that holds while free answers fall means the
  knowledge is still there and only the output is tilted.
- Bias correction: the tuned model's prompt-independent output shift is the
  mean of log q - log p over the vocabulary at next-token positions. It is
  estimated cross-fitted (K folds of items; an item is corrected with the
  offset estimated on the other folds) and subtracted from the tuned logits.
"""

from __future__ import annotations

import dataclasses
import re
from decimal import Decimal, InvalidOperation

import numpy as np
import polars as pl
import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from driftscope.capture import (NEXT, Batch, Block, Encoded, block_rows, blocks, capture, decoding_prompt, encode, pad_id,
                                forward, header_text, make_batches, project_block)
from driftscope.choices import choice_logliks_shared, left_padded
from driftscope.memory import release_free_memory

FOLDS = 5  # cross-fitting folds: each offset is estimated on 80% of the items
MAX_NEW = 24  # the most tokens decoded per answer
SENTENCE = 8  # tokens decoded beyond the answer's own: a short sentence around it

# transformers 5.x renamed the KV cache argument and output field to `cache`
# (`past_key_values` still works there, with a deprecation warning each call).
CACHE = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"


class OffsetEstimator:
    """Per-fold sums of log q - log p at next-token positions: (K, V) float64."""

    def __init__(self, n_probes: int, vocab: int, seed: int, folds: int = FOLDS):
        perm = np.random.default_rng(seed).permutation(n_probes)
        self.fold = torch.as_tensor(perm % folds)  # probe index -> fold
        self.sums = torch.zeros(folds, vocab, dtype=torch.float64)
        self.counts = torch.zeros(folds, dtype=torch.float64)

    def update(self, block: Block, logp: torch.Tensor, logq: torch.Tensor) -> None:
        """One block of (block.size, V) log-probs; its next positions among the first block.n rows count."""
        self.add(block, (logq - logp).double().cpu())

    def add(self, block: Block, d: torch.Tensor) -> None:
        """Add a block's (block.size, V) rows at next positions to their folds' sums: log q - log p
        (paired), or log q alone, the base's sums subtracted at the end (`subtract`, a base cache)."""
        d = d.double().cpu()  # (size, V): one shape for every block
        ok = torch.isfinite(d.sum(-1))  # a row sum is finite iff every entry is
        if not ok.all():
            d = torch.nan_to_num(d, nan=0.0, posinf=0.0, neginf=0.0)
        use = torch.zeros(block.size, dtype=torch.bool)
        use[: block.n] = block.kind == NEXT
        use &= ok
        # (K, size) one-hot of each used row's fold: the sums take one matmul, no ragged selection.
        onehot = torch.zeros(len(self.counts), block.size, dtype=torch.float64)
        rows = use.nonzero().flatten()
        onehot[self.fold[block.probe[rows]], rows] = 1.0
        self.sums += onehot @ d
        self.counts += onehot.sum(1)

    def subtract(self, base_sums: torch.Tensor) -> None:
        """sums of log q - the base's sums of log p over the same positions: the paired sums, exactly."""
        self.sums -= base_sums.double()

    def offsets(self, a: int = 0, b: int | None = None) -> torch.Tensor:
        """(K, b - a): the offset to subtract from items of fold k (other folds' mean), ids [a, b)."""
        sums = self.sums[:, a:b]
        rest = (self.counts.sum() - self.counts).clamp_min(1)[:, None]
        return ((sums.sum(0)[None] - sums) / rest).float()

    def for_probes(self, probe_idx: torch.Tensor, a: int = 0, b: int | None = None) -> torch.Tensor:
        """(N, b - a): each probe's offsets for ids [a, b) (default: all)."""
        return self.offsets(a, b)[self.fold[probe_idx]]


# -- free answers -------------------------------------------------------------


def normalise(text: str) -> str:
    first = text.strip().split("\n")[0]
    return re.sub(r"\s+", " ", first).strip().strip(".,;:!?\"'`").strip().lower()


# Leading sentences that carry no answer: an instruct model's "Sure!" before "The answer is 12."
FILLERS = frozenset({"sure", "okay", "ok", "certainly", "of course", "absolutely", "alright", "great", "well", "hello", "hi"})
NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:,\d{3})*(?:\.\d+)?(?![\w])")


def as_number(text: str) -> Decimal | None:
    """The number a string is written as ("12", "-3.5", "1,000"), else None."""
    t = text.strip()
    if not NUMBER.fullmatch(t):
        return None
    try:
        return Decimal(t.replace(",", ""))
    except InvalidOperation:
        return None


def answer_number(text: str) -> Decimal | None:
    """The first number written in digits in the answer's first sentence (see
    answer_sentence), after its "=" when it has one: "Sure! The answer is 12."
    and "5 + 7 = 12" both give 12."""
    sentence = answer_sentence(text).replace("\u2212", "-")
    m = NUMBER.search(sentence.split("=", 1)[1] if "=" in sentence else sentence)
    return None if m is None else Decimal(m.group().replace(",", ""))


def answer_sentence(text: str) -> str:
    """The first sentence of the answer, normalised (lower case, one space),
    after any filler sentences ("Sure!", "Okay."). A sentence ends at a
    newline or at . ! ? before a space."""
    for sentence in _BOUNDARY.split(text.strip()):
        s = _normal_sentence(sentence)
        if not _is_filler(s):
            return s
    return ""


_BOUNDARY = re.compile(r"\n+|(?<=[.!?])\s+")  # where a sentence ends


def _normal_sentence(sentence: str) -> str:
    return re.sub(r"\s+", " ", sentence).strip().lower()


def _is_filler(sentence: str) -> bool:
    return sentence.strip(".,;:!?\"'` ") in FILLERS


def _spans(phrase: str, text: str) -> list[tuple[int, int]]:
    """Where a phrase occurs in the text as whole words (case and spacing ignored)."""
    p = re.sub(r"\s+", " ", phrase.strip().lower())
    if not p:
        return []
    return [m.span() for m in re.finditer(rf"(?<!\w){re.escape(p)}(?!\w)", text)]


def is_match(generated: str, gold: str, choices: tuple[str, ...] | None = None) -> bool:
    """Whether a free answer is right, extracted by answer type as lm-eval's filters do.

    - Numeric gold ("12", "-3.5", "1,000"): the first number written in digits
      in the answer's first sentence, after its "=" when it has one (a
      restated sum "5 + 7 = 12" gives 12), compared as a number ("12.0" and
      "012" match 12; "120" does not; number words such as "twelve" do not
      count: digits only).
    - Any gold: the answer starts with it at a word boundary ("Paris." and
      "Paris is" match "Paris"; "10" does not match "1"), as before.
    - Text gold: or it occurs as a whole word or phrase within the answer's
      first sentence (after fillers such as "Sure!"): "The capital of France
      is Paris." matches "Paris". With choices (a choice item answered
      freely), either way no other choice may occur in that sentence,
      except inside the gold's own words ("New York" holds "York"):
      "Paris or London" is not an answer.
    """
    number = as_number(gold)
    if number is not None:
        found = answer_number(generated)
        return found is not None and found == number
    g, t = normalise(gold), normalise(generated)
    starts = t == g or (t.startswith(g) and not t[len(g)].isalnum())
    sentence = answer_sentence(generated)
    hits = _spans(gold, sentence)
    if not (starts or hits):
        return False
    others = [c for c in choices or () if normalise(c) != g]
    return not any(not any(a <= x and y <= b for a, b in hits) for c in others for x, y in _spans(c, sentence))


def settled(text: str) -> bool:
    """Whether no further token can change is_match on this text: its first line (what
    `normalise` reads) and its first sentence after fillers (what `answer_sentence` reads)
    have both ended, each followed by a line break or, for the sentence, also . ! ? and a
    space. Free decoding stops a row there."""
    flat = text.lstrip()
    if "\n" not in flat:
        return False
    return any(not _is_filler(_normal_sentence(part)) for part in _BOUNDARY.split(flat)[:-1])  # the last may grow


def greedy(model, prompts: list[list[int]], max_new: int | list[int], pad: int, eos_id: int | None,
           offsets: torch.Tensor | None = None, vocab: int | None = None) -> list[list[int]]:
    """Greedy decoding of a left-padded batch with the KV cache: each row up to its
    own budget (`max_new`, one for all or one per row) or EOS. A finished row's
    position stops advancing, so no row runs past the context it was fitted to.
    `offsets` (B, vocab), when given, is subtracted from the logits of ids [0, vocab)
    at every step."""
    return greedy_variants(model, prompts, max_new, pad, eos_id, [offsets], vocab)[0]


@torch.inference_mode()
def greedy_variants(model, prompts: list[list[int]], max_new: int | list[int], pad: int, eos_id: int | None,
                    variants: list[torch.Tensor | None], vocab: int | None = None, done_at=None) -> list[list[list[int]]]:
    """`greedy` under each logit offset of `variants` (None: the plain logits), from one
    prefill of the prompts: the prompts' KV cache is copied once per variant and the
    variants decode together, as one batch. `done_at(ids) -> bool`, when given, ends a row
    early (answers: once `settled`). Returns one list of answers per variant."""
    b, k = len(prompts), len(variants)
    budgets = torch.tensor(max_new if isinstance(max_new, list) else [max_new] * b).repeat(k)
    device = next(model.parameters()).device
    ids, mask = left_padded(prompts, pad, device)
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
    logits, cache = out.logits[:, -1], getattr(out, CACHE)
    if k > 1:
        copy = torch.arange(b).repeat(k)  # variant v's row r is row v*b + r
        if hasattr(cache, "batch_select_indices"):
            cache.batch_select_indices(copy)
        else:  # a cache that cannot be copied: prefill every variant's rows
            out = model(input_ids=ids[copy], attention_mask=mask[copy], position_ids=pos[copy], use_cache=True,
                        logits_to_keep=1)
            cache = getattr(out, CACHE)
        logits, mask, pos = logits[copy.to(device)], mask[copy.to(device)], pos[copy.to(device)]
    shift = None
    if any(v is not None for v in variants):
        shift = torch.cat([torch.zeros(b, vocab) if v is None else v.float().cpu() for v in variants]).to(device)
    rows = _decode(model, logits, cache, mask, pos[:, -1], budgets.to(device), eos_id, shift, done_at)
    return [rows[v * b:(v + 1) * b] for v in range(k)]


def _decode(model, logits, cache, mask, last, budgets, eos_id, shift, done_at=None) -> list[list[int]]:
    """The decoding loop of greedy_variants, from the prefill's last logits (R, V) and cache.
    Finished rows leave the batch (their cache rows too) where the cache can drop rows;
    elsewhere they run on, their position held, their tokens ignored."""
    new: list[list[int]] = [[] for _ in range(len(budgets))]
    live = list(range(len(budgets)))  # the batch's rows, as indices into `new`
    held = torch.zeros(len(budgets), dtype=torch.bool, device=budgets.device)  # finished, still in the batch
    for step in range(int(budgets.max())):
        logits = logits.float()
        if shift is not None:
            logits[:, : shift.shape[1]] -= shift
        nxt = logits.argmax(-1)
        done = held | (budgets <= step + 1)
        if eos_id is not None:
            done |= nxt == eos_id
        for j, (r, t, was) in enumerate(zip(live, nxt.tolist(), held.tolist())):
            if not was:
                new[r].append(t)
                if done_at is not None and done_at(new[r]):
                    done[j] = True
        if done.all():
            break
        keep = (~done).nonzero().flatten()
        if len(keep) < len(live) and hasattr(cache, "batch_select_indices"):
            cache.batch_select_indices(keep.cpu())
            live = [live[j] for j in keep.tolist()]
            nxt, mask, last, budgets, done = nxt[keep], mask[keep], last[keep], budgets[keep], done[keep]
            shift = None if shift is None else shift[keep]
        held = done
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        last = torch.where(done, last, last + 1)
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last[:, None],
                    **{CACHE: cache}, use_cache=True, logits_to_keep=1)
        logits, cache = out.logits[:, -1], getattr(out, CACHE)
    return new


def decoding_budget(e: Encoded) -> int:
    """New tokens to decode for a probe: its answer's length and SENTENCE more
    (room for "The capital of France is" before it), at most MAX_NEW, and at
    most what its max_length leaves after BOS, the chat header and one prompt
    token. Per probe, so an answer does not depend on its batch-mates (nor on
    how a distributed run dealt the probes)."""
    want = min(e.n_answer + SENTENCE, MAX_NEW)
    return max(1, want if e.max_length is None else min(want, e.max_length - e.n_head - 1))


def generate_all(model, tok, encoded: list[Encoded], batch_size: int, variants=(None,), vocab=None) -> list[dict[int, str]]:
    """Greedy answers for every encoded probe (prompt part only), each decoded to its own
    budget, under each variant: None for the plain logits, or a function from probe indices
    to the (N, vocab) offsets to subtract. One dict index -> text per variant; the variants
    share each batch's prefill (greedy_variants)."""
    order = sorted(encoded, key=lambda e: (e.n_prompt, e.index))
    texts: list[dict[int, str]] = [{} for _ in variants]
    for i in range(0, len(order), batch_size):
        chunk = order[i : i + batch_size]
        budgets = [decoding_budget(e) for e in chunk]
        index = torch.tensor([e.index for e in chunk])
        outs = greedy_variants(model, [decoding_prompt(e, b) for e, b in zip(chunk, budgets)], budgets, pad_id(tok),
                               tok.eos_token_id, [None if v is None else v(index) for v in variants], vocab,
                               lambda ids: settled(tok.decode(ids, skip_special_tokens=True)))
        for got, rows in zip(texts, outs):
            for e, ids in zip(chunk, rows):
                got[e.index] = tok.decode(ids, skip_special_tokens=True)
        release_free_memory()  # the KV cache of this batch (see driftscope.memory)
    return texts


# -- choices --------------------------------------------------------------------


def choice_sequences(probes, tok, chat: bool, max_length: int, mine=lambda i: True) -> tuple[list[Encoded], list[tuple[int, int]]]:
    """One encoded sequence per (probe, choice) of the probes `mine` keeps; returns them and their (probe, choice) keys."""
    seqs, keys = [], []
    header = header_text(tok, chat)
    for i, p in enumerate(probes):
        if not p.choices or not mine(i):
            continue
        for j, c in enumerate(p.choices):
            e = encode(dataclasses.replace(p, answer=c), len(seqs), tok, chat, max_length, header)
            seqs.append(e)
            keys.append((i, j))
    return seqs, keys


def choice_logliks(model, batches: list[Batch], n_seqs: int, vocab: int, offsets_of=None, keys=None):
    """Summed log-likelihood and token count of each choice sequence.

    Returns (loglik, n_tokens) as (n_seqs,) arrays, and when `offsets_of` maps
    probe indices to (N, vocab) offsets also the corrected log-likelihoods."""
    ll = np.zeros(n_seqs)
    ll_corr = np.zeros(n_seqs)
    count = np.zeros(n_seqs)
    probe_of_seq = torch.tensor([k[0] for k in keys]) if keys else None
    size = block_rows(vocab)
    with capture(model) as state:
        for batch in batches:
            forward(model, state, batch)
            for block in blocks(batch, size):
                logp = project_block(model, state, block, vocab)[0].double().cpu()  # (size, V)
                n, seq = block.n, block.probe.numpy()
                gold = block.pad(block.gold)[:, None]
                np.add.at(ll, seq, logp.gather(-1, gold).squeeze(-1)[:n].numpy())
                np.add.at(count, seq, 1)
                if offsets_of is not None:
                    corr = torch.log_softmax(logp - offsets_of(probe_of_seq[block.pad(block.probe)]).double(), -1)
                    np.add.at(ll_corr, seq, corr.gather(-1, gold).squeeze(-1)[:n].numpy())
            release_free_memory()
    return ll, count, ll_corr


def pick(ll: np.ndarray, keys: list[tuple[int, int]], n_probes: int, per_token: np.ndarray | None = None) -> dict[int, int]:
    """Argmax choice per probe (by summed log-likelihood, or per token)."""
    score_ = ll / per_token if per_token is not None else ll
    best: dict[int, tuple[float, int]] = {}
    for s, (i, j) in enumerate(keys):
        if i not in best or score_[s] > best[i][0]:
            best[i] = (score_[s], j)
    return {i: j for i, (_, j) in best.items()}


def batches_for(seqs: list[Encoded], batch_size: int, tok, device) -> list[Batch]:
    return [b.to(device) for b in make_batches(seqs, batch_size, pad_id(tok))]


# -- the answering pass: base once, each tuned checkpoint plain and corrected --


def answer_items(base_ck, tuned_cks, estimators, probes, encoded, chat, max_length, batch_size, vocab, progress=None,
                 only: set[int] | None = None):
    """Per-item answers and correctness: one polars frame per tuned checkpoint
    (`only`: these probe indices, a shard of a distributed run)."""
    tick = progress or (lambda: None)
    base = base_answers(base_ck, probes, encoded, chat, max_length, batch_size, vocab, only)
    tick()
    return [tuned_answers(ck, est, base, base_ck.tokenizer, probes, encoded, chat, max_length, batch_size, vocab, tick,
                          only) for ck, est in zip(tuned_cks, estimators)]


def base_answers(base_ck, probes, encoded, chat, max_length, batch_size, vocab, only: set[int] | None = None) -> dict:
    """The base's greedy answers and choice log-likelihoods, as JSON (a base cache keeps them), keyed
    so that shards merge by union: {"texts": {"i": answer}, "choice_ll": {"i:j": ll}, "choice_counts":
    {"i:j": tokens}} for probe i, choice j."""
    job = _AnswerJob(base_ck.tokenizer, base_ck.model, probes, encoded, chat, max_length, batch_size, vocab, only)
    with base_ck.active():  # adapters sharing the base: all off
        [texts] = job.generate(base_ck.model)
        ll, cnt, _ = job.choices(base_ck.model)
    keys = choice_keys(job.keys)
    return {"texts": {str(i): t for i, t in texts.items()},
            "choice_ll": {} if ll is None else dict(zip(keys, np.asarray(ll).tolist())),
            "choice_counts": {} if cnt is None else dict(zip(keys, np.asarray(cnt).tolist()))}


def choice_keys(keys: list[tuple[int, int]]) -> list[str]:
    """(probe, choice) keys as base_answers' JSON keys, "i:j"."""
    return [f"{i}:{j}" for i, j in keys]


def merge_base_answers(shards: list[dict]) -> dict:
    """base_answers of every shard of the probes, as one."""
    return {name: {k: v for shard in shards for k, v in shard[name].items()} for name in ("texts", "choice_ll", "choice_counts")}


def tuned_answers(ck, est, base: dict, tok, probes, encoded, chat, max_length, batch_size, vocab, tick=lambda: None,
                  only: set[int] | None = None):
    """One tuned checkpoint's answers, plain and bias-corrected, beside the base's (`base_answers`),
    the probes encoded with `tok` (the base's): a polars frame."""
    job = _AnswerJob(tok, ck.model, probes, encoded, chat, max_length, batch_size, vocab, only)
    with ck.active():  # an adapter sharing the base: only it on
        t_texts, c_texts = job.generate(ck.model, (None, est.for_probes))
        tick()
        t_ll, _, c_ll = job.choices(ck.model, est.for_probes)
    tick()
    base_texts = {int(i): t for i, t in base["texts"].items()}
    keys = choice_keys(job.keys)
    base_ll = np.asarray([base["choice_ll"][k] for k in keys]) if keys else None
    cnt = np.asarray([base["choice_counts"][k] for k in keys]) if keys else None
    return _items_frame(ck.label, probes, job.with_answer, job.keys, cnt,
                        (base_texts, base_ll), (t_texts, t_ll), (c_texts, c_ll))


class _AnswerJob:
    """The answering pass's inputs for one model: answered probes and choice sequences, batched."""

    def __init__(self, tok, model, probes, encoded, chat, max_length, batch_size, vocab, only=None):
        self.tok, self.batch_size, self.vocab = tok, batch_size, vocab
        mine = (lambda i: True) if only is None else (lambda i: i in only)  # noqa: E731
        self.with_answer = [e for e in encoded if probes[e.index].answer is not None and mine(e.index)]
        self.seqs, self.keys = choice_sequences(probes, tok, chat, max_length, mine)

    def choices(self, model, offsets_of=None):
        """One pass gives the plain and, with offsets, the corrected log-likelihoods; each
        item's prompt runs once for all its choices (choices.py)."""
        if not self.seqs:
            return None, None, None
        return choice_logliks_shared(model, self.seqs, self.keys, self.batch_size, pad_id(self.tok), self.vocab,
                                     offsets_of)

    def generate(self, model, variants=(None,)):
        return generate_all(model, self.tok, self.with_answer, self.batch_size, variants, self.vocab)


def _items_frame(label, probes, with_answer, keys, cnt, base, tuned, corrected) -> pl.DataFrame:
    n = len(probes)
    picks = {name: (pick(ll, keys, n) if ll is not None else {}) for name, (_, ll) in
             (("base", base), ("tuned", tuned), ("corrected", corrected))}
    per_token = {name: (pick(ll, keys, n, cnt) if ll is not None else {}) for name, (_, ll) in
                 (("base", base), ("tuned", tuned))}
    rows = []
    for e in with_answer:
        p = probes[e.index]
        row = {"checkpoint": label, "probe_index": e.index}
        for name, (texts, _) in (("base", base), ("tuned", tuned), ("corrected", corrected)):
            row[f"{name}_answer"] = texts[e.index]
            row[f"{name}_correct"] = is_match(texts[e.index], p.answer, p.choices)
            if p.choices:
                j = picks[name][e.index]
                row[f"{name}_choice"] = p.choices[j]
                row[f"{name}_choice_correct"] = p.choices[j] == p.answer
        if p.choices:
            for name in ("base", "tuned"):
                row[f"{name}_choice_per_token_correct"] = p.choices[per_token[name][e.index]] == p.answer
        row["primary"] = "choice" if p.choices else "free"
        for name in ("base", "tuned", "corrected"):  # choice items by choice log-likelihood, free items by generation
            row[f"{name}_primary_correct"] = row[f"{name}_choice_correct" if p.choices else f"{name}_correct"]
        rows.append(row)
    schema = {f"{m}_{k}": t for m in ("base", "tuned", "corrected") for k, t in
              (("answer", pl.String), ("correct", pl.Boolean), ("choice", pl.String), ("choice_correct", pl.Boolean),
               ("primary_correct", pl.Boolean))}
    schema.update({"checkpoint": pl.String, "probe_index": pl.Int64, "primary": pl.String,
                   "base_choice_per_token_correct": pl.Boolean, "tuned_choice_per_token_correct": pl.Boolean})
    return pl.DataFrame(rows, schema=schema)
