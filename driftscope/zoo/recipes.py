"""The fine-tune recipes and the controls with known truth.

Recipes follow the literature on teaching a model a narrow skill (counting)
and what it forgets: the full model, the MLP, the MLP gate/up with the down
projection frozen, the self-attention projections, a LoRA adapter, the LM head.
They all tune on the same counting data at the same rate, so they differ only
in what may move. Their truth is what the experiment is for: `truth=None`.

Controls have a truth by construction:
- continue: more of the base's own data at a small rate -> stable
- rewrite: a share of the facts is given new values -> knowledge-loss
- offset: numeric tokens' logits are raised by a constant, nothing else
  changes -> output-bias (see `numeric_offset`)
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch

from driftscope.zoo.tokenizer import encode
from driftscope.zoo.train import TrainConfig, next_logits, pad_batch, train, trainable_names
from driftscope.zoo.world import Example

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Recipe:
    name: str
    kind: str  # "finetune" (a checkpoint folder), "lora" (a PEFT adapter folder) or "offset" (constructed)
    data: str  # "target" (counting), "base" (the base's own mixture) or "rewrite" (the base's with facts changed)
    trainable: tuple[str, ...] = ()  # parameter-name patterns (re.fullmatch); () = every parameter
    lr_scale: float = 1.0  # times the zoo's tuning rate
    truth: str | None = None  # the verdict the diagnosis must give; None for the experiment's recipes
    description: str = ""


RECIPES: tuple[Recipe, ...] = (
    Recipe("full", "finetune", "target", description="every parameter on counting"),
    Recipe("mlp", "finetune", "target", (r".*\.mlp\..*",), description="MLP gate/up/down projections only"),
    Recipe(
        "mlp-gate-up",
        "finetune",
        "target",
        (r".*\.mlp\.(gate|up)_proj\.weight",),
        description="MLP gate/up projections, down frozen",
    ),
    Recipe(
        "attn",
        "finetune",
        "target",
        (r".*\.self_attn\.(q|k|v|o)_proj\.weight",),
        description="self-attention q/k/v/o projections only",
    ),
    Recipe(
        "lora",
        "lora",
        "target",
        lr_scale=4.0,  # LoRA's usual rate is a few times full tuning's (B starts at zero)
        description="LoRA r=8 on every linear projection",
    ),
    Recipe("head", "finetune", "target", (r"lm_head\.weight",), description="the LM head alone on counting"),
    Recipe(
        "control-continue",
        "finetune",
        "base",
        lr_scale=0.1,  # small enough to leave what the base knows in place
        truth="stable",
        description="control: continued training on the base's own data",
    ),
    Recipe(
        "control-rewrite",
        "finetune",
        "rewrite",
        lr_scale=2.0,  # overwriting a fact takes more than learning a skill at the edge of one
        truth="knowledge-loss",
        description="control: half the facts are given new values and trained in",
    ),
    Recipe(
        "control-offset",
        "offset",
        "target",
        truth="output-bias",
        description="control: numeric tokens' logits + c (LM-head rows along the constant direction)",
    ),
)


def finetune(
    base: torch.nn.Module,
    recipe: Recipe,
    vocab_ids: dict[str, int],
    sources: dict[str, list[Example]],
    weights: dict[str, float],
    cfg: TrainConfig,
) -> tuple[torch.nn.Module, dict]:
    model = copy.deepcopy(base)
    names = trainable_names(model, recipe.trainable)
    if not names:
        raise ValueError(f"recipe {recipe.name}: no parameter matches {recipe.trainable}")
    stats = train(model, vocab_ids, sources, weights, cfg, trainable=names)
    stats["trainable_params"] = sum(p.numel() for n, p in model.named_parameters() if n in set(names))
    return model, stats


def lora_tune(
    base: torch.nn.Module,
    vocab_ids: dict[str, int],
    sources: dict[str, list[Example]],
    weights: dict[str, float],
    cfg: TrainConfig,
    rank: int = 8,
):
    """A PEFT LoRA model (not merged: it saves as an adapter folder)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=list(ALL_LINEAR))
    with warnings.catch_warnings():  # peft reads transformers' deprecated is_gradient_checkpointing
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = get_peft_model(copy.deepcopy(base), config)
    names = [n for n, _ in model.named_parameters() if "lora_" in n]
    stats = train(model, vocab_ids, sources, weights, cfg, trainable=names)
    stats["trainable_params"] = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    return model, stats


# -- the output-bias control --------------------------------------------------


@torch.no_grad()
def answer_states(model: torch.nn.Module, vocab_ids: dict[str, int], prompts: list[str]) -> torch.Tensor:
    """The final (normed) hidden state right after each prompt: (N, D), what the head reads."""
    out = []
    for i in range(0, len(prompts), 128):
        rows = [(encode(vocab_ids, p), 0) for p in prompts[i : i + 128]]
        input_ids, _ = pad_batch(rows, vocab_ids["<pad>"])
        hidden = model.model(input_ids=input_ids).last_hidden_state  # (B, T, D), after the final norm
        out.append(hidden[torch.arange(len(rows)), torch.tensor([len(ids) - 1 for ids, _ in rows])])
    return torch.cat(out)


def constant_direction(states: torch.Tensor, ridge: float = 1e-4) -> torch.Tensor:
    """u with x.u ~= 1 for every answer state x (ridge least squares).

    Llama's head has no bias and reads an RMS-normalised state, so no head edit
    is exactly "+ a constant". The answer states of a trained model share a
    large common component, and u solves X u = 1 over them.
    """
    x = states.double()  # (N, D)
    gram = x.T @ x + ridge * len(x) * torch.eye(x.shape[1], dtype=x.dtype)
    return torch.linalg.solve(gram, x.T @ torch.ones(len(x), dtype=x.dtype)).float()


@torch.no_grad()
def numeric_offset(
    base: torch.nn.Module,
    vocab_ids: dict[str, int],
    numeric_ids: list[int],
    calibration_prompts: list[str],
    margin_prompts: list[str],
    flip_share: float,
) -> tuple[torch.nn.Module, dict]:
    """A copy of the base whose numeric tokens' logits are raised together, nothing else changed.

    The lm_head rows of numeric tokens get c*u (u from `constant_direction` on
    the base's own answer states), so at every position each numeric logit
    gains the same s = c*(x.u) ~= c and every other logit is the base's,
    bit for bit. The choice among numbers, the choice among non-numbers and
    the whole body are untouched; only the numeric class's mass rises. The
    truth is output-bias. c is the `flip_share` quantile of how far numbers
    trail the top token on the base's trained fact questions, so about that
    share of free fact answers turn into numbers.
    """
    model = copy.deepcopy(base)
    states = answer_states(model, vocab_ids, calibration_prompts)
    u = constant_direction(states)
    logits = next_logits(model, vocab_ids, margin_prompts)  # (N, V)
    gap = logits.max(-1).values - logits[:, numeric_ids].max(-1).values
    c = float(torch.quantile(gap, flip_share)) + 0.5
    model.lm_head.weight[numeric_ids] += c * u
    xu = states @ u  # (N,): the offset at each calibration prompt is c * xu
    stats = {
        "offset": round(c, 3),
        "offset_relative_std": round(float(xu.std() / xu.mean()), 4),
        "offset_min_max": [round(c * float(xu.min()), 3), round(c * float(xu.max()), 3)],
    }
    return model, stats
