"""Per-tensor weight distances between a base checkpoint and a tuned one.

Reads *.safetensors lazily (one file, or shards through the index), streams
each tensor in row chunks so memory stays a few tensors' worth at most, and
never builds a model. A tuned folder that is a PEFT LoRA adapter is compared
through its effective delta (scaling * B @ A), without merging.

The table has one row per tensor:

    tensor, layer (Int32, null outside blocks), module_type, family,
    numel, base_norm, delta_norm, rel_change, note

A tensor whose shapes differ (a resized vocabulary) is compared on the shared
leading block and says so in `note`; a tensor present on one side only has
null norms and a note.
"""

from __future__ import annotations

import json
import math
import re
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import polars as pl
import torch
from safetensors import safe_open

from driftscope.architectures import family_for, layer_index, module_type
from driftscope.errors import ModelError
from driftscope.metrics.weights import lora_delta, lora_scaling, relative_change, sq_norms

CHUNK_ELEMS = 1 << 22  # ~4M elements: a 32 MiB float64 block per side
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

SCHEMA = {
    "tensor": pl.Utf8, "layer": pl.Int32, "module_type": pl.Utf8, "family": pl.Utf8,
    "numel": pl.Int64, "base_norm": pl.Float64, "delta_norm": pl.Float64,
    "rel_change": pl.Float64, "note": pl.Utf8,
}

Rows = Callable[[int, int], torch.Tensor]  # (start, stop) -> float64 block of the shared region


class _Checkpoint:
    """Tensor name -> shard; reads slices, never whole files.

    A shard is opened for one tensor at a time: safetensors maps the file, and
    every page read stays in this process's resident memory while the file is
    open, so keeping shards open would make the whole checkpoint resident (as
    file pages, on top of the models already loaded). Closing it when the next
    tensor is read keeps one tensor's pages at most.
    """

    def __init__(self, folder: Path, stack: ExitStack):
        self.folder = folder
        self.files = _shard_map(folder)
        self._tensor: str | None = None
        self._handle_of_tensor = None
        self._open = ExitStack()
        stack.callback(self._open.close)

    def _handle(self, name: str):
        if name != self._tensor:
            self._open.close()
            self._handle_of_tensor = self._open.enter_context(safe_open(str(self.folder / self.files[name]), framework="pt"))
            self._tensor = name
        return self._handle_of_tensor

    def names(self) -> list[str]:
        return list(self.files)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle(name).get_slice(name).get_shape())

    def block(self, name: str, start: int, stop: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Rows start:stop of the leading `shape` block of a tensor, as float64."""
        handle = self._handle(name)
        if not shape:
            return handle.get_tensor(name).to(torch.float64)
        index = (slice(start, stop),) + tuple(slice(0, s) for s in shape[1:])
        return handle.get_slice(name)[index].to(torch.float64)


def _shard_map(folder: Path) -> dict[str, str]:
    if not folder.is_dir():
        raise ModelError(f"{folder} is not a folder", hint="pass a checkpoint folder with *.safetensors")
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if indexes:
        try:
            return dict(json.loads(indexes[0].read_text())["weight_map"])
        except (ValueError, KeyError) as exc:
            raise ModelError(f"{indexes[0]} is not a safetensors index ({exc})") from None
    files = sorted(p for p in folder.glob("*.safetensors") if p.name != ADAPTER_WEIGHTS)
    if not files:
        pickles = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
        hint = "convert it to safetensors first" if pickles else "point at a checkpoint folder"
        raise ModelError(f"no *.safetensors in {folder}", hint=hint)
    out: dict[str, str] = {}
    for p in files:
        with safe_open(str(p), framework="pt") as f:
            out.update((k, p.name) for k in f.keys())
    return out


def _norms(base: Rows, tuned: Rows, shape: tuple[int, ...]) -> tuple[float, float]:
    """(||b||, ||t - b||) over the region `shape`, streamed in row chunks."""
    if len(shape) < 2:
        b_sq, d_sq = sq_norms(base(0, shape[0] if shape else 1), tuned(0, shape[0] if shape else 1))
        return math.sqrt(float(b_sq)), math.sqrt(float(d_sq))
    step = max(1, CHUNK_ELEMS // max(1, math.prod(shape[1:])))
    b_tot = d_tot = 0.0
    for start in range(0, shape[0], step):
        stop = min(start + step, shape[0])
        b_sq, d_sq = sq_norms(base(start, stop), tuned(start, stop))
        b_tot += float(b_sq)
        d_tot += float(d_sq)
    return math.sqrt(b_tot), math.sqrt(d_tot)


@dataclass(frozen=True)
class _Lora:
    A: torch.Tensor  # (r, in), or (r, vocab) for an embedding
    B: torch.Tensor  # (out, r), or (d_model, r)
    scaling: float
    transpose: bool  # delta laid out (in, out): Conv1D fan_in_fan_out, embeddings


@dataclass
class _Adapter:
    """A LoRA adapter as: base tensor name -> low-rank delta, and -> replacement tensor."""

    folder: Path
    loras: dict[str, _Lora]
    replaced: dict[str, str]  # base name -> key in adapter_model.safetensors (modules_to_save, base_layer)


_PEFT_PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.weight)?$")


def is_adapter(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / ADAPTER_CONFIG).is_file() and (folder / ADAPTER_WEIGHTS).is_file()


def _load_adapter(folder: Path, base_names: set[str]) -> _Adapter:
    try:
        cfg = json.loads((folder / ADAPTER_CONFIG).read_text())
    except ValueError as exc:
        raise ModelError(f"{folder / ADAPTER_CONFIG} is not valid JSON ({exc})") from None
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise ModelError(f"{folder} is a {cfg.get('peft_type')} adapter", hint="only LoRA adapters are supported")
    if cfg.get("use_dora"):
        raise ModelError(f"{folder} is a DoRA adapter, which has no low-rank delta",
                         hint="merge it (merge_and_unload) and compare the merged folder")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    replaced: dict[str, str] = {}
    with safe_open(str(folder / ADAPTER_WEIGHTS), framework="pt") as f:
        for key in f.keys():
            name = key[len(_PEFT_PREFIX):] if key.startswith(_PEFT_PREFIX) else key
            m = _LORA_KEY.match(name)
            if m:  # rank-r factors are small: hold them
                parts.setdefault(m["module"], {})[m["kind"]] = f.get_tensor(key)
            elif "lora_magnitude_vector" in name or "trainable_tokens" in name:
                raise ModelError(f"{folder} holds {key}, which is not a LoRA factor",
                                 hint="merge it (merge_and_unload) and compare the merged folder")
            else:  # a whole tensor: modules_to_save, a saved (resized) base_layer, a trained bias
                name = name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
                replaced[_resolve(name, base_names)] = key
    loras = {}
    alpha_pattern = cfg.get("alpha_pattern") or {}
    for module, p in parts.items():
        embedding = "lora_embedding_A" in p or "lora_embedding_B" in p
        prefix = "lora_embedding_" if embedding else "lora_"
        A, B = p.get(prefix + "A"), p.get(prefix + "B")
        if A is None or B is None or A.ndim != 2 or B.ndim != 2:
            raise ModelError(f"{folder}: LoRA module {module} lacks a 2-D A/B pair",
                             hint="only Linear, Conv1D and Embedding LoRA is supported")
        alpha = cfg.get("lora_alpha", 8)
        for pattern, value in alpha_pattern.items():  # peft's get_pattern_key rule
            if re.match(rf"(.*\.)?({pattern})$", module):
                alpha = value
                break
        scaling = lora_scaling(alpha, A.shape[0], bool(cfg.get("use_rslora")))
        transpose = embedding or bool(cfg.get("fan_in_fan_out"))
        loras[_resolve(module + ".weight", base_names)] = _Lora(A, B, scaling, transpose)
    return _Adapter(folder, loras, replaced)


def _resolve(name: str, base_names: set[str]) -> str:
    """The base tensor an adapter key refers to: exact, else a unique dotted-suffix match
    (GPT-2 files lack the "transformer." prefix the module path has)."""
    if name in base_names:
        return name
    hits = [b for b in base_names if name.endswith("." + b) or b.endswith("." + name)]
    if len(hits) == 1:
        return hits[0]
    return name  # not in base: reported as "only in tuned"


def _sort_key(name: str) -> tuple:
    idx = layer_index(name)
    kind = module_type(name)
    group = 0 if kind == "embed" else (1 if idx is not None else 2)
    return group, idx if idx is not None else 0, name


def weight_table(base_dir: str | Path, tuned_dir: str | Path) -> pl.DataFrame:
    """Per-tensor ||W_t - W_b||_F / ||W_b||_F between two checkpoint folders.

    tuned_dir may be a full checkpoint or a PEFT LoRA adapter folder
    (adapter_config.json + adapter_model.safetensors); for an adapter every
    base tensor gets a row, the ones it does not touch with delta 0.
    """
    base_dir, tuned_dir = Path(base_dir), Path(tuned_dir)
    family = _family_of(base_dir)
    rows = []
    with ExitStack() as stack:
        base = _Checkpoint(base_dir, stack)
        base_names = set(base.names())
        if is_adapter(tuned_dir):
            adapter = _load_adapter(tuned_dir, base_names)
            adapter_file = stack.enter_context(safe_open(str(tuned_dir / ADAPTER_WEIGHTS), framework="pt"))
            tuned_names = base_names | set(adapter.loras) | set(adapter.replaced)
            compare = _adapter_pair(base, adapter, adapter_file)
        else:
            tuned = _Checkpoint(tuned_dir, stack)
            tuned_names = set(tuned.names())
            compare = _checkpoint_pair(base, tuned)
        for name in sorted(base_names | tuned_names, key=_sort_key):
            row = {"tensor": name, "layer": layer_index(name), "module_type": module_type(name, family),
                   "family": family, "numel": None, "base_norm": None, "delta_norm": None,
                   "rel_change": None, "note": None}
            if name not in tuned_names:
                row.update(numel=math.prod(base.shape(name)), note="only in base")
            elif name not in base_names:
                row["note"] = "only in tuned"
            else:
                row.update(compare(name))
            rows.append(row)
    return pl.DataFrame(rows, schema=SCHEMA, orient="row")


def _shared(b_shape: tuple[int, ...], t_shape: tuple[int, ...]) -> tuple[tuple[int, ...] | None, str | None]:
    """The region both tensors have (None when their ranks differ) and a note when it is not all."""
    if b_shape == t_shape:
        return b_shape, None
    if len(b_shape) != len(t_shape):
        return None, f"shape {b_shape} vs {t_shape}: not compared"
    shared = tuple(min(a, b) for a, b in zip(b_shape, t_shape))
    return shared, f"shape {b_shape} vs {t_shape}: compared the shared {shared}"


def _result(shape: tuple[int, ...], base_norm: float, delta_norm: float, note: str | None) -> dict:
    return {"numel": math.prod(shape), "base_norm": base_norm, "delta_norm": delta_norm,
            "rel_change": float(relative_change(delta_norm, base_norm)), "note": note}


def _checkpoint_pair(base: _Checkpoint, tuned: _Checkpoint):
    def compare(name: str) -> dict:
        shape, note = _shared(base.shape(name), tuned.shape(name))
        if shape is None:
            return {"note": note}
        b_norm, d_norm = _norms(lambda i, j: base.block(name, i, j, shape),
                                lambda i, j: tuned.block(name, i, j, shape), shape)
        return _result(shape, b_norm, d_norm, note)
    return compare


def _adapter_pair(base: _Checkpoint, adapter: _Adapter, adapter_file):
    def compare(name: str) -> dict:
        b_shape = base.shape(name)
        key = adapter.replaced.get(name)
        t_shape = tuple(adapter_file.get_slice(key).get_shape()) if key else b_shape
        shape, note = _shared(b_shape, t_shape)
        if shape is None:
            return {"note": note}
        lora = adapter.loras.get(name)
        if lora is not None:
            out, inn = lora.B.shape[0], lora.A.shape[1]
            if ((inn, out) if lora.transpose else (out, inn)) != t_shape:
                raise ModelError(f"{adapter.folder}: the LoRA delta of {name} does not fit its shape {t_shape}")
        cols = tuple(slice(0, s) for s in shape[1:])

        def tuned_rows(i: int, j: int) -> torch.Tensor:
            if key is None:
                t = base.block(name, i, j, shape)
            elif shape:
                t = adapter_file.get_slice(key)[(slice(i, j),) + cols].to(torch.float64)
            else:
                t = adapter_file.get_tensor(key).to(torch.float64)
            if lora is not None:  # (j - i, cols) rows of scaling * B @ A
                delta = lora_delta(lora.A, lora.B, lora.scaling, transpose=lora.transpose, rows=slice(i, j))
                t = t + delta[(slice(None),) + cols]
            return t

        b_norm, d_norm = _norms(lambda i, j: base.block(name, i, j, shape), tuned_rows, shape)
        if lora is not None:
            lora_note = f"LoRA r={lora.A.shape[0]} scaling={lora.scaling:g}"
            note = f"{lora_note}; {note}" if note else lora_note
        return _result(shape, b_norm, d_norm, note)
    return compare


def _family_of(folder: Path) -> str | None:
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    model_type = cfg.get("model_type")
    if model_type is None and isinstance(cfg.get("text_config"), dict):
        model_type = cfg["text_config"].get("model_type")
    return family_for(model_type)


def _group(table: pl.DataFrame, key: str) -> list[dict]:
    out = (
        table.filter(pl.col(key).is_not_null())
        .group_by(key)
        .agg(
            pl.len().alias("n_tensors"),
            pl.col("rel_change").filter(pl.col("rel_change").is_finite()).mean().alias("mean_rel_change"),
            pl.col("rel_change").filter(pl.col("rel_change").is_finite()).max().alias("max_rel_change"),
            (pl.col("delta_norm").pow(2).sum().sqrt() / pl.col("base_norm").pow(2).sum().sqrt()).alias("rel_change"),
        )
        .sort(key)
    )
    return [{k: _finite(v) for k, v in r.items()} for r in out.iter_rows(named=True)]


def _finite(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def weight_summary(table: pl.DataFrame) -> dict:
    """Headline figures of a weight_table, JSON-ready (non-finite values become None).

    rel_change is global: sqrt(sum delta_norm^2) / sqrt(sum base_norm^2) over the
    compared tensors; groups by layer and module_type carry the same, plus the
    mean and max of the per-tensor rel_change (finite values only).
    """
    compared = table.filter(pl.col("base_norm").is_not_null() & pl.col("delta_norm").is_not_null())
    base_sq = float((compared["base_norm"] ** 2).sum()) if compared.height else 0.0
    delta_sq = float((compared["delta_norm"] ** 2).sum()) if compared.height else 0.0
    return {
        "rel_change": _finite(float(relative_change(math.sqrt(delta_sq), math.sqrt(base_sq)))),
        "n_tensors": table.height,
        "n_compared": compared.height,
        "n_changed": int((compared["delta_norm"] > 0).sum()) if compared.height else 0,
        "notes": [f"{r['tensor']}: {r['note']}" for r in table.filter(pl.col("note").is_not_null()
                  & ~pl.col("note").str.starts_with("LoRA r=")).iter_rows(named=True)],
        "by_layer": _group(compared, "layer"),
        "by_module_type": _group(compared, "module_type"),
    }
