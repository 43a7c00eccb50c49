"""Choice log-likelihoods with the prompt run once per item, not once per choice.

An item's choice sequences (capture.encode of prompt + choice) usually share
their prompt ids exactly. Then the prompt goes through the model once, with
its KV cache, its last position gives every choice's first token, and only
the choices' own tokens run after it: for four 3-token choices after a
60-token prompt that is 72 positions instead of 252. The cache is copied per
choice (DynamicCache.batch_select_indices) and each choice continues at its
prompt's length. Items whose choices do not share the prompt ids (a prompt
cut differently to fit each choice) take the full sequences, as before.

Every figure is what answers.choice_logliks computes on the full sequences,
up to float rounding: the same positions, the same head, the same float64
log-softmax (tests/test_choices.py pins it).
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict

import numpy as np
import torch

from driftscope.architectures import softcap_of
from driftscope.capture import Encoded, block_rows, capture, make_batches, padded_index, project
from driftscope.metrics import activations as A
from driftscope.placement import input_device


def shared_prompt_groups(seqs: list[Encoded], keys: list[tuple[int, int]]) -> tuple[list[list[int]], list[int]]:
    """Sequence indices grouped per item where all its choices share the prompt ids
    (and have at least one token), and the other sequences."""
    by_item: dict[int, list[int]] = defaultdict(list)
    for s, (i, _) in enumerate(keys):
        by_item[i].append(s)
    groups, rest = [], []
    for members in by_item.values():
        prompts = {seqs[s].ids[: seqs[s].n_prompt] for s in members}
        if len(prompts) == 1 and all(seqs[s].n_answer >= 1 for s in members):
            groups.append(members)
        else:
            rest.extend(members)
    return groups, rest


def left_padded(prompts: list[tuple[int, ...]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(p)
        mask[r, width - len(p):] = 1
    return ids.to(device), mask.to(device)


CHUNK_ELEMENTS = 1 << 19  # logits per vocabulary chunk of the streamed head (rows x ids)
PENDING_ROWS = 1024  # states gathered for one streamed head product at most (memory: rows x d_model)


@torch.inference_mode()
def _gold_logprobs(model, hidden: torch.Tensor, gold: torch.Tensor, probe: torch.Tensor, vocab: int, offsets_of,
                   size: int) -> tuple[np.ndarray, np.ndarray]:
    """log p(gold) per row of `hidden` (N, d), plain and (with `offsets_of`, given each row's
    probe) corrected, float64, with no (N, vocab) tensor: a plain head streams the
    vocabulary (`_streamed`), any other (PEFT-wrapped, offloaded) runs in blocks of `size` rows."""
    head = model.get_output_embeddings()
    if type(head) is torch.nn.Linear and head.weight.device.type != "meta" and len(gold):
        return _streamed(head, softcap_of(model), hidden, gold, probe, vocab, offsets_of)
    return _blocked(model, hidden, gold, probe, vocab, offsets_of, size)


@torch.inference_mode()
def _streamed(head: torch.nn.Linear, cap: float | None, hidden, gold, probe, vocab: int, offsets_of):
    """_gold_logprobs with every row in one head product per vocabulary chunk (the head's
    weight read once, not once per block of 8 rows at a 262k vocabulary). With z the
    head's float32 logits after any softcap:
        log p(g) = z_g - lse(z),  and the corrected  log_softmax(log p - off)(g) = z_g - off_g - lse(z - off)
    (lse(z) cancels), each lse in float64 over the chunks with a running max."""
    dev = head.weight.device
    x, gold = hidden.to(dev), gold.to(dev)
    n = len(gold)
    chunk = max(256, min(vocab, CHUNK_ELEMENTS // n))
    logits = A.head_logits(head, vocab, chunk)
    sides = 1 if offsets_of is None else 2
    top = torch.full((sides, n), -math.inf, dtype=torch.float64, device=dev)  # running max, per row
    total = torch.zeros(sides, n, dtype=torch.float64, device=dev)  # sum of exp(z - top)
    at_gold = torch.zeros(sides, n, dtype=torch.float64, device=dev)
    cols = torch.arange(n, device=dev)
    for a, b in A._chunks(vocab, chunk):
        z = A._capped(logits(x, a, b).float(), cap).double()  # (ids, N)
        zs = (z,) if offsets_of is None else (z, z - offsets_of(probe, a, b).to(dev, torch.float64).T)
        inside = (gold >= a) & (gold < b)
        for k, zk in enumerate(zs):
            new = torch.maximum(top[k], zk.amax(0))
            ref = torch.where(torch.isfinite(new), new, 0.0)
            total[k] = total[k] * (top[k] - ref).exp() + (zk - ref).exp_().sum(0)
            top[k] = new
            at_gold[k, inside] = zk[gold[inside] - a, cols[inside]]
    out = (at_gold - torch.where(torch.isfinite(top), top, 0.0) - total.log()).cpu().numpy()
    return out[0], (out[1] if sides == 2 else np.zeros(n))


def _blocked(model, hidden, gold, probe, vocab: int, offsets_of, size: int):
    """_gold_logprobs in blocks of `size` rows (the last repeats its final row, as capture.blocks does)."""
    plain, corrected = np.zeros(len(gold)), np.zeros(len(gold))
    for start in range(0, len(gold), size):
        n = min(size, len(gold) - start)
        index = padded_index(start, n, size)
        logp = project(model, hidden[index.to(hidden.device)], vocab)[0].double().cpu()
        g = gold[index][:, None]
        plain[start:start + n] = logp.gather(-1, g).squeeze(-1)[:n].numpy()
        if offsets_of is not None:
            corr = torch.log_softmax(logp - offsets_of(probe[index]).double(), -1)
            corrected[start:start + n] = corr.gather(-1, g).squeeze(-1)[:n].numpy()
    return plain, corrected


class _NoCacheSelect(Exception):
    """The model's KV cache cannot be copied per choice: its items take the full sequences."""


@torch.inference_mode()
def _score_groups(model, seqs, keys, groups, pad, pending: _Pending) -> None:
    """One batch of items: their prompts once, then every choice's tokens after its prompt's cache;
    the states that predict choice tokens go to `pending` for the head."""
    from driftscope.answers import CACHE

    device = input_device(model)
    first = [seqs[g[0]] for g in groups]
    ids, mask = left_padded([e.ids[: e.n_prompt] for e in first], pad, device)
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    members = [s for g in groups for s in g]
    item_of = torch.tensor([j for j, g in enumerate(groups) for _ in g], device=device)
    probe_of = torch.tensor([keys[s][0] for s in members])
    rest = [seqs[s].ids[seqs[s].n_prompt:-1] for s in members]  # the inputs that predict choice tokens 2..n
    width = max(len(r) for r in rest)
    with capture(model) as state:
        state.rows, state.cols = torch.arange(len(groups), device=device), torch.full((len(groups),), ids.shape[1] - 1, device=device)
        try:
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=width > 0)
        finally:
            state.rows = state.cols = None
        cache = getattr(out, CACHE, None)
        if width and not hasattr(cache, "batch_select_indices"):
            raise _NoCacheSelect
        # each choice's first token, from its item's last prompt position
        gold0 = torch.tensor([seqs[s].ids[seqs[s].n_prompt] for s in members])
        pending.add(state.final[item_of.to(state.final.device)], gold0, probe_of, members)
        if not width:
            return
        cache.batch_select_indices(item_of.cpu())  # a CPU index serves layers on any device
        tail = torch.full((len(members), width), pad, dtype=torch.long)
        tail_mask = torch.zeros_like(tail)
        rows, cols, gold, row_of = [], [], [], []
        for r, (s, toks) in enumerate(zip(members, rest)):
            tail[r, : len(toks)] = torch.tensor(toks, dtype=torch.long)
            tail_mask[r, : len(toks)] = 1
            for k in range(len(toks)):
                rows.append(r)
                cols.append(k)
                gold.append(seqs[s].ids[seqs[s].n_prompt + 1 + k])
                row_of.append(r)
        state.rows, state.cols = torch.tensor(rows, device=device), torch.tensor(cols, device=device)
        try:
            model(input_ids=tail.to(device), attention_mask=torch.cat([mask[item_of], tail_mask.to(device)], dim=1),
                  position_ids=pos[item_of, -1:] + 1 + torch.arange(width, device=device), use_cache=True,
                  **{CACHE: cache})
        finally:
            state.rows = state.cols = None
        pending.add(state.final, torch.tensor(gold), probe_of[torch.tensor(row_of)], [members[r] for r in row_of])


class _Pending:
    """States waiting for the LM head, gathered over batches of items: the head then runs on
    up to PENDING_ROWS rows at once (_gold_logprobs), not on each batch's few. Their log-probs
    add into `ll`, `ll_corr` and `count` per choice sequence."""

    def __init__(self, model, vocab: int, offsets_of, n_seqs: int):
        self.model, self.vocab, self.offsets_of = model, vocab, offsets_of
        self.ll, self.ll_corr, self.count = np.zeros(n_seqs), np.zeros(n_seqs), np.zeros(n_seqs)
        self.rows: list[tuple] = []
        self.n = 0

    def add(self, hidden: torch.Tensor, gold: torch.Tensor, probe: torch.Tensor, seq: list[int]) -> None:
        self.rows.append((hidden, gold, probe, seq))
        self.n += len(gold)
        if self.n >= PENDING_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        hidden, gold, probe, seq = zip(*self.rows)
        seq = [s for part in seq for s in part]
        plain, corrected = _gold_logprobs(self.model, torch.cat(hidden), torch.cat(gold), torch.cat(probe), self.vocab,
                                          self.offsets_of, block_rows(self.vocab))
        np.add.at(self.ll, seq, plain)
        np.add.at(self.ll_corr, seq, corrected)
        np.add.at(self.count, seq, 1)
        self.rows, self.n = [], 0


def _batched(groups: list[list[int]], batch_size: int):
    """Items in batches of at most `batch_size` choice rows (one item's choices always
    together): the per-choice KV cache then holds no more rows than a full-sequence batch."""
    batch, rows = [], 0
    for g in groups:
        if batch and rows + len(g) > batch_size:
            yield batch
            batch, rows = [], 0
        batch.append(g)
        rows += len(g)
    if batch:
        yield batch


def choice_logliks_shared(model, seqs: list[Encoded], keys: list[tuple[int, int]], batch_size: int, pad: int, vocab: int,
                          offsets_of=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(loglik, n_tokens, corrected loglik) per choice sequence, as answers.choice_logliks,
    the shared prompt run once per item; items in order of prompt length, `batch_size`
    choice rows at a time."""
    from driftscope.answers import choice_logliks
    from driftscope.memory import release_free_memory

    pending = _Pending(model, vocab, offsets_of, len(seqs))
    groups, rest = shared_prompt_groups(seqs, keys)
    groups.sort(key=lambda g: (seqs[g[0]].n_prompt, keys[g[0]][0]))
    for batch in _batched(groups, batch_size):
        try:
            _score_groups(model, seqs, keys, batch, pad, pending)
        except _NoCacheSelect:
            rest += [s for g in batch for s in g]
        release_free_memory()
    pending.flush()
    ll, ll_corr, count = pending.ll, pending.ll_corr, pending.count
    if rest:  # the full sequences, renumbered for choice_logliks and put back in place
        sub = [dataclasses.replace(seqs[s], index=n) for n, s in enumerate(rest)]
        device = input_device(model)
        batches = [b.to(device) for b in make_batches(sub, batch_size, pad)]
        r_ll, r_cnt, r_corr = choice_logliks(model, batches, len(sub), vocab, offsets_of, [keys[s] for s in rest])
        ll[rest], count[rest], ll_corr[rest] = r_ll, r_cnt, r_corr
    return ll, count, ll_corr
