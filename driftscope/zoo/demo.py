"""`driftscope demo`: build (or reuse) the demo zoo and diagnose every variant.

Offline and on CPU: the zoo is built from code, the compare reads local folders.
"""

from __future__ import annotations

import os

from driftscope.zoo.build import build_zoo, load_manifest


def run_demo(
    out_dir: str | os.PathLike = "reports",
    cache_dir: str | os.PathLike | None = None,
    console=None,
    size: str = "demo",
) -> list[dict]:
    """One row per variant: recipe, accuracy change, numeric-mass shift, KL, verdict, truth."""
    from driftscope.progress import scoring_bar
    from driftscope.run import compare

    say = console.print if console is not None else (lambda *a, **k: None)
    say("[bold]driftscope demo[/]: building or reusing the zoo (first run: about two minutes on CPU)")
    folder = build_zoo(size, cache_dir=cache_dir, log=lambda m: say(f"  {m}"))
    manifest = load_manifest(folder)
    variants = manifest["variants"]
    probes = [manifest["suites"][name] for name in manifest["heldout_suites"]]
    say(f"zoo: {folder}")
    say(f"scoring {len(variants)} variants against the base")
    with scoring_bar(console) as progress:
        result = compare(
            manifest["base"]["path"],
            [v["path"] for v in variants],
            probes,
            out=out_dir,
            name=f"zoo-{manifest['name']}",
            seed=0,
            overwrite=True,
            progress=progress,
        )
    rows = demo_rows(manifest, result.summary)
    if console is not None:
        console.print(demo_table(rows))
        console.print("  truth: ok or MISS against the truth built in; experiment: no ground truth", highlight=False)
        for r in rows:  # the recipes under the table, so its columns fit an 80-column terminal
            truth = f" (truth: {r['truth']})" if r["truth"] else " (experiment: no ground truth)"
            console.print(f"  {r['variant']}: {r['recipe']}{truth}", highlight=False)
    return rows


def demo_rows(manifest: dict, summary: dict) -> list[dict]:
    """Join compare's per-checkpoint figures with the manifest's recipes and truths (by order)."""
    rows = []
    for variant, ckpt in zip(manifest["variants"], summary["checkpoints"]):
        fig = ckpt["figures"]
        rows.append(
            {
                "variant": variant["name"],
                "recipe": variant["recipe"]["description"],
                "accuracy_change": fig.get("accuracy_change"),
                "numeric_shift": _get(fig, "classes", "numeric", "shift"),
                "kl_mean": _get(fig, "kl", "mean"),
                "recovered": fig.get("recovered"),
                "verdict": fig.get("verdict"),
                "truth": variant["truth"],
            }
        )
    return rows


def demo_table(rows: list[dict]):
    from rich import box
    from rich.table import Table

    # Narrow enough for an 80-column terminal; the recipes are listed under it.
    table = Table(title="the zoo, diagnosed", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for col in ("variant", "acc\nchange", "numeric\nshift", "KL\nmean", "recov-\nered", "verdict", "truth"):
        numeric = col not in ("variant", "verdict", "truth")
        table.add_column(col, justify="right" if numeric else "left", no_wrap=not numeric,
                         min_width=max(map(len, col.split())))
    for r in rows:
        truth = "experiment" if r["truth"] is None else ("ok" if r["verdict"] == r["truth"] else "MISS")
        table.add_row(
            r["variant"],
            _fmt(r["accuracy_change"], pct=True),
            _fmt(r["numeric_shift"], points=True),
            _fmt(r["kl_mean"]),
            _fmt(r["recovered"], pct=True),
            str(r["verdict"]),
            truth,
        )
    return table


def _get(d: dict, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _fmt(x, pct: bool = False, points: bool = False) -> str:
    if x is None or x != x:  # None or NaN (nothing to recover)
        return "-"
    if points:  # a change of probability mass, in percentage points as the report shows it
        return f"{100 * x:+.1f} pt"
    return f"{100 * x:+.1f}%" if pct else f"{x:.3f}"
