"""Architecture discovery: where the decoder blocks, the final norm and the LM head live.

We hook Hugging Face modules as they are, so every supported family is a table
of attribute paths picked by the config's `model_type`, never a guess from
tensor names. The same table names each block's parameters, so a tensor in a
safetensors file maps to a module type (q, k, v, o, qkv, gate, up, down,
gate_up, embed, head, norm, other) without building the model.

GPT-style MLPs are mapped onto the gated vocabulary: the expansion (GPT-2
`c_fc`, Phi `fc1`, NeoX `dense_h_to_4h`) is `up`, the projection back
(`mlp.c_proj`, `fc2`, `dense_4h_to_h`) is `down`, so tables group the same way
across families. Fused tensors keep their own type: `qkv` (GPT-2 `c_attn`,
NeoX `query_key_value`, Phi-3 `qkv_proj`) and `gate_up` (Phi-3).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from torch import nn

from driftscope.errors import DriftscopeError

MODULE_TYPES = (
    "q", "k", "v", "o", "qkv", "gate", "up", "down", "gate_up",
    "embed", "head", "norm", "other",
)


class ArchitectureError(DriftscopeError):
    """The model's architecture is not one driftscope knows how to take apart."""


@dataclass(frozen=True)
class Family:
    """Where things live in one family, as attribute paths from the CausalLM."""

    name: str
    model_types: tuple[str, ...]
    layers: tuple[str, ...]  # candidate paths to the ModuleList of blocks, first found wins
    attn: str  # attribute of a block
    mlp: str
    final_norm: tuple[str, ...]
    lm_head: tuple[str, ...]
    # parameter owner path inside a block (no .weight/.bias) -> module type
    block_params: Mapping[str, str]



_NORMS_LLAMA = {"input_layernorm": "norm", "post_attention_layernorm": "norm"}
_ATTN_QKVO = {
    "self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v", "self_attn.o_proj": "o",
}
_MLP_GATED = {"mlp.gate_proj": "gate", "mlp.up_proj": "up", "mlp.down_proj": "down"}
_LLAMA_PARAMS = {**_ATTN_QKVO, **_MLP_GATED, **_NORMS_LLAMA}
_GEMMA_PARAMS = {
    **_LLAMA_PARAMS,
    "pre_feedforward_layernorm": "norm", "post_feedforward_layernorm": "norm",
    "self_attn.q_norm": "norm", "self_attn.k_norm": "norm",  # Gemma 3 (and Qwen3-style) QK-norm
}


def _llama_like(name: str, model_types: tuple[str, ...], params: Mapping[str, str],
                layers: tuple[str, ...] = ("model.layers",),
                final_norm: tuple[str, ...] = ("model.norm",)) -> Family:
    return Family(name, model_types, layers, "self_attn", "mlp", final_norm, ("lm_head",),
                  MappingProxyType(dict(params)))


FAMILIES: tuple[Family, ...] = (
    _llama_like("llama", ("llama",), _LLAMA_PARAMS),
    _llama_like("mistral", ("mistral",), _LLAMA_PARAMS),
    _llama_like("qwen2", ("qwen2",), _LLAMA_PARAMS),
    _llama_like("gemma", ("gemma",), _LLAMA_PARAMS),
    _llama_like("gemma2", ("gemma2",), _GEMMA_PARAMS),
    # gemma3 is the multimodal Gemma3ForConditionalGeneration: its text decoder
    # sits under model.language_model; we take apart the language model only.
    _llama_like("gemma3", ("gemma3_text", "gemma3"), _GEMMA_PARAMS,
                layers=("model.layers", "model.language_model.layers"),
                final_norm=("model.norm", "model.language_model.norm")),
    _llama_like("phi", ("phi",), {
        "self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v",
        "self_attn.dense": "o", "self_attn.q_layernorm": "norm", "self_attn.k_layernorm": "norm",
        "mlp.fc1": "up", "mlp.fc2": "down", "input_layernorm": "norm",
    }, final_norm=("model.final_layernorm",)),
    _llama_like("phi3", ("phi3",), {
        "self_attn.qkv_proj": "qkv", "self_attn.o_proj": "o",
        "mlp.gate_up_proj": "gate_up", "mlp.down_proj": "down", **_NORMS_LLAMA,
    }),
    Family("gpt2", ("gpt2",), ("transformer.h",), "attn", "mlp", ("transformer.ln_f",), ("lm_head",),
           MappingProxyType({
               "attn.c_attn": "qkv", "attn.c_proj": "o", "mlp.c_fc": "up", "mlp.c_proj": "down",
               "ln_1": "norm", "ln_2": "norm",
           })),
    # transformers 5 calls NeoX's head lm_head; older code and Pythia files say embed_out.
    Family("gpt_neox", ("gpt_neox",), ("gpt_neox.layers",), "attention", "mlp",
           ("gpt_neox.final_layer_norm",), ("lm_head", "embed_out"),
           MappingProxyType({
               "attention.query_key_value": "qkv", "attention.dense": "o",
               "mlp.dense_h_to_4h": "up", "mlp.dense_4h_to_h": "down",
               "input_layernorm": "norm", "post_attention_layernorm": "norm",
           })),
)
_BY_NAME = {f.name: f for f in FAMILIES}
_BY_MODEL_TYPE = {t: f for f in FAMILIES for t in f.model_types}

# Tensors outside the blocks, by the name of their owning module.
_GLOBAL_PARAMS = {
    "embed_tokens": "embed", "wte": "embed", "wpe": "embed", "embed_in": "embed",
    "lm_head": "head", "embed_out": "head",
    "norm": "norm", "ln_f": "norm", "final_layernorm": "norm", "final_layer_norm": "norm",
}
# Wrapper parts PEFT inserts into a module path (q_proj.base_layer.weight, q_proj.lora_A.default.weight).
_PEFT_PARTS = re.compile(
    r"\.(?:base_layer|original_module|(?:lora_(?:A|B|embedding_A|embedding_B|magnitude_vector)"
    r"|modules_to_save)(?:\.[^.]+)?)(?=\.|$)"
)
_PARAM_LEAF = re.compile(r"\.(?:weight|bias)$")


@dataclass(frozen=True, eq=False)
class Architecture:
    """A model taken apart. Names are relative to the unwrapped transformers model
    (a PeftModel's get_base_model()), so they match between a base and its adapter."""

    family: str
    layers: tuple[nn.Module, ...]  # decoder blocks in order; each maps (batch, pos, d_model) -> same
    layer_names: tuple[str, ...]
    attn: tuple[nn.Module, ...]  # each block's self-attention
    mlp: tuple[nn.Module, ...]  # each block's MLP
    final_norm: nn.Module
    lm_head: nn.Module
    softcap: float | None  # logits = softcap * tanh(logits / softcap) when set

    @property
    def num_layers(self) -> int:
        return len(self.layers)


def family_for(model_type: str | None) -> str | None:
    """The family name for a config's model_type, or None when unsupported."""
    fam = _BY_MODEL_TYPE.get(model_type or "")
    return fam.name if fam else None


def supported_families() -> tuple[str, ...]:
    return tuple(f.name for f in FAMILIES)


def discover(model: nn.Module) -> Architecture:
    """Find the decoder blocks, their attention and MLP, the final norm and the LM head.

    Accepts a transformers *ForCausalLM (or Gemma 3's ForConditionalGeneration)
    or a peft PeftModel around one. Raises ArchitectureError otherwise.
    """
    model = _unwrap(model)
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    fam = _BY_MODEL_TYPE.get(model_type or "")
    if fam is None:
        raise ArchitectureError(
            f"unsupported architecture {model_type!r} ({type(model).__name__})",
            hint=f"supported families: {', '.join(supported_families())}",
        )
    layers_path, blocks = _first_module(model, fam.layers)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise ArchitectureError(
            f"{type(model).__name__} has no decoder blocks at {' or '.join(fam.layers)}",
            hint="load the checkpoint with AutoModelForCausalLM",
        )
    attn, mlp = [], []
    for i, block in enumerate(blocks):
        for attr, out in ((fam.attn, attn), (fam.mlp, mlp)):
            sub = getattr(block, attr, None)
            if not isinstance(sub, nn.Module):
                raise ArchitectureError(f"{fam.name} block {i} ({type(block).__name__}) has no {attr!r} module")
            out.append(sub)
    _, final_norm = _first_module(model, fam.final_norm)
    lm_head = output_head(model) or _first_module(model, fam.lm_head)[1]
    if final_norm is None or lm_head is None:
        missing = "final norm" if final_norm is None else "LM head"
        raise ArchitectureError(
            f"{type(model).__name__} has no {missing}",
            hint="load the checkpoint with AutoModelForCausalLM, not AutoModel",
        )
    return Architecture(
        family=fam.name,
        layers=tuple(blocks),
        layer_names=tuple(f"{layers_path}.{i}" for i in range(len(blocks))),
        attn=tuple(attn),
        mlp=tuple(mlp),
        final_norm=final_norm,
        lm_head=lm_head,
        softcap=softcap_of(model),
    )


def _unwrap(model: nn.Module) -> nn.Module:
    """A PeftModel's wrapped transformers model; any other model as it is."""
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base) and type(model).__module__.startswith("peft"):
        return get_base()
    return model


def output_head(model: nn.Module) -> nn.Module | None:
    """The LM head as transformers names it (get_output_embeddings), the module the
    output distributions are projected with; None where the model has none."""
    get = getattr(_unwrap(model), "get_output_embeddings", None)
    head = get() if callable(get) else None
    return head if isinstance(head, nn.Module) else None


def text_config(model: nn.Module):
    """The config of the language model: a multimodal model's (Gemma 3) text config,
    where its decoder's settings live, else the config itself (None without one)."""
    config = getattr(_unwrap(model), "config", None)
    get_text = getattr(config, "get_text_config", None)
    return get_text() if callable(get_text) else config


def softcap_of(model: nn.Module) -> float | None:
    """The final logit softcap (logits = cap * tanh(logits / cap)) or None, read from
    the text config: the one place the output distributions and the logit lens
    learn it from, for any causal LM, supported family or not."""
    cap = getattr(text_config(model), "final_logit_softcapping", None)
    return float(cap) if cap else None


def _first_module(model: nn.Module, paths: tuple[str, ...]) -> tuple[str, nn.Module | None]:
    for path in paths:
        try:
            return path, model.get_submodule(path)
        except AttributeError:
            continue
    return paths[0], None


def _family(family: str | Family | Architecture | None) -> Family | None:
    if family is None:
        return None
    if isinstance(family, Family):
        return family
    name = family.family if isinstance(family, Architecture) else family
    fam = _BY_NAME.get(name) or _BY_MODEL_TYPE.get(name)
    if fam is None:
        raise ArchitectureError(f"unknown family {name!r}", hint=f"one of {', '.join(supported_families())}")
    return fam


_INDEX = re.compile(r"\.(\d+)(?:\.|$)")


def _in_blocks(prefix: str, layer_paths) -> bool:
    """Whether `prefix` (the name before ".<i>.") is a family's blocks list: the path
    itself, under a wrapper prefix (base_model.model.), or missing the model's own
    prefix as GPT-2 files do ("h" for "transformer.h"). A vision tower's
    "encoder.layers" is none of these."""
    return any(prefix == p or prefix.endswith("." + p) or p.endswith("." + prefix) for p in layer_paths)


def _split(param_name: str, layer_paths) -> tuple[int | None, str]:
    """(block index, owner path inside the block) or (None, owner path), PEFT parts removed."""
    owner = _PARAM_LEAF.sub("", _PEFT_PARTS.sub("", param_name))
    for m in _INDEX.finditer(owner):
        if _in_blocks(owner[: m.start()], layer_paths):
            return int(m.group(1)), owner[m.end():]
    return None, owner


_ALL_LAYER_PATHS = frozenset(p for f in FAMILIES for p in f.layers)


def layer_index(param_name: str) -> int | None:
    """The decoder block a parameter belongs to (model.layers.3.mlp... -> 3), or None."""
    return _split(param_name, _ALL_LAYER_PATHS)[0]


def module_type(param_name: str, family: str | Family | Architecture | None = None) -> str:
    """Map a parameter name to one of MODULE_TYPES using the family's table.

    `family` is a family name, a config model_type or an Architecture; None
    tries every family's table (their block paths do not collide). Names may
    carry any prefix (a PEFT "base_model.model." or none, as in GPT-2 files).
    """
    fam = _family(family)
    fams = (fam,) if fam else FAMILIES
    idx, owner = _split(param_name, fam.layers if fam else _ALL_LAYER_PATHS)
    if idx is not None:
        for f in fams:
            if owner in f.block_params:
                return f.block_params[owner]
        return "other"
    return _GLOBAL_PARAMS.get(owner.rsplit(".", 1)[-1], "other")
