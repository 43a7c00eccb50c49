"""Run tables and summary -> plotly figures. Pure: no I/O, no HTML.

Every function returns None when its data is absent, so a section is drawn only
when the run holds what it needs. Figures carry aggregates, never raw rows: a
histogram is binned here, a heatmap is pivoted here, so the page stays small
whatever the number of probes.
"""

from __future__ import annotations

import html
import math

import numpy as np
import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#b279a2", "#e45756", "#72b7b2", "#9d755d", "#eeca3b", "#ff9da6", "#bab0ac")
BASE_COLOR = "#8c8c8c"
KL_FLOOR = 1e-6  # KL below this is drawn at the floor: a log axis has no zero
NUMERIC = (pl.Float32, pl.Float64, pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64)


def _t(text) -> str:
    """Run text placed in a chart: plotly reads a small HTML subset, so escape it."""
    return html.escape(str(text), quote=False)


def colors(labels: list[str]) -> dict[str, str]:
    return {lb: PALETTE[i % len(PALETTE)] for i, lb in enumerate(labels)}


def labels_of(summary: dict) -> list[str]:
    return [str(c.get("label", f"checkpoint {i + 1}")) for i, c in enumerate(summary.get("checkpoints", []))]


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
    """An interval stored as [lo, hi] or {lo, hi}."""
    v = get(figs, name)
    if isinstance(v, dict):
        return value(v.get("lo")), value(v.get("hi"))
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return value(v[0]), value(v[1])
    return None, None


def _layout(fig: go.Figure, title: str = "", height: int = 340, **kw) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0, font=dict(size=14)) if title else None, height=height,
                      margin=dict(l=60, r=20, t=60 if title else 30, b=50),
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1),
                      hovermode="closest", **kw)
    return fig


def _numeric_cols(df: pl.DataFrame, skip: tuple[str, ...]) -> list[str]:
    return [c for c, t in df.schema.items() if c not in skip and t in NUMERIC and df[c].drop_nulls().len() > 0]


def _checkpoint_groups(df: pl.DataFrame, labels: list[str]) -> list[tuple[str, pl.DataFrame]]:
    """(label, rows) in the run's checkpoint order; a table without a checkpoint column is one group."""
    if "checkpoint" not in df.columns:  # only one run-wide label is safe to claim
        return [(labels[0] if len(labels) == 1 else "tuned", df)]
    present = df["checkpoint"].unique(maintain_order=True).to_list()
    order = [lb for lb in labels if lb in present] + [lb for lb in present if lb not in labels]
    return [(str(lb), df.filter(pl.col("checkpoint") == lb)) for lb in order]


# -- distribution drift -------------------------------------------------------

def kl_histogram(positions: pl.DataFrame | None, labels: list[str], bins: int = 48) -> go.Figure | None:
    """Share of scored positions per log-spaced KL bin, one step line per checkpoint."""
    if positions is None or "kl" not in positions.columns or positions.height == 0:
        return None
    groups = [(lb, df["kl"].drop_nulls().to_numpy().astype(float)) for lb, df in _checkpoint_groups(positions, labels)]
    groups = [(lb, np.clip(v[np.isfinite(v)], KL_FLOOR, None)) for lb, v in groups]
    groups = [(lb, v) for lb, v in groups if v.size]
    if not groups:
        return None
    lo = math.log10(min(v.min() for _, v in groups))
    hi = math.log10(max(v.max() for _, v in groups))
    edges = np.logspace(lo, hi if hi > lo else lo + 1, bins + 1)
    fig = go.Figure()
    color = colors(labels)
    for lb, v in groups:
        counts, _ = np.histogram(v, edges)
        share = counts / v.size
        fig.add_trace(go.Scatter(x=edges, y=np.append(share, share[-1]), mode="lines", line_shape="hv", name=_t(lb),
                                 fill="tozeroy", opacity=0.6, line=dict(color=color.get(lb)),
                                 hovertemplate="KL from %{x:.3g}<br>%{y:.1%} of positions<extra>" + _t(lb) + "</extra>"))
    fig.update_xaxes(type="log", title="KL(base ‖ tuned) per scored position, nats (log scale)")
    fig.update_yaxes(title="share of positions", tickformat=".0%")
    return _layout(fig, "Per-position KL divergence")


def top1_by_suite(summary: dict) -> go.Figure | None:
    fig = go.Figure()
    color = colors(labels_of(summary))
    for c in summary.get("checkpoints", []):
        suites = get(c, "figures", "suites", default={})
        names = [s for s in suites if value(get(suites[s], "top1_agreement")) is not None]
        if not names:
            continue
        fig.add_trace(go.Bar(x=[_t(s) for s in names], y=[value(suites[s]["top1_agreement"]) for s in names], name=_t(c["label"]),
                             marker_color=color.get(c["label"]),
                             error_y=dict(type="data", array=[value(get(suites[s], "top1_agreement_se")) or 0 for s in names])))
    if not fig.data:
        return None
    fig.update_yaxes(title="top-1 agreement with base", tickformat=".0%", range=[0, 1.02])
    return _layout(fig, "Top-1 agreement per suite", barmode="group")


# -- token classes ------------------------------------------------------------

def class_mass(classes: pl.DataFrame | None, labels: list[str]) -> go.Figure | None:
    """Probability mass per class and scope: the base, then each checkpoint."""
    need = {"scope", "class", "base", "tuned"}
    if classes is None or not need <= set(classes.columns) or classes.height == 0:
        return None
    scopes = classes["scope"].unique(maintain_order=True).to_list()
    scopes = (["all"] if "all" in scopes else []) + [s for s in scopes if s != "all"]
    names = classes["class"].unique(maintain_order=True).to_list()
    groups = _checkpoint_groups(classes, labels)
    first = groups[0][1]

    def pick(df, col):
        lookup = {(r["scope"], r["class"]): r[col] for r in df.select("scope", "class", col).iter_rows(named=True)}
        return [lookup.get((s, n)) for s in scopes for n in names]

    x = [[("all suites" if s == "all" else _t(s)) for s in scopes for _ in names], [_t(n) for _ in scopes for n in names]]
    fig = go.Figure(go.Bar(x=x, y=pick(first, "base"), name="base", marker_color=BASE_COLOR))
    color = colors(labels)
    for lb, df in groups:
        fig.add_trace(go.Bar(x=x, y=pick(df, "tuned"), name=_t(lb), marker_color=color.get(lb)))
    fig.update_yaxes(title="mean probability mass", tickformat=".0%")
    return _layout(fig, "Probability mass per token class: base vs tuned", height=380, barmode="group")


def kl_split(summary: dict) -> go.Figure | None:
    """Between-class vs within-class KL, stacked, per checkpoint and suite."""
    xs: tuple[list, list] = ([], [])
    between, within = [], []
    for c in summary.get("checkpoints", []):
        f = c.get("figures", {})
        scopes = [("all suites", f)] + list(get(f, "suites", default={}).items())
        for name, sf in scopes:
            b, w = value(get(sf, "kl_split", "between")), value(get(sf, "kl_split", "within"))
            if b is None or w is None:
                continue
            xs[0].append(_t(c["label"]))
            xs[1].append(_t(name))
            between.append(b)
            within.append(w)
    if not between:
        return None
    x = [xs[0], xs[1]]
    fig = go.Figure([
        go.Bar(x=x, y=between, name="between classes (output type)", marker_color="#e45756"),
        go.Bar(x=x, y=within, name="within classes (content)", marker_color="#4c78a8"),
    ])
    fig.update_yaxes(title="mean KL, nats")
    return _layout(fig, "KL split: change of output type vs change of content", barmode="stack")


# -- layers, components, weights ----------------------------------------------

def layer_lines(layers: pl.DataFrame | None, labels: list[str]) -> go.Figure | None:
    """One small line chart per numeric column of the layers table, x = layer."""
    if layers is None or "layer" not in layers.columns or layers.height == 0:
        return None
    metrics = _numeric_cols(layers, ("layer", "checkpoint"))
    if not metrics:
        return None
    cols = 2 if len(metrics) > 1 else 1
    rows = math.ceil(len(metrics) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[_t(m) for m in metrics], vertical_spacing=min(0.16, 0.6 / rows))
    color = colors(labels)
    for gi, (lb, df) in enumerate(_checkpoint_groups(layers, labels)):
        df = df.sort("layer")
        for i, m in enumerate(metrics):
            fig.add_trace(go.Scatter(x=df["layer"].to_numpy(), y=df[m].cast(pl.Float64).to_numpy(), mode="lines+markers",
                                     name=_t(lb), legendgroup=_t(lb), showlegend=i == 0, line=dict(color=color.get(lb, PALETTE[gi % 10]))),
                          row=i // cols + 1, col=i % cols + 1)
    fig.update_xaxes(dtick=1 if layers["layer"].max() <= 40 else None)
    for c in range(1, cols + 1):
        fig.update_xaxes(title_text="layer", row=rows, col=c)
    return _layout(fig, "Per-layer change", height=max(320, 250 * rows + 60))


MODULE_ORDER = ("attn", "self_attn", "q", "k", "v", "o", "qkv", "mlp", "gate", "up", "gate_up", "down",
                "embed", "embedding", "head", "norm", "other")  # architectures.MODULE_TYPES, in block order


def _module_order(name) -> tuple:
    """Rows of a heatmap: the usual order of a block (attention, then MLP), the rest by name."""
    name = str(name)
    return (MODULE_ORDER.index(name), "") if name in MODULE_ORDER else (len(MODULE_ORDER), name)


def _heatmaps(groups, x_key: str, y_key: str, z_key: str, title: str, colorbar: str, x_title: str) -> go.Figure | None:
    groups = [(lb, df) for lb, df in groups if df.height]
    if not groups:
        return None
    n = len(groups)
    fig = make_subplots(rows=n, cols=1, subplot_titles=[_t(lb) for lb, _ in groups], vertical_spacing=0.3 / n if n > 1 else 0)
    for i, (lb, df) in enumerate(groups):
        xs = df[x_key].unique(maintain_order=True).to_list()
        ys = sorted(df[y_key].unique().to_list(), key=_module_order)
        z = np.full((len(ys), len(xs)), np.nan)
        for r in df.iter_rows(named=True):
            v = value(r[z_key])
            if v is not None:
                z[ys.index(r[y_key]), xs.index(r[x_key])] = v
        fig.add_trace(go.Heatmap(x=[_t(x) for x in xs], y=[_t(y) for y in ys], z=z, coloraxis="coloraxis",
                                 hovertemplate=f"{x_title} %{{x}}<br>%{{y}}<br>{_t(colorbar)} %{{z:.3g}}<extra>{_t(lb)}</extra>"),
                      row=i + 1, col=1)
        fig.update_xaxes(type="category", title_text=x_title if i == n - 1 else None, row=i + 1, col=1)
        fig.update_yaxes(type="category", autorange="reversed", row=i + 1, col=1)
    fig.update_layout(coloraxis=dict(colorscale="Viridis", colorbar=dict(title=_t(colorbar))))
    return _layout(fig, title, height=max(280, (60 + 28 * max(len(df[y_key].unique()) for _, df in groups)) * n + 100))


def component_heatmap(components: pl.DataFrame | None, labels: list[str]) -> go.Figure | None:
    """Change of each component's output, layer x component, one panel per checkpoint."""
    if components is None or not {"layer", "component"} <= set(components.columns):
        return None
    metrics = _numeric_cols(components, ("layer", "checkpoint"))
    z = "change" if "change" in metrics else (metrics[0] if metrics else None)
    if z is None:
        return None
    groups = [(lb, df.sort("layer")) for lb, df in _checkpoint_groups(components, labels)]
    return _heatmaps(groups, "layer", "component", z, f"Component output change ({z})", z, "layer")


def weight_heatmap(weights: pl.DataFrame | None, labels: list[str]) -> go.Figure | None:
    """Relative weight change per layer and module type; tensors outside blocks at the right."""
    if weights is None or not {"module_type", "rel_change"} <= set(weights.columns) or weights.height == 0:
        return None
    df = weights.with_columns(pl.col("module_type").fill_null("other"))
    has_layer = "layer" in df.columns
    df = df.with_columns((pl.col("layer").cast(pl.Int64) if has_layer else pl.lit(None, pl.Int64)).alias("_layer"))
    if {"delta_norm", "base_norm"} <= set(df.columns):
        agg = (pl.col("delta_norm").pow(2).sum().sqrt() / pl.col("base_norm").pow(2).sum().sqrt()).alias("rel_change")
    else:
        agg = pl.col("rel_change").filter(pl.col("rel_change").is_finite()).mean().alias("rel_change")
    keys = ["_layer", "module_type"] + (["checkpoint"] if "checkpoint" in df.columns else [])
    cells = df.group_by(keys, maintain_order=True).agg(agg).sort("_layer", nulls_last=True)
    cells = cells.with_columns(pl.when(pl.col("_layer").is_null()).then(pl.lit("outside"))
                               .otherwise(pl.col("_layer").cast(pl.String)).alias("where"))
    groups = _checkpoint_groups(cells, labels)
    return _heatmaps(groups, "where", "module_type", "rel_change", "Relative weight change ‖ΔW‖/‖W‖", "rel. change", "layer")


# -- checkpoints ---------------------------------------------------------------

def checkpoint_trend(summary: dict) -> go.Figure | None:
    """KL, numeric mass and accuracy along the checkpoints of the run (2 or more)."""
    cks = summary.get("checkpoints", [])
    if len(cks) < 2:
        return None
    x = [_t(lb) for lb in labels_of(summary)]
    f = [c.get("figures", {}) for c in cks]
    panels = [("KL mean (nats)", [value(get(g, "kl", "mean")) for g in f], None)]
    panels.append(("KL p99 (nats)", [value(get(g, "kl", "p99")) for g in f], None))
    num = [value(get(g, "classes", "numeric", "tuned")) for g in f]
    if any(v is not None for v in num):
        panels.append(("numeric mass", num, value(get(f[0], "classes", "numeric", "base"))))
    acc = [value(get(g, "accuracy_tuned")) for g in f]
    if any(v is not None for v in acc):
        panels.append(("accuracy", acc, value(get(f[0], "accuracy_base"))))
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, subplot_titles=[p[0] for p in panels], vertical_spacing=0.08)
    for i, (name, ys, base) in enumerate(panels, start=1):
        fig.add_trace(go.Scatter(x=x, y=ys, mode="lines+markers", name=name, showlegend=False, line=dict(color=PALETTE[i - 1])), row=i, col=1)
        if base is not None:
            fig.add_trace(go.Scatter(x=x, y=[base] * len(x), mode="lines", name="base", showlegend=False,
                                     line=dict(color=BASE_COLOR, dash="dash"), hovertemplate="base %{y:.3g}<extra></extra>"), row=i, col=1)
    fig.update_xaxes(type="category")
    return _layout(fig, "Along the checkpoints (dashed: base)", height=170 * len(panels) + 80)


def drift_accuracy_points(summary: dict) -> list[dict]:
    """(checkpoint, suite, KL mean, accuracy change) for every suite that has both."""
    pts = []
    for c in summary.get("checkpoints", []):
        for s, sf in get(c, "figures", "suites", default={}).items():
            kl, acc = value(get(sf, "kl", "mean")), value(get(sf, "accuracy_change"))
            if kl is not None and acc is not None:
                pts.append({"checkpoint": c["label"], "suite": s, "kl": kl, "acc": acc,
                            "numeric": value(get(sf, "classes", "numeric", "shift"))})
    return pts


def drift_vs_accuracy(summary: dict) -> go.Figure | None:
    pts = drift_accuracy_points(summary)
    if len(pts) < 2:
        return None
    fig = go.Figure()
    color = colors(labels_of(summary))
    for lb in dict.fromkeys(p["checkpoint"] for p in pts):
        mine = [p for p in pts if p["checkpoint"] == lb]
        fig.add_trace(go.Scatter(x=[p["kl"] for p in mine], y=[p["acc"] for p in mine], text=[_t(p["suite"]) for p in mine],
                                 mode="markers+text", textposition="top center", name=_t(lb), marker=dict(size=10, color=color.get(lb)),
                                 hovertemplate="%{text}<br>KL %{x:.3g}<br>accuracy change %{y:+.1%}<extra>" + _t(lb) + "</extra>"))
    fig.update_xaxes(title="KL mean (nats)")
    fig.update_yaxes(title="accuracy change", tickformat="+.0%")
    return _layout(fig, "Drift against accuracy change (one point per checkpoint and suite)")
