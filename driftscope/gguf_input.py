"""A `.gguf` file as BASE or TUNED: transformers' GGUF loading, weights dequantised.

`driftscope compare model/ model-Q4_K_M.gguf` answers "what did quantisation
change". The model and its tokenizer both come from the file (transformers
reads it with the `gguf` package); the dtype is the run's. A file that is not
a readable GGUF, or an architecture transformers cannot load from one, is a
ModelError: one line, exit 2.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from driftscope.errors import ModelError

GGUF_MAGIC = b"GGUF"
GGUF_HINT = 'pip install "driftscope[gguf]" (the gguf package)'


def is_gguf(path: Path) -> bool:
    return path.suffix.lower() == ".gguf"


def check_gguf(path: Path) -> None:
    """Refuse, as one line, a GGUF input that cannot load: no such file, no gguf
    package, not a GGUF file, truncated (its tensors run past the end)."""
    if not path.is_file():
        raise ModelError(f"{path}: no such GGUF file", "pass a .gguf file, or a Hugging Face model folder")
    if importlib.util.find_spec("gguf") is None:
        raise ModelError(f"{path}: reading a GGUF file needs the gguf package", GGUF_HINT)
    with path.open("rb") as fh:
        if fh.read(4) != GGUF_MAGIC:
            raise ModelError(f"{path}: not a GGUF file (no GGUF header)", "pass a file written by llama.cpp or gguf")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)  # parses the header and every tensor's extent (a memory map, no copy)
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception as e:  # noqa: BLE001 - whatever a broken file raises: one line
        raise ModelError(f"{path}: not a readable GGUF file ({_first_line(e)})",
                         "the file is truncated or corrupted: copy or convert it again") from None
    if end > path.stat().st_size:
        raise ModelError(f"{path}: truncated GGUF file ({path.stat().st_size} bytes, its tensors need {end})",
                         "copy or convert it again")


def load_gguf_model(path: Path, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    from driftscope.models import _quiet_transformers

    check_gguf(path)
    try:
        with _quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype,
                                                         local_files_only=True, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - an architecture transformers cannot read from GGUF, a broken file
        raise ModelError(f"{path}: transformers cannot load this GGUF as a causal language model ({_first_line(e)})",
                         "convert it to a Hugging Face folder, or use a GGUF of an architecture transformers reads") from None
    return model.to(device).eval().requires_grad_(False)


def load_gguf_tokenizer(path: Path):
    from transformers import AutoTokenizer

    from driftscope.models import _quiet_transformers

    try:
        with _quiet_transformers():
            return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - as in load_gguf_model
        raise ModelError(f"{path}: cannot read its tokenizer ({_first_line(e)})",
                         "compare a GGUF whose tokenizer transformers reads, or its Hugging Face folder") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__
