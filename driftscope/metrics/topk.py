"""Scoring a tuned checkpoint against a summary of the base instead of its full distribution.

The base p is captured once per scored position as a summary (`summarise_base`):
its top-k log-probs and a few exact float64 scalars. A tuned checkpoint's full
log-probs q, (N, V), are then scored against it (`cached_position_figures`),
giving the per-row figures of `divergence.position_figures`:

- EXACT (equal to the paired path to rounding): entropy_base, entropy_tuned,
  base_top1, tuned_top1, top1_agree, base_top1_rank, p_gold, q_gold, p_groups,
  q_groups, hence kl_between (`divergence.between_class` of the partition masses).
- APPROXIMATE: kl, kl_reverse, js, hence kl_within. The top-k ids' terms come
  from the stored values. In the tail T each partition class c keeps its exact
  mass m_c (q's is q_T,c); how p spreads inside a class's tail is unknown, and
  modelled as: the tuned model moves a tail id as the least-squares fit over the
  k kept ids moves them,

      log q_v - log p_v = alpha_c + beta (log p_v - mean) + eps_v,

  with one intercept per class, beta debiased for its standard error, log p
  over the tail normal with the tail's exact varentropy, eps drawn from the
  fitted residuals, alpha_c fixed by the masses. The tail terms are then
  m_c E[phi(q/p)], phi = -log (kl, closed form), x log x (kl_reverse) and JS's
  (Gauss-Hermite). Exact when q/p is constant in each class (a shift of class
  masses); beta covers a change of temperature, eps a noise-like change.
- kl's tail is estimated from a sample: s tail ids drawn in proportion to p
  (systematic sampling, `tail_sample`) with their log p. What kl^ leaves out is
  p_T E_r[d] over the tail distribution r, d = log p/q minus its class's
  constant log(m_c / q_T,c), and the sample's mean of d estimates it without
  bias, whatever the fine-tune did to the tail (exactly, for a shift of class
  masses). The error
  is statistical: on SmolLM2 against a counting fine-tune (245 positions) the
  per-position error had sd 0.068 nats at k = s = 32 and 0.038 at k = s = 64,
  so a mean over N positions is off by about sd / sqrt(N). With no sample kept
  (s = 0) the tail model above gives the gap instead; it underestimated that
  pair's KL mean by 4.3% at k = 64 (fine-tunes move the tail more than the
  head suggests), hence the sample.
- kl carries a guarantee. With kl^ the kl of each class's tail filled in
  proportion to q (itself a lower bound), the summary alone proves
  kl^ + low <= kl <= kl^ + high (`tail_gap_interval`); the model's estimate is
  clamped into that interval, and `kl_bound` is the largest |kl_cached - kl|
  the interval allows, plus the rounding of the stored top-k and float64
  arithmetic. kl_reverse and js carry none: a tail id with tiny p and sizeable
  q makes KL(q||p) as large as you like.

Natural log throughout. Rows are log-probabilities (log_softmax output); the
tuned rows must be finite (neutralise a bad row as drift.py does), a base row
that is not is flagged and neutralised by summarise_base. The log-sum-exp of the base's logits is not kept: every figure uses normalised
log-probs, which the capture already has, and nothing downstream needs logits.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from driftscope.metrics.divergence import LN2, rank_under, rowdot

K_RANGE = (16, 512)  # default_k's powers of two: below 16 the tail model has too few points to fit
BINS = 256  # bins of log q per class in the bound: loosens it by at most p_T * (range of log q) / BINS
ARITH = 1e-13  # float64 summation allowance, relative to the size of the summed terms
_X, _W = np.polynomial.hermite_e.hermegauss(7)  # nodes and weights for E[f(Z)], Z ~ N(0, 1)
NODES, WEIGHTS = torch.from_numpy(_X), torch.from_numpy(_W / _W.sum())
SUMMARY_KEYS = ("top_ids", "top_logp", "tail_ids", "tail_logp", "top1", "entropy", "tail_entropy", "tail_varentropy",
                "tail_mass", "groups", "tail_groups", "gold_logp", "finite")
PHI = (math.sqrt(5) - 1) / 2, math.sqrt(2) - 1  # a row's sampling offset: frac(probe PHI[0] + offset PHI[1])


def default_k(vocab: int, n_groups: int = 10, share: float = 0.01, where_bytes: int = 16) -> int:
    """The largest power of two in K_RANGE whose per-position cache (summary with k
    top ids and k tail samples, and `where_bytes` of probe/kind/offset/gold) is at
    most `share` of a full-vocabulary uint16 row (2 V bytes): 16 for V = 32k, 32
    for 49k, 128 for 128k-152k, 256 for 262k. K_RANGE[0] where nothing fits (a
    small vocabulary), never above V."""
    k = K_RANGE[1]
    while k > K_RANGE[0] and summary_nbytes(1, k, n_groups) + where_bytes > share * 2 * vocab:
        k //= 2
    return min(k, vocab)


def summarise_base(logp: torch.Tensor, k: int, groups: torch.Tensor | None = None,
                   gold: torch.Tensor | None = None, dtype: torch.dtype = torch.float32, samples: int | None = None,
                   offsets: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """What the cache keeps of the base at N positions; logp (N, V) log-probs.

    groups: (V, G) 0/1 columns (class membership, then the partition); gold:
    (N,) token ids, < 0 (or >= V) where there is none. Computed in float64 from
    the full rows; returns

        top_ids (N, k) int32, top_logp (N, k) `dtype`: the k largest, descending
        tail_ids (N, s) int32, tail_logp (N, s) `dtype`: s = `samples` (default k) ids
            drawn from the tail in proportion to p, by systematic sampling with the
            row's `offsets` (N,) in [0, 1) (default: a fixed low-discrepancy sequence)
        top1 (N,) int32: the argmax, ties broken as position_figures does
        entropy, tail_entropy (N,): -sum p log p over all ids / over the tail
        tail_varentropy (N,): the variance of log p over the tail, weighted by p
        tail_mass (N,): sum of p over the tail (summed, not 1 - top-k: no cancellation)
        groups, tail_groups (N, G): the mass of each group, all ids / tail only
        gold_logp (N,): log p of the gold id, nan where there is none
        finite (N,) bool: the row was finite; a row that was not is summarised as
            uniform (as drift.py neutralises it), to be left out as drift.py does
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    logp = logp.double()
    n, vocab = logp.shape
    finite = torch.isfinite(logp.sum(-1))  # a row sum is finite iff every entry is
    logp = torch.where(finite[:, None], logp, -math.log(vocab))
    top_logp, top_ids = logp.topk(min(k, vocab), dim=-1, sorted=True)
    p = logp.exp()
    p_tail = p.scatter(1, top_ids, 0.0)
    tail_mass = p_tail.sum(-1)
    mean_tail = rowdot(p_tail, logp) / tail_mass.clamp_min(1e-300)
    centred = logp - mean_tail[:, None]
    g = _groups(groups, logp)
    gold = torch.full((n,), -1, device=logp.device) if gold is None else gold.long()
    has = (gold >= 0) & (gold < vocab)
    gold_logp = logp.gather(1, torch.where(has, gold, 0)[:, None]).squeeze(1)
    tail_ids = tail_sample(p_tail, tail_mass, k if samples is None else samples, offsets)
    return {
        "top_ids": top_ids.int(),
        "top_logp": top_logp.to(dtype),
        "tail_ids": tail_ids.int(),
        "tail_logp": logp.gather(1, tail_ids).to(dtype),
        "top1": logp.argmax(-1).int(),
        "entropy": -rowdot(p, logp),
        "tail_entropy": -rowdot(p_tail, logp),
        "tail_varentropy": rowdot(p_tail, centred * centred) / tail_mass.clamp_min(1e-300),
        "tail_mass": tail_mass,
        "groups": p @ g,
        "tail_groups": p_tail @ g,
        "gold_logp": torch.where(has, gold_logp, math.nan),
        "finite": finite,
    }


def tail_sample(p_tail: torch.Tensor, tail_mass: torch.Tensor, s: int,
                offsets: torch.Tensor | None = None) -> torch.Tensor:
    """(N, s) ids drawn from each row's tail r = p_tail / tail_mass by systematic
    sampling: the ids whose cumulative mass first passes (j + u) / s of the tail,
    j < s, u the row's offset. Each id is then drawn with probability r_v, so
    the mean of f over the s ids is an unbiased estimate of E_r[f], with less
    variance than s independent draws. Rows without a tail give id 0 (unused:
    their tail_mass is 0)."""
    n = p_tail.shape[0]
    if offsets is None:
        offsets = (0.5 + PHI[0] * torch.arange(n, dtype=torch.float64)) % 1.0
    cum = p_tail.cumsum(-1)
    steps = (torch.arange(s, dtype=torch.float64, device=p_tail.device) + offsets.to(p_tail)[:, None]) / max(s, 1)
    target = (steps * tail_mass[:, None]).clamp_max(cum[:, -1:] * (1 - 1e-12))
    ids = torch.searchsorted(cum, target.contiguous(), right=True)
    return ids.clamp_max(p_tail.shape[1] - 1)


def row_offsets(probe: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """A position's sampling offset in [0, 1), set by where it is (probe, offset) alone,
    so a row is summarised the same however the positions are batched or sharded."""
    return (probe.double() * PHI[0] + offset.double() * PHI[1]) % 1.0


def summary_nbytes(n: int, k: int, n_groups: int, dtype: torch.dtype = torch.float32, samples: int | None = None) -> int:
    """Bytes of summarise_base's tensors for n positions."""
    s = k if samples is None else samples
    return n * ((k + s) * (4 + dtype.itemsize) + 5 + 8 * (5 + 2 * n_groups))


def cached_position_figures(base: dict[str, torch.Tensor], logq: torch.Tensor, groups: torch.Tensor | None = None,
                            gold: torch.Tensor | None = None, partition: slice | list[int] | None = None,
                            bins: int = BINS) -> dict[str, torch.Tensor]:
    """position_figures' per-row figures from a base summary and the tuned logq (N, V).

    `groups` is the (V, G) matrix the summary was made with, `gold` its gold ids.
    `partition` names the columns of `groups` that partition the vocabulary
    (one 1 per row): the tail is then modelled class by class, on exact class
    masses. None: the whole tail is one class. Returns (N,) kl, kl_reverse, js,
    entropy_base, entropy_tuned, base_top1, tuned_top1, top1_agree,
    base_top1_rank, p_gold, q_gold, kl_bound, and (N, G) p_groups, q_groups.
    """
    logq = logq.double()
    base = {k: v.to(logq.device) for k, v in base.items() if k in SUMMARY_KEYS}
    g = _groups(groups, logq)
    ids = base["top_ids"].long()
    tail = torch.ones_like(logq, dtype=torch.bool).scatter_(1, ids, False)
    if partition is None:
        cls, m = torch.zeros(logq.shape[1], dtype=torch.long, device=logq.device), base["tail_mass"][:, None]
    else:
        cls, m = g[:, partition].argmax(1), base["tail_groups"][:, partition]
    log_qt = class_logsumexp(logq, tail, cls, m.shape[1])  # (N, P) log q_T,c
    m = torch.where(log_qt > -math.inf, m, 0.0)  # a class with no tail ids has no tail mass
    out = _exact_figures(base, logq, g, gold)
    top_l, top_a = base["top_logp"].double(), logq.gather(1, ids)  # (N, k) log p, log q at the base's top k
    head, tail_part = _head_terms(top_l, top_a), _tail_terms(m, log_qt, top_l, top_a, base["tail_varentropy"], cls[ids])
    low, high = tail_gap_interval(logq, tail, cls, m, base["tail_entropy"], log_qt, bins)
    gap = torch.minimum(torch.maximum(_sampled_gap(base, logq, cls, m, log_qt, tail_part["gap"]), low), high)
    cross = rowdot(top_l.exp(), top_a.abs()) + m.sum(-1) * logq.amin(-1).abs()  # >= sum p |log q|
    out["kl"] = (head["kl"] + tail_part["kl"] + gap).clamp_min(0.0)
    out["kl_reverse"] = (head["kl_reverse"] + tail_part["kl_reverse"]).clamp_min(0.0)
    out["js"] = (head["js"] + tail_part["js"]).clamp(0.0, LN2)
    out["kl_bound"] = (torch.maximum(gap - low, high - gap) + rounding_bound(base["top_logp"], top_a)
                       + ARITH * (base["entropy"] + cross))
    return out


def _sampled_gap(base: dict[str, torch.Tensor], logq: torch.Tensor, cls: torch.Tensor, m: torch.Tensor,
                 log_qt: torch.Tensor, model_gap: torch.Tensor) -> torch.Tensor:
    """kl - kl^ = sum_c m_c KL(r_c || s_c) = p_T E_r[d], d_v = log p_v - log q_v - log(m_c / q_T,c)
    for v in class c: the sample's mean of d estimates it without bias, and is exact (0) when
    q / p is constant in each class. The tail model's gap where no sample was kept."""
    ids = base.get("tail_ids")
    if ids is None or ids.shape[1] == 0:
        return model_gap
    ids = ids.long()
    live = m > 0
    log_const = torch.where(live, torch.where(live, m, 1.0).log() - log_qt, 0.0)  # (N, P) log(m_c / q_T,c)
    d = base["tail_logp"].double() - logq.gather(1, ids) - log_const.gather(1, cls[ids])
    return base["tail_mass"] * d.mean(-1)


def _exact_figures(base: dict[str, torch.Tensor], logq: torch.Tensor, g: torch.Tensor,
                   gold: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The figures a summary gives exactly, as position_figures names them."""
    q = logq.exp()
    tuned_top1, top1 = logq.argmax(-1), base["top1"].long()
    has = ~base["gold_logp"].isnan()
    gold = torch.zeros_like(top1) if gold is None else torch.where(has, gold.long(), 0)
    return {
        "entropy_base": base["entropy"],
        "entropy_tuned": -rowdot(q, logq),
        "base_top1": top1,
        "tuned_top1": tuned_top1,
        "top1_agree": (top1 == tuned_top1).double(),
        "base_top1_rank": rank_under(logq, top1),
        "p_gold": base["gold_logp"].exp(),
        "q_gold": torch.where(has, q.gather(1, gold[:, None]).squeeze(1), math.nan),
        "p_groups": base["groups"],
        "q_groups": q @ g,
    }


def _groups(groups: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
    """(V, G) float64 on the rows' device; (V, 0) when there are no groups."""
    return (groups if groups is not None else torch.zeros(rows.shape[1], 0)).to(rows.device, torch.float64)


def class_logsumexp(x: torch.Tensor, mask: torch.Tensor, cls: torch.Tensor, n_cls: int) -> torch.Tensor:
    """log sum exp of x over the masked ids of each class: (N, V) -> (N, P), -inf where none."""
    return torch.stack([torch.where(mask & (cls == c), x, -math.inf).logsumexp(-1) for c in range(n_cls)], 1)


def _head_terms(l: torch.Tensor, a: torch.Tensor) -> dict[str, torch.Tensor]:
    """The top-k ids' share of kl, kl_reverse and js: l = log p, a = log q, (N, k) -> (N,)."""
    p, q = l.exp(), a.exp()
    lm = torch.logaddexp(l, a) - LN2  # log of the mixture (p + q) / 2
    return {"kl": rowdot(p, l - a), "kl_reverse": rowdot(q, a - l), "js": 0.5 * (rowdot(p, l - lm) + rowdot(q, a - lm))}


def _tail_terms(m: torch.Tensor, log_qt: torch.Tensor, l: torch.Tensor, a: torch.Tensor,
                varentropy: torch.Tensor, head_cls: torch.Tensor) -> dict[str, torch.Tensor]:
    """The tail's share of the divergences under the tail model (module docstring).

    m, log_qt: (N, P) tail masses and log q_T,c; l, a, head_cls: (N, k) log p, log q
    and class of the kept ids; varentropy (N,). Returns (N,) kl (kl^'s tail part:
    each class filled in proportion to q), kl_reverse, js, and gap: the model's kl - kl^.
    """
    d = a - l
    onehot = torch.nn.functional.one_hot(head_cls, m.shape[1]).double()  # (N, k, P)
    count = onehot.sum(1)  # (N, P) kept ids per class

    def within(x):  # x minus its class mean: the fit has one intercept per class, as the model
        return x - ((onehot * x[:, :, None]).sum(1) / count.clamp_min(1)).gather(1, head_cls)

    lc, dc = within(l), within(d)
    ss = (lc * lc).sum(-1)
    beta = torch.where(ss > 0, (lc * dc).sum(-1) / ss.clamp_min(1e-300), 0.0)
    # E[beta^2] = beta_true^2 + se^2: debias, so that a slope fitted to noise (a flat head) is not extrapolated
    dof = (l.shape[1] - (count > 0).sum(-1) - 1).clamp_min(1)
    se2 = ((dc - beta[:, None] * lc) ** 2).sum(-1) / dof / ss.clamp_min(1e-300)
    beta = beta.sign() * (beta**2 - se2).clamp_min(0.0).sqrt()
    eps = dc - beta[:, None] * lc  # (N, k) residuals, centred in each class
    spread = beta * varentropy.clamp_min(0.0).sqrt()  # sd of beta (log p - mean) over the tail
    # log q/p of a tail id, up to its class's constant: (N, nodes, k), each draw of weight WEIGHTS / k
    u = (spread[:, None] * NODES.to(l.device))[:, :, None] + eps[:, None, :]
    log_w = WEIGHTS.to(l.device).log()[None, :, None] - math.log(eps.shape[1])
    u = u - (u + log_w).logsumexp((1, 2))[:, None, None]  # E[e^u] = 1: q's tail mass is kept
    live = m > 0
    base_ratio = torch.where(live, log_qt - torch.where(live, m, 1.0).log(), 0.0)  # log q_T,c / m_c
    log_rho = base_ratio[:, :, None, None] + u[:, None]  # (N, P, nodes, k)
    rho = log_rho.exp()
    js = 0.5 * ((1 + rho) * LN2 - torch.log1p(rho) - torch.where(rho > 0, rho * torch.log1p(1 / rho), 0.0))
    w = log_w.exp()[:, None]  # (1, 1, nodes, 1)

    def expect(t):  # sum_c m_c E[t]
        return (m * torch.where(live, (t * w).sum((-2, -1)), 0.0)).sum(-1)

    # closed form of log E[e^(log q/p - E log q/p)] under the model: normal part and the residuals'
    log_z = 0.5 * spread**2 + eps.logsumexp(-1) - math.log(eps.shape[1])
    return {"kl": (m * -base_ratio).sum(-1), "kl_reverse": expect(rho * log_rho), "js": expect(js),
            "gap": m.sum(-1) * log_z}


def rounding_bound(top_logp: torch.Tensor, top_logq: torch.Tensor) -> torch.Tensor:
    """Largest change of sum_top p (log p - log q) from storing log p in top_logp's dtype.

    Each stored l is within e = eps |l| of the true one; the term f(l) = e^l (l - a)
    has |f'| = e^l |l - a + 1| <= e^(l+e) (|l - a| + 1 + e) on that interval. (N, k) -> (N,)."""
    l = top_logp.double()
    e = torch.finfo(top_logp.dtype).eps * l.abs()
    return ((l + e).exp() * ((l - top_logq).abs() + 1 + e) * e).sum(-1)


def tail_gap_interval(logq: torch.Tensor, tail: torch.Tensor, cls: torch.Tensor, m: torch.Tensor,
                      tail_entropy: torch.Tensor, log_qt: torch.Tensor, bins: int = BINS) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high), each (N,): every tail consistent with the summary has low <= kl - kl^ <= high.

    Write r_c = p restricted to the tail of class c, normalised, s_c the same
    for q, a_v = log q_v. By the chain rule (log-sum inequality),

        kl - kl^ = sum_c m_c KL(r_c || s_c) >= 0,

    and, since the tail entropy H_T = -sum_T p log p is known exactly,

        kl - kl^ = -H_T - X - K,   X = sum_T p_v a_v,   K = sum_c m_c log(m_c / q_T,c),

    where only X is unknown. Every tail consistent with the summary has the
    class masses m_c and entropy H_T, so X lies between the minimum and the
    maximum of X over {tails with masses m_c and entropy >= H_T} (a convex set:
    entropy is concave). The extremes are Gibbs tails p_v = m_c e^(-g a_v) / Z_c(g),
    one g for all classes (Lagrange), g > 0 for the minimum, g < 0 for the
    maximum, with entropy H(g) = H_T. |g| up, H(g) down and X(g) away from
    X(0) (dX/dg = -Var, dH/dg = -g Var), so any g with H(g) <= H_T is a valid
    extreme: bisection keeps that end. Where even |g| -> inf leaves H above
    H_T the extreme is the unconstrained one, each class's mass on its
    smallest (largest) log q. To stay O(N V), log q is rounded to `bins` equal
    bins per row, down for the minimum and up for the maximum: still valid,
    looser by at most p_T * bin width. The cap p_v <= p_(k) is not used:
    the entropy already forbids piling the tail on a few ids.
    """
    n = logq.shape[0]
    n_cls = m.shape[1]
    lo = torch.where(tail, logq, math.inf).amin(-1)
    hi = torch.where(tail, logq, -math.inf).amax(-1)
    empty = ~tail.any(-1)
    lo, hi = torch.where(empty, 0.0, lo), torch.where(empty, 0.0, hi)
    width = ((hi - lo) / bins).clamp_min(1e-12)[:, None]
    b = ((logq - lo[:, None]) / width).floor_().clamp_(0, bins - 1).long()
    counts = logq.new_zeros(n, n_cls * bins).scatter_add_(1, cls * bins + b, tail.double())
    counts = counts.view(n, n_cls, bins)
    live = (counts.sum(-1) > 0) & (m > 0)  # (N, P) classes with tail ids and tail mass
    m = torch.where(live, m, 0.0)
    mlogm = torch.where(live, m * m.clamp_min(1e-300).log(), 0.0)
    k_term = torch.where(live, mlogm - m * log_qt, 0.0).sum(-1)
    edge = lo[:, None] + width * torch.arange(bins + 1, dtype=torch.float64, device=logq.device)  # (N, bins + 1)
    slack = 1e-12 * (edge.abs() + 1)  # so that rounding never moves an edge past a value in its bin
    edges = torch.stack([edge[:, :-1] - slack[:, :-1], edge[:, 1:] + slack[:, 1:]])[:, :, None, :]  # (2, N, 1, bins)
    x_min, x_max = _extreme_x(counts, edges, m, mlogm, live, tail_entropy)
    return (-tail_entropy - x_max - k_term).clamp_min(0.0), (-tail_entropy - x_min - k_term).clamp_min(0.0)


def _extreme_x(counts, edges, m, mlogm, live, target, steps: int = 24) -> torch.Tensor:
    """The min and max of X = sum_c m_c E_c[a] over Gibbs tails with entropy <= target, (2, N).

    Both at once: side 0 the minimum on lower bin edges (g > 0), side 1 the
    maximum on upper ones (g < 0). counts (N, P, bins), edges (2, N, 1, bins)."""
    sign = counts.new_tensor([[1.0], [-1.0]])  # (2, 1)
    log_n = counts.log()  # -inf for empty bins

    def gibbs(gam):  # gam (2, N) -> X, entropy (2, N)
        w = log_n - (sign * gam)[:, :, None, None] * edges  # (2, N, P, bins)
        z = w.logsumexp(-1, keepdim=True)
        e = torch.where(counts > 0, (w - z).exp() * edges, 0.0).sum(-1)  # E_c[a] under the Gibbs tail
        ent = torch.where(live, m * ((sign * gam)[..., None] * e + z.squeeze(-1)), 0.0).sum(-1) - mlogm.sum(-1)
        return torch.where(live, m * e, 0.0).sum(-1), ent

    hi = counts.new_ones(2, len(target))
    for _ in range(64):  # bracket: double |g| until H(g) <= H_T, or give up (the vertex below)
        above = gibbs(hi)[1] > target
        if not above.any():
            break
        hi = torch.where(above, hi * 2, hi)
    lo = torch.zeros_like(hi)
    for _ in range(steps):  # g to 2^-steps of itself: X(g) moves by Var * dg, negligible
        mid = (lo + hi) / 2
        above = gibbs(mid)[1] > target
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    x, ent = gibbs(hi)
    lowest = edges[0].expand_as(counts).where(counts > 0, math.inf).amin(-1)
    highest = edges[1].expand_as(counts).where(counts > 0, -math.inf).amax(-1)
    vertex = torch.stack([torch.where(live, m * v, 0.0).sum(-1) for v in (lowest, highest)])
    return torch.where(ent > target, vertex, x)
