"""The orchestrator: compare(base, tuned..., probes) -> DriftResult, and
capture(base, probes) -> a base cache.

compare composes the phases, each its own module: load the models
(models.py), prepare the inputs (inputs.py), score (paired.py: every model
resident, exact, the default; cached.py: the base captured once, then one
checkpoint at a time, for --sequential and --base-cache), answer
(answers.py), assemble the figures and tables (assemble.py), write
(result.py).
"""

from __future__ import annotations

import gc
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from driftscope.answers import OffsetEstimator, answer_items, tuned_answers
from driftscope.assemble import assemble
from driftscope.basecapture import BaseCapture, CacheMismatch, check_manifest
from driftscope.cached import LAYERS_NOTE, cached_pass, expected_manifest, record_base
from driftscope import continuation, distributed
from driftscope.distributed import (answer_shard, fail_if_testing, gather_answers, merge_offsets, merge_reducers,
                                    merge_shards)
from driftscope.drift import DriftAccumulator
from driftscope.errors import DriftscopeError
from driftscope.inputs import Inputs, load_suites, prepare
from driftscope.layers import HeadSums, try_layer_accumulator
from driftscope.memory import PhasePeaks, release_free_memory
from driftscope.models import Checkpoint, align_vocab, checkpoint_kind, fingerprint, load_base, load_tokenizer, load_tuned
from driftscope.paired import Scorer, paired_pass
from driftscope.result import DriftResult, check_run_target, pause_if_testing
from driftscope.verdict import Thresholds


@dataclass(frozen=True)
class Settings:
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 16  # CPU sweet spot for small models; raise it on a GPU
    max_length: int | None = None  # None: the model's context
    chat_template: str = "auto"  # auto: use the base tokenizer's template when it has one
    fewshot: int | None = None  # exemplars before each prompt; None: each suite header's default (driftscope.fewshot)
    seed: int = 0
    top_tokens: int = 50  # gainers and losers kept in the tokens table
    allow_pickle: bool = False
    device_map: str | None = None  # accelerate's device_map ("auto"...): a model bigger than one device
    max_memory: str | None = None  # with device_map: "0=20GiB,cpu=60GiB"
    top_k: int | None = None  # base cache: top-k log-probs kept per position (None: metrics.topk.default_k)
    continue_n: int = 0  # --continue N: the base's greedy continuation of N tokens, scored apart; 0: off (README)

    def check(self) -> None:
        if self.batch_size < 1:
            raise DriftscopeError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.top_k is not None and self.top_k < 1:
            raise DriftscopeError(f"--top-k {self.top_k}: must be at least 1", "leave it unset for the measured default")
        continuation.check(self.continue_n)


class Progress:
    """Counts steps for a progress callback(done, total)."""

    def __init__(self, callback: Callable[[int, int], None] | None, total: int, phase: str | None = None):
        self.callback, self.total, self.done, self.phase = callback, total, 0, phase

    def __call__(self) -> None:
        self.done += 1
        if self.callback:
            self.callback(min(self.done, self.total), self.total)
        if self.phase:
            pause_if_testing(self.phase)


def _labels(paths: list[Path]) -> list[str]:
    labels: list[str] = []
    for p in paths:
        label = p.name or str(p)
        while label in labels:
            label = f"{p.parent.name}/{label}" if p.parent.name and "/" not in label else f"{label}'"
        labels.append(label)
    return labels


def _as_paths(tuned) -> list[Path]:
    paths = [Path(t) for t in (tuned if isinstance(tuned, (list, tuple)) else [tuned])]
    if not paths:
        raise DriftscopeError("no tuned checkpoint given", "driftscope compare BASE TUNED [TUNED ...]")
    return paths


def compare(
    base: str | Path | None,
    tuned: str | Path | list[str | Path],
    probes: list[str | Path] | None = None,
    *,
    classes: dict[str, str] | None = None,
    out: str | Path | None = "reports",
    name: str | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    thresholds: Thresholds | None = None,
    html: bool = True,
    weights: bool = True,
    layers: bool = True,
    accuracy: bool = True,
    sequential: bool = False,
    base_cache: str | Path | None = None,
    **settings,
) -> DriftResult:
    """Compare each tuned checkpoint with the base on the probe suites.

    Writes the run to `out/name` (with report.html and the runs index unless
    html=False) unless `out` is None. Settings are the fields of `Settings`
    (device, dtype, batch_size, max_length, chat_template, seed...).
    sequential: one model resident at a time (the base captured, freed, then each
    checkpoint in turn). base_cache: score against a cache `capture` wrote; `base`
    may then be None (no adapters, no weights) or the base it was captured from.
    """
    s = Settings(**settings)
    s.check()
    if sequential and base_cache is not None:
        raise DriftscopeError("--sequential with --base-cache: a base cache already scores one checkpoint at a time",
                              "drop --sequential")
    if base is None and base_cache is None:
        raise DriftscopeError("no base model given", "driftscope compare BASE TUNED [TUNED ...]")
    th = thresholds or Thresholds()
    started = time.time()
    torch.manual_seed(s.seed)
    tuned_paths = _as_paths(tuned)
    group = distributed.current()  # one process, or a rank of a torchrun job
    with group.together():
        fail_if_testing(group.rank)
        suites = load_suites(probes)
        named = Path(base) if base is not None else Path(str(base_cache)).with_suffix("")
        # An unwritable --out or an existing run fails now, not after the whole run (rank 0 writes).
        run_dir = None if out is None or not group.main else check_run_target(
            Path(out) / (name or default_name(named, tuned_paths)), overwrite)
    run = _Run(s, th, time.perf_counter(), PhasePeaks(), group)
    if base_cache is not None:
        scorers, answers, facts = run.against_cache(base, Path(base_cache), tuned_paths, suites, classes, accuracy, progress)
    elif sequential:
        scorers, answers, facts = run.sequential(Path(base), tuned_paths, suites, classes, accuracy, progress)
    else:
        scorers, answers, facts = run.paired(Path(base), tuned_paths, suites, classes, layers, accuracy, progress)
    if not group.main:  # its shard is merged into rank 0's figures: rank 0 writes the run
        return None
    summary, frames = assemble(scorers, facts["inputs"], answers, base=facts["base"], base_path=facts["base_path"],
                               settings={**asdict(s), "device": facts["device"], "dtype": facts["dtype"],
                                         "scoring": facts["scoring"]},
                               th=th, seed=s.seed, top_tokens=s.top_tokens, notes=facts["notes"], weights=weights,
                               accuracy=accuracy)
    run.clock["tables"] = time.perf_counter()
    run.memory.mark("tables")
    result = DriftResult(summary, frames, run.meta(started, facts))
    del scorers, facts
    gc.collect()
    if run_dir is not None:
        result.meta["name"] = run_dir.name
        # report.html is written inside the run folder before it is renamed into place, the index after
        result.to_dir(run_dir, overwrite=overwrite, report=html, index=html)
    return result


def capture_base(base: str | Path, probes: list[str | Path] | None = None, out: str | Path = "base-cache", *,
            classes: dict[str, str] | None = None, accuracy: bool = True, overwrite: bool = False,
            progress: Callable[[int, int], None] | None = None, **settings) -> BaseCapture:
    """Capture the base once on the suites and save it at `out` for compare(base_cache=out).
    Under torchrun each rank captures its shard and rank 0 saves the whole (others return None)."""
    s = Settings(**settings)
    s.check()
    out = Path(out)
    group = distributed.current()
    with group.together():
        fail_if_testing(group.rank)
        if out.exists() and not overwrite:  # before loading anything
            raise DriftscopeError(f"{out} already exists", "pass --overwrite, or choose another --out")
        suites = load_suites(probes)
        base_ck = load_base(base, s.device, s.dtype, s.allow_pickle, device_map=s.device_map, max_memory=s.max_memory)
        inputs = _prepare(suites, base_ck.tokenizer, base_ck.n_ctx, [base_ck], s, classes)
        _continue(base_ck, inputs, s)
    tick = Progress(progress, len(group.shard(inputs.batches)) + 1)
    cache = record_base(base_ck, inputs, k=s.top_k, seed=s.seed, accuracy=accuracy, batch_size=s.batch_size, tick=tick,
                        group=group)
    if not group.main:
        return None
    cache.save(out, overwrite=overwrite)
    return cache


def _prepare(suites, tokenizer, n_ctx: int | None, models: list[Checkpoint], s: Settings, classes,
             vocab: int | None = None) -> Inputs:
    return prepare(suites, tokenizer, [c.model for c in models], n_ctx=n_ctx or 2048, chat_template=s.chat_template,
                   fewshot=s.fewshot, seed=s.seed, max_length=s.max_length, batch_size=s.batch_size, classes=classes,
                   vocab=vocab)


def _continue(base_ck: Checkpoint, inputs: Inputs, s: Settings) -> None:
    """--continue N: the base decodes its continuations; they join the inputs (continuation.py)."""
    continuation.check(s.continue_n, inputs.max_length)
    if s.continue_n:
        tokens = continuation.decode(base_ck, inputs.encoded, s.continue_n, s.batch_size)
        continuation.attach(inputs, tokens, s.continue_n, s.batch_size, base_ck.tokenizer)


def _has_answers(inputs: Inputs, accuracy: bool) -> bool:
    return accuracy and any(p.answer is not None for p in inputs.probes)


@dataclass
class _Run:
    """One compare's settings, clock and memory marks, shared by its three ways of scoring."""

    s: Settings
    th: Thresholds
    start: float
    memory: PhasePeaks
    group: distributed.Group = distributed.Group()
    merge_s: float = 0.0  # gathering and merging the ranks' reducers

    def __post_init__(self):
        self.clock = {"start": self.start}

    def mark(self, phase: str, ran: bool = True) -> None:
        """The end of a phase; one that did not run (ran=False) took no time."""
        self.clock[phase] = time.perf_counter() if ran else self.clock[list(self.clock)[-1]]
        release_free_memory()
        self.memory.mark(phase)

    def scorer(self, ck: Checkpoint, base_tok, inputs: Inputs, layers=None) -> Scorer:
        acc = DriftAccumulator(ck.label, [x.name for x in inputs.suites], inputs.suite_of, inputs.table, inputs.vocab,
                               inputs.continue_n)
        return Scorer(ck, align_vocab(base_tok, ck.tokenizer), acc, OffsetEstimator(len(inputs.probes), inputs.vocab, self.s.seed),
                      layers)

    def facts(self, base_ck: Checkpoint | None, inputs: Inputs, scoring: str, notes: list[str], **extra) -> dict:
        model = base_ck.model if base_ck is not None and base_ck.model is not None else None
        param = next(model.parameters()) if model is not None else None
        return {"inputs": inputs, "scoring": scoring, "notes": notes,
                "base": base_ck.describe() if base_ck is not None else None,
                "base_path": Path(base_ck.path) if base_ck is not None else None,
                "device": param.device.type if param is not None else extra.pop("device", "cpu"),
                "dtype": str(param.dtype).replace("torch.", "") if param is not None else extra.pop("dtype", ""),
                "batches": len(inputs.batches), **extra}

    def paired(self, base: Path, tuned_paths, suites, classes, layers: bool, accuracy: bool, progress):
        s, group = self.s, self.group
        with group.together():
            shared: dict = {}  # the base head's grams start on a thread as soon as its weights are in
            start = (lambda model: shared.update(head_sums=HeadSums.start(model))) if layers else None
            base_ck = load_base(base, s.device, s.dtype, s.allow_pickle, device_map=s.device_map, max_memory=s.max_memory,
                                on_model=start)
            pause_if_testing("loading")
            tuned_cks = [load_tuned(p, base_ck, label, s.allow_pickle) for p, label in zip(tuned_paths, _labels(tuned_paths))]
            inputs = _prepare(suites, base_ck.tokenizer, base_ck.n_ctx, [base_ck, *tuned_cks], s, classes)
            _continue(base_ck, inputs, s)  # every rank decodes them all: the same tokens, whatever its shard
            scorers, notes = self._paired_scorers(base_ck, tuned_cks, inputs, layers, shared)
        self.mark("loaded")
        answering = _has_answers(inputs, accuracy)
        batches = group.shard(inputs.batches)  # length-sorted, dealt round-robin: the ranks finish together
        total = len(batches) * (1 + len(tuned_cks)) + (1 + 2 * len(tuned_cks)) * answering
        tick = Progress(progress, total)
        with group.together():
            resident = paired_pass(base_ck, scorers, batches, inputs.vocab, tick)
        merging = time.perf_counter()
        merge_shards(group, scorers)
        self.merge_s = time.perf_counter() - merging
        self.mark("drift")
        answers = []
        if answering:
            tick.phase = "accuracy"
            with group.together():
                answers = answer_items(base_ck, tuned_cks, [x.est for x in scorers], inputs.probes, inputs.encoded,
                                       inputs.chat, inputs.max_length, s.batch_size, inputs.vocab, tick,
                                       only=answer_shard(group, inputs))
            answers = gather_answers(group, answers)
        self.mark("accuracy", ran=answering)
        return scorers, answers, self.facts(base_ck, inputs, "paired", notes, rss_mb=resident)

    def _paired_scorers(self, base_ck: Checkpoint, tuned_cks: list[Checkpoint], inputs: Inputs, layers: bool,
                        shared: dict):
        """`shared`: the base head's grams and the base's CKA grams, held once for all checkpoints."""
        s, notes = self.s, [c.warning for c in (base_ck, *tuned_cks) if c.warning]
        scorers = []
        for ck in tuned_cks:
            la, note = (try_layer_accumulator(ck.label, base_ck.model, ck.model, inputs.table, inputs.vocab, seed=s.seed,
                                              shared=shared) if layers else (None, None))
            scorers.append(self.scorer(ck, base_ck.tokenizer, inputs, la))
            notes += [note] if note else []
        return scorers, notes

    def sequential(self, base: Path, tuned_paths, suites, classes, accuracy: bool, progress):
        """The base captured, then each checkpoint loaded, scored and freed in turn. Full checkpoints
        free the base first; adapters keep it (they share its weights: one model resident)."""
        s, group = self.s, self.group
        with group.together():
            base_ck = load_base(base, s.device, s.dtype, s.allow_pickle, device_map=s.device_map, max_memory=s.max_memory)
            pause_if_testing("loading")
            inputs = _prepare(suites, base_ck.tokenizer, base_ck.n_ctx, [base_ck], s, classes)
            _continue(base_ck, inputs, s)
        self.mark("loaded")
        answering = _has_answers(inputs, accuracy)
        tick = Progress(progress, (len(group.shard(inputs.batches)) + 2 * answering) * (1 + len(tuned_paths)))
        cache = record_base(base_ck, inputs, k=s.top_k, seed=s.seed, accuracy=answering, batch_size=s.batch_size, tick=tick,
                            group=group)
        facts = self.facts(base_ck, inputs, "sequential", [c for c in [base_ck.warning] if c])
        if not any(checkpoint_kind(p) == "adapter" for p in tuned_paths):
            base_ck.release()
        scorers, answers = self._score_each(cache, base_ck, tuned_paths, inputs, answering, tick, facts["notes"])
        return scorers, answers, facts

    def against_cache(self, base, cache_path: Path, tuned_paths, suites, classes, accuracy: bool, progress):
        with self.group.together():
            base_ck, cache, inputs, tok = self._load_against_cache(base, cache_path, tuned_paths, suites, classes, accuracy)
        self.mark("loaded")
        answering = _has_answers(inputs, accuracy)
        tick = Progress(progress, (len(self.group.shard(inputs.batches)) + 2 * answering) * len(tuned_paths))
        base_desc = {"label": cache.manifest.get("base_label", ""), "path": cache.manifest.get("base_path", ""),
                     "kind": "cache", "fingerprint": cache.manifest.get("fingerprint", ""), "cache": str(cache_path)}
        facts = self.facts(base_ck, inputs, "base-cache", [], device=self.s.device, dtype=self.s.dtype)
        if base_ck is None:
            facts["base"], facts["base_path"] = base_desc, None
        scorers, answers = self._score_each(cache, base_ck, tuned_paths, inputs, answering, tick, facts["notes"],
                                            base_tok=tok)
        return scorers, answers, facts

    def _load_against_cache(self, base, cache_path: Path, tuned_paths, suites, classes, accuracy: bool):
        """The cache, BASE when given, and the inputs, checked against each other."""
        s = self.s
        cache = BaseCapture.load(cache_path)  # unreadable, truncated or of another schema: refused here
        base_ck = None
        if base is not None:
            base_ck = load_base(base, s.device, s.dtype, s.allow_pickle, device_map=s.device_map, max_memory=s.max_memory)
            if base_ck.fingerprint != cache.manifest.get("fingerprint"):
                raise CacheMismatch(f"the base cache at {cache_path} was captured from another model than {base} "
                                    f"({cache.manifest.get('base_path', 'unknown')})", "pass the BASE it was captured from")
        elif any(checkpoint_kind(p) == "adapter" for p in tuned_paths):
            raise DriftscopeError("an adapter needs its base model, and --base-cache holds only the base's figures",
                                  "give BASE before the checkpoints: driftscope compare --base-cache CACHE BASE ADAPTER")
        pause_if_testing("loading")
        # The probes are encoded with the base's tokenizer, else the first checkpoint's (the cache checks it is the same).
        tok = base_ck.tokenizer if base_ck else load_tokenizer(tuned_paths[0])
        n_ctx = base_ck.n_ctx if base_ck else cache.manifest.get("settings", {}).get("max_length")
        inputs = _prepare(suites, tok, n_ctx, [], s, classes, vocab=cache.vocab)
        continuation.check(s.continue_n, inputs.max_length)
        if s.continue_n:  # the base's tokens, as the cache recorded them
            continuation.attach(inputs, continuation.from_cache(cache.items), s.continue_n, s.batch_size, tok)
        expect = expected_manifest(base_ck.fingerprint if base_ck else None, tok, inputs, s.seed,
                                   _has_answers(inputs, accuracy))
        check_manifest(cache.manifest, {"tokenizer": expect.pop("tokenizer"), **expect}, cache_path)
        return base_ck, cache, inputs, tok

    def _score_each(self, cache: BaseCapture, base_ck, tuned_paths, inputs: Inputs, answering: bool, tick, notes,
                    base_tok=None):
        """Load, score and free each checkpoint in turn against the cache."""
        s, group, base_tok = self.s, self.group, base_tok or base_ck.tokenizer
        scorers, answers = [], []
        notes.append(LAYERS_NOTE)
        for path, label in zip(tuned_paths, _labels(tuned_paths)):
            with group.together():
                ck = load_tuned(path, base_ck, label, s.allow_pickle, device=s.device, dtype=s.dtype)
                _check_head(ck, inputs.vocab)
                notes += [ck.warning] if ck.warning else []
                scorer = self.scorer(ck, base_tok, inputs)
                cached_pass(scorer, cache, inputs, tick, group)
            merge_offsets(group, scorer)  # the answering pass needs every rank's offset sums
            tick.phase = "accuracy" if answering else None
            if answering:
                with group.together():
                    answers.append(tuned_answers(ck, scorer.est, cache.items["answers"], base_tok, inputs.probes,
                                                 inputs.encoded, inputs.chat, inputs.max_length, s.batch_size,
                                                 inputs.vocab, tick, only=answer_shard(group, inputs)))
            tick.phase = None
            ck.release()
            ck.tokenizer = None  # its own copy (a 262k-id tokenizer holds ~50 MB): the run needs only the base's
            scorers.append(scorer)
            gc.collect()
            release_free_memory()
        merging = time.perf_counter()
        merge_reducers(group, scorers)
        self.merge_s = time.perf_counter() - merging
        answers = gather_answers(group, answers)
        self.mark("drift")
        self.mark("accuracy")
        return scorers, answers

    def meta(self, started: float, facts: dict) -> dict:
        phases = ("start", "loaded", "drift", "accuracy", "tables")
        timings = {f"{b}_s": round(self.clock[b] - self.clock[a], 3) for a, b in zip(phases, phases[1:])}
        timings["batches"] = facts["batches"]
        if self.group.world > 1:  # gathering and merging the ranks' reducers (distributed.merge_shards)
            timings["merge_s"] = round(self.merge_s, 3)
        rss = facts.get("rss_mb", {})
        return {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.time() - started, 2),
                "timings": timings, "processes": self.group.describe(), "peak_rss_mb": self.memory.peaks,
                "peak_cuda_mb": self.memory.cuda_peaks or None, "rss_mb": {k: v and round(v, 1) for k, v in rss.items()},
                "python": platform.python_version(), "torch": torch.__version__, "host": platform.node()}


def base_among(paths: list[Path], cache_path: str | Path) -> tuple[Path | None, list[Path]]:
    """With --base-cache, BASE is optional: the first path is BASE when it is the
    model the cache was captured from (same fingerprint), else every path is a checkpoint."""
    cache = BaseCapture.load(cache_path)
    first = Path(paths[0])
    if first.is_dir() and checkpoint_kind(first) == "model" and fingerprint(first) == cache.manifest.get("fingerprint"):
        return first, [Path(p) for p in paths[1:]]
    return None, [Path(p) for p in paths]


def _check_head(ck: Checkpoint, vocab: int) -> None:
    rows = ck.model.get_output_embeddings().weight.shape[0]
    if rows < vocab:
        raise CacheMismatch(f"{ck.path}: its LM head scores {rows} ids, the base cache {vocab}",
                            "score it in a paired run: driftscope compare BASE TUNED")


def default_name(base: Path, tuned: list[Path]) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = tuned[0].name if len(tuned) == 1 else f"{tuned[0].name}-{len(tuned)}ckpts"
    return f"{stamp}-{base.name}-vs-{target}"
