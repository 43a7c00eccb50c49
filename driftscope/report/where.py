"""Where the drift lives -> plotly figures: per layer, per component, per weight
tensor. Pure: no I/O, no HTML. Columns are those of the layers, components and
weights tables (README "A run on disk"); each trace carries `meta` naming what
it plots, as in figures.py.
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from driftscope.report.figures import (BASE_COLOR, PALETTE, chart_text, checkpoint_groups, colors, has_columns,
                                        layout, value)

# (panel title, column, band column): what a reader reasons with; no counts.
LAYER_PANELS = (
    ("relative L2 change of the residual stream (band: 95% interval)", "rel_l2", "rel_l2_se"),
    ("cosine similarity of the residual stream", "cosine", None),
    ("linear CKA across probes", "cka", None),
    ("logit-lens KL(base ‖ tuned), nats", "lens_kl", None),
)
LENS_MASS = ("logit-lens numeric-token mass (dashed: base)", "lens_numeric_base", "lens_numeric_tuned")
COMPONENT_Z = "logit_change_rms"  # logit units: comparable across components and checkpoints (the headline's choice too)
OWN_Z = "own_logit_change_rms"  # the same, of the component's own weights only (driftscope.own_change)
MODULE_ORDER = ("q", "k", "v", "o", "qkv", "gate", "up", "gate_up", "down", "embed", "head", "norm", "other")


def _series(df: pl.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(layer, value) where the value is finite: the lens is null at the layers it skips."""
    d = df.select(pl.col("layer").cast(pl.Int64), pl.col(column).cast(pl.Float64)).drop_nulls().filter(pl.col(column).is_not_nan()).sort("layer")
    return d["layer"].to_numpy(), d[column].to_numpy()


def _informative(y: np.ndarray) -> bool:
    return y.size > 0 and bool(np.any(y != 0))


def _lens_mass_traces(groups, color) -> list[go.Scatter]:
    """The numeric lens mass of the base (once: it is the same model for every checkpoint) and of each tuned model."""
    _, base_col, tuned_col = LENS_MASS
    traces = []
    x, y = _series(groups[0][1], base_col) if base_col in groups[0][1].columns else (np.array([]), np.array([]))
    if _informative(y):
        traces.append(go.Scatter(x=x, y=y, mode="lines+markers", name="base", legendgroup="base",
                                 line=dict(color=BASE_COLOR, dash="dash"), meta={"column": base_col, "checkpoint": groups[0][0]}))
    for lb, df in groups:
        if tuned_col in df.columns:
            x, y = _series(df, tuned_col)
            if _informative(y):
                traces.append(go.Scatter(x=x, y=y, mode="lines+markers", name=chart_text(lb), legendgroup=chart_text(lb), showlegend=False,
                                         line=dict(color=color.get(lb)), meta={"column": tuned_col, "checkpoint": lb}))
    return traces


def _band(x, y, se, color: str, lb: str) -> go.Scatter:
    """A closed polygon around y ± 1.96 se (the mean's 95% interval)."""
    lo, hi = y - 1.96 * se, y + 1.96 * se
    return go.Scatter(x=np.concatenate([x, x[::-1]]), y=np.concatenate([hi, lo[::-1]]), fill="toself", mode="lines",
                      line=dict(width=0), fillcolor=color, opacity=0.2, hoverinfo="skip", showlegend=False,
                      legendgroup=chart_text(lb), meta={"band": "rel_l2 ± 1.96 rel_l2_se", "checkpoint": lb})


def layer_lines(layers: pl.DataFrame | None, labels: list[str]) -> go.Figure | None:
    """One small chart per figure of LAYER_PANELS and the numeric lens mass, x = layer, one line per checkpoint."""
    if not has_columns(layers, "checkpoint", "layer"):
        return None
    groups = checkpoint_groups(layers, labels)
    color = colors(labels)
    panels: list[tuple[str, list[go.Scatter]]] = []
    for title, column, band in LAYER_PANELS:
        if column not in layers.columns:
            continue
        traces = []
        for lb, df in groups:
            x, y = _series(df, column)
            if not y.size:
                continue
            if band and band in df.columns:
                _, se = _series(df.with_columns(pl.col(band).fill_null(0.0)), band)
                if se.size == y.size:
                    traces.append(_band(x, y, se, color.get(lb, PALETTE[0]), lb))
            traces.append(go.Scatter(x=x, y=y, mode="lines+markers", name=chart_text(lb), legendgroup=chart_text(lb), showlegend=not panels,
                                     line=dict(color=color.get(lb)), meta={"column": column, "checkpoint": lb}))
        if traces:
            panels.append((title, traces))
    lens = _lens_mass_traces(groups, color) if LENS_MASS[2] in layers.columns else []
    if lens:
        panels.append((LENS_MASS[0], lens))
    if not panels:
        return None
    cols = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[p[0] for p in panels], vertical_spacing=min(0.18, 0.7 / rows),
                        horizontal_spacing=0.1)
    for i, (_, traces) in enumerate(panels):
        for tr in traces:
            fig.add_trace(tr, row=i // cols + 1, col=i % cols + 1)
    fig.update_xaxes(dtick=1 if layers["layer"].max() <= 40 else None)
    for c in range(1, cols + 1):
        fig.update_xaxes(title_text="layer", row=rows, col=c)
    return layout(fig, "Per-layer change", height=max(320, 260 * rows + 80))


def _module_order(name) -> tuple:
    """Rows of a heatmap: the usual order of a block (attention, then MLP), the rest by name."""
    name = str(name)
    return (MODULE_ORDER.index(name), "") if name in MODULE_ORDER else (len(MODULE_ORDER), name)


def _grid(df: pl.DataFrame, x_key: str, y_key: str, z_key: str) -> tuple[list, list, np.ndarray]:
    xs = df[x_key].unique(maintain_order=True).to_list()
    ys = sorted(df[y_key].unique().to_list(), key=_module_order)
    z = np.full((len(ys), len(xs)), np.nan)
    for r in df.select(x_key, y_key, z_key).iter_rows(named=True):
        v = value(r[z_key])
        if v is not None:
            z[ys.index(r[y_key]), xs.index(r[x_key])] = v
    return xs, ys, z


def _heatmaps(groups, keys: tuple[str, str, str], title: str, colorbar: str, x_title: str, shared: bool) -> go.Figure | None:
    """One heatmap panel per checkpoint. shared: one colour scale for all; else each panel its own, with its own bar."""
    x_key, y_key, z_key = keys
    groups = [(lb, df) for lb, df in groups if df.height]
    if not groups:
        return None
    n = len(groups)
    grids = [_grid(df, x_key, y_key, z_key) for _, df in groups]
    peaks = [float(np.nanmax(z)) if np.isfinite(z).any() else None for _, _, z in grids]
    titles = [chart_text(lb) if shared else f"{chart_text(lb)} (colour up to {peak:.3g})" if peak is not None else chart_text(lb)
              for (lb, _), peak in zip(groups, peaks)]
    fig = make_subplots(rows=n, cols=1, subplot_titles=titles, vertical_spacing=0.3 / n if n > 1 else 0)
    for i, ((lb, _), (xs, ys, z)) in enumerate(zip(groups, grids)):
        axis = "coloraxis" if shared or i == 0 else f"coloraxis{i + 1}"
        fig.add_trace(go.Heatmap(x=[chart_text(x) for x in xs], y=[chart_text(y) for y in ys], z=z, coloraxis=axis,
                                 meta={"column": z_key, "checkpoint": lb},
                                 hovertemplate=f"{x_title} %{{x}}<br>%{{y}}<br>{chart_text(colorbar)} %{{z:.3g}}<extra>{chart_text(lb)}</extra>"),
                      row=i + 1, col=1)
        fig.update_xaxes(type="category", title_text=x_title if i == n - 1 else None, row=i + 1, col=1)
        fig.update_yaxes(type="category", autorange="reversed", row=i + 1, col=1)
    height = max(280, (70 + 28 * max(len(ys) for _, ys, _ in grids)) * n + 110)
    fig = layout(fig, title, height=height)
    if shared:
        fig.update_layout(coloraxis=dict(colorscale="Viridis", colorbar=dict(title=chart_text(colorbar))))
        return fig
    for i, peak in enumerate(peaks):  # each panel's own range, its colour bar beside it
        domain = fig.layout[f"yaxis{'' if i == 0 else i + 1}"].domain
        fig.update_layout({f"coloraxis{'' if i == 0 else i + 1}": dict(
            colorscale="Viridis", cmin=0, cmax=peak if peak else 1,
            colorbar=dict(title=chart_text(colorbar) if i == 0 else None, y=(domain[0] + domain[1]) / 2, len=domain[1] - domain[0],
                          yanchor="middle", thickness=14))})
    return fig


def component_heatmap(components: pl.DataFrame | None, labels: list[str]) -> go.Figure | None:
    """components.logit_change_rms: how much each component's direct contribution to
    the logits changed (logit units), layer x component, one panel per checkpoint, one colour scale;
    beside it, where the table has it, own_logit_change_rms: the part its own weights make
    (the tuned component on the base's input; driftscope.own_change), on the same scale."""
    if not has_columns(components, "checkpoint", "layer", "component", COMPONENT_Z):
        return None
    groups = [(lb, df.sort("layer")) for lb, df in checkpoint_groups(components, labels)]
    title = "Change of each component's direct logit contribution (logit_change_rms, logit units; one colour scale)"
    if not has_columns(components, OWN_Z):
        return _heatmaps(groups, ("layer", "component", COMPONENT_Z), title, "logit change (RMS)", "layer", shared=True)
    return _side_by_side([(lb, df) for lb, df in groups if df.height],
                         title.replace("logit units;", f"logit units; right: {OWN_Z}, its own weights' part;"))


def _side_by_side(groups, title: str) -> go.Figure | None:
    """Per checkpoint a row of two heatmaps, inherited change and own change, one colour scale."""
    if not groups:
        return None
    n = len(groups)
    titles = [f"{chart_text(lb)}: {what}" for lb, _ in groups for what in ("all change", "own change")]
    fig = make_subplots(rows=n, cols=2, subplot_titles=titles, horizontal_spacing=0.08,
                        vertical_spacing=0.3 / n if n > 1 else 0)
    ys = []
    for i, (lb, df) in enumerate(groups):
        for j, z_key in enumerate((COMPONENT_Z, OWN_Z)):
            xs, ys, z = _grid(df, "layer", "component", z_key)
            fig.add_trace(go.Heatmap(x=[chart_text(x) for x in xs], y=[chart_text(y) for y in ys], z=z, coloraxis="coloraxis",
                                     meta={"column": z_key, "checkpoint": lb},
                                     hovertemplate=f"layer %{{x}}<br>%{{y}}<br>{z_key} %{{z:.3g}}<extra>{chart_text(lb)}</extra>"),
                          row=i + 1, col=j + 1)
            fig.update_xaxes(type="category", title_text="layer" if i == n - 1 else None, row=i + 1, col=j + 1)
            fig.update_yaxes(type="category", autorange="reversed", row=i + 1, col=j + 1)
    fig = layout(fig, title, height=max(280, (70 + 28 * len(ys)) * n + 110))
    fig.update_layout(coloraxis=dict(colorscale="Viridis", colorbar=dict(title=chart_text("logit change (RMS)"))))
    return fig


def weight_cells(weights: pl.DataFrame) -> pl.DataFrame:
    """weights -> one row per checkpoint, layer and module type: sqrt(Σ delta_norm²) / sqrt(Σ base_norm²),
    i.e. the relative change of the group's weights taken as one tensor. `where` is the layer, or
    "outside" for tensors outside the blocks (embedding, head, final norm)."""
    df = weights.with_columns(pl.col("module_type").fill_null("other"), pl.col("layer").cast(pl.Int64))
    agg = (pl.col("delta_norm").pow(2).sum().sqrt() / pl.col("base_norm").pow(2).sum().sqrt()).alias("rel_change")
    cells = df.group_by("checkpoint", "layer", "module_type", maintain_order=True).agg(agg).sort("layer", nulls_last=True)
    return cells.with_columns(pl.when(pl.col("layer").is_null()).then(pl.lit("outside"))
                              .otherwise(pl.col("layer").cast(pl.String)).alias("where"))


def weight_heatmap(weights: pl.DataFrame | None, labels: list[str]) -> go.Figure | None:
    """Relative weight change ‖ΔW‖/‖W‖ per layer and module type, one panel per checkpoint,
    each panel on its own colour scale (one large edit would otherwise darken every other checkpoint)."""
    if not has_columns(weights, "checkpoint", "layer", "module_type", "base_norm", "delta_norm"):
        return None
    groups = checkpoint_groups(weight_cells(weights), labels)
    return _heatmaps(groups, ("where", "module_type", "rel_change"),
                     "Relative weight change ‖ΔW‖/‖W‖ (colour scaled per checkpoint: compare cells within a panel)",
                     "‖ΔW‖/‖W‖", "layer", shared=False)
