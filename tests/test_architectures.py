"""Architecture discovery on tiny random models of every supported family (offline)."""

from __future__ import annotations

import functools
import pytest
import torch
import transformers as tf
from torch import nn

from driftscope.architectures import (
    MODULE_TYPES, Architecture, ArchitectureError, discover, layer_index, module_type, softcap_of,
)
from driftscope.errors import DriftscopeError

VOCAB = 100
IDS = dict(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2)
DECODER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, **IDS)

# family -> (config, block class, attention class, MLP class, final norm class)
CASES = {
    "llama": (lambda: tf.LlamaConfig(num_key_value_heads=2, **DECODER), "LlamaDecoderLayer", "LlamaAttention", "LlamaMLP", "LlamaRMSNorm"),
    "mistral": (lambda: tf.MistralConfig(num_key_value_heads=2, **DECODER), "MistralDecoderLayer", "MistralAttention", "MistralMLP", "MistralRMSNorm"),
    "qwen2": (lambda: tf.Qwen2Config(num_key_value_heads=2, **DECODER), "Qwen2DecoderLayer", "Qwen2Attention", "Qwen2MLP", "Qwen2RMSNorm"),
    "gemma2": (lambda: tf.Gemma2Config(num_key_value_heads=2, head_dim=8, **DECODER), "Gemma2DecoderLayer", "Gemma2Attention", "Gemma2MLP", "Gemma2RMSNorm"),
    # Gemma 3 ships without a final softcap; set one so the test covers it on a second family
    "gemma3": (lambda: tf.Gemma3TextConfig(num_key_value_heads=2, head_dim=8, final_logit_softcapping=5.0, **DECODER), "Gemma3DecoderLayer", "Gemma3Attention", "Gemma3MLP", "Gemma3RMSNorm"),
    "phi": (lambda: tf.PhiConfig(**DECODER), "PhiDecoderLayer", "PhiAttention", "PhiMLP", "LayerNorm"),
    "phi3": (lambda: tf.Phi3Config(num_key_value_heads=2, **DECODER), "Phi3DecoderLayer", "Phi3Attention", "Phi3MLP", "Phi3RMSNorm"),
    "gpt2": (lambda: tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, **IDS), "GPT2Block", "GPT2Attention", "GPT2MLP", "LayerNorm"),
    "gpt_neox": (lambda: tf.GPTNeoXConfig(**DECODER), "GPTNeoXLayer", "GPTNeoXAttention", "GPTNeoXMLP", "LayerNorm"),
}


def tiny(config) -> nn.Module:
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config).eval()
    n = sum(p.numel() for p in model.parameters())
    assert n < 200_000, f"tiny model is not tiny: {n} parameters"
    return model


@functools.cache
def tiny_family(family: str) -> nn.Module:
    """One shared model per family (tests must not modify it)."""
    return tiny(CASES[family][0]())


def _out(output):
    return output[0] if isinstance(output, tuple) else output


def check_model(model: nn.Module, arch: Architecture, expected: tuple[str, str, str, str] | None = None) -> None:
    assert arch.num_layers == 2 == len(arch.layer_names) == len(arch.attn) == len(arch.mlp)
    named = dict(model.named_modules())
    for name, layer, attn, mlp in zip(arch.layer_names, arch.layers, arch.attn, arch.mlp):
        assert named[name] is layer
        assert any(m is attn for m in layer.modules()) and any(m is mlp for m in layer.modules())
    if expected:
        block, attn_cls, mlp_cls, norm_cls = expected
        assert {type(m).__name__ for m in arch.layers} == {block}
        assert {type(m).__name__ for m in arch.attn} == {attn_cls}
        assert {type(m).__name__ for m in arch.mlp} == {mlp_cls}
        assert type(arch.final_norm).__name__ == norm_cls
    assert isinstance(arch.lm_head, nn.Linear)

    fired: dict[int, torch.Tensor] = {}
    handles = [layer.register_forward_hook(lambda mod, args, out, i=i: fired.__setitem__(i, _out(out)))
               for i, layer in enumerate(arch.layers)]
    try:
        ids = torch.tensor([[3, 17, 42, 5, 99, 8]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits
            lens = arch.lm_head(arch.final_norm(fired[arch.num_layers - 1]))
            if arch.softcap:
                lens = torch.tanh(lens / arch.softcap) * arch.softcap
    finally:
        for h in handles:
            h.remove()
    assert sorted(fired) == list(range(arch.num_layers))
    torch.testing.assert_close(lens, logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", sorted(CASES))
def test_discover_family(family):
    expected = CASES[family][1:]
    model = tiny_family(family)
    arch = discover(model)
    assert arch.family == family
    check_model(model, arch, tuple(expected))
    if family == "gemma2":
        assert arch.softcap == 30.0  # Gemma 2's default final_logit_softcapping
    elif family == "gemma3":
        assert arch.softcap == 5.0
    else:
        assert arch.softcap is None


def gemma3_multimodal(**text_extra) -> nn.Module:
    text = dict(num_key_value_heads=2, head_dim=8, **{**DECODER, "vocab_size": 300}, **text_extra)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14)
    config = tf.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                             image_token_index=299, boi_token_index=297, eoi_token_index=298)
    torch.manual_seed(0)
    model = tf.Gemma3ForConditionalGeneration(config).eval()
    assert sum(p.numel() for p in model.parameters()) < 200_000
    return model


def test_discover_gemma3_multimodal():
    model = gemma3_multimodal()
    arch = discover(model)
    assert arch.family == "gemma3" and arch.layer_names[0] == "model.language_model.layers.0"
    check_model(model, arch)


def test_softcap_in_the_text_config_is_read_once():
    """Gemma 2/3 style multimodal config: the softcap lives in the text config, not
    on the top-level config. The lens (discover) and the output distributions
    (capture.project) read it through one function."""
    from driftscope import capture

    model = gemma3_multimodal(final_logit_softcapping=2.0)
    assert not hasattr(model.config, "final_logit_softcapping")
    arch = discover(model)
    assert arch.softcap == softcap_of(model) == capture.softcap_of(model) == 2.0
    assert arch.lm_head is model.get_output_embeddings()


def test_output_distributions_apply_the_text_config_softcap():
    """A multimodal model whose forward applies its text config's softcap (Gemma 4
    in transformers 5): compare's projected log-probs are the model's own."""
    from driftscope.capture import capture, project

    if not hasattr(tf, "Gemma4Config"):
        pytest.skip("transformers without Gemma 4")
    text = dict(num_key_value_heads=2, head_dim=8, global_head_dim=8, final_logit_softcapping=0.25,
                vocab_size_per_layer_input=300, hidden_size_per_layer_input=8, sliding_window=16,
                max_position_embeddings=128, layer_types=["sliding_attention", "full_attention"],
                **{**DECODER, "vocab_size": 300})
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=2, head_dim=8, position_embedding_size=16, patch_size=4)
    config = tf.Gemma4Config(text_config=text, vision_config=vision, audio_config=None, boi_token_id=297,
                             eoi_token_id=298, image_token_id=299, video_token_id=296, boa_token_id=295,
                             eoa_token_index=294, audio_token_id=293)
    torch.manual_seed(0)
    model = tf.Gemma4ForConditionalGeneration(config).eval()
    assert sum(p.numel() for p in model.parameters()) < 200_000
    assert not hasattr(model.config, "final_logit_softcapping") and softcap_of(model) == 0.25
    ids = torch.tensor([[3, 17, 42, 5, 99, 8]])
    with torch.no_grad():
        want = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        with capture(model) as state:
            state.rows, state.cols = torch.zeros(6, dtype=torch.long), torch.arange(6)
            model(input_ids=ids)
            got, _ = project(model, state.final, 300)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_discover_through_peft():
    peft = pytest.importorskip("peft")
    model = tiny(CASES["llama"][0]())
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj", "down_proj"]))
    arch = discover(wrapped)
    assert arch.family == "llama"
    assert arch.layer_names == ("model.layers.0", "model.layers.1")  # same names as the plain base
    assert arch.layers[0] is wrapped.get_base_model().model.layers[0]
    check_model(wrapped.get_base_model(), arch)


def test_unknown_architecture_raises():
    bert = tf.BertForMaskedLM(tf.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                            intermediate_size=32, vocab_size=VOCAB))
    with pytest.raises(ArchitectureError, match="unsupported architecture 'bert'") as err:
        discover(bert)
    assert isinstance(err.value, DriftscopeError) and "\n" not in str(err.value)
    with pytest.raises(ArchitectureError):
        discover(nn.Linear(2, 2))


def test_headless_model_raises():
    body = tf.AutoModel.from_config(CASES["llama"][0]())
    with pytest.raises(ArchitectureError, match="AutoModelForCausalLM"):
        discover(body)


@pytest.mark.parametrize("family, name, expected", [
    ("llama", "model.layers.0.self_attn.q_proj.weight", "q"),
    ("llama", "model.layers.11.self_attn.o_proj.weight", "o"),
    ("llama", "model.layers.3.mlp.gate_proj.weight", "gate"),
    ("llama", "model.layers.3.mlp.down_proj.weight", "down"),
    ("llama", "model.layers.3.post_attention_layernorm.weight", "norm"),
    ("llama", "model.embed_tokens.weight", "embed"),
    ("llama", "lm_head.weight", "head"),
    ("llama", "model.norm.weight", "norm"),
    ("llama", "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight", "v"),
    ("llama", "base_model.model.model.layers.0.self_attn.v_proj.base_layer.weight", "v"),
    ("qwen2", "model.layers.0.self_attn.k_proj.bias", "k"),
    ("gemma3", "model.language_model.layers.1.self_attn.q_norm.weight", "norm"),
    ("gemma2", "model.layers.1.pre_feedforward_layernorm.weight", "norm"),
    ("phi", "model.layers.0.self_attn.dense.weight", "o"),
    ("phi", "model.layers.0.mlp.fc1.bias", "up"),
    ("phi", "model.layers.0.mlp.fc2.weight", "down"),
    ("phi", "model.final_layernorm.weight", "norm"),
    ("phi3", "model.layers.0.self_attn.qkv_proj.weight", "qkv"),
    ("phi3", "model.layers.0.mlp.gate_up_proj.weight", "gate_up"),
    ("gpt2", "transformer.h.0.attn.c_attn.weight", "qkv"),
    ("gpt2", "h.0.attn.c_proj.weight", "o"),  # hub GPT-2 files have no "transformer." prefix
    ("gpt2", "transformer.h.1.mlp.c_proj.weight", "down"),
    ("gpt2", "transformer.h.1.mlp.c_fc.weight", "up"),
    ("gpt2", "transformer.wpe.weight", "embed"),
    ("gpt2", "transformer.ln_f.bias", "norm"),
    ("gpt2", "transformer.h.0.attn.masked_bias", "other"),
    ("gpt_neox", "gpt_neox.layers.2.attention.query_key_value.weight", "qkv"),
    ("gpt_neox", "gpt_neox.layers.2.mlp.dense_4h_to_h.weight", "down"),
    ("gpt_neox", "embed_out.weight", "head"),
    ("gpt_neox", "gpt_neox.embed_in.weight", "embed"),
    (None, "model.layers.0.mlp.up_proj.weight", "up"),
    (None, "something.else", "other"),
])
def test_module_type(family, name, expected):
    assert expected in MODULE_TYPES
    assert module_type(name, family) == expected


def test_module_type_covers_every_parameter():
    for family in CASES:
        for name, _ in tiny_family(family).named_parameters():
            assert module_type(name, family) != "other", (family, name)


def test_layer_index():
    assert layer_index("model.layers.7.mlp.up_proj.weight") == 7
    assert layer_index("transformer.h.12.ln_1.weight") == 12
    assert layer_index("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight") == 0
    assert layer_index("model.embed_tokens.weight") is None
    assert layer_index("lm_head.weight") is None
    assert layer_index("h.2.attn.c_attn.weight") == 2  # hub GPT-2 files lack "transformer."
    assert layer_index("language_model.model.layers.4.mlp.up_proj.weight") == 4  # Gemma 3 hub names
    # a vision tower's blocks are not decoder blocks
    assert layer_index("model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight") is None
    assert module_type("model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight", "gemma3") == "other"


def test_unknown_family_name_raises():
    with pytest.raises(ArchitectureError):
        module_type("model.layers.0.mlp.up_proj.weight", "bert")
