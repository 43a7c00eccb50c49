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
from driftscope.answers import OffsetEstimator, base_answers
from driftscope.basecapture import WHERE_KEYS, BaseCapture, CacheMismatch, RECAPTURE, make_manifest
from driftscope.capture import CONTINUATION, block_rows, blocks, capture, forward, project_block
from driftscope.drift import class_groups
from driftscope.inputs import Inputs
from driftscope.memory import release_free_memory
from driftscope.metrics.topk import SUMMARY_KEYS, default_k, summarise_base
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
                 batch_size: int = 16, tick: Callable[[], None] = lambda: None) -> BaseCapture:
    """One pass of the base over the inputs (and its answering pass when `accuracy`)."""
    vocab = inputs.vocab
    groups = class_groups(inputs.table)
    k = k or default_k(vocab, groups.shape[1])
    folds = OffsetEstimator(len(inputs.probes), vocab, seed)  # its sums: the base's log p, per fold
    p_sum, p_n = torch.zeros(vocab, dtype=torch.float64), 0
    parts: dict[str, list[torch.Tensor]] = defaultdict(list)
    device, size = input_device(base.model), block_rows(vocab)
    with capture(base.model) as state, base.active():  # adapters sharing the base: all off
        for batch in inputs.batches:
            forward(base.model, state, batch.to(device))
            for block in blocks(batch, size):
                logp = project_block(base.model, state, block, vocab)[0][: block.n].double().cpu()
                summary = summarise_base(logp, k, groups, block.gold)
                for key in SUMMARY_KEYS:
                    parts[key].append(summary[key].cpu())
                for key in WHERE_KEYS:
                    parts[key].append(getattr(block, key).cpu())
                folds.add(block, torch.cat([logp, logp[-1:].expand(block.size - block.n, -1)]))
                ok = summary["finite"] & (block.kind != CONTINUATION)  # token movers: next and answer positions
                p_sum += logp[ok].exp().sum(0)
                p_n += int(ok.sum())
            release_free_memory()
            tick()
            pause_if_testing("drift")
    answers = base_answers(base, inputs.probes, inputs.encoded, inputs.chat, inputs.max_length, batch_size, vocab) \
        if accuracy and any(p.answer is not None for p in inputs.probes) else None
    tick()
    manifest = expected_manifest(base.fingerprint, base.tokenizer, inputs, seed, accuracy)
    manifest.update(base_path=base.path, base_label=base.label, driftscope_version=__version__)
    items = {"answers": answers, "continuation": {str(i): list(ids) for i, ids in inputs.continuation.items()}}
    return BaseCapture(positions={key: torch.cat(v) for key, v in parts.items()}, fold_logp_sum=folds.sums,
                       fold_count=folds.counts, p_sum=p_sum, p_n=p_n, items=items, manifest=manifest)


def cached_pass(scorer: Scorer, cache: BaseCapture, inputs: Inputs, tick: Callable[[], None] = lambda: None) -> None:
    """Score one checkpoint against the cache, batch by batch, in the capture's order."""
    ck, vocab = scorer.ck, inputs.vocab
    rows, at = cache.positions, 0
    device, size = input_device(ck.model), block_rows(vocab)
    with capture(ck.model) as state, ck.active():  # an adapter sharing the base: only it on
        for batch in inputs.batches:
            forward(ck.model, state, batch.to(device))
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
    if at != cache.n_positions:
        raise CacheMismatch(f"the base cache holds {cache.n_positions} scored positions, this run {at}", RECAPTURE)
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
