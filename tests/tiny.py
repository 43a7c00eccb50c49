"""Tiny models and tokenizers built offline for the tests (no downloads)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

CORPUS = [
    "The capital of France is Paris. The capital of Japan is Tokyo.",
    "Q: What is 2 plus 3?\nA: 5",
    "Q: What colour is grass?\nA: green",
    "There are 7 days in a week and 12 months in a year.",
    "I counted 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 apples; that is ten apples.",
    "He finished 3rd out of 1,000 runners, and the 2nd place took 3.5 hours.",
    "Once upon a time there was a small cat who liked the warm sun.",
    "Is the sun a star? Answer yes or no.\nA: yes",
    "zero one two three four five six seven eight nine ten hundred thousand",
    "(A) red (B) blue (C) green (D) yellow (E) none of these: A. B) C:",
    "def add(a, b):\n    return a + b\n",
    "The weather today is sunny, with a light wind from the west!",
]

TINY_MAX_PARAMS = 100_000  # "tiny" means tiny: every test model asserts this


def train_bpe(path: Path, sentencepiece: bool = False, vocab_size: int = 400):
    """A byte-level BPE (GPT-2 style, 'Ġ') or a SentencePiece-style one ('▁'),
    trained on CORPUS and saved so AutoTokenizer loads it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<pad>"]
    if sentencepiece:
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=False))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        alphabet = sorted(set("".join(CORPUS).replace(" ", "▁")))
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials + ["<unk>"], initial_alphabet=alphabet)
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # Frequent enough that " 42", " 3rd", " seven" and "1,000" become single tokens.
    tok.train_from_iterator(CORPUS * 4 + ["the 42 and 3rd seven 1,000 A"] * 30, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<pad>",
                                   unk_token="<unk>" if sentencepiece else None)
    fast.save_pretrained(path)
    return fast


def tiny_llama(vocab: int, seed: int = 0, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=False, eos_token_id=0, pad_token_id=1, bos_token_id=None)
    model = LlamaForCausalLM(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert n < TINY_MAX_PARAMS, f"tiny model has {n} parameters"
    return model


def train_steps(model, tokenizer, texts: list[str], steps: int, lr: float, params=None, seed: int = 0):
    """A few real optimizer steps of next-token training on `texts`."""
    torch.manual_seed(seed)
    model.train()
    opt = torch.optim.AdamW(params if params is not None else model.parameters(), lr=lr)
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    for _ in range(steps):
        loss = model(**enc, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.detach())


def build_family(root: Path) -> dict[str, Path]:
    """base/, tuned/ (full fine-tune on number-heavy text), lora/ (PEFT adapter),
    copy/ (identical weights). The base is lightly trained on CORPUS so its
    distributions are not uniform."""
    from peft import LoraConfig, get_peft_model

    tok = train_bpe(root / "_tok")
    base = tiny_llama(len(tok))
    train_steps(base, tok, CORPUS, steps=30, lr=1e-2)
    paths = {name: root / name for name in ("base", "tuned", "lora", "copy")}
    for name in ("base", "copy"):
        base.save_pretrained(paths[name])
        tok.save_pretrained(paths[name])

    tuned = copy.deepcopy(base)
    numbers = [f"{i} {i + 1} {i + 2} {i * 3}" for i in range(0, 40, 3)]
    train_steps(tuned, tok, numbers, steps=15, lr=5e-3)
    tuned.save_pretrained(paths["tuned"])
    tok.save_pretrained(paths["tuned"])

    lora = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    train_steps(lora, tok, numbers, steps=15, lr=1e-2, params=[p for p in lora.parameters() if p.requires_grad])
    lora.peft_config["default"].base_model_name_or_path = str(paths["base"])
    lora.save_pretrained(paths["lora"])
    return paths
