"""The paired drift pass: the base and every tuned checkpoint resident, batch by
batch, exact figures. Each batch runs the base once, then each checkpoint; the
(rows, vocab) work runs in blocks of one shape, so memory stays flat in the
number of probes (README "Speed and memory")."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import Callable

from driftscope.answers import OffsetEstimator
from driftscope.capture import block_rows, blocks, capture, forward, project_block
from driftscope.drift import DriftAccumulator
from driftscope.memory import release_free_memory, rss_mb
from driftscope.models import Checkpoint
from driftscope.placement import input_device
from driftscope.result import pause_if_testing


@dataclass
class Scorer:
    """One tuned checkpoint and the reducers it is scored into."""

    ck: Checkpoint
    alignment: object  # models.VocabAlignment: its tokenizer against the base's
    acc: DriftAccumulator
    est: OffsetEstimator
    layers: object = None  # layers.LayerAccumulator, or None without layer figures


def paired_pass(base_ck: Checkpoint, scorers: list[Scorer], batches, vocab: int,
                tick: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Score every checkpoint against the base on every batch. Returns the resident
    size (MiB) after the first and the last batch: what the pass keeps."""
    device = input_device(base_ck.model)  # the embedding's device: with --device-map, not any parameter's
    base_modules = next((s.layers.modules("base") for s in scorers if s.layers is not None), None)
    resident: dict[str, float] = {}
    with ExitStack() as stack:
        base_state = stack.enter_context(capture(base_ck.model, base_modules))
        for s in scorers:  # each tuned model's changed components, run on the base's inputs (own change)
            if s.layers is not None:
                stack.enter_context(s.layers.own_hooks(base_state))
        states = [stack.enter_context(capture(s.ck.model, s.layers.modules("tuned") if s.layers is not None else None))
                  for s in scorers]
        size = block_rows(vocab)
        for batch in batches:
            batch.to(device)
            # Each forward pass's temporaries go back to the OS before the next step
            # allocates its own: the peak is then one step's, not two steps' stacked.
            with base_ck.active():  # adapters sharing the base: all off
                forward(base_ck.model, base_state, batch)
            release_free_memory()
            tick()
            for s, st in zip(scorers, states):
                layered = s.layers is not None and not batch.is_continuation  # layer figures: next and answer positions
                with s.ck.active():  # an adapter sharing the base: only it on
                    forward(s.ck.model, st, batch)
                    if layered:  # an adapter's own change, with it on (own_change.py)
                        s.layers.own_pending()
                release_free_memory()
                if layered:  # base_state.modules was filled once by the base pass
                    s.layers.update(batch, base_state, st)
                elif s.layers is not None:
                    s.layers.skip()
                tick()
            for block in blocks(batch, size):
                with base_ck.active():
                    base_out = project_block(base_ck.model, base_state, block, vocab)
                for s, st in zip(scorers, states):
                    with s.ck.active():
                        tuned_out = project_block(s.ck.model, st, block, vocab)
                    s.acc.update(block, base_out, tuned_out)
                    s.est.update(block, base_out[0], tuned_out[0])
            release_free_memory()  # what the batch freed (see driftscope.memory)
            resident.setdefault("drift_first_batch", rss_mb())
            resident["drift_last_batch"] = rss_mb()
            pause_if_testing("drift")
    return resident
