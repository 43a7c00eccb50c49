"""The one orchestrator: compare(base, tuned..., probes) -> DriftResult."""

from __future__ import annotations

import gc
import platform
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import polars as pl
import torch

from driftscope import __version__
from driftscope.answers import OffsetEstimator, answer_items
from driftscope.capture import (block_rows, blocks, capture, encode_all, forward, make_batches, pad_id, probe_chat,
                                project_block, resolve_chat)
from driftscope.correlations import group_correlations, item_correlations
from driftscope.verdict import Thresholds, add_verdicts, sentence
from driftscope.drift import DriftAccumulator
from driftscope.layers import try_layer_accumulator
from driftscope.memory import PhasePeaks, release_free_memory, rss_mb
from driftscope.errors import DriftscopeError, ProbeError
from driftscope.fewshot import with_shots
from driftscope.models import Checkpoint, align_vocab, load_base, load_tuned
from driftscope.placement import input_device
from driftscope.probes import Probe, ProbeSuite, load_suite
from driftscope.result import SCHEMA_VERSION, DriftResult, check_run_target, pause_if_testing
from driftscope.tokenclasses import classes_for, vocab_width

DEFAULT_SUITES = ("general",)


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


def load_suites(specs) -> list[ProbeSuite]:
    suites = [load_suite(s) for s in (specs or DEFAULT_SUITES)]
    seen: dict[str, str] = {}
    for s in suites:
        if s.name in seen:
            raise ProbeError(f"two probe suites are named {s.name!r} ({seen[s.name]} and {s.path})", "rename one in its _suite header")
        seen[s.name] = s.path
    return suites


def _use_chat(tokenizer, mode: str) -> bool:
    has = bool(getattr(tokenizer, "chat_template", None))
    if mode == "on" and not has:
        raise DriftscopeError("--chat-template on: the base tokenizer has no chat template", "use --chat-template off or auto")
    if mode not in ("auto", "on", "off"):
        raise DriftscopeError(f"--chat-template {mode}: unknown mode", "use auto, on or off")
    return mode == "on" or (mode == "auto" and has)


def _labels(paths: list[Path]) -> list[str]:
    labels: list[str] = []
    for p in paths:
        label = p.name or str(p)
        while label in labels:
            label = f"{p.parent.name}/{label}" if p.parent.name and "/" not in label else f"{label}'"
        labels.append(label)
    return labels


def compare(
    base: str | Path,
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
    **settings,
) -> DriftResult:
    """Compare each tuned checkpoint with the base on the probe suites.

    Writes the run to `out/name` (with report.html and the runs index unless
    html=False) unless `out` is None. Settings are the fields
    of `Settings` (device, dtype, batch_size, max_length, chat_template, seed...).
    """
    s = Settings(**settings)
    th = thresholds or Thresholds()
    if s.batch_size < 1:
        raise DriftscopeError(f"--batch-size {s.batch_size}: must be at least 1")
    started = time.time()
    torch.manual_seed(s.seed)
    tuned_paths = [Path(t) for t in (tuned if isinstance(tuned, (list, tuple)) else [tuned])]
    if not tuned_paths:
        raise DriftscopeError("no tuned checkpoint given", "driftscope compare BASE TUNED [TUNED ...]")
    suites = load_suites(probes)
    probe_list, shots_used = with_shots(suites, s.fewshot, s.seed)  # the same exemplars for the base and every checkpoint

    # An unwritable --out or an existing run fails now, not after the whole run.
    run_dir = None if out is None else check_run_target(Path(out) / (name or default_name(Path(base), tuned_paths)), overwrite)
    clock = {"start": time.perf_counter()}
    memory = PhasePeaks()
    base_ck = load_base(base, s.device, s.dtype, s.allow_pickle, device_map=s.device_map, max_memory=s.max_memory)
    pause_if_testing("loading")
    tuned_cks: list[Checkpoint] = []
    alignments = []
    for path, label in zip(tuned_paths, _labels(tuned_paths)):
        ck = load_tuned(path, base_ck, label, s.allow_pickle)
        alignments.append(align_vocab(base_ck.tokenizer, ck.tokenizer))
        tuned_cks.append(ck)

    tok = base_ck.tokenizer
    chat = _use_chat(tok, s.chat_template)
    probe_list = resolve_chat(probe_list, tok, s.chat_template)  # a suite header's chat choice, unless on/off was explicit
    n_ctx = base_ck.n_ctx or 2048
    max_length = min(n_ctx if s.max_length is None else s.max_length, n_ctx)
    encoded = encode_all(probe_list, tok, chat, max_length)  # refuses a max_length with no room for a prompt
    batches = make_batches(encoded, s.batch_size, pad_id(tok))
    vocab = vocab_width(tok, [c.model for c in [base_ck, *tuned_cks]])  # the one width of every (.., vocab) structure
    table = classes_for(tok, classes, vocab)
    suite_of = [p.suite for p in probe_list]
    accs = [DriftAccumulator(c.label, [x.name for x in suites], suite_of, table, vocab) for c in tuned_cks]
    estimators = [OffsetEstimator(len(probe_list), vocab, s.seed) for _ in tuned_cks]
    has_answers = accuracy and any(p.answer is not None for p in probe_list)
    head_cache: dict = {}  # the base head's (d, d) grams, computed once for all checkpoints
    layer_accs, layer_notes = [], []
    for c in tuned_cks:
        la, note = (try_layer_accumulator(c.label, base_ck.model, c.model, table, vocab, seed=s.seed, head_cache=head_cache)
                    if layers else (None, None))
        layer_accs.append(la)
        if note:
            layer_notes.append(note)
    base_modules = next((la.modules("base") for la in layer_accs if la is not None), None)

    device = input_device(base_ck.model)  # the embedding's device: with --device-map, not any parameter's
    clock["loaded"] = time.perf_counter()
    release_free_memory()
    memory.mark("loaded")
    total = len(batches) * (1 + len(tuned_cks)) + (1 + 2 * len(tuned_cks)) * has_answers
    done = 0
    resident = {}  # MiB after the first and after the last batch: what the pass keeps, its transients aside
    with ExitStack() as stack:
        base_state = stack.enter_context(capture(base_ck.model, base_modules))
        for la in layer_accs:  # each tuned model's changed components, run on the base's inputs (own change)
            if la is not None:
                stack.enter_context(la.own_hooks(base_state))
        states = [stack.enter_context(capture(c.model, la.modules("tuned") if la is not None else None))
                  for c, la in zip(tuned_cks, layer_accs)]
        size = block_rows(vocab)
        for batch in batches:
            batch.to(device)
            # Each forward pass's temporaries go back to the OS before the next step
            # allocates its own: the peak is then one step's, not two steps' stacked.
            with base_ck.active():  # adapters sharing the base: all off
                forward(base_ck.model, base_state, batch)
            release_free_memory()
            done += 1
            for ck, st, la in zip(tuned_cks, states, layer_accs):
                with ck.active():  # an adapter sharing the base: only it on
                    forward(ck.model, st, batch)
                    if la is not None:  # an adapter's own change, with it on (own_change.py)
                        la.own_pending()
                release_free_memory()
                if la is not None:  # base_state.modules was filled once by the base pass
                    la.update(batch, base_state, st)
                done += 1
            # (rows, vocab) work in blocks of one shape: memory stays flat whatever the batch holds
            for block in blocks(batch, size):
                with base_ck.active():
                    base_out = project_block(base_ck.model, base_state, block, vocab)
                for ck, st, acc, est in zip(tuned_cks, states, accs, estimators):
                    with ck.active():
                        tuned_out = project_block(ck.model, st, block, vocab)
                    acc.update(block, base_out, tuned_out)
                    est.update(block, base_out[0], tuned_out[0])
            release_free_memory()  # what the batch freed (see driftscope.memory)
            resident.setdefault("drift_first_batch", rss_mb())
            resident["drift_last_batch"] = rss_mb()
            if progress:
                progress(done, total)
            pause_if_testing("drift")

    clock["drift"] = time.perf_counter()
    memory.mark("drift")
    answers = []
    if has_answers:
        def tick():
            nonlocal done
            done += 1
            if progress:
                progress(done, total)
            pause_if_testing("accuracy")

        answers = answer_items(base_ck, tuned_cks, estimators, probe_list, encoded, chat, max_length,
                               s.batch_size, vocab, tick)

    clock["accuracy"] = time.perf_counter()
    memory.mark("accuracy")
    probe_ids = [p.id for p in probe_list]
    truncated = {p.suite: 0 for p in probe_list}
    for e in encoded:
        truncated[probe_list[e.index].suite] += e.truncated > 0
    checkpoints = []
    tables: dict[str, list[pl.DataFrame]] = {"positions": [], "classes": [], "tokens": [], "layers": [], "components": []}
    for ck, acc, align, la in zip(tuned_cks, accs, alignments, layer_accs):
        figs = acc.figures()
        if la is not None:
            lt = la.tables()
            tables["layers"].append(lt["layers"])
            tables["components"].append(lt["components"])
            figs["layers"] = la.headline()
        figs["truncated_prompts"] = sum(truncated.values())
        for sname, sfig in figs["suites"].items():
            sfig["truncated_prompts"] = truncated.get(sname, 0)
        checkpoints.append({"label": ck.label, "path": ck.path, "kind": ck.kind, "vocab": align.describe(), "figures": figs})
        tables["positions"].append(acc.positions_table(probe_ids))
        tables["classes"].append(acc.classes_table())
        tables["tokens"].append(acc.tokens_table(s.top_tokens))

    correlations: dict = {}
    if weights:
        add_weights(checkpoints, Path(base_ck.path), tables, correlations)
    frames = {k: pl.concat(v, how="diagonal_relaxed") for k, v in tables.items() if v}
    frames["items"] = items_table(frames["positions"], probe_list, encoded, pl.concat(answers) if answers else None)
    for c in checkpoints:
        f = c["figures"]
        if has_answers:
            items = frames["items"].filter(pl.col("checkpoint") == c["label"])
            add_verdicts(f, items, th, s.seed)
            correlations[c["label"]] = {"items": item_correlations(items, th, s.seed),
                                        "suites": group_correlations(list(f["suites"].values()), th, s.seed)}
        else:
            reason = "no items with gold answers" if accuracy else "the accuracy pass was skipped (--no-accuracy)"
            for target in [f, *f["suites"].values()]:
                target.update({"verdict": "no-answers", "verdict_reason": reason})
                target["verdict_sentence"] = sentence(target)
    if has_answers and len(checkpoints) > 1:
        correlations["checkpoints"] = group_correlations([c["figures"] for c in checkpoints], th, s.seed)
    frames["suites"] = suites_table(checkpoints, suites)
    summary = {
        "schema_version": SCHEMA_VERSION,
        "driftscope_version": __version__,
        "models": {"base": base_ck.describe(), "tuned": [c.describe() for c in tuned_cks]},
        "suites": [
            {"name": x.name, "version": x.version, "hash": x.hash, "description": x.description,
             "n_probes": len(x), "n_with_answer": x.n_with_answer}
            for x in suites
        ],
        "settings": {**asdict(s), "device": device.type, "dtype": str(next(base_ck.model.parameters()).dtype).replace("torch.", ""),
                     "chat_template": chat, "max_length": max_length, "classes": classes or {},
                     "by_suite": {name: {**used, "chat_template": next(probe_chat(p, chat) for p in probe_list if p.suite == name)}
                                  for name, used in shots_used.items()},
                     "thresholds": asdict(th)},
        "classes": {name: int(table.membership[:, j].sum()) for j, name in enumerate(table.names)},
        "checkpoints": checkpoints,
        "correlations": correlations,
        "notes": [c.warning for c in (base_ck, *tuned_cks) if c.warning] + layer_notes,  # e.g. an adapter on another base
    }
    clock["tables"] = time.perf_counter()
    memory.mark("tables")
    phases = ("start", "loaded", "drift", "accuracy", "tables")
    timings = {f"{b}_s": round(clock[b] - clock[a], 3) for a, b in zip(phases, phases[1:])}
    timings["batches"] = len(batches)
    meta = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.time() - started, 2), "timings": timings,
            "peak_rss_mb": memory.peaks, "rss_mb": {k: v and round(v, 1) for k, v in resident.items()},
            "python": platform.python_version(), "torch": torch.__version__, "host": platform.node()}
    result = DriftResult(summary, frames, meta)
    del tuned_cks, base_ck
    gc.collect()
    if run_dir is not None:
        result.meta["name"] = run_dir.name
        # report.html is written inside the run folder before it is renamed into place, the index after
        result.to_dir(run_dir, overwrite=overwrite, report=html, index=html)
    return result


def add_weights(checkpoints: list[dict], base: Path, tables: dict, correlations: dict) -> None:
    """Weight distance beside function distance, per checkpoint (no forward pass)."""
    from driftscope.correlations import correlation
    from driftscope.errors import DriftscopeError
    from driftscope.layers import weight_vs_function
    from driftscope.weights import weight_summary, weight_table

    rows = []
    for c in checkpoints:
        try:
            wt = weight_table(base, Path(c["path"]))
        except DriftscopeError as e:  # e.g. a DoRA adapter: the run goes on without weights
            c["figures"]["weights"] = {"note": e.reason}
            continue
        tables.setdefault("weights", []).append(wt.with_columns(pl.lit(c["label"]).alias("checkpoint")))
        c["figures"]["weights"] = ws = weight_summary(wt)
        mine = [t for t in tables.get("layers", []) if t.height and t["checkpoint"][0] == c["label"]]
        comps = [t for t in tables.get("components", []) if t.height and t["checkpoint"][0] == c["label"]]
        if mine:
            ws["vs_function"] = weight_vs_function(wt, mine[0], comps[0] if comps else None)
        rows.append((ws["rel_change"], c["figures"]["kl"]["mean"]))
    if len(rows) > 1:
        correlations["weights_vs_kl"] = correlation([r[0] for r in rows], [r[1] for r in rows])


def default_name(base: Path, tuned: list[Path]) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = tuned[0].name if len(tuned) == 1 else f"{tuned[0].name}-{len(tuned)}ckpts"
    return f"{stamp}-{base.name}-vs-{target}"


def items_table(positions: pl.DataFrame, probes: list[Probe], encoded, answers: pl.DataFrame | None) -> pl.DataFrame:
    """One row per (checkpoint, probe): drift at the next position and over the
    answer, and each model's answer and correctness where the probe has one."""
    meta = pl.DataFrame({
        "probe_index": [e.index for e in encoded],
        "prompt": [probes[e.index].prompt for e in encoded],
        "answer": [probes[e.index].answer for e in encoded],
        "n_prompt_tokens": [e.n_prompt for e in encoded],
        "truncated_tokens": [e.truncated for e in encoded],
    }, schema_overrides={"answer": pl.String})
    agg = positions.group_by("checkpoint", "probe_index").agg(
        pl.col("suite").first(),
        pl.col("probe_id").first(),
        pl.len().alias("n_positions"),
        pl.col("kl").filter(pl.col("kind") == "next").first().alias("kl_next"),
        pl.col("kl").mean().alias("kl_mean"),
        pl.col("js").filter(pl.col("kind") == "next").first().alias("js_next"),
        pl.col("top1_agree").filter(pl.col("kind") == "next").first().alias("top1_agree_next"),
        (pl.col("q_numeric") - pl.col("p_numeric")).filter(pl.col("kind") == "next").first().alias("numeric_shift_next"),
        pl.col("p_gold").log().sum().alias("logp_answer"),
        pl.col("q_gold").log().sum().alias("logq_answer"),
    )
    out = agg.join(meta, on="probe_index", how="left")
    if answers is not None:
        out = out.join(answers, on=["checkpoint", "probe_index"], how="left")
    return out.sort("checkpoint", "probe_index")


def suites_table(checkpoints: list[dict], suites: list[ProbeSuite]) -> pl.DataFrame:
    meta = {x.name: x for x in suites}
    rows = []
    for c in checkpoints:
        for name, f in c["figures"]["suites"].items():
            rows.append({
                "checkpoint": c["label"], "suite": name, "version": meta[name].version, "hash": meta[name].hash,
                "n_probes": f["n_probes"], "n_positions": f["n_positions"],
                "kl_mean": f["kl"]["mean"], "kl_p99": f["kl"]["p99"], "js_mean": f["js"]["mean"],
                "top1_agreement": f["top1_agreement"],
                "numeric_base": f["classes"]["numeric"]["base"], "numeric_tuned": f["classes"]["numeric"]["tuned"],
                "numeric_shift": f["classes"]["numeric"]["shift"], "kl_between_share": f["kl_split"]["between_share"],
                **{k: f.get(k) for k in ("accuracy_base", "accuracy_tuned", "accuracy_corrected", "accuracy_change",
                                         "mcnemar_p", "recovered", "verdict", "n_choice_items", "free_accuracy_base",
                                         "free_accuracy_tuned", "free_accuracy_change", "free_mcnemar_p")},
                "accuracy_change_lo": (f.get("accuracy_change_ci") or [None, None])[0],
                "accuracy_change_hi": (f.get("accuracy_change_ci") or [None, None])[1],
            })
    return pl.DataFrame(rows)
