"""Load a checkpoint, or a PEFT adapter on its base; tokenizer preflight.

Local folders only, no network: every load runs with HF_HUB_OFFLINE semantics
(`local_files_only=True`). Weights load from safetensors; a folder with only
pickle weights needs `allow_pickle=True` and then loads with weights_only.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from driftscope.errors import ModelError, TokenizerMismatch

ADAPTER_CONFIG = "adapter_config.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Checkpoint:
    """A loaded model ready for scoring (eval mode, no grad)."""

    label: str
    path: str
    kind: str  # "model" or "adapter"
    fingerprint: str
    model: torch.nn.Module
    tokenizer: object

    @property
    def n_ctx(self) -> int | None:
        cfg = self.model.config
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            if isinstance(getattr(cfg, key, None), int):
                return getattr(cfg, key)
        return None

    def describe(self) -> dict:
        return {"label": self.label, "path": self.path, "kind": self.kind, "fingerprint": self.fingerprint}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda: no CUDA device is available here", "use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise ModelError(f"--device {device}: unknown device", "use auto, cpu or cuda")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        # float32 on CPU: bf16 matmuls are slow there and the metrics want precision.
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in DTYPES:
        raise ModelError(f"--dtype {dtype}: unknown dtype", "use auto, float32, bfloat16 or float16")
    return DTYPES[dtype]


def checkpoint_kind(path: Path) -> str:
    """'model' or 'adapter', or a ModelError saying what the folder is not."""
    if not path.exists():
        raise ModelError(f"{path}: no such folder", "pass a local Hugging Face model or PEFT adapter folder")
    if not path.is_dir():
        raise ModelError(f"{path}: is a file, not a model folder", "pass the folder that holds config.json")
    if (path / ADAPTER_CONFIG).is_file():
        return "adapter"
    if (path / "config.json").is_file():
        return "model"
    raise ModelError(
        f"{path}: not a model folder (no config.json or adapter_config.json)",
        "pass a folder written by save_pretrained()",
    )


def fingerprint(path: Path) -> str:
    """Cheap, stable identity of a checkpoint folder: its configs, and each
    weight file's name, size and first and last MiB."""
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.name.endswith(".json") and "config" in f.name:
            h.update(f.name.encode() + f.read_bytes())
        elif f.suffix in (".safetensors", ".bin", ".pt", ".gguf"):
            size = f.stat().st_size
            h.update(f"{f.name}:{size}".encode())
            with f.open("rb") as fh:
                h.update(fh.read(1 << 20))
                fh.seek(max(0, size - (1 << 20)))
                h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def _has_safetensors(path: Path) -> bool:
    return any(path.glob("*.safetensors"))


def _load_model(path: Path, device: torch.device, dtype: torch.dtype, allow_pickle: bool) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if not _has_safetensors(path) and not allow_pickle:
        if any(path.glob("*.bin")) or any(path.glob("*.pt")):
            raise ModelError(f"{path}: weights are pickle files, not safetensors", "convert them, or pass --allow-pickle (loads with weights_only)")
        raise ModelError(f"{path}: no weight files (*.safetensors)", "point at the folder save_pretrained() wrote")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=dtype,
            local_files_only=True,
            trust_remote_code=False,
            use_safetensors=None if allow_pickle else True,
        )
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"{path}: cannot load as a causal language model ({_first_line(e)})")
    return model.to(device).eval().requires_grad_(False)


def _load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(f"{path}: cannot load its tokenizer ({_first_line(e)})", "save the tokenizer beside the model")


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def _adapter_base(path: Path) -> Path:
    try:
        cfg = json.loads((path / ADAPTER_CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"{path / ADAPTER_CONFIG}: unreadable ({_first_line(e)})")
    name = cfg.get("base_model_name_or_path")
    base = Path(name) if name else None
    if base is None or not base.is_dir():
        raise ModelError(
            f"{path}: adapter's base model {name!r} is not a local folder",
            "pass the base model folder as BASE and the adapter as TUNED",
        )
    return base


def load_base(path: str | Path, device="auto", dtype="auto", allow_pickle=False) -> Checkpoint:
    path = Path(path)
    kind = checkpoint_kind(path)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if kind == "adapter":  # an adapter as BASE: apply it on the base it names
        base = load_base(_adapter_base(path), device, dtype, allow_pickle)
        return load_tuned(path, base, allow_pickle=allow_pickle)
    model = _load_model(path, dev, dt, allow_pickle)
    return Checkpoint(path.name or str(path), str(path), "model", fingerprint(path), model, _load_tokenizer(path))


def load_tuned(path: str | Path, base: Checkpoint, label: str | None = None, allow_pickle=False) -> Checkpoint:
    """A full checkpoint, or a PEFT adapter applied to a copy of `base` in memory."""
    path = Path(path)
    kind = checkpoint_kind(path)
    label = label or path.name or str(path)
    if kind == "adapter":
        from peft import PeftModel

        model = copy.deepcopy(base.model)
        logging.getLogger("peft").setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                model = PeftModel.from_pretrained(model, str(path), is_trainable=False)
        except (ValueError, KeyError, RuntimeError, OSError) as e:
            raise ModelError(
                f"{path}: adapter does not fit the base model {base.path} ({_first_line(e)})",
                "pass the base model the adapter was trained on",
            )
        tok = _load_tokenizer(path) if (path / "tokenizer_config.json").is_file() else base.tokenizer
        return Checkpoint(label, str(path), "adapter", fingerprint(path), model.eval(), tok)
    dev = next(base.model.parameters()).device
    dt = next(base.model.parameters()).dtype
    model = _load_model(path, dev, dt, allow_pickle)
    tok = _load_tokenizer(path) if any(path.glob("tokenizer*")) else base.tokenizer
    return Checkpoint(label, str(path), "model", fingerprint(path), model, tok)


@dataclass(frozen=True)
class VocabAlignment:
    """How two tokenizers line up. Scoring runs on ids [0, shared)."""

    status: str  # "identical" or "extended"
    shared: int
    new_tokens: int

    def describe(self) -> dict:
        return {"status": self.status, "shared_vocab": self.shared, "new_tokens": self.new_tokens}


def align_vocab(base_tok, tuned_tok) -> VocabAlignment:
    vb, vt = base_tok.get_vocab(), tuned_tok.get_vocab()
    if vb == vt:
        return VocabAlignment("identical", len(base_tok), 0)
    moved = [t for t, i in vb.items() if vt.get(t) != i]
    if moved:
        raise TokenizerMismatch(
            f"tokenizers differ: {len(moved)} of the base's {len(vb)} tokens are missing or have other ids in the tuned tokenizer (e.g. {moved[0]!r})",
            "compare checkpoints that share a tokenizer; a tuned tokenizer may only add tokens",
        )
    added = [i for t, i in vt.items() if t not in vb]
    if min(added) < len(vb):
        raise TokenizerMismatch("the tuned tokenizer adds tokens inside the base's id range", "added tokens must take new ids")
    return VocabAlignment("extended", len(base_tok), len(added))
