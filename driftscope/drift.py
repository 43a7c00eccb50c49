"""Distribution drift of one tuned checkpoint against the base, batch by batch.

`DriftAccumulator.update` turns a block of (base, tuned) log-probs into
per-position figures, feeds the streaming reducers of each scope ("all" and
every suite over next and answer positions; with --continue, a scope of its own
over the continuation positions, reported apart) and keeps one small row per
position. `figures()` and the `*_table()` methods report.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import torch

from driftscope.capture import CONTINUATION, KINDS, Block
from driftscope.continuation import diverges_later
from driftscope.metrics import divergence as D
from driftscope.metrics.topk import cached_position_figures
from driftscope.reducers import ClassMass, Moments, Sketch, TokenMovers
from driftscope.tokenclasses import PARTITION, ClassTable

SKETCHED = ("kl", "kl_reverse", "js", "entropy_base", "entropy_tuned", "base_top1_rank", "p_gold", "q_gold")


class Scope:
    """The reducers of one scope: memory fixed whatever the number of probes."""

    def __init__(self, class_names: tuple[str, ...]):
        self.sketch = {m: Sketch() for m in SKETCHED}
        self.agree = Moments()
        self.between = Moments()
        self.within = Moments()
        self.classes = ClassMass(class_names)
        self.probes: set[int] = set()  # probe indices seen (bounded by the suite)
        self.nonfinite = 0  # positions left out: a log-prob of either model was not finite
        self.nonfinite_probes: set[int] = set()

    def update(self, f: dict[str, np.ndarray], sel: np.ndarray, masses: tuple[np.ndarray, np.ndarray], probes: np.ndarray):
        for m in SKETCHED:
            v = f[m][sel]
            if m in ("p_gold", "q_gold", "base_top1_rank"):
                v = v[~np.isnan(v)]
            self.sketch[m].update(v)
        self.agree.update(f["top1_agree"][sel])
        self.between.update(f["kl_between"][sel])
        self.within.update(f["kl_within"][sel])
        self.classes.update(masses[0][sel], masses[1][sel])
        self.probes.update(probes[sel].tolist())

    def merge(self, other: Scope) -> Scope:
        """Another shard's reducers into these (distributed.py)."""
        for m in SKETCHED:
            self.sketch[m].merge(other.sketch[m])
        for mine, theirs in ((self.agree, other.agree), (self.between, other.between), (self.within, other.within)):
            mine.merge(theirs)
        self.classes.merge(other.classes)
        self.probes |= other.probes
        self.nonfinite += other.nonfinite
        self.nonfinite_probes |= other.nonfinite_probes
        return self

    def figures(self) -> dict:
        out: dict = {"n_probes": len(self.probes), "n_positions": self.sketch["kl"].n,
                     "nonfinite_positions": self.nonfinite, "nonfinite_probes": len(self.nonfinite_probes)}
        for m in SKETCHED:
            out[m] = self.sketch[m].summary()
        out["top1_agreement"] = self.agree.mean
        out["top1_agreement_se"] = self.agree.se
        out["classes"] = self.classes.summary()
        b, w = self.between.mean, self.within.mean
        out["kl_split"] = {"between": b, "within": w, "between_share": b / (b + w) if b + w > 0 else math.nan}
        return out


def _neutral(logx: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
    """Uniform rows in place of the non-finite ones: every tensor keeps its shape, the rows are then dropped."""
    return logx if finite.all() else torch.where(finite[:, None], logx, -math.log(logx.shape[-1]))


def class_groups(classes: ClassTable) -> torch.Tensor:
    """(V, C + P) float64: class membership, then the partition: one matmul gives both masses."""
    return torch.cat([classes.membership.double(), classes.partition.double()], 1)


class DriftAccumulator:
    def __init__(self, label: str, suites: list[str], probe_suite: list[str], classes: ClassTable, vocab: int,
                 continue_n: int = 0):
        if classes.width != vocab:  # one width for every vocabulary-sized structure (tokenclasses.vocab_width)
            raise ValueError(f"class table over {classes.width} ids against a vocabulary width of {vocab}")
        self.label = label
        self.vocab = vocab
        self.classes = classes
        self.probe_suite = probe_suite  # probe index -> suite name
        self.scopes = {"all": Scope(classes.names), **{s: Scope(classes.names) for s in suites}}
        self.continue_n = continue_n  # --continue N: 0, no continuation figures
        self.continuation = Scope(classes.names)  # continuation positions only, apart from every scope above
        self.continuation_bound = Sketch()  # against a base cache: the bound on |KL error| there
        self.movers = TokenMovers(vocab)
        self.membership = classes.membership.double()  # (V, C)
        self.partition = classes.partition.double()  # (V, P)
        self.groups = class_groups(classes)
        self.rows: list[dict[str, np.ndarray]] = []
        self.new_token_mass = Moments()
        self.kl_bound = Moments()  # against a base cache: the per-position bound on |KL error|
        self.kl_bound_max = 0.0

    def update(self, block: Block, base: tuple[torch.Tensor, torch.Tensor], tuned: tuple[torch.Tensor, torch.Tensor]) -> None:
        """One block: (block.size, V) log-probs of base and tuned; its first block.n rows are real."""
        logp, _ = base
        logq, extra_q = tuned
        # float64: KL between near-identical models is a small difference of big numbers.
        logp, logq = logp.double().cpu(), logq.double().cpu()
        finite = torch.isfinite(logp.sum(-1) + logq.sum(-1))  # a row sum is finite iff every entry is
        keep = self._keep(block, finite)
        if keep is None:
            return
        logp, logq = _neutral(logp, finite), _neutral(logq, finite)
        f, p_mass, q_mass, p, q = self._position_figures(logp, logq, block.pad(block.gold))
        weight = torch.from_numpy(keep & self._headline(block)).double()  # token movers: next and answer positions
        self.movers.update((weight @ p).numpy(), (weight @ q).numpy(), int(weight.sum()))
        del p, q
        self._record(block, keep, f, p_mass, q_mass, extra_q)

    def update_cached(self, block: Block, base: dict[str, torch.Tensor], tuned: tuple[torch.Tensor, torch.Tensor]) -> None:
        """One block against a base cache: `base` holds summarise_base's rows of the
        block (block.size rows, padded as the block). KL, reverse KL and JS come from
        the base's top-k with a bound on KL (metrics.topk); every other figure is
        exact. The base's side of the token movers comes from the cache once, at
        the end (`use_base_means`)."""
        logq, extra_q = tuned
        logq = logq.double().cpu()
        finite = base["finite"].cpu() & torch.isfinite(logq.sum(-1))
        keep = self._keep(block, finite)
        if keep is None:
            return
        logq = _neutral(logq, finite)
        C = self.membership.shape[1]
        fig = cached_position_figures(base, logq, self.groups, block.pad(block.gold), partition=slice(C, None))
        f, p_mass, q_mass = self._finish(fig, fig["p_gold"], fig["q_gold"])
        headline = keep & self._headline(block)
        weight = torch.from_numpy(headline).double()
        self.movers.update(np.zeros(self.vocab), (weight @ logq.exp()).numpy(), int(headline.sum()))
        bound = fig["kl_bound"].numpy()
        if headline.any():
            self.kl_bound.update(bound[headline])
            self.kl_bound_max = max(self.kl_bound_max, float(bound[headline].max()))
        self.continuation_bound.update(bound[keep & ~headline])
        self._record(block, keep, f, p_mass, q_mass, extra_q)

    def use_base_means(self, p_sum: np.ndarray, n: int) -> None:
        """The base's side of the token movers, from a cache: sum of p over its n positions."""
        self.movers.p_sum = np.asarray(p_sum, dtype=np.float64) * (self.movers.n / max(n, 1))

    def state(self) -> dict:
        """What the updates accumulated (no class table, no vocabulary texts): another shard's
        `merge_state` takes it."""
        return {"scopes": self.scopes, "movers": self.movers, "rows": self.rows, "new_token_mass": self.new_token_mass,
                "kl_bound": self.kl_bound, "kl_bound_max": self.kl_bound_max, "continuation": self.continuation,
                "continuation_bound": self.continuation_bound}

    def merge_state(self, state: dict) -> None:
        for name, scope in state["scopes"].items():
            self.scopes[name].merge(scope)
        self.movers.merge(state["movers"])
        self.rows += state["rows"]
        self.new_token_mass.merge(state["new_token_mass"])
        self.kl_bound.merge(state["kl_bound"])
        self.kl_bound_max = max(self.kl_bound_max, state["kl_bound_max"])
        self.continuation.merge(state["continuation"])
        self.continuation_bound.merge(state["continuation_bound"])

    @staticmethod
    def _headline(block: Block) -> np.ndarray:
        """(block.size,) the rows of next and answer positions: the headline figures' (not continuation)."""
        return (block.pad(block.kind) != CONTINUATION).numpy()

    def _keep(self, block: Block, finite: torch.Tensor) -> np.ndarray | None:
        """(block.size,) rows to keep: real and finite; None when there is none. Counts the non-finite."""
        real = torch.arange(block.size) < block.n
        self._count_nonfinite(block, ~finite[: block.n].numpy())
        keep = (real & finite).numpy()
        return keep if keep.any() else None

    def _record(self, block: Block, keep: np.ndarray, f: dict, p_mass: np.ndarray, q_mass: np.ndarray,
                extra_q: torch.Tensor) -> None:
        """Feed the kept rows' figures to every scope's reducers and keep their table row."""
        f = {k: v[keep] for k, v in f.items()}
        p_mass, q_mass = p_mass[keep], q_mass[keep]
        kept = keep[: block.n]
        probe_np = block.probe.numpy()[kept]
        cont = block.kind.numpy()[kept] == CONTINUATION
        main = ~cont  # next and answer positions: the headline scopes
        self.new_token_mass.update(extra_q.float().cpu().exp().numpy()[keep][main])
        suite_of = np.array([self.probe_suite[i] for i in probe_np])
        if main.any():
            self.scopes["all"].update(f, main, (p_mass, q_mass), probe_np)
        for s in np.unique(suite_of[main]):
            self.scopes[s].update(f, main & (suite_of == s), (p_mass, q_mass), probe_np)
        if cont.any():
            self.continuation.update(f, cont, (p_mass, q_mass), probe_np)

        row = {"probe": probe_np, "kind": block.kind.numpy()[kept], "offset": block.offset.numpy()[kept],
               "gold": block.gold.numpy()[kept], **f}
        for j, name in enumerate(self.classes.names):
            row[f"p_{name}"] = p_mass[:, j]
            row[f"q_{name}"] = q_mass[:, j]
        self.rows.append(row)

    def _count_nonfinite(self, block: Block, bad: np.ndarray) -> None:
        """bad: (block.n,) the real rows with a non-finite log-prob, per scope."""
        if not bad.any():
            return
        probes, kinds = block.probe.numpy()[bad], block.kind.numpy()[bad]
        for probe, kind in zip(probes.tolist(), kinds.tolist()):
            scopes = (self.continuation,) if kind == CONTINUATION else (self.scopes["all"], self.scopes[self.probe_suite[probe]])
            for scope in scopes:
                scope.nonfinite += 1
                scope.nonfinite_probes.add(probe)

    def _position_figures(self, logp, logq, gold):
        """Per-row figures (numpy), class masses of base and tuned (N, C), and p, q (N, V)."""
        # A gold id past the width (a token beyond the LM head) has no probability to read.
        has_gold = (gold >= 0) & (gold < self.vocab)
        g = torch.where(has_gold, gold, 0)[:, None]
        fig = D.position_figures(logp, logq, self.groups)
        nan = torch.full_like(logp[:, 0], float("nan"))
        p_gold = torch.where(has_gold, fig["p"].gather(-1, g).squeeze(-1), nan)
        q_gold = torch.where(has_gold, fig["q"].gather(-1, g).squeeze(-1), nan)
        return (*self._finish(fig, p_gold, q_gold), fig["p"], fig["q"])

    def _finish(self, fig: dict, p_gold: torch.Tensor, q_gold: torch.Tensor):
        """The per-row figures (numpy) and class masses of base and tuned (N, C)."""
        C = self.membership.shape[1]
        between = D.between_class(fig["p_groups"][:, C:], fig["q_groups"][:, C:])
        figs = {k: fig[k] for k in ("kl", "kl_reverse", "js", "entropy_base", "entropy_tuned", "top1_agree",
                                    "base_top1", "tuned_top1", "base_top1_rank")}
        figs.update({"p_gold": p_gold, "q_gold": q_gold, "kl_between": between,
                     "kl_within": (fig["kl"] - between).clamp_min(0.0)})
        out = {k: v.double().numpy() for k, v in figs.items()}
        return out, fig["p_groups"][:, :C].numpy(), fig["q_groups"][:, :C].numpy()

    # -- reporting -----------------------------------------------------------

    def figures(self) -> dict:
        out = self.scopes["all"].figures()
        out["new_token_mass"] = self.new_token_mass.mean
        out["tokens_beyond_head"] = self.classes.beyond_head  # tokenizer ids no LM head scores
        if self.kl_bound.n:  # scored against a base cache's top-k: KL is within these of the paired figure
            out["kl_cache_bound"] = {"mean": self.kl_bound.mean, "max": self.kl_bound_max}
        out["suites"] = {s: sc.figures() for s, sc in self.scopes.items() if s != "all"}
        if self.continue_n:
            out["continuation"] = self.continuation_figures()
        return out

    def continuation_figures(self) -> dict:
        """The continuation positions' figures, as a scope's, and how often a probe diverges later."""
        out = {"tokens": self.continue_n, **self.continuation.figures()}
        del out["p_gold"], out["q_gold"]  # a continuation has no gold token
        if self.continuation_bound.n:
            out["kl_cache_bound"] = {"mean": self.continuation_bound.mean, "max": self.continuation_bound.summary()["max"]}
        cols = {k: np.concatenate([r[k] for r in self.rows]) if self.rows else np.zeros(0)
                for k in ("probe", "kind", "kl", "top1_agree")}
        out["diverges_later"] = diverges_later(cols["probe"], cols["kind"], cols["kl"], cols["top1_agree"])
        return out

    def positions_table(self, probe_ids: list[str]) -> pl.DataFrame:
        if not self.rows:
            return pl.DataFrame()
        cols = {k: np.concatenate([r[k] for r in self.rows]) for k in self.rows[0]}
        probe = cols.pop("probe")
        df = pl.DataFrame(cols).with_columns(
            pl.lit(self.label).alias("checkpoint"),
            pl.Series("suite", [self.probe_suite[i] for i in probe]),
            pl.Series("probe_id", [probe_ids[i] for i in probe]),
            pl.Series("probe_index", probe, dtype=pl.Int64),
            pl.col("kind").replace_strict(KINDS, return_dtype=pl.String),
            pl.col("base_top1", "tuned_top1", "gold").cast(pl.Int64),
            pl.col("top1_agree").cast(pl.Boolean),
        )
        first = ["checkpoint", "suite", "probe_id", "probe_index", "kind", "offset", "gold"]
        order = ("probe_index", pl.col("kind") == "continuation", "offset")  # a probe's continuation after its answer
        return df.select(first + [c for c in df.columns if c not in first]).sort(*order)

    def classes_table(self) -> pl.DataFrame:
        rows = []
        for scope, sc in self.scopes.items():
            for name, v in sc.classes.summary().items():
                rows.append({"checkpoint": self.label, "scope": scope, "class": name, "in_partition": name in PARTITION, **v})
        return pl.DataFrame(rows)

    def tokens_table(self, k: int = 50) -> pl.DataFrame:
        gain, lose = self.movers.top(k)
        n = max(self.movers.n, 1)
        rows = []
        for direction, ids in (("gain", gain), ("loss", lose)):
            for rank, i in enumerate(ids.tolist(), start=1):
                p, q = self.movers.p_sum[i] / n, self.movers.q_sum[i] / n
                rows.append({"checkpoint": self.label, "direction": direction, "rank": rank, "token_id": i,
                             "text": self.classes.texts[i], "p_mean": p, "q_mean": q, "delta": q - p})
        return pl.DataFrame(rows)
