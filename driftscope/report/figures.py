"""Run tables and summary -> plotly figures: distribution drift, token classes,
the checkpoints. Pure: no I/O, no HTML. (Layers, components and weights: where.py.)

Every chart names the columns it plots, from the schema in README "A run on
disk" (a table's columns, or a figure of summary.json); nothing is picked by
type or position. Each trace carries `meta` = {"column" or "figure": what it
plots, "checkpoint": whose}, so a test can check what a chart shows. Every
function returns None when its data is absent, so a section is drawn only when
the run holds what it needs. Figures carry aggregates, never raw rows, so the
page stays small whatever the number of probes.
"""

from __future__ import annotations

import html
import math
import re

import numpy as np
import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#b279a2", "#e45756", "#72b7b2", "#9d755d", "#eeca3b", "#ff9da6", "#bab0ac")
BASE_COLOR = "#8c8c8c"
KL_FLOOR = 1e-6  # KL below this is drawn at the floor: a log axis has no zero
ECDF_POINTS = 400  # an ECDF of more positions is drawn through this many quantiles


def chart_text(text) -> str:
    """Run text placed in a chart: plotly reads a small HTML subset, so escape it."""
    return html.escape(str(text), quote=False)


def colors(labels: list[str]) -> dict[str, str]:
    return {lb: PALETTE[i % len(PALETTE)] for i, lb in enumerate(labels)}


def labels_of(summary: dict) -> list[str]:
    return [str(c["label"]) for c in summary.get("checkpoints", [])]


def get(d, *keys, default=None):
    """d[k1][k2]... or default; tolerant of missing keys and non-dicts."""
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return default if d is None else d


def value(x) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def ci(figs: dict, name: str = "accuracy_change_ci") -> tuple[float | None, float | None]:
    """An interval of summary.json, stored as [lo, hi]."""
    v = get(figs, name)
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return value(v[0]), value(v[1])
    return None, None


def layout(fig: go.Figure, title: str = "", height: int = 340, **kw) -> go.Figure:
    """Title top left, legend at the right outside the plot area (never over a title)."""
    fig.update_layout(title=dict(text=title, x=0, font=dict(size=14)) if title else None, height=height,
                      margin=dict(l=60, r=20, t=70 if title else 30, b=50),
                      legend=dict(orientation="v", x=1.02, xanchor="left", y=1, yanchor="top"),
                      hovermode="closest", **kw)
    return fig


def log_ticks(lo: float, hi: float) -> tuple[list[float], list[str]]:
    """Tick values and their real labels for a log axis from lo to hi (> 0): 1-2-5
    steps per decade, every digit when the range is under a decade, so a small
    run's axis reads 0.2 0.3 0.5 rather than bare mantissas."""
    lo, hi = min(lo, hi), max(lo, hi)
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    for mantissas in ((1,), (1, 2, 5), tuple(range(1, 10))):
        vals = [m * 10.0 ** k for k in decades for m in mantissas]
        vals = [float(f"{v:.6g}") for v in vals if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9)]
        if len(vals) >= 4 or mantissas == tuple(range(1, 10)):
            break
    if len(vals) < 2:  # a range inside one digit step: its ends
        vals = sorted({float(f"{lo:.2g}"), float(f"{hi:.2g}")})
    return vals, [f"{v:g}" for v in vals]


def checkpoint_groups(df: pl.DataFrame, labels: list[str]) -> list[tuple[str, pl.DataFrame]]:
    """(label, rows) of a run table, in the run's checkpoint order."""
    present = df["checkpoint"].unique(maintain_order=True).to_list()
    order = [lb for lb in labels if lb in present] + [lb for lb in present if lb not in labels]
    return [(str(lb), df.filter(pl.col("checkpoint") == lb)) for lb in order]


def has_columns(df: pl.DataFrame | None, *columns: str) -> bool:
    return df is not None and df.height > 0 and set(columns) <= set(df.columns)


# -- distribution drift -------------------------------------------------------

def ecdf(values: np.ndarray, points: int = ECDF_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """(x, share of values <= x): every value when there are few, else `points` quantiles."""
    v = np.sort(values)
    n = v.size
    if n <= points:
        return v, np.arange(1, n + 1) / n
    share = np.linspace(1 / n, 1.0, points)
    return np.quantile(v, share, method="inverted_cdf"), share


def kl_ecdf(positions: pl.DataFrame | None, labels: list[str]) -> go.Figure | None:
    """positions.kl: the share of scored positions at or below each KL, one line per checkpoint."""
    if not has_columns(positions, "checkpoint", "kl"):
        return None
    groups = [(lb, df["kl"].drop_nulls().to_numpy().astype(float)) for lb, df in checkpoint_groups(positions, labels)]
    groups = [(lb, np.clip(v[np.isfinite(v)], KL_FLOOR, None)) for lb, v in groups]
    groups = [(lb, v) for lb, v in groups if v.size]
    if not groups:
        return None
    fig = go.Figure()
    color = colors(labels)
    for lb, v in groups:
        x, y = ecdf(v)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", line_shape="hv", name=chart_text(lb), line=dict(color=color.get(lb), width=2),
                                 meta={"column": "kl", "checkpoint": lb, "n": int(v.size)},
                                 hovertemplate="KL ≤ %{x:.3g}: %{y:.1%} of positions<extra>" + chart_text(lb) + "</extra>"))
    lo = min(float(v.min()) for _, v in groups)
    hi = max(float(v.max()) for _, v in groups)
    hi = hi if hi > lo else lo * 10
    vals, text = log_ticks(lo, hi)
    pad = 0.03 * (math.log10(hi) - math.log10(lo))
    fig.update_xaxes(type="log", title="KL(base ‖ tuned) per scored position, nats (log scale)", tickvals=vals, ticktext=text,
                     range=[math.log10(lo) - pad, math.log10(hi) + pad])
    fig.update_yaxes(title="share of positions with KL ≤ x", tickformat=".0%", range=[0, 1.02])
    return layout(fig, "Per-position KL divergence: cumulative share of positions, one line per checkpoint")


def top1_by_suite(summary: dict) -> go.Figure | None:
    """suites.<suite>.top1_agreement (± top1_agreement_se) per checkpoint."""
    fig = go.Figure()
    color = colors(labels_of(summary))
    for c in summary.get("checkpoints", []):
        suites = get(c, "figures", "suites", default={})
        names = [s for s in suites if value(get(suites[s], "top1_agreement")) is not None]
        if not names:
            continue
        fig.add_trace(go.Bar(x=[chart_text(s) for s in names], y=[value(suites[s]["top1_agreement"]) for s in names], name=chart_text(c["label"]),
                             marker_color=color.get(c["label"]), meta={"figure": "suites.*.top1_agreement", "checkpoint": c["label"]},
                             error_y=dict(type="data", array=[value(get(suites[s], "top1_agreement_se")) or 0 for s in names])))
    if not fig.data:
        return None
    fig.update_yaxes(title="top-1 agreement with base", tickformat=".0%", range=[0, 1.02])
    return layout(fig, "Top-1 agreement per suite", barmode="group")


# -- token classes ------------------------------------------------------------

def class_mass(classes: pl.DataFrame | None, labels: list[str]) -> go.Figure | None:
    """classes.base and classes.tuned per scope and class: the base, then each checkpoint.
    A class with no mass in either model anywhere is left out."""
    if not has_columns(classes, "checkpoint", "scope", "class", "base", "tuned"):
        return None
    massive = classes.group_by("class").agg((pl.col("base").abs().max() + pl.col("tuned").abs().max()).alias("m"))
    names = [n for n in classes["class"].unique(maintain_order=True).to_list()
             if (value(massive.filter(pl.col("class") == n)["m"][0]) or 0) > 0]
    if not names:
        return None
    scopes = classes["scope"].unique(maintain_order=True).to_list()
    scopes = (["all"] if "all" in scopes else []) + [s for s in scopes if s != "all"]
    groups = checkpoint_groups(classes, labels)

    def pick(df, col):
        lookup = {(r["scope"], r["class"]): r[col] for r in df.select("scope", "class", col).iter_rows(named=True)}
        return [lookup.get((s, n)) for s in scopes for n in names]

    x = [[("all suites" if s == "all" else chart_text(s)) for s in scopes for _ in names], [chart_text(n) for _ in scopes for n in names]]
    fig = go.Figure(go.Bar(x=x, y=pick(groups[0][1], "base"), name="base", marker_color=BASE_COLOR,
                           meta={"column": "base", "checkpoint": groups[0][0]}))
    color = colors(labels)
    for lb, df in groups:
        fig.add_trace(go.Bar(x=x, y=pick(df, "tuned"), name=chart_text(lb), marker_color=color.get(lb), meta={"column": "tuned", "checkpoint": lb}))
    fig.update_yaxes(title="mean probability mass", tickformat=".0%")
    return layout(fig, "Probability mass per token class: base vs tuned", height=380, barmode="group")


def kl_split(summary: dict) -> go.Figure | None:
    """kl_split.between and kl_split.within, stacked, per checkpoint and suite."""
    xs: tuple[list, list] = ([], [])
    between, within = [], []
    for c in summary.get("checkpoints", []):
        f = c.get("figures", {})
        for name, sf in [("all suites", f)] + list(get(f, "suites", default={}).items()):
            b, w = value(get(sf, "kl_split", "between")), value(get(sf, "kl_split", "within"))
            if b is None or w is None:
                continue
            xs[0].append(chart_text(c["label"]))
            xs[1].append(chart_text(name))
            between.append(b)
            within.append(w)
    if not between:
        return None
    x = [xs[0], xs[1]]
    fig = go.Figure([
        go.Bar(x=x, y=between, name="between classes (output type)", marker_color="#e45756", meta={"figure": "kl_split.between"}),
        go.Bar(x=x, y=within, name="within classes (content)", marker_color="#4c78a8", meta={"figure": "kl_split.within"}),
    ])
    fig.update_yaxes(title="mean KL, nats")
    return layout(fig, "KL split: change of output type vs change of content", height=420, barmode="stack")


# -- checkpoints ---------------------------------------------------------------

STEP = re.compile(r"(?:global[-_]?step|step|checkpoint|ckpt|iteration|iter|epoch)s?[-_=. ]?(\d+)", re.IGNORECASE)


def step_of(label: str) -> int | None:
    """The training step a checkpoint's name carries (step-100, checkpoint-200, run/ckpt_3), else None."""
    found = STEP.findall(str(label))
    return int(found[-1]) if found else None


def checkpoint_order(labels: list[str]) -> tuple[list[str], list[int] | None, str]:
    """(labels in drawing order, their steps or None, how they were ordered).

    Checkpoints are steps of one training run only when every name carries a
    distinct step number; then they are sorted by it. Otherwise they keep the
    order given and are not joined by lines.
    """
    steps = [step_of(lb) for lb in labels]
    if len(labels) >= 2 and None not in steps and len(set(steps)) == len(steps):
        pairs = sorted(zip(steps, labels))
        return [lb for _, lb in pairs], [s for s, _ in pairs], (
            f"ordered by the training step in each name ({pairs[0][0]:,} to {pairs[-1][0]:,}) and joined by lines")
    return list(labels), None, ("in the order given, as separate points: the names carry no distinct step numbers, "
                                "so they are not treated as one training run (name them step-N to join them)")


def checkpoint_trend(summary: dict) -> go.Figure | None:
    """kl.mean, kl.p99, classes.numeric.tuned and accuracy_tuned per checkpoint (2 or more);
    lines only along training steps, points otherwise; dashed: the base."""
    cks = {str(c["label"]): c.get("figures", {}) for c in summary.get("checkpoints", [])}
    if len(cks) < 2:
        return None
    order, steps, how = checkpoint_order(list(cks))
    f = [cks[lb] for lb in order]
    panels = [("KL mean (nats)", "kl.mean", [value(get(g, "kl", "mean")) for g in f], None),
              ("KL p99 (nats)", "kl.p99", [value(get(g, "kl", "p99")) for g in f], None)]
    num = [value(get(g, "classes", "numeric", "tuned")) for g in f]
    if any(v is not None for v in num):
        panels.append(("numeric-token mass", "classes.numeric.tuned", num, value(get(f[0], "classes", "numeric", "base"))))
    acc = [value(get(g, "accuracy_tuned")) for g in f]
    if any(v is not None for v in acc):
        panels.append(("accuracy", "accuracy_tuned", acc, value(get(f[0], "accuracy_base"))))
    x = steps if steps else [chart_text(lb) for lb in order]
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, subplot_titles=[p[0] for p in panels], vertical_spacing=0.08)
    for i, (name, figure, ys, base) in enumerate(panels, start=1):
        fig.add_trace(go.Scatter(x=x, y=ys, mode="lines+markers" if steps else "markers", name=name, showlegend=False,
                                 text=[chart_text(lb) for lb in order], marker=dict(size=9), line=dict(color=PALETTE[i - 1]),
                                 meta={"figure": figure, "checkpoints": order},
                                 hovertemplate="%{text}<br>" + name + " %{y:.3g}<extra></extra>"), row=i, col=1)
        if figure in ("classes.numeric.tuned", "accuracy_tuned"):
            fig.update_yaxes(tickformat=".0%", row=i, col=1)
        if base is not None:  # a trace, not a shape, so the axis range takes it in
            fig.add_trace(go.Scatter(x=[x[0], x[-1]], y=[base, base], mode="lines", name="base", showlegend=False,
                                     line=dict(color=BASE_COLOR, dash="dash"), meta={"figure": figure.replace("tuned", "base")},
                                     hovertemplate="base " + name + " %{y:.3g}<extra></extra>"), row=i, col=1)
    if steps:
        fig.update_xaxes(type="linear", tickvals=steps, ticktext=[f"{s:,}" for s in steps])
        fig.update_xaxes(title_text="training step", row=len(panels), col=1)
    else:
        fig.update_xaxes(type="category")
    fig = layout(fig, "Along the checkpoints (dashed: base)", height=170 * len(panels) + 90)
    fig.update_layout(meta={"ordering": how})
    return fig


def drift_accuracy_points(summary: dict) -> list[dict]:
    """(checkpoint, suite, KL mean, accuracy change, numeric shift) for every suite that has both."""
    pts = []
    for c in summary.get("checkpoints", []):
        for s, sf in get(c, "figures", "suites", default={}).items():
            kl, acc = value(get(sf, "kl", "mean")), value(get(sf, "accuracy_change"))
            if kl is not None and acc is not None:
                pts.append({"checkpoint": c["label"], "suite": s, "kl": kl, "acc": acc,
                            "numeric": value(get(sf, "classes", "numeric", "shift"))})
    return pts


def drift_vs_accuracy(summary: dict) -> go.Figure | None:
    """suites.<suite>.kl.mean against suites.<suite>.accuracy_change; suite names on hover only."""
    pts = drift_accuracy_points(summary)
    if len(pts) < 2:
        return None
    fig = go.Figure()
    color = colors(labels_of(summary))
    for lb in dict.fromkeys(p["checkpoint"] for p in pts):
        mine: dict[tuple, dict] = {}  # suites at the same spot (same prompts, same answers) share one point
        for p in (p for p in pts if p["checkpoint"] == lb):
            spot = mine.setdefault((f"{p['kl']:.6g}", f"{p['acc']:.6g}"), dict(p, suite=[]))
            spot["suite"].append(p["suite"])
        mine = [dict(p, suite=", ".join(map(str, p["suite"]))) for p in mine.values()]
        fig.add_trace(go.Scatter(x=[p["kl"] for p in mine], y=[p["acc"] for p in mine], hovertext=[chart_text(p["suite"]) for p in mine],
                                 mode="markers", name=chart_text(lb), marker=dict(size=11, color=color.get(lb), line=dict(width=1, color="#fff")),
                                 meta={"figure": "suites.*.kl.mean vs suites.*.accuracy_change", "checkpoint": lb},
                                 hovertemplate="%{hovertext}<br>KL %{x:.3g}<br>accuracy change %{y:+.1%}<extra>" + chart_text(lb) + "</extra>"))
    fig.update_xaxes(title="KL mean (nats)")
    fig.update_yaxes(title="accuracy change", tickformat="+.0%")
    return layout(fig, "Drift against accuracy change (one point per checkpoint and suite; hover for the suite)")
