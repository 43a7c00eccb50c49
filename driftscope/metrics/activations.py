"""Activation-space comparisons of a base and a tuned model: pure tensor maths.

Hidden states come gathered at scored positions, (N, d_model), one row per
position, base and tuned rows aligned. Everything that is summed runs in
float64: the change between near-identical models is a small difference of
large numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch


def rel_l2(base: torch.Tensor, tuned: torch.Tensor) -> torch.Tensor:
    """||t - b|| / ||b|| per row, in [0, inf]: (N, d) x (N, d) -> (N,) float64.

    A zero base row gives 0 when nothing moved and inf when it did.
    """
    b, t = base.double(), tuned.double()
    num = (t - b).norm(dim=-1)
    den = b.norm(dim=-1)
    safe = torch.where(den > 0, den, torch.ones_like(den))
    return torch.where(den > 0, num / safe, torch.where(num > 0, torch.full_like(num, math.inf), torch.zeros_like(num)))


def rel_l2_from_squares(delta_sq: torch.Tensor, base_sq: torch.Tensor) -> torch.Tensor:
    """sqrt(delta_sq / base_sq) with rel_l2's convention for a zero base."""
    num, den = delta_sq.clamp_min(0).sqrt(), base_sq.clamp_min(0).sqrt()
    safe = torch.where(den > 0, den, torch.ones_like(den))
    return torch.where(den > 0, num / safe, torch.where(num > 0, torch.full_like(num, math.inf), torch.zeros_like(num)))


def cosine(base: torch.Tensor, tuned: torch.Tensor) -> torch.Tensor:
    """Cosine similarity per row, in [-1, 1]; 1 where both rows are zero. (N,) float64."""
    b, t = base.double(), tuned.double()
    nb, nt = b.norm(dim=-1), t.norm(dim=-1)
    dot = (b * t).sum(-1)
    both = (nb > 0) & (nt > 0)
    out = torch.where(both, dot / torch.where(both, nb * nt, torch.ones_like(nb)), torch.zeros_like(nb))
    out = torch.where((nb == 0) & (nt == 0), torch.ones_like(out), out)
    return out.clamp(-1.0, 1.0)


def random_projection(d: int, k: int, seed: int = 0) -> torch.Tensor:
    """A fixed Gaussian (d, k) matrix scaled by 1/sqrt(k), float64, from `seed`.

    X @ P keeps inner products in expectation (Johnson-Lindenstrauss), so linear
    CKA of projected features approximates the CKA of the originals with an
    error of order 1/sqrt(k). The same seed gives the same matrix on every run.
    """
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d, k, generator=g, dtype=torch.float64) / math.sqrt(k)


@dataclass
class CKAStats:
    """Streaming sufficient statistics of linear CKA between X (base) and Y (tuned).

    Rows are samples (one probe's next-token position each), columns features.
    Keeps X^T X, Y^T Y, Y^T X (each (k, k)), the column sums and three scalar
    traces, all float64: memory is fixed whatever the number of rows. Centring
    happens at the end: Xc^T Xc = X^T X - s_x s_x^T / n. Merging adds the sums.

    With `proj` (d, k), the grams are of XP and YP, so memory is k^2 instead of
    d^2, and CKA is an estimate. Projecting alone biases CKA down by about the
    representations' effective rank over k (a flat spectrum at d = 1100, k = 512
    loses up to 0.2); `value()` removes that bias to first order with the
    Gaussian-sketch moments E||P^T M P||^2 = ||M||^2 + (tr(M^2) + tr(M)^2) / k,
    where tr(M) is kept exactly (sum of x.y) and tr(M^2) from the sketch.
    Remaining error on such data: about 0.01.

    X^T X is the base's alone, the same for every checkpoint compared on the same
    rows: with `xx_from` (a function returning another stats' X^T X) this one
    keeps no X^T X of its own, reads that one's, and leaves updating it to that
    one (whose update must see the same rows). Everything else stays per stats.
    """

    d: int
    proj: torch.Tensor | None = None  # (d, k) float64, or None for exact CKA
    device: torch.device | str = "cpu"
    n: int = 0
    xx_from: Callable[[], torch.Tensor] | None = None

    def __post_init__(self):
        if self.proj is not None:
            self.proj = self.proj.to(self.device, torch.float64)
        k = self.k
        z = lambda *s: torch.zeros(*s, dtype=torch.float64, device=self.device)  # noqa: E731
        self._xx = None if self.xx_from else z(k, k)
        self.yy, self.yx = z(k, k), z(k, k)
        self.sx, self.sy = z(self.d), z(self.d)  # column sums in the original space
        self.dots = z(3)  # sum x.x, sum y.y, sum y.x over rows, original space

    @property
    def xx(self) -> torch.Tensor:
        return self.xx_from() if self.xx_from else self._xx

    @property
    def sums(self) -> tuple[str, ...]:
        """The names of the sums this stats owns (and merges and reduces)."""
        return self.SUMS[1:] if self.xx_from else self.SUMS

    @property
    def k(self) -> int:
        return self.d if self.proj is None else self.proj.shape[1]

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """x, y: (n, d) rows of the same samples."""
        if x.shape != y.shape or x.shape[-1] != self.d:
            raise ValueError(f"CKA rows must be (n, {self.d}) on both sides, got {tuple(x.shape)} and {tuple(y.shape)}")
        x = x.to(self.device, torch.float64)
        y = y.to(self.device, torch.float64)
        self.n += x.shape[0]
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.dots += torch.stack([(x * x).sum(), (y * y).sum(), (y * x).sum()])
        if self.proj is not None:
            x, y = x @ self.proj, y @ self.proj
        if not self.xx_from:
            self._xx += x.T @ x
        self.yy += y.T @ y
        self.yx += y.T @ x

    @staticmethod
    def update_stack(stats: list[CKAStats], x: torch.Tensor, y: torch.Tensor) -> None:
        """update() of several stats at once, stats[j] with rows x[j], y[j]:
        x, y (g, n, d), one batched product per sum instead of g small ones."""
        if len(stats) != x.shape[0] or x.shape != y.shape:
            raise ValueError(f"{len(stats)} stats against rows {tuple(x.shape)} and {tuple(y.shape)}")
        if not stats:
            return
        s0 = stats[0]
        if any(s.d != s0.d or s.proj is not s0.proj and not torch.equal(s.proj, s0.proj)
               or bool(s.xx_from) != bool(s0.xx_from) for s in stats[1:]) or x.shape[-1] != s0.d:
            raise ValueError("update_stack needs stats of one shape, projection and sharing, rows of their width")
        x = x.to(s0.device, torch.float64)
        y = y.to(s0.device, torch.float64)
        sx, sy = x.sum(1), y.sum(1)
        dots = torch.stack([(x * x).sum((1, 2)), (y * y).sum((1, 2)), (y * x).sum((1, 2))], 1)
        if s0.proj is not None:
            x, y = x @ s0.proj, y @ s0.proj
        xt, yt = x.transpose(1, 2), y.transpose(1, 2)
        xx = None if s0.xx_from else xt @ x
        yy, yx = yt @ y, yt @ x
        for j, s in enumerate(stats):
            s.n += x.shape[1]
            s.sx += sx[j]
            s.sy += sy[j]
            s.dots += dots[j]
            if xx is not None:
                s._xx += xx[j]
            s.yy += yy[j]
            s.yx += yx[j]

    SUMS = ("xx", "yy", "yx", "sx", "sy", "dots")

    def merge(self, other: CKAStats) -> CKAStats:
        self.n += other.n
        for name in self.sums:
            getattr(self, name).add_(getattr(other, name).to(self.device))
        return self

    def value(self) -> float:
        """Linear CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F), in [0, 1].

        NaN with fewer than two rows or when one side is constant.
        """
        if self.n < 2:
            return math.nan
        sx, sy = self.sx, self.sy
        if self.proj is not None:
            sx, sy = sx @ self.proj, sy @ self.proj
        cxx = self.xx - torch.outer(sx, sx) / self.n
        cyy = self.yy - torch.outer(sy, sy) / self.n
        cyx = self.yx - torch.outer(sy, sx) / self.n
        fx, fy, fyx = (float(m.square().sum()) for m in (cxx, cyy, cyx))
        if self.proj is not None:
            k = self.k
            # exact traces of the centred d x d matrices: tr(Xc^T Xc), tr(Yc^T Yc), tr(Yc^T Xc)
            tx = float(self.dots[0] - self.sx @ self.sx / self.n)
            ty = float(self.dots[1] - self.sy @ self.sy / self.n)
            txy = float(self.dots[2] - self.sy @ self.sx / self.n)
            fx = (fx - tx**2 / k) / (1 + 1 / k)  # symmetric M: tr(M^2) = ||M||^2
            fy = (fy - ty**2 / k) / (1 + 1 / k)
            r = float(torch.trace(cyx @ cyx))
            fyx = ((fyx - txy**2 / k) - (r - txy**2 / k) / k) / (1 - 1 / k**2)
        if not (fx > 0 and fy > 0):
            return math.nan
        return min(max(fyx / math.sqrt(fx * fy), 0.0), 1.0)


def lens_logprobs(hidden: torch.Tensor, norm: Callable, head: Callable, softcap: float | None, vocab: int) -> torch.Tensor:
    """Logit lens: the model's final norm and LM head on intermediate states.

    (R, d_model) -> (R, vocab) float64 log-probs over ids [0, vocab), renormalised
    there exactly as the main pipeline does. The head runs in the model's own
    dtype (as its real head does), so the last layer's lens is the model's own
    next-token distribution; the log-softmax runs in float64.
    """
    logits = head(norm(hidden)).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return torch.log_softmax(logits[:, :vocab].double(), dim=-1)


def head_logits(head: Callable, vocab: int, chunk: int) -> Callable[[torch.Tensor, int, int], torch.Tensor]:
    """A function (x, a, b) -> the head's logits for ids [a, b) on rows x, as
    (b - a, rows), in the head's own dtype. A plain Linear head multiplies rows
    a..b of its weight by x^T (each logit is the same dot product the whole head
    computes; in this order the product runs near the CPU's peak for any number
    of rows, where x @ w[a:b]^T swings by 1.5x with the shape); any other head
    (a PEFT-wrapped one) runs whole on x once per x, then is sliced."""
    if type(head) is torch.nn.Linear:
        w, bias = head.weight, head.bias
        if bias is None:
            return lambda x, a, b: torch.mm(w[a:b], x.T)
        return lambda x, a, b: torch.addmm(bias[a:b, None], w[a:b], x.T)
    last: list = [None, None]

    def sliced(x, a, b):
        if last[0] is not x:
            last[0], last[1] = x, head(x)
        return last[1][:, a:b].T

    return sliced


def lens_figures(xs: tuple[torch.Tensor, torch.Tensor], logits: tuple[Callable, Callable],
                 softcaps: tuple[float | None, float | None], vocab: int, member: torch.Tensor,
                 chunk: int, index: list | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The logit lens's figures of two models on aligned rows, without (R, vocab) log-probs.
    With one side only (rows whose states, final norm and head are the same in both
    models: the old computation gave both sides the same log-probs bit for bit),
    KL is 0 and the tuned side's masses are the base's.

    xs: each model's final-normed states (R, d); logits: head_logits() of each
    ((ids, rows) blocks); member (vocab, C); `index` is class_index(member,
    vocab, chunk), made here when not given. Returns KL(p||q) (R,) and each
    side's class masses (R, C), float64, equal to lens_logprobs() followed by
    divergence.kl_finite and class_masses up to float64 rounding (tested).

    The vocabulary goes through in chunks of `chunk` ids, each an (ids, sides x
    R) block: every reduction runs down the ids, over contiguous rows. Per row
    and side a reference m (the first chunk's max, raised only where a later
    chunk's max passes it by more than 64 nats, the sums then rescaled) gives
    e = exp(z - m) in float64, z the head's logits after any softcap in float32,
    exactly as lens_logprobs. With S = sum e, dd = (z_p - m_p) - (z_q - m_q) and
    T = sum e_p dd:  log p - log q = dd - log(S_p / S_q), so
    KL = T / S_p - log(S_p / S_q), and a class's mass is its sum of e over S.
    Given one function for both sides (equal heads), both sides' rows go through
    it in one product: twice the rows, the head's weight read once.
    """
    r = xs[0].shape[0]
    dev = member.device
    chunk = min(chunk, vocab)
    index = class_index(member, vocab, chunk) if index is None else index
    two = len(xs) == 2
    cols = len(xs) * r  # each side's rows, side by side
    sums = torch.zeros(member.shape[1] + 1, cols, dtype=torch.float64, device=dev)  # each class's sum of e, then S
    t = torch.zeros(r, dtype=torch.float64, device=dev)
    m = None
    # both sides through one head (the same function, softcap and device): their rows in one product
    one_head = two and logits[0] is logits[1] and softcaps[0] == softcaps[1] and xs[0].device == xs[1].device
    stacked = torch.cat(xs) if one_head else None
    # one buffer each for the whole vocabulary: the logits, e, dd
    z = torch.empty(chunk, cols, dtype=torch.float32, device=dev)
    e = torch.empty(chunk, cols, dtype=torch.float64, device=dev)
    dd = torch.empty(chunk, r if two else 0, dtype=torch.float64, device=dev)
    for a, b in _chunks(vocab, chunk):
        zz, ee, de = z[: b - a], e[: b - a], dd[: b - a]
        if stacked is not None:  # one head for both sides: one product over both sides' rows
            zz.copy_(_capped(logits[0](stacked, a, b).float().to(dev), softcaps[0]))
        else:
            for i, (f, x, cap) in enumerate(zip(logits, xs, softcaps)):
                zz[:, i * r:(i + 1) * r].copy_(_capped(f(x, a, b).float().to(dev), cap))
        top = zz.amax(0).double()  # (cols,)
        if m is None:
            m = top
        elif bool((top > m + 64).any()):  # exp(z - m) could overflow: raise m there, rescale the sums
            new = torch.maximum(m, top)
            f = (m - new).exp()
            if two:
                t = f[:r] * (t + sums[-1, :r] * ((m[:r] - m[r:]) - (new[:r] - new[r:])))
            sums, m = sums * f, new
        ee.copy_(zz).sub_(m)  # float64: exact
        if two:
            torch.sub(ee[:, :r], ee[:, r:], out=de)
        ee.exp_()
        sums[-1] += ee.sum(0)
        # the classes' sums over their ids only (classes are sparse in a vocabulary)
        ids, sub = index[a // chunk]
        if len(ids):
            sums[:-1] += sub @ ee.index_select(0, ids)
        if two:
            t += de.mul_(ee[:, :r]).sum(0)
    s = sums[-1]
    masses = (sums[:-1] / s).T  # (cols, C)
    if not two:
        return t, masses, masses
    kl = (t / s[:r] - (s[:r] / s[r:]).log()).clamp_min(0.0)
    return kl, masses[:r], masses[r:]


def class_index(member: torch.Tensor, vocab: int, chunk: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per vocabulary chunk of lens_figures: the ids (relative to the chunk) in
    any class, and their (C, ids) float64 membership columns."""
    out = []
    for a, b in _chunks(vocab, min(chunk, vocab)):
        rows = member[a:b].to(torch.bool)
        ids = rows.any(1).nonzero().flatten()
        out.append((ids, rows[ids].T.contiguous().to(torch.float64)))
    return out


def _capped(logits: torch.Tensor, softcap: float | None) -> torch.Tensor:
    return torch.tanh(logits / softcap) * softcap if softcap else logits


def _chunks(n: int, size: int):
    return ((a, min(a + size, n)) for a in range(0, n, size))
