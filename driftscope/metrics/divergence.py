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
    p_c = class_masses(logp, partition)
    q_c = class_masses(logq, partition)
    between = torch.where(p_c > 0, p_c * (p_c.log() - q_c.log()), torch.zeros_like(p_c)).sum(-1).clamp_min(0.0)
    within = (kl(logp, logq) - between).clamp_min(0.0)
    return between, within
