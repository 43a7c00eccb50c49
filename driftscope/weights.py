"""Per-tensor weight distances between a base checkpoint and a tuned one.

Reads *.safetensors lazily (one file, or shards through the index), streams
each tensor in row chunks so memory stays a few tensors' worth at most, and
never builds a model. A tuned folder that is a PEFT LoRA adapter is compared
through its effective delta (scaling * B @ A), without merging.

The table has one row per tensor:

    tensor, layer (Int32, null outside blocks), module_type, family,
    numel, base_norm, delta_norm, rel_change, note

The two checkpoints must share an architecture: a tensor whose shapes differ is
refused with a ModelError naming it and both shapes, and so is a tensor of a
transformer block present on one side only (another depth, another layout).
The exceptions are noted, not refused: an embedding or head whose vocabulary
was resized is compared on the shared rows, and a tensor outside the blocks
present on one side only (an untied head, a buffer) has null norms.
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

from driftscope.architectures import family_for, layer_index, module_type
from driftscope.errors import ModelError
from driftscope.metrics.weights import lora_delta, lora_scaling, relative_change, sq_norms
from driftscope.models import ADAPTER_CONFIG, ADAPTER_PICKLE, ADAPTER_SAFETENSORS as ADAPTER_WEIGHTS, open_safetensors

CHUNK_ELEMS = 1 << 22  # ~4M elements: a 32 MiB float64 block per side

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
            self._handle_of_tensor = self._open.enter_context(open_safetensors(self.folder / self.files[name]))
            self._tensor = name
        return self._handle_of_tensor

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor's shape, each file opened once (headers only)."""
        out = {}
        for file in sorted(set(self.files.values())):
            with open_safetensors(self.folder / file) as f:
                out.update((k, tuple(f.get_slice(k).get_shape())) for k in f.keys() if self.files.get(k) == file)
        missing = sorted(set(self.files) - set(out))
        if missing:
            raise ModelError(f"{self.folder}: {missing[0]} is in the index but not in {self.files[missing[0]]}",
                             "the checkpoint is incomplete: copy or save it again")
        return out

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
    if (folder / ADAPTER_CONFIG).is_file():
        raise ModelError(f"{folder} is a PEFT adapter, not a full checkpoint",
                         hint="weight distances need the full base model as BASE; an adapter goes as TUNED")
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
        with open_safetensors(p) as f:
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
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def _load_adapter(folder: Path, base_names: set[str]) -> _Adapter:
    try:
        cfg = json.loads((folder / ADAPTER_CONFIG).read_text())
    except ValueError as exc:
        raise ModelError(f"{folder / ADAPTER_CONFIG} is not valid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise ModelError(f"{folder / ADAPTER_CONFIG} is not a JSON object", hint="save the adapter again")
    if not (folder / ADAPTER_WEIGHTS).is_file():
        pickled = (folder / ADAPTER_PICKLE).is_file()
        raise ModelError(f"no {ADAPTER_WEIGHTS} in {folder}" + (f" (only {ADAPTER_PICKLE}, a pickle)" if pickled else ""),
                         hint="weight distances read safetensors only: save the adapter with safe_serialization")
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise ModelError(f"{folder} is a {cfg.get('peft_type')} adapter", hint="only LoRA adapters are supported")
    if cfg.get("use_dora"):
        raise ModelError(f"{folder} is a DoRA adapter, which has no low-rank delta",
                         hint="merge it (merge_and_unload) and compare the merged folder")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    replaced: dict[str, str] = {}
    with open_safetensors(folder / ADAPTER_WEIGHTS) as f:
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
    if not is_adapter(tuned_dir):
        _family_of(tuned_dir)  # refuses a broken config.json there too
    rows = []
    with ExitStack() as stack:
        base = _Checkpoint(base_dir, stack)
        base_shapes = base.shapes()
        base_names = set(base_shapes)
        if is_adapter(tuned_dir):
            adapter = _load_adapter(tuned_dir, base_names)
            adapter_file = stack.enter_context(open_safetensors(tuned_dir / ADAPTER_WEIGHTS))
            tuned_shapes = _adapted_shapes(base_shapes, adapter, adapter_file)
            compare = _adapter_pair(base, adapter, adapter_file)
        else:
            tuned = _Checkpoint(tuned_dir, stack)
            tuned_shapes = tuned.shapes()
            compare = _checkpoint_pair(base, tuned)
        check_same_architecture(base_shapes, tuned_shapes, family)  # before any tensor is read
        tuned_names = set(tuned_shapes)
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


def _resized(name: str, b_shape: tuple[int, ...], t_shape: tuple[int, ...], family: str | None) -> bool:
    """A resized vocabulary: an embedding or head whose shapes differ in the leading (vocabulary) axis only."""
    return (module_type(name, family) in ("embed", "head") and len(b_shape) == len(t_shape) > 0
            and b_shape[1:] == t_shape[1:])


def check_same_architecture(base: dict[str, tuple[int, ...]], tuned: dict[str, tuple[int, ...]],
                            family: str | None = None) -> None:
    """Refuse two checkpoints of different architectures, naming the first tensor (in table order) that differs.

    Allowed: equal shapes, a resized vocabulary, and a tensor outside the transformer
    blocks (or a buffer-like "other" one inside them) present on one side only.
    """
    hint = "weight distances need two checkpoints of one architecture (the same base, fine-tuned)"
    for name in sorted(base.keys() | tuned.keys(), key=_sort_key):
        b, t = base.get(name), tuned.get(name)
        if b is None or t is None:
            if layer_index(name) is not None and module_type(name, family) != "other":
                side, other = ("TUNED", "BASE") if b is None else ("BASE", "TUNED")
                raise ModelError(f"BASE and TUNED have different tensors: {name} {(t or b)!s} is in {side}, "
                                 f"not in {other}", hint=hint)
        elif b != t and not _resized(name, b, t, family):
            raise ModelError(f"BASE and TUNED differ in shape: {name} is {b} in BASE, {t} in TUNED", hint=hint)


def _adapted_shapes(base: dict[str, tuple[int, ...]], adapter: _Adapter, adapter_file) -> dict[str, tuple[int, ...]]:
    """The tensor shapes of base + adapter: replaced tensors take the adapter's shape; a LoRA
    delta must fit the tensor it is added to (else a ModelError naming both shapes)."""
    shapes = dict(base)
    shapes.update((name, tuple(adapter_file.get_slice(key).get_shape())) for name, key in adapter.replaced.items())
    for name, lora in adapter.loras.items():
        out, inn = lora.B.shape[0], lora.A.shape[1]
        delta = (inn, out) if lora.transpose else (out, inn)
        if name in shapes and shapes[name] != delta:
            raise ModelError(f"{adapter.folder}: adapter does not fit BASE: the LoRA delta of {name} is {delta}, "
                             f"the tensor is {shapes[name]}", hint="pass the base model the adapter was trained on")
        shapes.setdefault(name, delta)
    return shapes


def _shared(b_shape: tuple[int, ...], t_shape: tuple[int, ...]) -> tuple[tuple[int, ...], str | None]:
    """The region both tensors have (check_same_architecture allows only a resized
    vocabulary to differ) and a note when it is not all."""
    if b_shape == t_shape:
        return b_shape, None
    shared = tuple(min(a, b) for a, b in zip(b_shape, t_shape))
    return shared, f"shape {b_shape} vs {t_shape}: compared the shared {shared}"


def _result(shape: tuple[int, ...], base_norm: float, delta_norm: float, note: str | None) -> dict:
    return {"numel": math.prod(shape), "base_norm": base_norm, "delta_norm": delta_norm,
            "rel_change": float(relative_change(delta_norm, base_norm)), "note": note}


def _checkpoint_pair(base: _Checkpoint, tuned: _Checkpoint):
    def compare(name: str) -> dict:
        shape, note = _shared(base.shape(name), tuned.shape(name))
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
        lora = adapter.loras.get(name)  # its shape fits t_shape: checked by _adapted_shapes
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
    """The architecture family named by config.json; None without one. A broken config.json is refused:
    it is the sign of a broken folder, whose weights should not be trusted either."""
    path = folder / "config.json"
    if not path.is_file():
        return None
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: not valid JSON ({str(exc).splitlines()[0][:200]})",
                         hint="save the model again (save_pretrained writes config.json)") from None
    if not isinstance(cfg, dict):
        raise ModelError(f"{path}: not a JSON object", hint="save the model again (save_pretrained writes config.json)")
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
