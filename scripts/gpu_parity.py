"""Side by side: the headline figures of several runs' summary.json, each against the first.

    python scripts/gpu_parity.py RUNS_DIR REF OTHER [OTHER ...]
    python scripts/gpu_parity.py --memory RUNS_DIR RUN [RUN ...]   # peak GPU and resident memory (meta.json)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def headline(run: Path) -> dict:
    f = json.loads((run / "summary.json").read_text())["checkpoints"][0]["figures"]
    layers = f.get("layers") or {}
    return {"kl_mean": f["kl"]["mean"], "kl_p99": f["kl"]["p99"], "top1": f["top1_agreement"],
            "numeric": f["classes"]["numeric"]["shift"] if "numeric" in f["classes"] else None,
            "verdict": f["verdict"], "enters_layer": layers.get("enters_layer"), "own": layers.get("own_component")}


def parity(root: Path, names: list[str]) -> None:
    ref = headline(root / names[0])
    print(f"{'run':8} " + " ".join(f"{k:>14}" for k in ref))
    for name in names:
        try:
            h = headline(root / name)
        except (OSError, KeyError) as e:
            print(f"{name:8} missing ({e})")
            continue
        cells = []
        for k, v in h.items():
            if isinstance(v, float) and isinstance(ref[k], float) and ref[k] and name != names[0]:
                cells.append(f"{(v - ref[k]) / abs(ref[k]):+14.2e}")
            else:
                cells.append(f"{v if not isinstance(v, float) else round(v, 6)!s:>14}")
        print(f"{name:8} " + " ".join(cells))
    print("(first row: values; others: relative difference to it, or the value where not a number)")


def memory(root: Path, names: list[str]) -> None:
    for name in names:
        try:
            meta = json.loads((root / name / "meta.json").read_text())
        except OSError as e:
            print(f"{name:8} missing ({e})")
            continue
        print(f"{name:8} cuda {meta.get('peak_cuda_mb')}  rss {meta['peak_rss_mb']}")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[0] == "--memory":
        memory(Path(args[1]), args[2:])
    else:
        parity(Path(args[0]), args[1:])
