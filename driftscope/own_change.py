"""Local versus inherited change: each component's OWN change.

A component's inherited change (layers.py: rel_change_hidden, logit_change_rms)
is the change of its output inside the tuned model, whose input has already
moved: an MLP whose weights never changed still shows one. Its own change is
the tuned component applied to the BASE model's input to that component,
against the base component on the same input:

    own_c = out_tuned_c(x_base) - out_base_c(x_base)

- MLP: position-wise, so the base input is gathered at the scored positions
  and only those rows go through the tuned MLP.
- attention: mixes positions, so the tuned module runs on the base module's
  whole call (hidden states and the keyword arguments it was called with:
  position embeddings, mask, ...) and its output is gathered at the scored
  positions.
- Gemma 2/3: the component includes its post-component norm (what is added to
  the residual stream), the tuned one on the tuned side.
- LM head: (W_t - W_b) applied to the base's final (normed) hidden state.

The tuned modules run inside forward pre-hooks on the base modules, during the
base pass (their `.forward` is called, so no capture hook on the tuned model
fires): at most one extra pass of the tuned model's components, and only of
the components whose weights changed. A component whose parameters and
buffers equal the base's (torch.equal) is never run: its own change is
exactly 0. An adapter loaded into the base's own modules (models.py: adapters
share one resident base) has no module of its own: the hooks record the
base's input to each module holding an adapter layer, and `run_pending` runs
it once the adapter is switched on (run.py calls it inside the checkpoint's
`active()`); a module the adapter does not touch gives the base's output bit
for bit there, so its own change is 0 too. Recorded attention inputs are the
batch's (batch, length, d_model) states of those layers, freed after the
tuned pass.

Figures, per (layer, component), as the inherited ones: own_rel_change =
||own|| / ||out_base|| over all scored positions; own_logit_change_rms =
||(W_b - mean_v W_b) own|| / sqrt(vocab) at next positions, through the BASE
head (no final norm). own_share = own_logit_change_rms / the same projection
of the final residual's change (the last block's output, h_t - h_b): the part
of the final direct logit change that this component's own weights make, in
the same units. The head's share is its own logit change against the change of
the real (final-normed, centred, before any softcap) output logits.
"Where" names the first (layer, component) in depth order, the head last,
whose own_share reaches OWN_SHARE.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from driftscope.capture import CaptureState
from driftscope.metrics import activations as A
from driftscope.metrics import heads as H

OWN_SHARE = 0.1  # a component's own change "carries" the drift from 10% of the final logit change


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Whether two modules hold the same parameters and buffers, bit for bit
    (a PEFT-wrapped module never equals a plain one: its names differ)."""
    if a is b:
        return True
    sa, sb = a.state_dict(keep_vars=True), b.state_dict(keep_vars=True)
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and torch.equal(sa[k].detach(), sb[k].detach().to(sa[k].device)) for k in sa)


def _has_adapter(module: nn.Module) -> bool:
    """Whether a PEFT adapter layer (LoRA, IA3, ...) sits inside the module."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return False
    return any(isinstance(m, BaseTunerLayer) for m in module.modules())


def _changed(base: nn.Module, tuned: nn.Module) -> bool:
    """A module of its own: its weights differ from the base's. The base's module
    itself (adapters sharing the base): an adapter layer sits in it; the adapter's
    own change is then measured with it on, and an adapter that does not touch
    the module leaves its output bit for bit the base's (own change 0)."""
    return _has_adapter(base) if base is tuned else not same_weights(base, tuned)


def _run(tuned: nn.Module, post: nn.Module | None, args, kwargs, rows, cols) -> torch.Tensor:
    """The tuned component (its post norm included) on the base's input, at the
    scored positions (rows None: the input is already the scored rows, (1, N, d))."""
    out = _first(tuned.forward(*args, **kwargs))  # .forward: no capture hook on the tuned module fires
    out = post.forward(out) if post is not None else out
    return out[0] if rows is None else out[rows, cols]


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


class OwnChange:
    """Per-(component, layer) own change of one tuned model, streamed.

    units: {component: [(base module, tuned module, tuned post norm or None, base post norm or None)]}.
    """

    def __init__(self, units: dict[str, list[tuple]], num_layers: int):
        self.L = num_layers
        self.units = units
        self.changed = {c: [_changed(b, t) or (pb is not None and _changed(pb, pt)) for b, t, pt, pb in us]
                        for c, us in units.items()}
        self.out: dict[str, torch.Tensor] = {}  # "<c>.<i>" -> tuned output on base input, scored positions
        self.pending: dict[str, tuple] = {}  # "<c>.<i>" -> a shared module's recorded base input (run_pending)
        self.zero("cpu")

    def zero(self, device) -> None:
        z = lambda: torch.zeros(self.L, dtype=torch.float64, device=device)  # noqa: E731
        self.sums = {c: {"rel": z(), "rms": z()} for c in self.units}
        self.resid_rms = torch.zeros((), dtype=torch.float64, device=device)  # final residual's direct logit change
        self.head = {"rel": 0.0, "rms": 0.0, "final_rms": 0.0}
        self.missed: set[tuple[str, int]] = set()  # changed components whose own output never came (no hooks())

    def tensors(self) -> list[torch.Tensor]:
        """Every running sum that is a tensor (distributed runs reduce them in place)."""
        return [*(t for d in self.sums.values() for t in d.values()), self.resid_rms]

    @contextlib.contextmanager
    def hooks(self, base_state: CaptureState):
        """Pre-hooks on the base modules of every changed component; they run the
        tuned module on the base's input and keep its output at the scored positions
        (a module shared with the base, an adapter's, only records its input:
        `run_pending` runs it later with the adapter on)."""
        handles = []
        try:
            for c, us in self.units.items():
                for i, (b, t, pt, _pb) in enumerate(us):
                    if self.changed[c][i]:
                        handles.append(b.register_forward_pre_hook(self._hook(f"{c}.{i}", c, t, pt, b is t, base_state),
                                                                   with_kwargs=True))
            yield self
        finally:
            self.pending.clear()
            for h in handles:
                h.remove()

    def _hook(self, name: str, comp: str, tuned: nn.Module, post: nn.Module | None, shared: bool, state: CaptureState):
        def hook(_module, args, kwargs):
            if state.rows is None:  # not the base pass (a module shared with an adapter runs in its passes too)
                return None
            rows, cols = state.rows, state.cols
            if comp == "mlp" and args and not kwargs:  # position-wise: the scored rows only
                args, kwargs, rows, cols = (args[0][rows, cols][None],), {}, None, None
            if shared:  # the same module as the base's: run it once its adapter is on
                self.pending[name] = (tuned, post, args, kwargs, rows, cols)
            else:
                self.out[name] = _run(tuned, post, args, kwargs, rows, cols)
            return None

        return hook

    @torch.inference_mode()
    def run_pending(self) -> None:
        """Run the components shared with the base (an adapter's) on the base's
        recorded inputs; call it with the tuned checkpoint active."""
        for name, (tuned, post, args, kwargs, rows, cols) in self.pending.items():
            self.out[name] = _run(tuned, post, args, kwargs, rows, cols)
        self.pending.clear()

    def update(self, base: dict[str, torch.Tensor], nxt: torch.Tensor, head_b: H.HeadStats, f64,
               stack_elements: int = 1 << 22) -> None:
        """Accumulate one batch: `base` holds the base component outputs (capture's
        "<c>.<i>") at the scored positions. The measured components go through
        stacked, (m, N, d) per side with m x N x d <= stack_elements: a few large
        products instead of a few small ones per component."""
        got = []  # (component, layer, tuned output)
        for c, us in self.units.items():
            for i in range(len(us)):
                t = self.out.pop(f"{c}.{i}", None)
                if t is None:  # unchanged weights: exactly zero; changed but not hooked: unmeasured
                    if self.changed[c][i]:
                        self.missed.add((c, i))
                    continue
                got.append((c, i, t))
        self.out.clear()
        if not got:
            return
        size = max(1, stack_elements // max(got[0][2].numel(), 1))
        for lo in range(0, len(got), size):
            part = got[lo:lo + size]
            b = torch.stack([f64(base[f"{c}.{i}"]) for c, i, _ in part])  # (m, N, d)
            t = torch.stack([f64(t) for _, _, t in part])
            rel = A.rel_l2(b, t).sum(-1)  # (m,)
            rms = None
            if len(nxt):
                delta_sq, _, _ = H.logit_change(b[:, nxt], t[:, nxt], head_b, None)
                rms = (delta_sq / head_b.vocab).sqrt().sum(-1)
            for c in self.units:
                sel = [j for j, (cc, _, _) in enumerate(part) if cc == c]
                if not sel:
                    continue
                where = torch.tensor([part[j][1] for j in sel], device=rel.device)
                pick = torch.tensor(sel, device=rel.device)
                self.sums[c]["rel"].index_add_(0, where, rel[pick])
                if rms is not None:
                    self.sums[c]["rms"].index_add_(0, where, rms[pick])

    def update_final(self, resid_b, resid_t, final_b, final_t, head_b, change: H.HeadChange | None) -> None:
        """At next positions: the final residual's direct logit change (base head),
        the real output logits' change and the head's own change."""
        v = head_b.vocab
        self.resid_rms += (H.quad(resid_t - resid_b, head_b.gram) / v).clamp_min(0).sqrt().sum()
        delta_sq, _, _ = H.logit_change(final_b, final_t, head_b, change)
        self.head["final_rms"] += float((delta_sq / v).sqrt().sum())
        if change is not None:
            own_sq, base_sq, _ = H.logit_change(final_b, final_b, head_b, change)
            self.head["rel"] += float(A.rel_l2_from_squares(own_sq, base_sq).sum())
            self.head["rms"] += float((own_sq / v).sqrt().sum())

    def columns(self, n_pos: int, n_next: int) -> dict[str, dict[str, list[float]]]:
        """{component: {own_rel_change, own_logit_change_rms, own_share}} per layer."""
        resid = float(self.resid_rms) / n_next if n_next else math.nan
        out = {}
        for c, s in self.sums.items():
            rel = (s["rel"].cpu().numpy() / n_pos) if n_pos else [math.nan] * self.L
            rms = (s["rms"].cpu().numpy() / n_next) if n_next else [math.nan] * self.L
            rel, rms = ([math.nan if (c, i) in self.missed else float(x) for i, x in enumerate(v)] for v in (rel, rms))
            share = [_ratio(x, resid) for x in rms]
            out[c] = {"own_rel_change": [float(x) for x in rel], "own_logit_change_rms": [float(x) for x in rms],
                      "own_share": share}
        return out

    def head_figures(self, n_next: int) -> dict[str, float | None]:
        k = max(n_next, 1)
        rms, final = self.head["rms"] / k, self.head["final_rms"] / k
        return {"head_own_rel_change": self.head["rel"] / k if n_next else None,
                "head_own_logit_change_rms": rms if n_next else None,
                "head_own_share": _ratio(rms, final) if n_next else None,
                "final_logit_change_rms": final if n_next else None,
                "final_residual_logit_change_rms": float(self.resid_rms) / k if n_next else None}


def _ratio(x: float, total: float) -> float:
    if x == 0 or math.isnan(x):
        return 0.0
    return x / total if total > 0 else math.inf


def own_where(components, head: dict, threshold: float = OWN_SHARE) -> dict:
    """The first (layer, component) in depth order, then the head, whose own_share
    reaches `threshold`; without one, the largest own share (said so)."""
    rows = [(int(r["layer"]), r["component"], r["own_share"]) for r in
            components.sort("layer").iter_rows(named=True)]
    order = {"attn": 0, "mlp": 1}
    rows.sort(key=lambda r: (r[0], order.get(r[1], 2)))
    rows.append((None, "head", head.get("head_own_share") or 0.0))
    finite = [r for r in rows if r[2] is not None and not math.isnan(r[2])]
    out = {"own_criterion": f"first component with own_share >= {threshold:g}", "own_threshold": threshold,
           "own_component": None, "own_layer": None, "own_share": None, "own_reaches_threshold": False}
    hit = next((r for r in finite if r[2] >= threshold), None)
    if hit is None:
        top = max(finite, key=lambda r: r[2], default=None)
        if top is None or top[2] <= 0:
            out["own_sentence"] = "no component's own weights changed its output"
            return out
        hit = top
    else:
        out["own_reaches_threshold"] = True
    layer, comp, share = hit
    out.update(own_component=comp, own_layer=layer, own_share=share if math.isfinite(share) else None)
    what = "the LM head" if comp == "head" else f"layer {layer}'s {comp}"
    amount = f"{share:.0%} of the final logit change" if math.isfinite(share) else "no final change beside it"
    lead = ("the first component changed by its own weights is" if out["own_reaches_threshold"] else
            f"no component's own change reaches {threshold:.0%} of the final logit change; the largest is")
    out["own_sentence"] = f"{lead} {what} (own change {amount})"
    return out
