"""The pipeline in two phases: capture the base once, score checkpoints against it.

    record_base(base, inputs) -> BaseCapture     one pass of the base model
    cached_pass(scorer, cache, inputs)            one tuned checkpoint, base not resident

The capture keeps per scored position the base's summary (metrics.topk:
top-k log-probs and exact scalars), the fold sums of log p at next positions
(the bias-correction offsets are then exact: the tuned side's sums minus
these), the sum of p (token movers) and the base's answers and choice
log-likelihoods; with --continue, the base's greedy continuation, so every
checkpoint is fed the tokens the base chose at capture time. Against it every figure is exact except KL, reverse KL and JS
(and what is computed from them), and KL carries a proven bound: summary.json
reports `kl_cache_bound` per checkpoint. Layer figures need the base's
activations beside each checkpoint's, so they belong to the paired pass.

`compare --sequential` captures into memory and frees the base before loading
each checkpoint in turn; `driftscope capture` saves it (basecapture.py) for
`compare --base-cache`.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from typing import Callable

import torch

from driftscope import __version__
from driftscope.answers import OffsetEstimator, base_answers, merge_base_answers
from driftscope.basecapture import WHERE_KEYS, BaseCapture, CacheMismatch, RECAPTURE, make_manifest
from driftscope.capture import CONTINUATION, block_rows, blocks, capture, forward, project_block
from driftscope.drift import class_groups
from driftscope.inputs import Inputs
from driftscope.memory import release_free_memory
from driftscope.distributed import Group, answer_shard
from driftscope.metrics.topk import SUMMARY_KEYS, default_k, row_offsets, summarise_base
from driftscope.models import Checkpoint
from driftscope.paired import Scorer
from driftscope.placement import input_device
from driftscope.result import pause_if_testing

LAYERS_NOTE = "no layer figures: they need the base's activations beside each checkpoint's (the paired run, without " \
              "--sequential or --base-cache)"


def tokenizer_digest(tok) -> str:
    """sha256 of what encoding depends on: the vocabulary, special tokens and chat template."""
    facts = {"vocab": sorted(tok.get_vocab().items()), "special": tok.special_tokens_map,
             "chat_template": getattr(tok, "chat_template", None), "class": type(tok).__name__}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


def expected_manifest(fingerprint: str | None, tok, inputs: Inputs, seed: int, accuracy: bool) -> dict:
    """What a cache must have been captured with to score this run against it
    (the fingerprint only when BASE is known)."""
    m = make_manifest(fingerprint or "", tokenizer_digest(tok), inputs.suites_manifest(),
                      {"chat_template": inputs.chat, "max_length": inputs.max_length, "by_suite": inputs.by_suite(),
                       "seed": seed, "classes": inputs.classes, "vocab": inputs.vocab, "accuracy": accuracy,
                       "continue": inputs.continue_n})
    m["inputs"] = inputs.digest()
    if fingerprint is None:
        del m["fingerprint"]
    del m["schema"], m["driftscope_version"]  # checked on load, with their own message
    return m


def record_base(base: Checkpoint, inputs: Inputs, *, k: int | None = None, seed: int = 0, accuracy: bool = True,
                 batch_size: int = 16, tick: Callable[[], None] = lambda: None, group: Group = Group()) -> BaseCapture:
    """One pass of the base over the inputs (and its answering pass when `accuracy`). Under
    torchrun each rank captures its shard of the batches and probes, and every rank ends
    with the whole capture, as one process would have made it."""
    vocab = inputs.vocab
    groups = class_groups(inputs.table)
    k = k or default_k(vocab, groups.shape[1])
    folds = OffsetEstimator(len(inputs.probes), vocab, seed)  # its sums: the base's log p, per fold
    p_sum, p_n = torch.zeros(vocab, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    with group.together():
        parts = _record_rows(base, inputs, k, groups, folds, (p_sum, p_n), group, tick)
        answers = base_answers(base, inputs.probes, inputs.encoded, inputs.chat, inputs.max_length, batch_size, vocab,
                               answer_shard(group, inputs)) if accuracy and any(p.answer is not None for p in inputs.probes) else None
    tick()
    for t in (folds.sums, folds.counts, p_sum, p_n):
        group.sum_(t)
    positions = _in_batch_order(group.all_gather(parts) if group.world > 1 else [parts])
    if answers is not None and group.world > 1:
        answers = merge_base_answers(group.all_gather(answers))
    manifest = expected_manifest(base.fingerprint, base.tokenizer, inputs, seed, accuracy)
    manifest.update(base_path=base.path, base_label=base.label, driftscope_version=__version__)
    items = {"answers": answers, "continuation": {str(i): list(ids) for i, ids in inputs.continuation.items()}}
    return BaseCapture(positions=positions, fold_logp_sum=folds.sums, fold_count=folds.counts, p_sum=p_sum,
                       p_n=int(p_n.item()), items=items, manifest=manifest)


def _record_rows(base: Checkpoint, inputs: Inputs, k: int, groups: torch.Tensor, folds: OffsetEstimator, sums,
                 group: Group, tick) -> dict[int, dict[str, list[torch.Tensor]]]:
    """The base's summary of each scored position of this rank's batches, by batch index;
    adds to the fold sums and to `sums` = (sum of p, finite rows) in place."""
    vocab, (p_sum, p_n) = inputs.vocab, sums
    parts: dict[int, dict[str, list[torch.Tensor]]] = {}
    device, size = input_device(base.model), block_rows(vocab)
    with capture(base.model) as state, base.active():  # adapters sharing the base: all off
        for i, batch in group.shard(list(enumerate(inputs.batches))):
            forward(base.model, state, batch.to(device))
            parts[i] = defaultdict(list)
            for block in blocks(batch, size):
                logp = project_block(base.model, state, block, vocab)[0][: block.n].double().cpu()
                summary = summarise_base(logp, k, groups, block.gold, offsets=row_offsets(block.probe, block.offset))
                for key in SUMMARY_KEYS:
                    parts[i][key].append(summary[key].cpu())
                for key in WHERE_KEYS:
                    parts[i][key].append(getattr(block, key).cpu())
                folds.add(block, torch.cat([logp, logp[-1:].expand(block.size - block.n, -1)]))
                ok = summary["finite"] & (block.kind != CONTINUATION)  # token movers: next and answer positions
                p_sum += logp[ok].exp().sum(0)
                p_n += ok.sum()
            release_free_memory()
            tick()
            pause_if_testing("drift")
    return parts


def _in_batch_order(shards: list[dict[int, dict[str, list[torch.Tensor]]]]) -> dict[str, torch.Tensor]:
    """Every rank's rows, batch by batch: the order one process scores them in."""
    by_batch = {i: rows for shard in shards for i, rows in shard.items()}
    order = sorted(by_batch)
    keys = SUMMARY_KEYS + WHERE_KEYS
    return {key: torch.cat([t for i in order for t in by_batch[i][key]]) for key in keys}


def cached_pass(scorer: Scorer, cache: BaseCapture, inputs: Inputs, tick: Callable[[], None] = lambda: None,
                group: Group = Group()) -> None:
    """Score one checkpoint against the cache, batch by batch, in the capture's order (under
    torchrun, this rank's shard of the batches: merge the scorers' states afterwards)."""
    ck, vocab = scorer.ck, inputs.vocab
    rows = cache.positions
    starts = [0]
    for batch in inputs.batches:
        starts.append(starts[-1] + len(batch.rows))
    if starts[-1] != cache.n_positions:
        raise CacheMismatch(f"the base cache holds {cache.n_positions} scored positions, this run {starts[-1]}", RECAPTURE)
    device, size = input_device(ck.model), block_rows(vocab)
    with capture(ck.model) as state, ck.active():  # an adapter sharing the base: only it on
        for i, batch in group.shard(list(enumerate(inputs.batches))):
            forward(ck.model, state, batch.to(device))
            at = starts[i]
            for block in blocks(batch, size):
                mine = slice(at, at + block.n)
                at += block.n
                _check_rows(rows, mine, block)
                base = {key: block.pad(rows[key][mine]) for key in SUMMARY_KEYS}
                tuned = project_block(ck.model, state, block, vocab)
                scorer.acc.update_cached(block, base, tuned)
                scorer.est.add(block, tuned[0])
            release_free_memory()
            tick()
            pause_if_testing("drift")
    if group.main:  # the base's sums once: the ranks' offset sums are then summed
        scorer.est.subtract(cache.fold_logp_sum)
    scorer.acc.use_base_means(cache.p_sum.numpy(), cache.p_n)


def _check_rows(rows: dict[str, torch.Tensor], mine: slice, block) -> None:
    """The cache's rows are this block's positions (the inputs digest makes this so; a
    cache edited by hand is caught here)."""
    for key in ("probe", "offset", "gold"):
        got = rows[key][mine]
        if len(got) != block.n or not torch.equal(got.long(), getattr(block, key).long().cpu()):
            raise CacheMismatch(f"the base cache's scored positions differ from this run's ({key} at rows "
                                f"{mine.start}-{mine.stop})", RECAPTURE)
