"""Divergences between next-token distributions, in nats.

Every function takes log-probabilities `logp` (base, p) and `logq` (tuned, q)
of shape (N, V): N scored positions over a shared vocabulary of V ids, each row
already normalised (log_softmax). They return one value per row, (N,).
"""

from __future__ import annotations

import math

import torch

LN2 = math.log(2.0)


def kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p||q) = sum_v p (log p - log q), in [0, inf). 0 iff p == q."""
    p = logp.exp()
    # 0 * log 0 is 0: where p == 0 the term vanishes whatever q is.
    terms = torch.where(p > 0, p * (logp - logq), torch.zeros_like(p))
    return terms.sum(-1).clamp_min(0.0)


def js(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence, in [0, ln 2]: symmetric, finite, KL to the mixture."""
    logm = torch.logaddexp(logp, logq) - LN2
    return (0.5 * (kl(logp, logm) + kl(logq, logm))).clamp(0.0, LN2)


def entropy(logp: torch.Tensor) -> torch.Tensor:
    """Shannon entropy, in [0, ln V]."""
    p = logp.exp()
    return -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)


def top1_agree(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """1.0 where both argmaxes are the same token, else 0.0."""
    return (logp.argmax(-1) == logq.argmax(-1)).to(logp.dtype)


def rank_under(logq: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Rank (1 = top) of token `ids[n]` under row n of `logq`; ties count in its favour."""
    target = logq.gather(-1, ids[:, None])
    return (logq > target).sum(-1).to(logq.dtype) + 1.0


def class_masses(logp: torch.Tensor, membership: torch.Tensor) -> torch.Tensor:
    """Probability mass of each token class: (N, V) x (V, C) -> (N, C)."""
    return logp.exp() @ membership.to(logp.dtype)


def kl_split(logp: torch.Tensor, logq: torch.Tensor, partition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Chain rule of KL over a partition of the vocabulary into classes c:

        KL(p||q) = KL(p_C||q_C) + sum_c p(c) KL(p(.|c)||q(.|c))

    `partition` is (V, C) one-hot (every id in exactly one class). Returns
    (between, within), each (N,): the change of output type and of content.
    """
    between = between_class(class_masses(logp, partition), class_masses(logq, partition))
    within = (kl(logp, logq) - between).clamp_min(0.0)
    return between, within


def rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_v a[n, v] * b[n, v] -> (N,), as a batched matrix product: no (N, V) temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def kl_finite(logp: torch.Tensor, logq: torch.Tensor, p: torch.Tensor | None = None) -> torch.Tensor:
    """kl() for finite rows, reusing p = exp(logp) when the caller has it."""
    p = logp.exp() if p is None else p
    return rowdot(p, logp - logq).clamp_min(0.0)


def position_figures(logp: torch.Tensor, logq: torch.Tensor, groups: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Every per-row figure of this module in one pass over (N, V), sharing exp(logp)
    and exp(logq) and summing with row dot products: the functions above each
    start from scratch, which costs about three times as much on a real
    vocabulary. Rows must be finite (a -inf log-prob is for the functions above).
    Equal to them to rounding (tested).

    Returns (N,) kl, kl_reverse, js, entropy_base, entropy_tuned, base_top1,
    tuned_top1 (ids), top1_agree, base_top1_rank; p and q (N, V); with `groups`
    (V, G) of 0/1 columns, p_groups and q_groups (N, G): the mass of each group.
    """
    p, q = logp.exp(), logq.exp()
    d = logp - logq
    # log m, m = (p + q) / 2; m underflows to 0 only where p and q do, and the
    # clamp keeps 0 * (finite) = 0 there.
    logm = (p + q).log_().sub_(LN2).clamp_min_(torch.finfo(logp.dtype).min / 4)
    js = 0.5 * (rowdot(p, logp - logm) + rowdot(q, logq - logm))
    del logm
    base_top1, tuned_top1 = logp.argmax(-1), logq.argmax(-1)
    out = {
        "kl": rowdot(p, d).clamp_min(0.0),
        "kl_reverse": rowdot(q, d).neg().clamp_min(0.0),
        "js": js.clamp(0.0, LN2),
        "entropy_base": -rowdot(p, logp),
        "entropy_tuned": -rowdot(q, logq),
        "base_top1": base_top1,
        "tuned_top1": tuned_top1,
        "top1_agree": (base_top1 == tuned_top1).to(logp.dtype),
        "base_top1_rank": rank_under(logq, base_top1),
        "p": p,
        "q": q,
    }
    if groups is not None:
        g = groups.to(logp.dtype)
        out["p_groups"], out["q_groups"] = p @ g, q @ g
    return out


def between_class(p_c: torch.Tensor, q_c: torch.Tensor) -> torch.Tensor:
    """KL of the class marginals (N, C) -> (N,): kl_split's between part."""
    return torch.where(p_c > 0, p_c * (p_c.log() - q_c.log()), torch.zeros_like(p_c)).sum(-1).clamp_min(0.0)
