"""Where the drift lives: per-layer and per-component activation drift of one
tuned checkpoint against the base, streamed batch by batch.

The orchestrator hooks `modules("base")` on the base model and
`modules("tuned")` on the tuned one (names "layer.<i>", "attn.<i>", "mlp.<i>";
the base names are the same for every accumulator, so one base capture serves
all checkpoints), runs both forward passes, then calls `update`.

Definitions (p = base, q = tuned; every mean is over positions):

- layers: the residual stream is each decoder block's output. rel_l2 =
  ||h_t - h_b|| / ||h_b||, cosine, at all scored positions. cka: linear CKA
  across probes (rows = next positions), from streamed X^T X, Y^T Y, Y^T X and
  column sums in float64. For d_model > `cka_exact_max` (1024) both sides are
  first multiplied by one fixed seeded Gaussian (d, `cka_dims` = 512) matrix,
  so memory is 3 x 512^2 per layer: CKA is then APPROXIMATE (a debiased sketch
  estimate, about 0.01 off on high-rank data; see metrics.activations.CKAStats);
  `cka_dims` in the table says which (== d_model: exact). lens_*: logit lens at next positions only, each model's own
  final norm, LM head and softcap on its own layer outputs, over the shared
  ids [0, vocab): lens_kl = KL(p lens || q lens), lens_<class>_{base,tuned} =
  class mass. The last layer's lens is the model's real next-token distribution.
- components: a component's output is what it adds to the residual stream
  (self-attention after its output projection, MLP after its down projection;
  Gemma 2/3 after their post-attention / post-feed-forward norms, which sit
  before the residual add). rel_change_hidden = ||c_t - c_b|| / ||c_b||. Its
  direct logit contribution is L = (W - mean_v W) c with each model's own head
  W and NO final norm: the final norm divides by the RMS of the whole residual,
  a per-position scale set by every component together, so applying it to one
  component is not meaningful; the unnormalised projection is that
  component's linear contribution to the logits up to that shared per-position
  scale. Centring over the vocabulary drops the one direction softmax ignores.
  rel_change_logit = ||L_t - L_b|| / ||L_b||; logit_change_rms = ||L_t - L_b|| /
  sqrt(vocab) (logit units, comparable across components); <class>_logit_shift
  = mean over the class's ids of L_t - L_b (positive: the component now pushes
  that class up). Computed through (d, d) head Gram matrices, never (N, vocab);
  a tuned head through its difference from the base's (metrics/heads.py).
  rel_change_hidden is over all scored positions; the logit-space figures are at
  next positions, as the lens (one per probe: the cost stays per probe).
"""

from __future__ import annotations

import math
import threading

import numpy as np
import polars as pl
import torch
from torch import nn

from driftscope.architectures import Architecture, ArchitectureError, discover
from driftscope.capture import NEXT, Batch, CaptureState, block_rows, padded_index
from driftscope.metrics import activations as A
from driftscope.metrics import heads as H
from driftscope.own_change import OwnChange, own_where, same_weights
from driftscope.placement import OFFLOAD_HINT, offloaded
from driftscope.tokenclasses import ClassTable

COMPONENTS = ("attn", "mlp")
# Families whose block normalises a component's output before the residual add.
_POST_NORMED = {"gemma2": ("post_attention_layernorm", "post_feedforward_layernorm"),
                "gemma3": ("post_attention_layernorm", "post_feedforward_layernorm")}
ENTRY_FRACTION = 0.5  # drift "enters" at the first layer reaching this share of the final layer's
NOISE_FLOOR = 1e-6  # a final-layer rel_l2 below this is no drift at all
LENS_MAX_ROWS = 1024  # lens rows per block at most (a plain Linear head)
STACK_ELEMENTS = 1 << 22  # elements of one side's stacked (layers, positions, d) states at most
LENS_ELEMENTS = 1 << 19  # lens logits per side per vocabulary chunk (rows x ids): its float64 passes stay in cache


def component_modules(arch: Architecture) -> dict[str, tuple[nn.Module, ...]]:
    """The modules whose output is what each component adds to the residual stream."""
    post = _POST_NORMED.get(arch.family)
    if post is None:
        return {"attn": arch.attn, "mlp": arch.mlp}
    try:
        return {c: tuple(getattr(block, name) for block in arch.layers) for c, name in zip(COMPONENTS, post)}
    except AttributeError as e:
        raise ArchitectureError(f"{arch.family} block without its post-component norm ({e})") from None


def _head_weight(head: nn.Module, vocab: int) -> torch.Tensor:
    """The head's effective (vocab, d) weight: the matrix itself for a plain Linear,
    else (a PEFT-wrapped head) read off the map as head(I) - head(0)."""
    if type(head) is nn.Linear:
        return head.weight[:vocab].detach()
    d = getattr(head, "in_features", None) or head.weight.shape[1]
    p = next(head.parameters())
    eye = torch.eye(d, dtype=p.dtype, device=p.device)
    with torch.inference_mode():
        w = head(eye) - head(torch.zeros_like(eye[:1]))  # (d, V_full); a 2-D input leaves capture's head hook idle
    return w[:, :vocab].T.contiguous()


def _work_device(device: torch.device) -> torch.device:
    return torch.device("cpu") if device.type == "mps" else device  # no float64 on MPS


class HeadSums:
    """The base head's Gram (most of the layer figures' set-up: V d^2 multiply-adds, seconds
    at a 262k vocabulary on a CPU), started on a background thread as soon as the base is
    loaded, so that it overlaps loading the tuned checkpoints and encoding the probes.
    Put it in LayerAccumulator's `shared` dict as "head_sums"."""

    def __init__(self, model):
        self.weight = model.get_output_embeddings().weight.detach()
        self._sums: H.Sums | None = None  # stays None if the thread fails
        self._thread = threading.Thread(target=self._run, daemon=True, name="driftscope-head-grams")
        self._thread.start()

    @classmethod
    def start(cls, model) -> HeadSums | None:
        """Started for a plain head on a CPU or CUDA device; None where the figures are not made
        from it here (offloaded weights, a device without float64)."""
        head = model.get_output_embeddings()
        if type(head) is not nn.Linear or offloaded(model) or head.weight.device.type not in ("cpu", "cuda"):
            return None
        return cls(model)

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                self._sums = H.head_sums(self.weight)
        except Exception:  # noqa: BLE001 - `of` then returns None and the caller computes the sums itself
            pass

    def of(self, weight: torch.Tensor) -> H.Sums | None:
        """head_sums of `weight` when it is this head's first rows (the run's vocabulary width), else None."""
        w = self.weight
        if weight.data_ptr() != w.data_ptr() or weight.shape[1] != w.shape[1] or weight.shape[0] > w.shape[0]:
            return None
        self._thread.join()
        if self._sums is None:
            return None
        return self._sums.without(w[weight.shape[0]:])  # rows past the vocabulary width (a padded head) leave


class LayerAccumulator:
    """Per-layer and per-component drift of one tuned model; memory is fixed in
    the number of probes (sums of shape (layers,), (layers, C) and the CKA grams)."""

    def __init__(self, label: str, base_model, tuned_model, classes: ClassTable, vocab: int, *,
                 cka_exact_max: int = 1024, cka_dims: int = 512, seed: int = 0,
                 lens_rows: int | None = None, shared: dict | None = None, lens_layers: int = 12):
        if classes.width != vocab:  # one width for every vocabulary-sized structure (tokenclasses.vocab_width)
            raise ValueError(f"class table over {classes.width} ids against a vocabulary width of {vocab}")
        self.label = label
        self.vocab = vocab
        self.classes = classes
        self.base = discover(base_model)
        self.tuned = discover(tuned_model)
        if self.base.num_layers != self.tuned.num_layers:
            raise ArchitectureError(f"{label}: {self.tuned.num_layers} layers against the base's {self.base.num_layers}",
                                    hint="layer figures need checkpoints of the same shape")
        self.L = self.base.num_layers
        self.lens_idx = sorted({round(x) for x in np.linspace(0, self.L - 1, min(lens_layers, self.L))})
        self.comp = {"base": component_modules(self.base), "tuned": component_modules(self.tuned)}
        self.own = OwnChange(_own_units(self.base, self.tuned, self.comp), self.L)  # own_change.py
        self.membership = classes.membership.double()  # (V, C)
        # lens rows per block, two-sided (False) and one-sided (True); None: settled on the first batch (_lens)
        self.lens_rows = {False: lens_rows, True: lens_rows}
        self._lens_index: dict = {}  # chunk -> metrics.activations.class_index
        # The lens costs a head projection per layer: at most `lens_layers` evenly
        # spaced layers (first and last included), enough to see the depth at
        # which a bias appears; the residual figures cover every layer.
        # `shared`: one dict for every checkpoint compared with the same base in one run. It
        # holds the base head's grams and the base's CKA grams X^T X (the first accumulator
        # made keeps and updates them; see _zero), so neither is held once per checkpoint.
        cache = self._shared = shared if shared is not None else {}
        self._owns_base_grams = cache.setdefault("cka_owner", self) is self
        wb = _head_weight(self.base.lm_head, vocab)
        wt = _head_weight(self.tuned.lm_head, vocab)
        if wb.device.type == "mps":  # no float64 there
            wb, wt = wb.cpu(), wt.cpu()
        if wb.shape != wt.shape:
            raise ArchitectureError(f"{label}: LM head {tuple(wt.shape)} against the base's {tuple(wb.shape)}")
        self.d = wb.shape[1]
        # Comparisons first, while the base head's grams may still be on their thread (HeadSums).
        # The same final norm, head and softcap on both sides: equal states read out equal lens log-probs.
        same_head = _same_module(self.base.lm_head, self.tuned.lm_head)
        self._same_readout = (same_head and _same_module(self.base.final_norm, self.tuned.final_norm)
                              and self.base.softcap == self.tuned.softcap)
        same = same_head or wb is wt or torch.equal(wb, wt.to(wb.device))
        self.head_b = self._stats(cache, self.base.lm_head, wb)
        self.change = None if same else H.head_change(wb, self.head_b.mu, wt, self.membership.bool())
        self.cka_dims = self.d if self.d <= cka_exact_max else cka_dims
        self.proj = None if self.d <= cka_exact_max else A.random_projection(self.d, cka_dims, seed)  # (d, k)
        self.device: torch.device | None = None  # set on the first update, where the states live
        self._zero()

    def _stats(self, cache: dict, head: nn.Module, weight: torch.Tensor) -> H.HeadStats:
        key = (id(head), self.vocab, id(self.classes))
        if key not in cache:  # the base head's grams serve every checkpoint
            early = cache.get("head_sums")
            cache[key] = (head, H.head_stats(weight, self.membership.bool(), sums=early and early.of(weight)))
        return cache[key][1]

    def _zero(self) -> None:
        L, C = self.L, len(self.classes.names)
        z = lambda *s: torch.zeros(s, dtype=torch.float64, device=self.device or "cpu")  # noqa: E731
        self.n_pos = 0
        self.n_next = 0
        # running sums, on the work device (one transfer at the end, none per batch)
        self.hid = {k: z(L) for k in ("rel", "rel_sq", "cos")}  # all scored positions
        self.lens = {"kl": z(L), "base": z(L, C), "tuned": z(L, C)}  # next positions
        self.cmp = {c: {"rel_hidden": z(L), "rel_logit": z(L), "rms": z(L), "shift": z(L, C)} for c in COMPONENTS}
        if self._owns_base_grams:
            self.cka = self._shared["cka"] = [A.CKAStats(self.d, self.proj, self.device or "cpu") for _ in range(self.L)]
        else:  # reads the owner's X^T X as it stands, which the owner updates with the same base rows first
            self.cka = [A.CKAStats(self.d, self.proj, self.device or "cpu", xx_from=lambda i=i: self._shared["cka"][i].xx)
                        for i in range(self.L)]
        self.own.zero(self.device or "cpu")

    def reduce(self, sum_) -> None:
        """Every sum replaced by its sum over the ranks, in place (`sum_`: distributed.Group.sum_):
        tensors go over the wire as they are, no pickling, no copy per rank."""
        tensors = [*self.hid.values(), *self.lens.values(), *(t for d in self.cmp.values() for t in d.values()),
                   *(getattr(c, k) for c in self.cka for k in c.sums), *self.own.tensors()]
        for t in tensors:
            sum_(t)
        counts = torch.tensor([self.n_pos, self.n_next, *(c.n for c in self.cka), *self.own.head.values()],
                              dtype=torch.float64, device=tensors[0].device)
        sum_(counts)
        self.n_pos, self.n_next = int(counts[0]), int(counts[1])
        for i, c in enumerate(self.cka):
            c.n = int(counts[2 + i])
        for j, k in enumerate(self.own.head):
            self.own.head[k] = float(counts[2 + len(self.cka) + j])

    # -- hooks -------------------------------------------------------------

    def modules(self, which: str) -> dict[str, nn.Module]:
        """Hook targets for capture(): "layer.<i>" (block output), "attn.<i>",
        "mlp.<i>" (what the component adds to the residual stream)."""
        if which not in ("base", "tuned"):
            raise ValueError(f"which must be 'base' or 'tuned', not {which!r}")
        arch = self.base if which == "base" else self.tuned
        out: dict[str, nn.Module] = {f"layer.{i}": m for i, m in enumerate(arch.layers)}
        for c in COMPONENTS:
            out.update({f"{c}.{i}": m for i, m in enumerate(self.comp[which][c])})
        return out

    # -- streaming ---------------------------------------------------------

    @torch.inference_mode()
    def update(self, batch: Batch, base_state: CaptureState, tuned_state: CaptureState) -> None:
        hb, ht = base_state.modules, tuned_state.modules
        missing = [k for k in self.modules("base") if k not in hb or k not in ht]
        if missing:
            raise RuntimeError(f"layer hooks did not fire for {missing[:3]}: pass modules() to capture()")
        first = hb["layer.0"]
        if self.device is None:  # the first batch: settle where the sums live
            self.device = _work_device(first.device)
            self.head_b = self.head_b.to(self.device)
            self.change = None if self.change is None else self.change.to(self.device)
            self.proj = None if self.proj is None else self.proj.to(self.device)
            self._zero()
        dev = self.device
        if first.shape[0] == 0:
            return
        nxt = (batch.kind.cpu() == NEXT).nonzero().flatten().to(dev)
        self.n_pos += first.shape[0]
        self.n_next += len(nxt)
        f64 = lambda x: x.to(dev, torch.float64)  # noqa: E731
        # Layers go through in groups, each side's states stacked (g, N, d): a few
        # large products instead of a few small ones per layer; at most
        # STACK_ELEMENTS per stacked tensor, so memory stays flat.
        g_size = max(1, STACK_ELEMENTS // max(first.numel(), 1))
        for lo in range(0, self.L, g_size):
            idx = slice(lo, min(lo + g_size, self.L))
            stack = lambda states, p, rows=None: torch.stack(  # noqa: E731
                [states[f"{p}.{i}"].to(dev) if rows is None else states[f"{p}.{i}"].to(dev)[rows] for i in range(idx.start, idx.stop)]
            ).double()
            b, t = stack(hb, "layer"), stack(ht, "layer")  # (g, N, d)
            rel = A.rel_l2(b, t)
            self.hid["rel"][idx] += rel.sum(-1)
            self.hid["rel_sq"][idx] += rel.square().sum(-1)
            self.hid["cos"][idx] += A.cosine(b, t).sum(-1)
            if len(nxt):
                A.CKAStats.update_stack(self.cka[idx.start:idx.stop], b[:, nxt], t[:, nxt])
            del b, t
            for c in COMPONENTS:
                acc = self.cmp[c]
                acc["rel_hidden"][idx] += A.rel_l2(stack(hb, c), stack(ht, c)).sum(-1)
                if len(nxt):  # logit space: next positions, as the lens
                    delta_sq, base_sq, shift = H.logit_change(stack(hb, c, nxt), stack(ht, c, nxt), self.head_b,
                                                              self.change)
                    acc["rel_logit"][idx] += A.rel_l2_from_squares(delta_sq, base_sq).sum(-1)
                    acc["rms"][idx] += (delta_sq / self.vocab).sqrt().sum(-1)
                    acc["shift"][idx] += shift.sum(1)
        self.own.update(hb, nxt, self.head_b, f64)
        if len(nxt):
            last = f"layer.{self.L - 1}"
            self.own.update_final(f64(hb[last][nxt]), f64(ht[last][nxt]), f64(base_state.final[nxt]),
                                  f64(tuned_state.final[nxt]), self.head_b, self.change)
            self._lens(hb, ht, nxt)

    def _lens(self, hb: dict, ht: dict, nxt: torch.Tensor) -> None:
        """Logit lens of both models on the lens layers at next positions.

        The (layers x next positions) rows go through in blocks of one fixed
        shape (the last block repeats its final row up to a multiple of 8, or
        of the block size; only the real rows count), so memory stays flat: `lens_rows` rows (by default the first batch's
        rows, at most LENS_MAX_ROWS; a head that is not a plain Linear, e.g.
        PEFT-wrapped, computes whole (rows, vocab) logits: capture.block_rows
        rows then) against the vocabulary in chunks of LENS_ELEMENTS / rows ids
        (metrics.activations.lens_figures: no (rows, vocab) float64 tensor, and
        each block reads the head's weight once)."""
        k = len(nxt)
        first_dev = hb["layer.0"].device
        member = self.membership.to(self.device)
        sides = []
        for states, arch in ((hb, self.base), (ht, self.tuned)):
            at = next(arch.final_norm.parameters(), None)  # a model split over devices: go to the norm's
            to = at.device if at is not None else first_dev
            # (layers * k, d), layer-major: small, the (rows, vocab) work is per block below
            sides.append(torch.cat([states[f"layer.{i}"][nxt.to(states[f"layer.{i}"].device)].to(to) for i in self.lens_idx]))
        # A lens layer whose states are the same in both models (below the first changed
        # module), read out by the same final norm and head: one side's rows only.
        same = [self._same_readout and torch.equal(sides[0][j * k:(j + 1) * k], sides[1][j * k:(j + 1) * k].to(sides[0].device))
                for j in range(len(self.lens_idx))]
        heads = (self.base.lm_head, self.tuned.lm_head)
        caps = (self.base.softcap, self.tuned.softcap)
        arches = (self.base, self.tuned)
        for one in (False, True):
            layers = [j for j, s in enumerate(same) if s == one]
            if not layers:
                continue
            rows_of = torch.cat([torch.arange(j * k, (j + 1) * k) for j in layers])
            layer_of = torch.tensor([self.lens_idx[j] for j in layers], device=self.device).repeat_interleave(k)
            n_sides = 1 if one else 2
            total = len(layer_of)
            if self.lens_rows.get(one) is None:  # settled once, on the first batch: one block shape for the run
                linear = all(type(h) is nn.Linear for h in heads[:n_sides])
                self.lens_rows[one] = min(LENS_MAX_ROWS, -(-total // 8) * 8) if linear else block_rows(self.vocab)
            size = self.lens_rows[one]
            chunk = min(self.vocab, max(256, LENS_ELEMENTS // size // 256 * 256))
            if chunk not in self._lens_index:  # which ids of each chunk are in a class
                self._lens_index[chunk] = A.class_index(member, self.vocab, chunk)
            logits = tuple(A.head_logits(h, self.vocab, chunk) for h in heads[:n_sides])
            if self._same_readout and n_sides == 2:  # equal heads: one function, both sides' rows in one product
                logits = (logits[0], logits[0])
            for start in range(0, total, size):
                n = min(size, total - start)
                # a short last block (a short last batch) pads to the next 8 rows only, not a whole block
                index = rows_of[padded_index(start, n, size if n == size else min(size, -(-n // 8) * 8))]
                xs = tuple(arch.final_norm(h[index.to(h.device)]) for h, arch in zip(sides[:n_sides], arches))
                kl, mass_p, mass_q = A.lens_figures(xs, logits, caps[:n_sides], self.vocab, member, chunk,
                                                    self._lens_index[chunk])
                rows = layer_of[start:start + n]
                self.lens["kl"].index_add_(0, rows, kl[:n])
                self.lens["base"].index_add_(0, rows, mass_p[:n])
                self.lens["tuned"].index_add_(0, rows, mass_q[:n])

    # -- reporting ---------------------------------------------------------

    def tables(self) -> dict[str, pl.DataFrame]:
        L, names = self.L, self.classes.names
        n, k = max(self.n_pos, 1), max(self.n_next, 1)
        np_ = lambda d: {key: v.cpu().numpy() for key, v in d.items()}  # noqa: E731
        hid, lens, cmp = np_(self.hid), np_(self.lens), {c: np_(v) for c, v in self.cmp.items()}
        nan_if = lambda cond, v: v if cond else np.full_like(v, math.nan)  # noqa: E731
        rel = nan_if(self.n_pos, hid["rel"] / n)
        var = hid["rel_sq"] / n - rel**2
        se = np.sqrt(np.clip(var, 0, None) / (n - 1)) if self.n_pos > 1 else np.full(L, math.nan)
        layers = {
            "checkpoint": [self.label] * L, "layer": list(range(L)),
            "n_positions": [self.n_pos] * L, "n_next": [self.n_next] * L,
            "rel_l2": rel, "rel_l2_se": se, "cosine": nan_if(self.n_pos, hid["cos"] / n),
            "cka": [s.value() for s in self.cka], "cka_dims": [self.cka_dims] * L,
            "lens_kl": self._lensed(nan_if(self.n_next, lens["kl"] / k)),
        }
        for j, name in enumerate(names):
            layers[f"lens_{name}_base"] = self._lensed(nan_if(self.n_next, lens["base"][:, j] / k))
            layers[f"lens_{name}_tuned"] = self._lensed(nan_if(self.n_next, lens["tuned"][:, j] / k))
        rows, own = [], self.own.columns(self.n_pos, self.n_next)
        for i in range(L):
            for c in COMPONENTS:
                acc = cmp[c]
                row = {"checkpoint": self.label, "layer": i, "component": c,
                       "n_positions": self.n_pos, "n_next": self.n_next,
                       "rel_change_hidden": acc["rel_hidden"][i] / n if self.n_pos else math.nan,
                       "rel_change_logit": acc["rel_logit"][i] / k if self.n_next else math.nan,
                       "logit_change_rms": acc["rms"][i] / k if self.n_next else math.nan}
                for j, name in enumerate(names):
                    row[f"{name}_logit_shift"] = float(acc["shift"][i, j] / k) if self.n_next else math.nan
                row.update({key: v[i] for key, v in own[c].items()})
                rows.append(row)
        schema = {"layer": pl.Int32, "n_positions": pl.Int64, "n_next": pl.Int64, "cka_dims": pl.Int32}
        frame = pl.DataFrame(layers).with_columns(pl.col(c).cast(t) for c, t in schema.items())
        comps = pl.DataFrame(rows).with_columns(pl.col("layer").cast(pl.Int32), pl.col("n_positions", "n_next").cast(pl.Int64))
        return {"layers": frame, "components": comps}

    def _lensed(self, values: np.ndarray) -> np.ndarray:
        """Layers outside the lens subset read NaN, not 0."""
        out = np.full(self.L, math.nan)
        out[self.lens_idx] = values[self.lens_idx]
        return out

    def headline(self, fraction: float = ENTRY_FRACTION) -> dict:
        t = self.tables()
        out = entry_point(t["layers"], t["components"], fraction)
        head = self.own.head_figures(self.n_next)
        out.update(head, **own_where(t["components"], head))
        own = out["own_sentence"]
        out["sentence"] = f"{own[0].upper()}{own[1:]}. {out['sentence']}"  # own change first, then the inherited figures
        return out

    def own_hooks(self, base_state: CaptureState):
        """Context manager for the base pass: the own-change pre-hooks (own_change.py)."""
        return self.own.hooks(base_state)

    def skip(self) -> None:
        """A batch left out of the layer figures (continuation positions): drop what its base pass's hooks kept."""
        self.own.pending.clear()
        self.own.out.clear()

    def own_pending(self) -> None:
        """Own change of components the tuned model shares with the base (an
        adapter's): call right after the tuned pass, with the checkpoint active."""
        self.own.run_pending()


def _same_module(a: nn.Module, b: nn.Module) -> bool:
    """Whether two modules compute the same outputs bit for bit: one module, or two of
    one plain type (no submodules, e.g. a norm or a Linear) with equal parameters,
    buffers and settings."""
    if a is b:
        return True
    if type(a) is not type(b) or any(True for _ in a.children()) or any(True for _ in b.children()):
        return False
    plain = lambda m: {k: v for k, v in vars(m).items() if not k.startswith("_") and k != "training"}  # noqa: E731
    return plain(a) == plain(b) and same_weights(a, b)


def _own_units(base: Architecture, tuned: Architecture, comp: dict) -> dict[str, list[tuple]]:
    """(base module, tuned module, tuned post norm, base post norm) per component and layer."""
    post = base.family in _POST_NORMED
    return {c: [(b, t, comp["tuned"][c][i] if post else None, comp["base"][c][i] if post else None)
                for i, (b, t) in enumerate(zip(getattr(base, c), getattr(tuned, c)))] for c in COMPONENTS}


def entry_point(layers: pl.DataFrame, components: pl.DataFrame, fraction: float = ENTRY_FRACTION) -> dict:
    """Where the drift enters, from one checkpoint's layers and components tables.

    enters_layer: the first layer whose rel_l2 reaches `fraction` of the last
    layer's. component: among the attention and MLP outputs of layers 0..enters_layer
    (the residual at that layer is the embedding plus exactly their sum), the one
    whose direct logit contribution changed most (logit_change_rms).
    enters_layer_lens_kl applies the same rule to lens_kl.
    """
    rel = layers.sort("layer")["rel_l2"].to_numpy()
    kl = layers.sort("layer")["lens_kl"].to_numpy()
    out = {"criterion": f"first layer with rel_l2 >= {fraction:g} x the final layer's", "fraction": fraction,
           "num_layers": len(rel), "final_rel_l2": _num(rel[-1]) if len(rel) else None,
           "enters_layer": None, "enters_layer_lens_kl": _first_reaching(kl, fraction),
           "component": None, "component_layer": None, "component_logit_change_rms": None}
    if not len(rel) or not np.isfinite(rel[-1]) or rel[-1] < NOISE_FLOOR:
        out["sentence"] = "No activation drift: the final layer's residual stream is unchanged."
        return out
    entry = _first_reaching(rel, fraction)
    out["enters_layer"] = entry
    region = components.filter(pl.col("layer") <= entry).sort("logit_change_rms", "layer", descending=[True, False])
    top = region.row(0, named=True) if region.height else None
    if top is not None and top["logit_change_rms"] > 0:
        out.update(component=top["component"], component_layer=int(top["layer"]),
                   component_logit_change_rms=_num(top["logit_change_rms"]))
    where = f"layer {entry} of {len(rel)} (layers 0-{len(rel) - 1})"
    what = (f"; the largest direct logit change up to there, inherited change included, is layer "
            f"{out['component_layer']}'s {out['component']}"
            if out["component"] else "")
    out["sentence"] = (f"Drift enters at {where}: rel. L2 change {rel[entry]:.3g} reaches {fraction:.0%} "
                       f"of the final layer's {rel[-1]:.3g}{what}.")
    return out


def _first_reaching(values: np.ndarray, fraction: float) -> int | None:
    if not len(values) or not np.isfinite(values[-1]) or values[-1] <= 0:
        return None
    hits = np.nonzero(values >= fraction * values[-1])[0]
    return int(hits[0]) if len(hits) else None


def _num(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def try_layer_accumulator(label: str, base_model, tuned_model, classes: ClassTable, vocab: int,
                          **kwargs) -> tuple[LayerAccumulator | None, str | None]:
    """A LayerAccumulator, or (None, note) when the architecture is not one we can
    take apart, or whose weights --device-map offloaded (the head and the own
    change read weights, not only passes): the run then compares outputs without
    layer figures."""
    if offloaded(base_model) or offloaded(tuned_model):
        return None, f"{label}: no layer figures (--device-map offloaded some weights; {OFFLOAD_HINT} to have them)"
    try:
        return LayerAccumulator(label, base_model, tuned_model, classes, vocab, **kwargs), None
    except ArchitectureError as e:
        return None, f"{label}: no layer figures ({e})"


_TYPE_COMPONENT = {"q": "attn", "k": "attn", "v": "attn", "o": "attn", "qkv": "attn",
                   "gate": "mlp", "up": "mlp", "down": "mlp", "gate_up": "mlp"}


def weight_vs_function(weights: pl.DataFrame, layers: pl.DataFrame, components: pl.DataFrame | None = None,
                       checkpoint: str | None = None) -> dict:
    """Does the weight change per layer rank the layers as the functional change does?

    weights: a weight_table (one tuned checkpoint). Per layer, the weight change is
    sqrt(sum delta_norm^2) / sqrt(sum base_norm^2) over the block's tensors (norm
    weighted, as weight_summary's groups). Functional change per layer: the
    rel_l2 increment rel_l2[l] - rel_l2[l-1] (rel_l2[-1] = 0), what layer l adds.
    With `components`, also per (layer, attn|mlp): the q/k/v/o (qkv) or
    gate/up/down (gate_up) weight change against rel_change_logit. Spearman
    over a few dozen layers is descriptive: read it with its n.
    """
    if checkpoint is not None:
        layers = layers.filter(pl.col("checkpoint") == checkpoint)
        components = None if components is None else components.filter(pl.col("checkpoint") == checkpoint)
    if "checkpoint" in layers.columns and layers["checkpoint"].n_unique() > 1:
        raise ValueError("layers holds several checkpoints: pass checkpoint=")
    w = weights.filter(pl.col("layer").is_not_null() & pl.col("base_norm").is_not_null() & pl.col("delta_norm").is_not_null())
    rel = lambda: (pl.col("delta_norm").pow(2).sum().sqrt() / pl.col("base_norm").pow(2).sum().sqrt()).alias("weight_rel_change")  # noqa: E731
    per_layer = w.group_by("layer").agg(rel()).with_columns(pl.col("layer").cast(pl.Int32))
    func = layers.sort("layer").select(
        pl.col("layer").cast(pl.Int32), (pl.col("rel_l2") - pl.col("rel_l2").shift(1, fill_value=0.0)).alias("increment"))
    joined = per_layer.join(func, on="layer").sort("layer")
    rho, p = _spearman(joined["weight_rel_change"].to_numpy(), joined["increment"].to_numpy())
    out = {"n_layers": joined.height, "spearman_layer": rho, "p_value_layer": p,
           "layer_functional": "rel_l2 increment"}
    n_comp = 0
    if components is not None:
        wc = w.with_columns(pl.col("module_type").replace_strict(_TYPE_COMPONENT, default=None).alias("component"))
        per_comp = wc.filter(pl.col("component").is_not_null()).group_by("layer", "component").agg(rel())
        per_comp = per_comp.with_columns(pl.col("layer").cast(pl.Int32))
        cj = per_comp.join(components.select(pl.col("layer").cast(pl.Int32), "component", "rel_change_logit"),
                           on=["layer", "component"]).filter(pl.col("rel_change_logit").is_finite())
        n_comp = cj.height
        rho_c, p_c = _spearman(cj["weight_rel_change"].to_numpy(), cj["rel_change_logit"].to_numpy())
        out.update(n_components=n_comp, spearman_component=rho_c, p_value_component=p_c,
                   component_functional="rel_change_logit")
    out["note"] = (f"descriptive: Spearman over n={joined.height} layers"
                   + (f" and n={n_comp} (layer, component) pairs" if components is not None else "")
                   + "; a small n gives wide uncertainty, and None means n < 3 or a constant side")
    return out


def _spearman(x: np.ndarray, y: np.ndarray) -> tuple[float | None, float | None]:
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None, None
    from scipy.stats import spearmanr

    r = spearmanr(x, y)
    return _num(r.statistic), _num(r.pvalue)
