"""Benchmark: compare's scoring pass against bare forward passes, and peak memory.

    driftscope bench BASE TUNED --sizes 100,1000

For each size N, the probes cycle one fixed pool of 100 drawn round-robin from
the built-in suites (ids made unique), so every size has the same length
distribution and a change in memory is due to the number of probes alone. In a
fresh process each:
  bare     both models' plain forward passes (full logits, no hooks) over the
           very batches compare builds;
  compare  driftscope.compare() on the same probes: its drift pass (hooks,
           metrics, reducers) is timed against `bare`; the accuracy pass
           (choice scoring and greedy decoding) is reported beside it.
  cached   the base captured once (capture_s), then the tuned model scored
           against the capture (cached_score_s, against bare_tuned_s: the
           tuned model's own forward passes), as --sequential, --base-cache
           and the training callback run them.
Peak memory is resident set size: the whole process's peak, and the peak of
the scoring pass alone (bare: the forward passes; compare: the drift pass),
each phase's peak being measured on its own (driftscope.memory; Linux).
`drift_retained_mb` is what the drift pass keeps: resident size after its last
batch less that after its first, once each batch's freed memory is handed back.
A peak is that plus one batch's temporaries, whose size the allocator makes
vary by tens of MB from run to run; `repeat` measures that spread, and the bare
passes show the same spread, so it is the allocator's, not driftscope's. With
`mmap_threshold_kb` (glibc's MALLOC_MMAP_THRESHOLD_, set for both workers)
every block of at least that size is mapped on its own and unmapped when freed:
resident size then follows live memory and the peak stops varying, at the cost
of a page fault per fresh page (slower; for measuring memory, not speed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch


POOL = 100


def probe_file(n: int, dest: Path) -> Path:
    from driftscope.probes import list_suites

    pools = [list(s.probes) for s in list_suites()]
    pool, i = [], 0
    while len(pool) < POOL and i < POOL * len(pools):
        suite = pools[i % len(pools)]
        if i // len(pools) < len(suite):
            pool.append(suite[i // len(pools)])
        i += 1
    picked = [pool[j % len(pool)] for j in range(n)]
    path = dest / f"bench{n}.jsonl"
    with path.open("w") as f:
        f.write(json.dumps({"_suite": {"name": f"bench{n}", "version": "1", "description": "benchmark mix"}}) + "\n")
        for j, p in enumerate(picked):
            row = {"id": f"{j}-{p.id}", "prompt": p.prompt}
            if p.answer is not None:
                row["answer"] = p.answer
            if p.choices:
                row["choices"] = list(p.choices)
            f.write(json.dumps(row) + "\n")
    return path


def bare(base: str, tuned: str, probes: str, batch_size: int, device: str, dtype: str) -> dict:
    from driftscope.capture import encode, make_batches, pad_id
    from driftscope.memory import PhasePeaks
    from driftscope.models import load_base, load_tuned
    from driftscope.inputs import load_suites, use_chat as _use_chat

    memory = PhasePeaks()
    b = load_base(base, device, dtype)
    t = load_tuned(tuned, b)
    tok = b.tokenizer
    chat = _use_chat(tok, "auto")
    probe_list = [p for s in load_suites([probes]) for p in s.probes]
    max_length = b.n_ctx or 2048
    batches = make_batches([encode(p, i, tok, chat, max_length) for i, p in enumerate(probe_list)], batch_size, pad_id(tok))
    dev = next(b.model.parameters()).device
    memory.mark("loaded")
    start = time.perf_counter()
    each = [0.0, 0.0]  # the base's and the tuned model's own seconds
    with torch.inference_mode():
        for batch in batches:
            batch.to(dev)
            for i, model in enumerate((b.model, t.model)):
                tick = time.perf_counter()
                model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                each[i] += time.perf_counter() - tick
    seconds = time.perf_counter() - start
    memory.mark("pass")
    return {"seconds": seconds, "base_s": each[0], "tuned_s": each[1], "batches": len(batches),
            "peak_rss_mb": memory.peaks["run"], "pass_peak_rss_mb": memory.peaks["pass"],
            "peak_cuda_mb": memory.cuda_peaks.get("run"), "pass_peak_cuda_mb": memory.cuda_peaks.get("pass")}


def cached(base: str, tuned: str, probes: str, batch_size: int, device: str, dtype: str) -> dict:
    """The two phases as --sequential, --base-cache and the training callback run them:
    the base captured (timed), then the tuned model scored against the capture (timed)."""
    from driftscope.answers import OffsetEstimator
    from driftscope.cached import cached_pass, record_base
    from driftscope.drift import DriftAccumulator
    from driftscope.inputs import load_suites, prepare
    from driftscope.models import align_vocab, load_base, load_tuned
    from driftscope.paired import Scorer

    b = load_base(base, device, dtype)
    suites = load_suites([probes])
    inputs = prepare(suites, b.tokenizer, [b.model], n_ctx=b.n_ctx or 2048, batch_size=batch_size)
    start = time.perf_counter()
    cache = record_base(b, inputs, accuracy=False, batch_size=batch_size)
    capture_s = time.perf_counter() - start
    t = load_tuned(tuned, b)
    acc = DriftAccumulator(t.label, [x.name for x in suites], inputs.suite_of, inputs.table, inputs.vocab)
    scorer = Scorer(t, align_vocab(b.tokenizer, t.tokenizer), acc, OffsetEstimator(len(inputs.probes), inputs.vocab, 0))
    start = time.perf_counter()
    cached_pass(scorer, cache, inputs)
    return {"capture_s": capture_s, "score_s": time.perf_counter() - start, "k": cache.k,
            "cache_size_ratio": cache.size_ratio(), "cache_mb": cache.nbytes / 2**20}


def compare_run(base: str, tuned: str, probes: str, batch_size: int, device: str, dtype: str, accuracy: bool = True,
                layers: bool = True) -> dict:
    import driftscope

    r = driftscope.compare(base, [tuned], [probes], out=None, batch_size=batch_size, device=device, dtype=dtype,
                           accuracy=accuracy, layers=layers)
    t, peaks, resident = r.meta["timings"], r.meta["peak_rss_mb"], r.meta["rss_mb"]
    tables_mb = sum(df.estimated_size() for df in r.tables.values()) / 2**20
    kept = (resident["drift_last_batch"] - resident["drift_first_batch"]
            if None not in (resident.get("drift_first_batch"), resident.get("drift_last_batch")) else None)
    return {"seconds": t["drift_s"], "accuracy_s": t["accuracy_s"], "load_s": t["loaded_s"], "total_s": r.meta["seconds"],
            "batches": t["batches"],
            "peak_rss_mb": peaks["run"], "pass_peak_rss_mb": peaks["drift"], "phase_peaks_mb": peaks,
            "retained_mb": kept, "tables_mb": tables_mb, "verdict": r.figures()["verdict"],
            "peak_cuda_mb": (r.meta.get("peak_cuda_mb") or {}).get("run"),
            "pass_peak_cuda_mb": (r.meta.get("peak_cuda_mb") or {}).get("drift")}


def _in_subprocess(mode: str, env: dict | None = None, **kw) -> dict:
    cmd = [sys.executable, "-m", "driftscope.bench", mode, json.dumps(kw)]
    if mode in ("handwritten", "lmeval"):  # the peers are plain scripts: they take what a user's would
        cmd = [sys.executable, "-m", f"driftscope.peers.{mode}", kw["base"], kw["tuned"], kw["probes"],
               str(kw["batch_size"]), *_peer_placement(mode, kw["device"], kw["dtype"])]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise RuntimeError(f"benchmark worker failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _peer_placement(mode: str, device: str, dtype: str) -> list[str]:
    """The hand-written loop's DEVICE and DTYPE: compare's own choice for auto (so both
    run on the same device in the same precision); lm-eval takes its defaults."""
    if mode != "handwritten":
        return []
    from driftscope.models import resolve_device, resolve_dtype

    dev = resolve_device(device)
    return [dev.type, str(resolve_dtype(dtype, dev)).removeprefix("torch.")]


def run_bench(base, tuned, sizes=(100, 1000), batch_size=16, device="auto", dtype="auto", work: Path | None = None,
              log=print, accuracy: bool = True, repeat: int = 1, mmap_threshold_kb: int | None = None,
              peers: bool = True):
    """One row per size. With repeat > 1 every size runs that many times (each pass
    in a fresh process, sizes interleaved) and a row holds the medians, plus the
    range of the drift pass's peak: the allocator makes a peak vary from run to run,
    and a change between sizes means something only beyond that range. The probe
    files go to `work`, or to a temporary folder removed at the end."""
    import tempfile

    if work is None:
        with tempfile.TemporaryDirectory(prefix="driftscope-bench-") as tmp:
            return run_bench(base, tuned, sizes, batch_size, device, dtype, Path(tmp), log, accuracy, repeat,
                             mmap_threshold_kb, peers)
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    env = {"MALLOC_MMAP_THRESHOLD_": str(mmap_threshold_kb * 1024)} if mmap_threshold_kb else None
    runs: dict[int, list[dict]] = {n: [] for n in sizes}
    for _ in range(repeat):
        for n in sizes:
            probes = str(probe_file(n, work))
            kw = dict(base=str(base), tuned=str(tuned), probes=probes, batch_size=batch_size, device=device, dtype=dtype)
            b = _in_subprocess("bare", env, **kw)
            c = _in_subprocess("compare", env, **kw, accuracy=accuracy)
            seen = {w["malloc_mmap_threshold"] for w in (b, c)}  # as each worker saw it
            if len(seen) != 1:
                raise RuntimeError(f"benchmark workers ran with different MALLOC_MMAP_THRESHOLD_: {sorted(map(str, seen))}")
            (threshold,) = seen
            one = {"probes": n, "batches": b["batches"], "bare_s": b["seconds"], "bare_base_s": b["base_s"],
                   "bare_tuned_s": b["tuned_s"], "drift_s": c["seconds"],
                   "ratio": c["seconds"] / b["seconds"], "accuracy_s": c["accuracy_s"],
                   "bare_peak_mb": b["peak_rss_mb"], "compare_peak_mb": c["peak_rss_mb"],
                   "bare_pass_peak_mb": b["pass_peak_rss_mb"], "drift_pass_peak_mb": c["pass_peak_rss_mb"],
                   "drift_retained_mb": c["retained_mb"], "compare_phase_peaks_mb": c["phase_peaks_mb"],
                   "tables_mb": c["tables_mb"], "bare_cuda_peak_mb": b["peak_cuda_mb"],
                   "compare_cuda_peak_mb": c["peak_cuda_mb"], "bare_pass_cuda_peak_mb": b["pass_peak_cuda_mb"],
                   "drift_pass_cuda_peak_mb": c["pass_peak_cuda_mb"],
                   "mmap_threshold_kb": int(threshold) // 1024 if threshold else None, **peer_figures(c, env, kw, peers)}
            runs[n].append(one)
            log(one)
    return [summarise(runs[n]) for n in sizes]


CUDA_KEYS = ("bare_cuda_peak_mb", "compare_cuda_peak_mb", "bare_pass_cuda_peak_mb", "drift_pass_cuda_peak_mb")
PEER_KEYS = ("handwritten_s", "handwritten_load_s", "compare_load_s", "drift_no_layers_s", "compare_total_s",
             "capture_s", "cached_score_s", "cache_size_ratio", "lmeval_s", "lmeval_items", "choice_run_s", "choice_items")


def peer_figures(c: dict, env: dict | None, kw: dict, peers: bool) -> dict:
    """The same probes through the hand-written full-logits loop, through compare
    without layer figures and, when lm_eval is installed, through lm-eval's
    multiple-choice accuracy on both models (beside compare's whole run); load
    times beside compare's."""
    import shutil

    if not peers:
        return dict.fromkeys(PEER_KEYS)
    h = _in_subprocess("handwritten", env, **kw)
    n = _in_subprocess("compare", env, **kw, accuracy=False, layers=False)
    k = _in_subprocess("cached", env, **kw)
    lm = _in_subprocess("lmeval", env, **kw) if shutil.which("lm_eval") else {}
    whole = choice_run(env, **kw)
    return {"choice_run_s": whole["seconds"], "choice_items": whole["items"], "handwritten_s": h["seconds"],
            "handwritten_load_s": h["load_s"], "compare_load_s": c["load_s"],
            "drift_no_layers_s": n["seconds"], "compare_total_s": c["total_s"], "capture_s": k["capture_s"],
            "cached_score_s": k["score_s"], "cache_size_ratio": k["cache_size_ratio"], "lmeval_s": lm.get("seconds"),
            "lmeval_items": lm.get("items")}


def choice_probe_file(probes: Path) -> tuple[Path, int]:
    """The probe file's items with choices (the items lm-eval's peer scores), beside it."""
    lines = probes.read_text().splitlines()
    rows = [line for line in lines[1:] if json.loads(line).get("choices")]
    path = probes.with_name(probes.stem + "-choices.jsonl")
    path.write_text("\n".join([lines[0], *rows]) + "\n")
    return path, len(rows)


def choice_run(env: dict | None, base: str, tuned: str, probes: str, batch_size: int, device: str, dtype: str) -> dict:
    """The whole default diagnosis (drift, layers, accuracy, verdict, weights, HTML report) as a
    user runs it, `driftscope compare` in its own process, timed from start to exit, on the items
    with choices, prompted as lm-eval prompts them (no chat template): lm-eval's peer run."""
    path, n = choice_probe_file(Path(probes))
    out = path.parent / "choice-run"
    cmd = [sys.executable, "-m", "driftscope", "compare", base, tuned, "--probes", str(path), "--out", str(out),
           "--overwrite", "--chat-template", "off", "--batch-size", str(batch_size), "--device", device, "--dtype", dtype]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1, 3):  # 1 or 3: a gate failed or was inconclusive, a result all the same
        raise RuntimeError(f"benchmark compare failed:\n{done.stderr[-2000:]}")
    return {"seconds": seconds, "items": n}


def summarise(runs: list[dict]) -> dict:
    """Medians of the measured figures over repeated runs of one size; every run kept under "runs"."""
    import statistics

    row = {"probes": runs[0]["probes"], "batches": runs[0]["batches"], "repeat": len(runs),
           "mmap_threshold_kb": runs[0].get("mmap_threshold_kb")}
    for key in ("bare_s", "bare_base_s", "bare_tuned_s", "drift_s", "ratio", "accuracy_s", "bare_peak_mb", "compare_peak_mb", "bare_pass_peak_mb",
                "drift_pass_peak_mb", "drift_retained_mb", "tables_mb", *CUDA_KEYS, *PEER_KEYS):
        values = [r[key] for r in runs if r[key] is not None]
        row[key] = statistics.median(values) if values else None
    peaks = [r["drift_pass_peak_mb"] for r in runs]
    row["drift_pass_peak_range_mb"] = [min(peaks), max(peaks)]
    row["runs"] = runs
    return row


if __name__ == "__main__":
    mode, kwargs = sys.argv[1], json.loads(sys.argv[2])
    result = {"bare": bare, "compare": compare_run, "cached": cached}[mode](**kwargs)
    result["malloc_mmap_threshold"] = os.environ.get("MALLOC_MMAP_THRESHOLD_")  # as the worker saw it
    print(json.dumps(result))
