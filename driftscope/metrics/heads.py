"""An LM head as the component figures see it: through (d, d) Gram matrices, never (N, vocab).

A component output c adds (W - mu) c to the logits, centred over the vocabulary
(softmax ignores a shift of all logits; mu is the mean row). With the base head's
G = (W_b - mu_b)^T (W_b - mu_b), ||(W_b - mu_b) c||^2 = c^T G c: V d^2 multiply-adds
once per head, then d^2 per row.

A tuned head is seen through its difference from the base's,
D = (W_t - mu_t) - (W_b - mu_b). The change of a contribution is
    L_t - L_b = (W_b - mu_b) (c_t - c_b) + D c_t,
so ||L_t - L_b||^2 = dc^T G dc + 2 dc^T (W_b - mu_b)^T D c_t + c_t^T D^T D c_t
(dc = c_t - c_b). Every term is made of changes: nothing is a small difference of
two large numbers, which is what lets the products below run in float32.

Precision: rows are products in float32 (float64 for float64 weights), shifted
by a rounded mean first, and summed chunk by chunk in float64; the exact
centring correction (S - s s^T / V, s the shifted rows' sum) is applied in
float64. Each Gram entry is within about 1e-7 relative of the float64 product.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from driftscope.metrics.activations import _chunks

F64 = torch.float64


@dataclass(frozen=True)
class HeadStats:
    """The base head, float64. mu: (d,) the mean row. gram: (d, d) (W - mu)^T (W - mu).
    class_rows: (C, d) mean centred row over each class's ids (NaN for an empty class):
    the class's mean centred logit is class_rows @ c."""

    mu: torch.Tensor
    gram: torch.Tensor
    class_rows: torch.Tensor
    vocab: int

    def to(self, device) -> HeadStats:
        return HeadStats(self.mu.to(device), self.gram.to(device), self.class_rows.to(device), self.vocab)


@dataclass(frozen=True)
class HeadChange:
    """A tuned head against the base's (module docstring), float64: base_d = (W_b - mu_b)^T D
    and dd = D^T D, (d, d); class_rows (C, d): the mean of D's rows over each class's ids
    (the tuned head's class rows less the base's)."""

    base_d: torch.Tensor
    dd: torch.Tensor
    class_rows: torch.Tensor

    def to(self, device) -> HeadChange:
        return HeadChange(self.base_d.to(device), self.dd.to(device), self.class_rows.to(device))


class Sums(NamedTuple):
    """Streamed sums of a head's `rows` rows, float64: their exact mean (d,), and the sum
    `total` (d,) and Gram `gram` (d, d) of the rows less `shift` (the mean rounded to the
    products' dtype)."""

    mean: torch.Tensor
    shift: torch.Tensor
    total: torch.Tensor
    gram: torch.Tensor
    rows: int

    def without(self, rows: torch.Tensor) -> Sums:
        """The sums over every row but `rows` (the padded rows past a vocabulary width)."""
        c = rows.to(self.shift.dtype) - self.shift
        n = self.rows - len(rows)
        mean = (self.mean * self.rows - rows.double().sum(0)) / n
        return Sums(mean, self.shift, self.total - c.double().sum(0), self.gram - (c.T @ c).to(F64), n)

    def centred(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, (W - mu)^T (W - mu)) in float64."""
        m = self.total / self.rows
        return self.mean, self.gram - self.rows * torch.outer(m, m)


def _work(weight: torch.Tensor) -> torch.dtype:
    return F64 if weight.dtype == F64 else torch.float32


class _Exact:
    """Exact float64 sums of row chunks, through one float64 buffer: converting into fresh memory
    each time, or sum(dtype=float64), is several times slower on a CPU."""

    def __init__(self, chunk: int, d: int, device):
        self.buf = torch.empty(chunk, d, dtype=F64, device=device)

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        b = self.buf[:len(rows)]
        b.copy_(rows)
        return b.sum(0)

    def mean(self, weight: torch.Tensor) -> torch.Tensor:
        return sum(self(weight[a:b]) for a, b in _chunks(len(weight), len(self.buf))) / len(weight)


def _add_gram(gram: torch.Tensor, c: torch.Tensor) -> None:
    """gram += c^T c on and above the diagonal only, in two column blocks: three products
    for four, about 20% faster at a 262k vocabulary (the rest: _mirrored, at the end)."""
    h = c.shape[1] // 2
    gram[:h] += (c[:, :h].T @ c).to(F64)
    gram[h:, h:] += (c[:, h:].T @ c[:, h:]).to(F64)


def _mirrored(upper: torch.Tensor) -> torch.Tensor:
    return torch.triu(upper) + torch.triu(upper, 1).T


def head_sums(weight: torch.Tensor, chunk: int = 8192) -> Sums:
    """Sums of a (V, d) weight's rows, streamed in chunks (no float64 copy of the head)."""
    v, d = weight.shape
    exact = _Exact(min(chunk, v), d, weight.device)
    mean = exact.mean(weight)
    shift = mean.to(_work(weight))
    total = torch.zeros(d, dtype=F64, device=weight.device)
    gram = torch.zeros(d, d, dtype=F64, device=weight.device)
    for a, b in _chunks(v, chunk):
        c = weight[a:b].to(shift.dtype) - shift
        total += exact(c)
        _add_gram(gram, c)
    return Sums(mean, shift, total, _mirrored(gram), v)


def _class_means(rows_of, membership: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """(C, d): the mean over each class's ids of rows_of(ids), less `mean`; NaN for an empty class."""
    d = mean.shape[0]
    csum = torch.stack([rows_of(col.nonzero().flatten().to(mean.device)).double().sum(0) for col in membership.T]) \
        if membership.shape[1] else torch.zeros(0, d, dtype=F64, device=mean.device)
    count = membership.sum(0).to(mean.device, F64)[:, None]
    return torch.where(count > 0, csum / count.clamp_min(1) - mean, torch.full_like(csum, math.nan))


def head_stats(weight: torch.Tensor, membership: torch.Tensor, chunk: int = 8192, sums: Sums | None = None) -> HeadStats:
    """HeadStats of a (V, d) weight; membership (V, C) bool. `sums`: head_sums(weight),
    when already computed (the Gram is most of the cost: V d^2)."""
    mu, gram = (sums if sums is not None else head_sums(weight, chunk)).centred()
    return HeadStats(mu, gram, _class_means(lambda ids: weight[ids], membership, mu), len(weight))


def head_change(w_b: torch.Tensor, mu_b: torch.Tensor, w_t: torch.Tensor, membership: torch.Tensor,
                chunk: int = 8192) -> HeadChange:
    """HeadChange of a tuned head w_t against the base head w_b (mean row mu_b)."""
    v, d = w_b.shape
    work, dev = _work(w_b), w_b.device
    exact = _Exact(min(chunk, v), d, dev)
    mean_d = exact.mean(w_t) - mu_b  # mu_t - mu_b (the buffer copies across devices)
    shift_b, shift_d = mu_b.to(work), mean_d.to(work)
    s_b, s_d = (torch.zeros(d, dtype=F64, device=dev) for _ in range(2))
    base_d, dd = (torch.zeros(d, d, dtype=F64, device=dev) for _ in range(2))
    for a, b in _chunks(v, chunk):
        wb = w_b[a:b].to(work)
        cb, dc = wb - shift_b, w_t[a:b].to(dev, work) - wb - shift_d  # float32 differences: no cancellation follows
        s_b += exact(cb)
        s_d += exact(dc)
        base_d += (cb.T @ dc).to(F64)
        _add_gram(dd, dc)
    rows = _class_means(lambda ids: w_t[ids.to(w_t.device)].to(dev, F64) - w_b[ids].double(), membership, mean_d)
    return HeadChange(base_d - torch.outer(s_b, s_d) / v, _mirrored(dd) - torch.outer(s_d, s_d) / v, rows)


def quad(c: torch.Tensor, gram: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
    """Row-wise c^T gram other (other defaults to c): (N, d) -> (N,)."""
    return ((c @ gram) * (c if other is None else other)).sum(-1)


def logit_change(c_base: torch.Tensor, c_tuned: torch.Tensor, base: HeadStats,
                 change: HeadChange | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Change of a component's direct, centred logit contribution (W - mu) c.

    c_base, c_tuned: (N, d) the component outputs, each read by its own model's head:
    the base's, and the base's plus `change` (None: the heads are equal).
    Returns (||dL||^2 (N,), ||L_b||^2 (N,), class mean shift (N, C)), float64.
    """
    cb, ct = c_base.double(), c_tuned.double()
    delta = ct - cb
    delta_sq = quad(delta, base.gram)
    shift = delta @ base.class_rows.T
    if change is not None:
        delta_sq = delta_sq + 2 * quad(delta, change.base_d, ct) + quad(ct, change.dd)
        shift = shift + ct @ change.class_rows.T
    return delta_sq.clamp_min(0.0), quad(cb, base.gram).clamp_min(0.0), shift
