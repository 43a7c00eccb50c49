"""Distribution drift of one tuned checkpoint against the base, batch by batch.

`DriftAccumulator.update` turns a batch of (base, tuned) log-probs into
per-position figures, feeds the streaming reducers of each scope ("all" and
every suite) and keeps one small row per position. `figures()` and the
`*_table()` methods report.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import torch

from driftscope.capture import Batch
from driftscope.metrics import divergence as D
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

    def figures(self) -> dict:
        out: dict = {"n_probes": len(self.probes), "n_positions": self.sketch["kl"].n}
        for m in SKETCHED:
            out[m] = self.sketch[m].summary()
        out["top1_agreement"] = self.agree.mean
        out["top1_agreement_se"] = self.agree.se
        out["classes"] = self.classes.summary()
        b, w = self.between.mean, self.within.mean
        out["kl_split"] = {"between": b, "within": w, "between_share": b / (b + w) if b + w > 0 else math.nan}
        return out


class DriftAccumulator:
    def __init__(self, label: str, suites: list[str], probe_suite: list[str], classes: ClassTable, vocab: int):
        self.label = label
        self.classes = classes
        self.probe_suite = probe_suite  # probe index -> suite name
        self.scopes = {"all": Scope(classes.names), **{s: Scope(classes.names) for s in suites}}
        self.movers = TokenMovers(vocab)
        self.membership = classes.membership.double()  # (V, C)
        self.partition = classes.partition.double()  # (V, P)
        self.rows: list[dict[str, np.ndarray]] = []
        self.nonfinite = 0
        self.new_token_mass = Moments()

    def update(self, batch: Batch, base: tuple[torch.Tensor, torch.Tensor], tuned: tuple[torch.Tensor, torch.Tensor]) -> None:
        logp, _ = base
        logq, extra_q = tuned
        # float64: KL between near-identical models is a small difference of big numbers.
        logp, logq = logp.double().cpu(), logq.double().cpu()
        finite = torch.isfinite(logp).all(-1) & torch.isfinite(logq).all(-1)
        self.nonfinite += int((~finite).sum())
        if not finite.all():
            keep = finite.nonzero().flatten()
            logp, logq, extra_q = logp[keep], logq[keep], extra_q.cpu()[keep]
            gold, kind, probe, offset = (t[keep] for t in (batch.gold, batch.kind, batch.probe, batch.offset))
        else:
            gold, kind, probe, offset = batch.gold, batch.kind, batch.probe, batch.offset
        if logp.shape[0] == 0:
            return
        f = self._position_figures(logp, logq, gold)
        p_mass = D.class_masses(logp, self.membership).numpy()
        q_mass = D.class_masses(logq, self.membership).numpy()
        self.movers.update(logp.exp().sum(0).double().numpy(), logq.exp().sum(0).double().numpy(), logp.shape[0])
        self.new_token_mass.update(extra_q.float().exp().cpu().numpy())

        probe_np = probe.numpy()
        suite_of = np.array([self.probe_suite[i] for i in probe_np])
        everywhere = np.ones(len(probe_np), dtype=bool)
        self.scopes["all"].update(f, everywhere, (p_mass, q_mass), probe_np)
        for s in np.unique(suite_of):
            self.scopes[s].update(f, suite_of == s, (p_mass, q_mass), probe_np)

        row = {"probe": probe_np, "kind": kind.numpy(), "offset": offset.numpy(), "gold": gold.numpy(), **f}
        for j, name in enumerate(self.classes.names):
            row[f"p_{name}"] = p_mass[:, j]
            row[f"q_{name}"] = q_mass[:, j]
        self.rows.append(row)

    def _position_figures(self, logp, logq, gold) -> dict[str, np.ndarray]:
        has_gold = gold >= 0
        g = gold.clamp_min(0)
        between, within = D.kl_split(logp, logq, self.partition)
        nan = torch.full_like(logp[:, 0], float("nan"))
        figs = {
            "kl": D.kl(logp, logq),
            "kl_reverse": D.kl(logq, logp),
            "js": D.js(logp, logq),
            "entropy_base": D.entropy(logp),
            "entropy_tuned": D.entropy(logq),
            "top1_agree": D.top1_agree(logp, logq),
            "base_top1": logp.argmax(-1).float(),
            "tuned_top1": logq.argmax(-1).float(),
            "base_top1_rank": D.rank_under(logq, logp.argmax(-1)),
            "p_gold": torch.where(has_gold, logp.gather(-1, g[:, None]).squeeze(-1).exp(), nan),
            "q_gold": torch.where(has_gold, logq.gather(-1, g[:, None]).squeeze(-1).exp(), nan),
            "kl_between": between,
            "kl_within": within,
        }
        return {k: v.double().numpy() for k, v in figs.items()}

    # -- reporting -----------------------------------------------------------

    def figures(self) -> dict:
        out = self.scopes["all"].figures()
        out["nonfinite_positions"] = self.nonfinite
        out["new_token_mass"] = self.new_token_mass.mean
        out["suites"] = {s: sc.figures() for s, sc in self.scopes.items() if s != "all"}
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
            pl.col("kind").replace_strict({0: "next", 1: "answer"}, return_dtype=pl.String),
            pl.col("base_top1", "tuned_top1", "gold").cast(pl.Int64),
            pl.col("top1_agree").cast(pl.Boolean),
        )
        first = ["checkpoint", "suite", "probe_id", "probe_index", "kind", "offset", "gold"]
        return df.select(first + [c for c in df.columns if c not in first]).sort("probe_index", "offset")

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
