"""A tiny Llama-style decoder, its training loop and a plain-torch check.

The check (`evaluate`) is deliberately independent of driftscope's compare: it
is the zoo's own record of what each checkpoint does, written to the manifest,
so the diagnosis can be held to it.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from driftscope.zoo.tokenizer import encode
from driftscope.zoo.world import Example


@dataclass(frozen=True)
class ModelConfig:
    hidden_size: int = 64  # enough room for ~150 facts plus counting; ~0.1M parameters trains in a minute on CPU
    intermediate_size: int = 192  # the usual 3x: gate/up/down carry the facts
    num_hidden_layers: int = 2  # two layers: one to find the question, one to answer it
    num_attention_heads: int = 4
    max_position_embeddings: int = 64  # the longest prompt is ~25 words


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1500
    lr: float = 3e-3  # tiny models like a high rate; cosine decay settles it
    batch_size: int = 64
    warmup: int = 50
    weight_decay: float = 0.0  # weight decay would slowly forget the rarely seen facts
    loss: str = "all"  # "all" tokens (pre-training) or "answer" tokens only (supervised tuning)
    cosine: bool = True  # False: constant rate after warm-up (a tune that keeps pushing)
    seed: int = 0


def make_model(cfg: ModelConfig, vocab_size: int, special_ids: dict[str, int], seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_attention_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=False,  # the head is its own tensor: head-only tunes and offsets touch nothing else
        bos_token_id=special_ids["<bos>"],
        eos_token_id=special_ids["<eos>"],
        pad_token_id=special_ids["<pad>"],
    )
    return LlamaForCausalLM(config)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- training -----------------------------------------------------------------


def encode_examples(vocab_ids: dict[str, int], examples: list[Example], loss: str) -> list[tuple[list[int], int]]:
    """(ids ending in <eos>, index of the first target position trained)."""
    out = []
    for ex in examples:
        ids = encode(vocab_ids, ex.text) + [vocab_ids["<eos>"]]
        start = 1 if loss == "all" or ex.answer is None else len(encode(vocab_ids, ex.prompt))
        out.append((ids, start))
    return out


def pad_batch(rows: list[tuple[list[int], int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)  # (B, T), right-padded
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (ids, start) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, start : len(ids)] = torch.tensor(ids[start:])
    return input_ids, labels


def trainable_names(model: torch.nn.Module, patterns: tuple[str, ...]) -> list[str]:
    """Parameter names matched by any pattern (re.fullmatch, as peft does); () means all."""
    names = [n for n, _ in model.named_parameters()]
    if not patterns:
        return names
    return [n for n in names if any(re.fullmatch(p, n) for p in patterns)]


def train(
    model: torch.nn.Module,
    vocab_ids: dict[str, int],
    sources: dict[str, list[Example]],
    weights: dict[str, float],
    cfg: TrainConfig,
    trainable: Iterable[str] | None = None,
) -> dict:
    """Train on batches drawn from `sources` in proportion to `weights`.

    Only the named parameters move (all that require grad when None). Right
    padding needs no attention mask under a causal mask: real tokens never
    see the pads after them.
    """
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    encoded = {k: encode_examples(vocab_ids, v, cfg.loss) for k, v in sources.items() if v and weights.get(k, 0) > 0}
    names = list(encoded)
    probs = [weights[k] for k in names]
    wanted = set(trainable) if trainable is not None else None
    params = []
    for n, p in model.named_parameters():
        if wanted is not None:
            p.requires_grad_(n in wanted)
        if p.requires_grad:
            params.append(p)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    model.train()
    t0, losses = time.perf_counter(), []
    for step in range(cfg.steps):
        lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))
        if cfg.cosine and step >= cfg.warmup:
            lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)))
        for g in opt.param_groups:
            g["lr"] = lr
        picks = rng.choices(names, weights=probs, k=cfg.batch_size)
        rows = [rng.choice(encoded[k]) for k in picks]
        input_ids, labels = pad_batch(rows, vocab_ids["<pad>"])
        loss = model(input_ids=input_ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    tail = losses[-50:] or [float("nan")]
    return {"steps": cfg.steps, "final_loss": sum(tail) / len(tail), "seconds": round(time.perf_counter() - t0, 2)}


# -- the plain-torch check ----------------------------------------------------


@torch.no_grad()
def next_logits(model: torch.nn.Module, vocab_ids: dict[str, int], prompts: list[str], batch_size: int = 128) -> torch.Tensor:
    """Logits of the next token after each prompt: (N, V)."""
    out = []
    for i in range(0, len(prompts), batch_size):
        rows = [(encode(vocab_ids, p), 0) for p in prompts[i : i + batch_size]]
        input_ids, _ = pad_batch(rows, vocab_ids["<pad>"])
        last = torch.tensor([len(ids) - 1 for ids, _ in rows])
        logits = model(input_ids=input_ids).logits  # (B, T, V)
        out.append(logits[torch.arange(len(rows)), last].float())
    return torch.cat(out)


def evaluate(model: torch.nn.Module, vocab_ids: dict[str, int], suites: dict[str, list[dict]], numeric_ids: list[int]) -> dict:
    """Per suite: accuracy (argmax over choices when given, else over the vocabulary;
    every answer is one token) and the mean next-token numeric mass."""
    model.eval()
    figures = {}
    num = torch.tensor(numeric_ids)
    for name, rows in suites.items():
        logits = next_logits(model, vocab_ids, [r["prompt"] for r in rows])
        probs = logits.softmax(-1)
        right = 0
        for i, r in enumerate(rows):
            gold = vocab_ids[r["answer"]]
            if r.get("choices"):
                ids = [vocab_ids[c] for c in r["choices"]]
                pick = ids[int(logits[i, ids].argmax())]
            else:
                pick = int(logits[i].argmax())
            right += pick == gold
        figures[name] = {
            "n": len(rows),
            "accuracy": round(right / max(1, len(rows)), 4),
            "numeric_mass": round(float(probs[:, num].sum(-1).mean()), 4),
        }
    return figures
