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
Peak memory is resident set size: the whole process's peak, and the peak of
the scoring pass alone (bare: the forward passes; compare: the drift pass),
each phase's peak being measured on its own (driftscope.memory; Linux).
"""

from __future__ import annotations

import json
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
    from driftscope.capture import encode, make_batches
    from driftscope.memory import PhasePeaks
    from driftscope.models import load_base, load_tuned
    from driftscope.run import _use_chat, load_suites

    memory = PhasePeaks()
    b = load_base(base, device, dtype)
    t = load_tuned(tuned, b)
    tok = b.tokenizer
    chat = _use_chat(tok, "auto")
    probe_list = [p for s in load_suites([probes]) for p in s.probes]
    max_length = b.n_ctx or 2048
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    batches = make_batches([encode(p, i, tok, chat, max_length) for i, p in enumerate(probe_list)], batch_size, pad)
    dev = next(b.model.parameters()).device
    memory.mark("loaded")
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            batch.to(dev)
            for model in (b.model, t.model):
                model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    memory.mark("pass")
    return {"seconds": seconds, "batches": len(batches), "peak_rss_mb": memory.peaks["run"],
            "pass_peak_rss_mb": memory.peaks["pass"]}


def compare_run(base: str, tuned: str, probes: str, batch_size: int, device: str, dtype: str, accuracy: bool = True) -> dict:
    import driftscope

    r = driftscope.compare(base, [tuned], [probes], out=None, batch_size=batch_size, device=device, dtype=dtype,
                           accuracy=accuracy)
    t, peaks = r.meta["timings"], r.meta["peak_rss_mb"]
    tables_mb = sum(df.estimated_size() for df in r.tables.values()) / 2**20
    return {"seconds": t["drift_s"], "accuracy_s": t["accuracy_s"], "batches": t["batches"],
            "peak_rss_mb": peaks["run"], "pass_peak_rss_mb": peaks["drift"], "phase_peaks_mb": peaks,
            "tables_mb": tables_mb, "verdict": r.figures()["verdict"]}


def _in_subprocess(mode: str, **kw) -> dict:
    cmd = [sys.executable, "-m", "driftscope.bench", mode, json.dumps(kw)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark worker failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_bench(base, tuned, sizes=(100, 1000), batch_size=16, device="auto", dtype="auto", work: Path | None = None,
              log=print, accuracy: bool = True):
    import tempfile

    work = Path(work or tempfile.mkdtemp(prefix="driftscope-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in sizes:
        probes = str(probe_file(n, work))
        kw = dict(base=str(base), tuned=str(tuned), probes=probes, batch_size=batch_size, device=device, dtype=dtype)
        b = _in_subprocess("bare", **kw)
        c = _in_subprocess("compare", **kw, accuracy=accuracy)
        row = {"probes": n, "batches": b["batches"], "bare_s": b["seconds"], "drift_s": c["seconds"],
               "ratio": c["seconds"] / b["seconds"], "accuracy_s": c["accuracy_s"],
               "bare_peak_mb": b["peak_rss_mb"], "compare_peak_mb": c["peak_rss_mb"],
               "bare_pass_peak_mb": b["pass_peak_rss_mb"], "drift_pass_peak_mb": c["pass_peak_rss_mb"],
               "compare_phase_peaks_mb": c["phase_peaks_mb"], "tables_mb": c["tables_mb"]}
        rows.append(row)
        log(row)
    return rows


if __name__ == "__main__":
    mode, kwargs = sys.argv[1], json.loads(sys.argv[2])
    result = {"bare": bare, "compare": compare_run}[mode](**kwargs)
    print(json.dumps(result))
