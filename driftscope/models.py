"""Load a checkpoint, or a PEFT adapter on its base; tokenizer preflight.

Local folders only, no network: every transformers and peft load runs with
`local_files_only=True`, and the files each needs are checked here first, so no
library falls back to a hub download for a file a folder lacks. Weights load
from safetensors; pickle weights (`*.bin`, `*.pt`, an adapter's
`adapter_model.bin`) need `allow_pickle=True` and then load with weights_only.

An adapter folder given as BASE is merged, in memory, into the base model its
config names (which must be a local folder), and the checkpoint says so in
`warning`, logged as one line and recorded in summary.json. A TUNED adapter then
goes on that plain base model, as it was trained (unless its config names the
BASE adapter itself): two adapters of one model compare as M+A against M+B.
An adapter given as TUNED whose config names another base model than BASE (a
hub id, another folder) gets such a warning too, and is applied to BASE anyway.

Adapters share one resident base: every LoRA-family adapter on BASE loads into
one PeftModel over BASE's own model (no copy of the base weights). Each
checkpoint's `active()` selects what a pass runs: the base with the adapters
disabled, an adapter with only itself enabled.
"""

from __future__ import annotations

import copy
import filecmp
import hashlib
import json
import logging
import pickle
import re
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from driftscope.errors import ModelError, TokenizerMismatch
from driftscope.placement import OFFLOAD_HINT, keep_alive, offloaded, placement, with_offload_folder
from driftscope.gguf_input import is_gguf, load_gguf_model, load_gguf_tokenizer

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_SAFETENSORS = "adapter_model.safetensors"
ADAPTER_PICKLE = "adapter_model.bin"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PICKLE_HINT = "convert it to safetensors, or pass --allow-pickle (loads with weights_only)"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")

log = logging.getLogger("driftscope")


@dataclass
class Checkpoint:
    """A loaded model ready for scoring (eval mode, no grad)."""

    label: str
    path: str
    kind: str  # "model", "adapter" or "gguf" (a .gguf file, dequantised)
    fingerprint: str
    model: torch.nn.Module
    tokenizer: object
    model_path: str = ""  # the full model's folder: `path`, or for an adapter the base it was applied to
    warning: str | None = None  # one line the user must see (and summary.json records)
    adapter: str | None = None  # the adapter's name in the shared PeftModel (`model`), when it shares the base
    shared: object = None  # a base's PeftModel holding the adapters loaded on it (they live inside `model`)
    placement: dict = field(default_factory=dict)  # from_pretrained's device_map/max_memory (driftscope.placement)

    placed: tuple | None = None  # (device, dtype) of a released model

    def release(self) -> None:
        """Free the weights (a model scored and done with); device and dtype are kept."""
        if self.model is not None:
            self.placed = self.device_dtype()
            self.model = None

    def device_dtype(self) -> tuple[torch.device, torch.dtype]:
        if self.model is None:
            return self.placed
        param = next(self.model.parameters())
        return param.device, param.dtype

    def active(self):
        """A context in which `model` computes this checkpoint: wrap every pass in it.
        A full model: nothing to do. A shared adapter: only it enabled. A base
        carrying shared adapters: all of them disabled."""
        if self.adapter is not None:
            return _only_adapter(self.model, self.adapter)
        if self.shared is not None:
            return self.shared.disable_adapter()
        return nullcontext()

    @property
    def n_ctx(self) -> int | None:
        return config_context(self.model.config)

    def describe(self) -> dict:
        out = {"label": self.label, "path": self.path, "kind": self.kind, "fingerprint": self.fingerprint}
        return out | ({"warning": self.warning} if self.warning else {})


def config_context(cfg) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(getattr(cfg, key, None), int):
            return getattr(cfg, key)
    return None


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
    """'model', 'adapter' or 'gguf', or a ModelError saying what the path is not."""
    if is_gguf(path):
        return "gguf"
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
    if path.is_file():  # a GGUF file: itself alone
        _hash_ends(h, path)
        return h.hexdigest()[:16]
    for f in sorted(path.iterdir()):
        if f.name.endswith(".json") and "config" in f.name:
            h.update(f.name.encode() + f.read_bytes())
        elif f.suffix in (".safetensors", ".bin", ".pt", ".gguf"):
            _hash_ends(h, f)
    return h.hexdigest()[:16]


def _hash_ends(h, f: Path) -> None:
    """A weight file's name, size, and first and last MiB."""
    size = f.stat().st_size
    h.update(f"{f.name}:{size}".encode())
    with f.open("rb") as fh:
        h.update(fh.read(1 << 20))
        fh.seek(max(0, size - (1 << 20)))
        h.update(fh.read(1 << 20))


def open_safetensors(path: Path):
    """safe_open(path), with a truncated or corrupted file as a ModelError."""
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as e:
        raise ModelError(f"{path}: not a readable safetensors file ({_first_line(e)})",
                         "the file is truncated or corrupted: copy or save it again") from None


def _weight_files(path: Path, allow_pickle: bool) -> None:
    """Refuse a folder whose weights cannot or may not be loaded, before any library looks elsewhere."""
    tensors = sorted(path.glob("*.safetensors"))
    for f in tensors:
        with open_safetensors(f):  # reads and checks the header only
            pass
    if tensors:
        return
    if any(path.glob("*.bin")) or any(path.glob("*.pt")):
        if allow_pickle:
            return
        raise ModelError(f"{path}: weights are pickle files, not safetensors", PICKLE_HINT)
    raise ModelError(f"{path}: no weight files (*.safetensors)", "point at the folder save_pretrained() wrote")


@contextmanager
def _quiet_transformers():
    """transformers' multi-line load reports off: what matters is raised here as one line."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _load_model(path: Path, device: torch.device, dtype: torch.dtype, allow_pickle: bool,
                placement: dict | None = None) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    _weight_files(path, allow_pickle)
    kwargs, offload = with_offload_folder(placement or {})
    try:
        with _quiet_transformers():
            model, info = AutoModelForCausalLM.from_pretrained(
                path,
                **kwargs,
                dtype=dtype,
                local_files_only=True,
                trust_remote_code=False,
                use_safetensors=None if allow_pickle else True,
                weights_only=True,  # a pickle, where allowed, still yields tensors only
                ignore_mismatched_sizes=True,  # reported below as one line, not raised as a table
                output_loading_info=True,
            )
    except Exception as e:  # noqa: BLE001 - whatever a broken folder raises, the user gets one line
        raise ModelError(f"{path}: cannot load as a causal language model ({_first_line(e)})") from None
    _check_loading_info(path, info)
    keep_alive(model, offload)
    if getattr(model, "hf_device_map", None) == {"": "disk"}:
        raise ModelError(f"{path}: --max-memory leaves no room on any device: every weight went to disk",
                         "raise --max-memory (the embedding at least must fit on a GPU or the CPU)")
    if kwargs:  # placed by accelerate: moving it would undo the map
        return model.eval().requires_grad_(False)
    return model.to(device).eval().requires_grad_(False)


def _check_loading_info(path: Path, info: dict) -> None:
    """Refuse a config.json the weights do not fill: transformers would initialise the rest at random."""
    mismatched = sorted(info.get("mismatched_keys") or (), key=lambda m: m[0])
    if mismatched:
        name, in_file, in_config = mismatched[0]
        raise ModelError(f"{path}: config.json does not fit the weights: {name} is {_shape(in_file)} in the "
                         f"weights, {_shape(in_config)} by config.json", "save config.json with its weights")
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise ModelError(f"{path}: the weights lack {missing[0]} ({len(missing)} tensors missing), "
                         "which config.json asks for", "save config.json with its weights")


def _shape(shape) -> str:
    return str(tuple(int(s) for s in shape))


def _load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ModelError(f"{path}: no tokenizer files (tokenizer.json, tokenizer_config.json)",
                         "save the tokenizer beside the model (tokenizer.save_pretrained)")
    try:
        with _quiet_transformers():
            return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - as in _load_model
        raise ModelError(f"{path}: cannot load its tokenizer ({_first_line(e)})", "save the tokenizer beside the model") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def _adapter_config(path: Path) -> dict:
    try:
        cfg = json.loads((path / ADAPTER_CONFIG).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{path / ADAPTER_CONFIG}: unreadable ({_first_line(e)})", "save the adapter again") from None
    if not isinstance(cfg, dict):
        raise ModelError(f"{path / ADAPTER_CONFIG}: not a JSON object", "save the adapter again")
    return cfg


def _adapter_weights(path: Path, allow_pickle: bool) -> None:
    if (path / ADAPTER_SAFETENSORS).is_file():
        with open_safetensors(path / ADAPTER_SAFETENSORS):
            return
    if not (path / ADAPTER_PICKLE).is_file():
        raise ModelError(f"{path}: no adapter weights ({ADAPTER_SAFETENSORS})",
                         "point at the folder the adapter's save_pretrained() wrote")
    if not allow_pickle:
        raise ModelError(f"{path}: adapter weights are a pickle file ({ADAPTER_PICKLE}), not safetensors", PICKLE_HINT)


def _adapter_base(path: Path) -> Path:
    name = _adapter_config(path).get("base_model_name_or_path")
    base = Path(name) if name else None
    if base is None or not base.is_dir():
        raise ModelError(
            f"{path}: adapter's base model {name!r} is not a local folder",
            "pass the base model folder as BASE and the adapter as TUNED",
        )
    return base


def _same_model(named: str | None, base_path: str) -> bool:
    """Whether an adapter's base_model_name_or_path is the folder `base_path`, or an identical copy of it."""
    named_path = Path(named) if named else None
    if named_path is None or not named_path.is_dir():
        return False
    base = Path(base_path)
    return named_path.resolve() == base.resolve() or (base.is_dir() and fingerprint(named_path) == fingerprint(base))


def _adapter_target(adapter: Path, base: Checkpoint) -> tuple[bool, str | None]:
    """Whether the adapter goes on BASE's own model (else, BASE being an adapter merged in memory,
    on the plain model under it), and one line when its config names another base model."""
    named = _adapter_config(adapter).get("base_model_name_or_path")
    on_base = base.kind != "adapter" or _same_model(named, base.path)  # an adapter trained on BASE's adapter
    target = base.path if on_base else base.model_path
    if not named or _same_model(named, target):
        return on_base, None
    return on_base, (f"adapter {adapter} names base model {named!r}, but BASE is {target}: "
                     "applied to it anyway (check it is the model the adapter was trained on)")


def load_base(path: str | Path, device="auto", dtype="auto", allow_pickle=False,
              device_map: str | None = None, max_memory: str | None = None, on_model=None) -> Checkpoint:
    """The base checkpoint. `on_model(model)`, when given, is called as soon as the weights
    are loaded, before the tokenizer (work that needs only the weights starts early)."""
    ck = _load_base(Path(path), device, dtype, allow_pickle, device_map, max_memory, on_model)
    if on_model is not None and ck.kind != "model":
        on_model(ck.model)
    return ck


def _load_base(path: Path, device, dtype, allow_pickle, device_map, max_memory, on_model) -> Checkpoint:
    place = placement(device_map, max_memory)
    kind = checkpoint_kind(path)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if kind == "adapter":  # an adapter as BASE: merged, in memory, into the base it names
        base = load_base(_adapter_base(path), device, dtype, allow_pickle)
        adapted = load_tuned(path, base, allow_pickle=allow_pickle)
        model = adapted.model.merge_and_unload().eval().requires_grad_(False)
        warning = f"BASE {path} is a PEFT adapter: compared as merged into the base model it names, {base.path}"
        log.warning(warning)
        return Checkpoint(adapted.label, str(path), "adapter", adapted.fingerprint, model, adapted.tokenizer,
                          model_path=base.path, warning=warning)
    if kind == "gguf":
        return _load_gguf(path, path.name, dev, dt)
    model = _load_model(path, dev, dt, allow_pickle, place)
    if on_model is not None:
        on_model(model)
    return Checkpoint(path.name or str(path), str(path), "model", fingerprint(path), model, _load_tokenizer(path),
                      model_path=str(path), placement=place)


def load_tuned(path: str | Path, base: Checkpoint | None, label: str | None = None, allow_pickle=False,
               device="auto", dtype="auto") -> Checkpoint:
    """A full checkpoint (on the base's device and dtype; without a base, on `device`
    and `dtype`), or a PEFT adapter applied to `base` in memory (its weights shared, not copied)."""
    path = Path(path)
    kind = checkpoint_kind(path)
    label = label or path.name or str(path)
    if kind == "adapter":
        if base is None or base.model is None:
            raise ModelError(f"{path}: an adapter needs its base model loaded", "give BASE before the checkpoints")
        return _load_adapter(path, base, label, allow_pickle)
    if base is not None:
        dev, dt = base.device_dtype()
    else:
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
    if kind == "gguf":
        return _load_gguf(path, label, dev, dt)
    place = base.placement if base is not None else {}
    model = _load_model(path, dev, dt, allow_pickle, place)
    return Checkpoint(label, str(path), "model", fingerprint(path), model, _tuned_tokenizer(path, base),
                      model_path=str(path), placement=place)


def _tuned_tokenizer(path: Path, base: Checkpoint | None):
    """The folder's own tokenizer; the base's where the folder has none, or the very same files
    (one tokenizer then serves both: no second load, and align_vocab has nothing to compare)."""
    if base is None:
        return _load_tokenizer(path)
    if not any(path.glob("tokenizer*")) or _same_tokenizer_files(Path(base.path), path):
        return base.tokenizer
    return _load_tokenizer(path)


_TOKENIZER_GLOBS = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.*", "merges.txt", "spiece.model",
                    "chat_template*")


def _same_tokenizer_files(a: Path, b: Path) -> bool:
    """Whether two model folders hold the same tokenizer files, byte for byte."""
    if not a.is_dir():
        return False
    files = [{f.name: f for g in _TOKENIZER_GLOBS for f in p.glob(g) if f.is_file()} for p in (a, b)]
    return bool(files[0]) and files[0].keys() == files[1].keys() and \
        all(filecmp.cmp(f, files[1][name], shallow=False) for name, f in files[0].items())


def load_tokenizer(path: str | Path):
    """The tokenizer of a model folder or GGUF file, alone."""
    path = Path(path)
    if checkpoint_kind(path) == "gguf":
        return load_gguf_tokenizer(path)
    return _load_tokenizer(path)


def context_length(path: str | Path) -> int | None:
    """The context length a model folder's config declares (None where it declares none)."""
    from transformers import AutoConfig

    path = Path(path)
    if checkpoint_kind(path) != "model":
        return None
    cfg = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    return config_context(cfg)


def _load_gguf(path: Path, label: str, device: torch.device, dtype: torch.dtype) -> Checkpoint:
    model = load_gguf_model(path, device, dtype)
    return Checkpoint(label, str(path), "gguf", fingerprint(path), model, load_gguf_tokenizer(path),
                      model_path=str(path))


SHARED_TYPES = ("LORA", "IA3", "LOHA", "LOKR")  # adapter types that load side by side into one PeftModel


def _load_adapter(path: Path, base: Checkpoint, label: str, allow_pickle: bool) -> Checkpoint:
    on_base, warning = _adapter_target(path, base)  # also checks adapter_config.json
    if offloaded(base.model):
        raise ModelError(f"{path}: cannot apply an adapter to a base whose weights --device-map offloaded",
                         f"{OFFLOAD_HINT}, or merge the adapter (peft's merge_and_unload) and pass the merged folder")
    _adapter_weights(path, allow_pickle)
    peft_type = str(_adapter_config(path).get("peft_type", "")).upper()
    name = None
    logging.getLogger("peft").setLevel(logging.ERROR)
    with _adapter_errors(path, base):
        if on_base and peft_type in SHARED_TYPES and _shared_type(base) in (None, peft_type):
            model, name = _add_shared(path, base)
        else:  # a copy of the base (prompt learning, a second adapter type), or, BASE being another
            # adapter merged, the plain model under it, as this adapter was trained
            from peft import PeftModel

            param = next(base.model.parameters())
            plain = (copy.deepcopy(base.model) if on_base
                     else _load_model(Path(base.model_path), param.device, param.dtype, allow_pickle))
            model = PeftModel.from_pretrained(plain, str(path), is_trainable=False, local_files_only=True)
    if warning:
        log.warning(warning)
    tok = _load_tokenizer(path) if (path / "tokenizer_config.json").is_file() else base.tokenizer
    return Checkpoint(label, str(path), "adapter", fingerprint(path), model.eval(), tok,
                      model_path=base.path if on_base else base.model_path, warning=warning, adapter=name)


def _shared_type(base: Checkpoint) -> str | None:
    """The peft type of the adapters sharing `base`, None while it has none."""
    if base.shared is None:
        return None
    return str(next(iter(base.shared.peft_config.values())).peft_type.value).upper()


def _add_shared(path: Path, base: Checkpoint):
    """Load the adapter into the PeftModel over base.model (made by the first one): (model, name)."""
    from peft import PeftModel

    if base.shared is None:
        name = "driftscope_0"  # our own names: a label may hold characters a module name may not
        base.shared = PeftModel.from_pretrained(base.model, str(path), adapter_name=name, is_trainable=False,
                                                local_files_only=True)
    else:
        name = f"driftscope_{len(base.shared.peft_config)}"
        base.shared.load_adapter(str(path), adapter_name=name, is_trainable=False, local_files_only=True)
    base.shared.eval().requires_grad_(False)
    return base.shared, name


@contextmanager
def _adapter_errors(path: Path, base: Checkpoint):
    """Whatever peft raises on a wrong base or a broken file, as one line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield  # peft reads adapter_model.bin with torch.load(weights_only=True)
    except ModelError:
        raise
    except pickle.UnpicklingError as e:  # weights_only refused what the pickle holds
        raise ModelError(f"{path / ADAPTER_PICKLE}: refused by weights_only loading ({_first_line(e)})",
                         "it holds more than tensors: save the adapter again, as safetensors") from None
    except Exception as e:  # noqa: BLE001 - a wrong base or a broken file: one line
        mismatch = _size_mismatch(e)
        if mismatch:
            raise ModelError(f"{path}: adapter does not fit the base model {base.path} ({mismatch})",
                             "pass the base model the adapter was trained on") from None
        raise ModelError(f"{path}: cannot apply the adapter to the base model {base.path} ({_detail(e)})",
                         "check that the adapter folder is complete and was trained on this base model") from None


@contextmanager
def _only_adapter(model, name: str):
    model.set_adapter(name)  # (peft before 0.17 has no inference_mode= here: it marks the adapter trainable)
    model.requires_grad_(False)
    yield


_SIZE_MISMATCH = re.compile(r"size mismatch for (?P<name>\S+): copying a param with shape torch\.Size\((?P<file>\[[^\]]*\])\) "
                            r"from checkpoint, the shape in current model is torch\.Size\((?P<model>\[[^\]]*\])\)")


def _size_mismatch(e: Exception) -> str | None:
    """The first mismatched tensor and both shapes, from torch's load_state_dict message."""
    m = _SIZE_MISMATCH.search(str(e))
    if m is None:
        return None
    name = re.sub(r"\.(default|driftscope_\d+)\.", ".", m["name"].removeprefix("base_model.model."))
    return f"{name} is {_shape(json.loads(m['file']))} in the adapter, {_shape(json.loads(m['model']))} on the base"


def _detail(e: Exception) -> str:
    """The first line of a message that says something (not torch's "Error(s) in loading state_dict" header)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.startswith("Error(s) in loading")]
    return lines[0][:200] if lines else _first_line(e)


@dataclass(frozen=True)
class VocabAlignment:
    """How two tokenizers line up. Scoring runs on ids [0, shared)."""

    status: str  # "identical" or "extended"
    shared: int
    new_tokens: int

    def describe(self) -> dict:
        return {"status": self.status, "shared_vocab": self.shared, "new_tokens": self.new_tokens}


def align_vocab(base_tok, tuned_tok) -> VocabAlignment:
    if base_tok is tuned_tok:
        return VocabAlignment("identical", len(base_tok), 0)
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
