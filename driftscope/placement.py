"""Where a model's weights live: one device, or spread by accelerate (`--device-map`).

With a device map, transformers places each block where `max_memory` allows
(GPUs first, then CPU, then disk: offloaded weights go to a temporary folder
that lives as long as the model). The LM head may land on any device:
`head_device` says where `capture.project` must send the gathered states.
"""

from __future__ import annotations

import re
import tempfile
import weakref

import torch

from driftscope.errors import ModelError

DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
SCALE_HINT = "pip install 'driftscope[scale]' (it brings accelerate), or drop --device-map"
_SIZE = re.compile(r"\d+(\.\d+)?\s*([KMGT]i?B)?", re.IGNORECASE)


def parse_max_memory(text: str | None) -> dict | None:
    """'0=20GiB,cpu=60GiB' -> {0: '20GiB', 'cpu': '60GiB'}, as accelerate takes it."""
    if not text:
        return None
    out: dict = {}
    for part in text.split(","):
        key, sep, size = (x.strip() for x in part.partition("="))
        if not sep or not _SIZE.fullmatch(size) or not (key.isdigit() or key in ("cpu", "disk", "mps")):
            raise ModelError(f"--max-memory {text}: cannot read {part.strip()!r}",
                             "write DEVICE=SIZE pairs, e.g. 0=20GiB,cpu=60GiB (DEVICE: a GPU index, cpu or disk)")
        out[int(key) if key.isdigit() else key] = size.replace(" ", "")
    return out


def placement(device_map: str | None, max_memory: str | None) -> dict:
    """from_pretrained keyword arguments for a device map, {} without one; refuses what cannot work."""
    if device_map is None:
        if max_memory:
            raise ModelError("--max-memory needs --device-map", "add --device-map auto")
        return {}
    if device_map not in DEVICE_MAPS:
        raise ModelError(f"--device-map {device_map}: unknown map", f"use one of {', '.join(DEVICE_MAPS)}")
    if not accelerate_available():
        raise ModelError("--device-map needs the accelerate package, which is not installed", SCALE_HINT)
    return {"device_map": device_map, "max_memory": parse_max_memory(max_memory)}


def accelerate_available() -> bool:
    try:
        import accelerate  # noqa: F401
    except ImportError:
        return False
    return True


def with_offload_folder(kwargs: dict) -> tuple[dict, tempfile.TemporaryDirectory | None]:
    """kwargs plus a temporary offload folder when weights may spill to disk; the folder to keep alive."""
    if not kwargs.get("device_map"):
        return kwargs, None
    folder = tempfile.TemporaryDirectory(prefix="driftscope-offload-")
    return {**kwargs, "offload_folder": folder.name}, folder


def keep_alive(model: torch.nn.Module, folder: tempfile.TemporaryDirectory | None) -> None:
    """The offload folder is removed when the model is."""
    if folder is not None:
        weakref.finalize(model, folder.cleanup)


def offloaded(model: torch.nn.Module) -> bool:
    """Whether accelerate offloaded some weights (to CPU behind GPUs, or to disk): they sit
    on the meta device between passes, so nothing but a forward pass can read them."""
    return any(p.device.type == "meta" for p in model.parameters())


OFFLOAD_HINT = "give --max-memory room for the whole model on the devices listed"


def input_device(model: torch.nn.Module) -> torch.device:
    """Where a model takes its input ids: the embedding's device (its execution device when offloaded)."""
    emb = model.get_input_embeddings()
    return module_device(emb) if emb is not None else next(model.parameters()).device


def head_device(model: torch.nn.Module) -> torch.device:
    """Where the LM head computes: the device of its weight, or accelerate's execution device for an
    offloaded head (whose weight sits on the meta device until the hook loads it)."""
    return module_device(model.get_output_embeddings())


def module_device(module: torch.nn.Module) -> torch.device:
    hook = getattr(module, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    if device is not None:
        return torch.device(device if not isinstance(device, int) else f"cuda:{device}")
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
