"""Weight-space distances: pure tensor maths, no I/O.

Everything accumulates in float64: a bf16 tensor's squared norm summed in bf16
loses the small deltas a fine-tune makes.
"""

from __future__ import annotations

import math

import torch


def sq_norms(base: torch.Tensor, tuned: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(||W_b||_F^2, ||W_t - W_b||_F^2) as 0-d float64 tensors. Shapes must match.

    Squared sums add over chunks of a tensor, so a caller can stream rows.
    """
    if base.shape != tuned.shape:
        raise ValueError(f"shape mismatch: {tuple(base.shape)} vs {tuple(tuned.shape)}")
    b = base.to(torch.float64)
    d = tuned.to(torch.float64) - b
    return b.square().sum(), d.square().sum()


def relative_change(delta_norm: torch.Tensor | float, base_norm: torch.Tensor | float) -> torch.Tensor:
    """delta_norm / base_norm, in [0, inf].

    A zero base (a bias initialised at 0) gives 0 when nothing moved and inf
    when it did: any change of a zero tensor is infinitely large relative to it.
    """
    d = torch.as_tensor(delta_norm, dtype=torch.float64)
    b = torch.as_tensor(base_norm, dtype=torch.float64)
    safe = torch.where(b > 0, b, torch.ones_like(b))
    return torch.where(b > 0, d / safe, torch.where(d > 0, torch.full_like(d, math.inf), torch.zeros_like(d)))


def rel_frobenius(base: torch.Tensor, tuned: torch.Tensor) -> torch.Tensor:
    """||W_t - W_b||_F / ||W_b||_F as a 0-d float64 tensor (see relative_change for W_b = 0)."""
    base_sq, delta_sq = sq_norms(base, tuned)
    return relative_change(delta_sq.sqrt(), base_sq.sqrt())


def lora_scaling(lora_alpha: float, r: int, use_rslora: bool = False) -> float:
    """peft's scaling: lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA."""
    if r <= 0:
        raise ValueError(f"LoRA rank must be positive, got {r}")
    return lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r


def lora_delta(
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scaling: float,
    *,
    transpose: bool = False,
    rows: slice | None = None,
) -> torch.Tensor:
    """The effective weight change scaling * B @ A of a LoRA module, in float64.

    lora_A: (r, in), lora_B: (out, r) -> (out, in). With transpose=True the
    result is (B @ A).T, laid out like the base weight when that is stored
    (in, out): GPT-2's Conv1D (peft's fan_in_fan_out) and embeddings, whose
    lora_embedding_A is (r, vocab) and lora_embedding_B (d_model, r).
    `rows` selects rows of the result without forming the rest.
    """
    a = lora_A.to(torch.float64)
    b = lora_B.to(torch.float64)
    left, right = (a.T, b.T) if transpose else (b, a)  # delta = left @ right
    if rows is not None:
        left = left[rows]
    return scaling * (left @ right)
