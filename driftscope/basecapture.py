"""The base model, captured once: what every tuned checkpoint is scored against.

A BaseCapture holds, per scored position, the base's summary
(`metrics.topk.summarise_base`: top-k log-probs, exact entropy, class masses,
gold log-prob) and where the position comes from (probe, kind, offset, gold);
the vocabulary-sized sums the recovery offset and the token movers need; the
base's per-item results (answers, choice log-likelihoods: free-form JSON); and
a manifest saying what it was captured from. On disk it is a folder:

    base.safetensors   every tensor
    manifest.json      schema, driftscope version, model fingerprint, tokenizer
                       hash, suites, settings, and the sha256 of base.safetensors
    items.json         the per-item results

written to a temporary folder beside the target and renamed into place, so a
failed write leaves nothing behind. `load` refuses a cache that cannot be read
or does not match the run with a CacheMismatch naming the field.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from driftscope import __version__
from driftscope.errors import DriftscopeError, OutputError
from driftscope.metrics.topk import SUMMARY_KEYS

SCHEMA = 2  # bump when the tensors or their meaning change: an older cache is then refused
TENSORS, MANIFEST, ITEMS = "base.safetensors", "manifest.json", "items.json"
WHERE_KEYS = ("probe", "kind", "offset", "gold")  # (N,) where each position comes from
POSITION_KEYS = SUMMARY_KEYS + WHERE_KEYS
RECAPTURE = "capture the base again with driftscope capture BASE --probes ... --out CACHE"


class CacheMismatch(DriftscopeError):
    """A base cache cannot be read, or was captured from another model, tokenizer, probes or settings."""


@dataclass
class BaseCapture:
    """The base's side of every comparison. N scored positions, vocabulary V, K folds.

    positions: summarise_base's tensors, (N, ...), plus probe, kind, offset, gold (N,)
    fold_logp_sum: (K, V) float64, sum of the base's log p at next positions of each
        fold's probes; fold_count (K,): how many. The offset sums of a tuned model
        are then its own sums of log q minus these, exactly.
    p_sum: (V,) float64, sum of p over all positions; p_n: how many (token movers).
    items: the base's per-item results, free-form JSON, kept as given (JSON keys are strings).
    manifest: schema, driftscope_version, fingerprint, tokenizer, suites, settings
        (`make_manifest`); a loaded one also has tensors_sha256, n_positions, vocab, k.
    extra: any further tensors (e.g. hidden states at scored positions), saved as they are.
    """

    positions: dict[str, torch.Tensor]
    fold_logp_sum: torch.Tensor
    fold_count: torch.Tensor
    p_sum: torch.Tensor
    p_n: int
    items: dict = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def n_positions(self) -> int:
        return len(self.positions["probe"])

    @property
    def vocab(self) -> int:
        return self.p_sum.shape[0]

    @property
    def k(self) -> int:
        return self.positions["top_ids"].shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes of every tensor: about the size of base.safetensors."""
        tensors = [*self.positions.values(), *self.extra.values(), self.fold_logp_sum, self.fold_count, self.p_sum]
        return sum(t.nbytes for t in tensors) + 8  # + p_n

    @property
    def uint16_nbytes(self) -> int:
        """A full-vocabulary uint16 file of the same positions (llama.cpp's KL base file): 2 V N bytes."""
        return 2 * self.vocab * self.n_positions

    def size_ratio(self) -> float:
        """nbytes / uint16_nbytes; the design asks for at most 0.01."""
        return self.nbytes / max(self.uint16_nbytes, 1)

    def _tensors(self) -> dict[str, torch.Tensor]:
        out = {f"positions.{k}": v for k, v in self.positions.items()}
        out.update({f"extra.{k}": v for k, v in self.extra.items()})
        out.update(fold_logp_sum=self.fold_logp_sum, fold_count=self.fold_count, p_sum=self.p_sum,
                   p_n=torch.tensor([self.p_n], dtype=torch.int64))
        out = {k: v.detach().cpu().contiguous() for k, v in out.items()}
        seen: set[int] = set()
        for k, v in out.items():  # safetensors refuses tensors that share memory
            ptr = v.untyped_storage().data_ptr()
            if ptr in seen and v.numel():
                out[k] = v.clone()
            seen.add(ptr)
        return out

    # -- disk ------------------------------------------------------------------

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the cache folder at `path` (see the module docstring); returns it."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise OutputError(f"{path} already exists", "pass --overwrite, or choose another --out")
        from driftscope.result import atomic_path  # the one atomic writer: a failed write leaves nothing

        with atomic_path(path, folder=True, flag="--out") as tmp:
            save_file(self._tensors(), str(tmp / TENSORS))
            manifest = {**self.manifest, "schema": SCHEMA, "tensors_sha256": _sha256(tmp / TENSORS),
                        "n_positions": self.n_positions, "vocab": self.vocab, "k": self.k}
            manifest.setdefault("driftscope_version", __version__)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
            (tmp / ITEMS).write_text(json.dumps(self.items))
        return path

    @classmethod
    def load(cls, path: str | Path, expect: dict | None = None) -> BaseCapture:
        """Read a cache folder. Raises CacheMismatch (one line, which field) when it is
        missing, unreadable, truncated, of another schema, or when a field named in
        `expect` (e.g. fingerprint, tokenizer, suites, settings; nested dicts field by
        field) differs from the manifest's."""
        path = Path(path)
        manifest = _read_json(path, MANIFEST)
        if manifest.get("schema") != SCHEMA:
            raise CacheMismatch(f"the base cache at {path} has schema {_short(manifest.get('schema'))}, this "
                                f"driftscope ({__version__}) reads schema {SCHEMA}", RECAPTURE)
        if expect:
            check_manifest(manifest, expect, path)
        tensors = _read_tensors(path, manifest)
        items = _read_json(path, ITEMS)
        capture = cls(
            positions={k[len("positions."):]: v for k, v in tensors.items() if k.startswith("positions.")},
            fold_logp_sum=tensors["fold_logp_sum"], fold_count=tensors["fold_count"], p_sum=tensors["p_sum"],
            p_n=int(tensors["p_n"][0]), items=items, manifest=manifest,
            extra={k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")})
        capture.validate(path)
        return capture

    def validate(self, path: str | Path = "the base cache") -> None:
        """Every position tensor present with N rows; sums of width V. CacheMismatch otherwise."""
        missing = [k for k in POSITION_KEYS if k not in self.positions]
        n = len(self.positions["probe"]) if "probe" in self.positions else -1
        wrong = [k for k, v in self.positions.items() if len(v) != n]
        if self.fold_logp_sum.shape != (len(self.fold_count), self.vocab):
            wrong.append("fold_logp_sum")
        if missing or wrong:
            what = f"missing {', '.join(missing)}" if missing else f"{', '.join(wrong)} of the wrong shape"
            raise CacheMismatch(f"{path} is not a complete base cache: {what}", RECAPTURE)


def make_manifest(fingerprint: str, tokenizer: str, suites: list[dict], settings: dict) -> dict:
    """The fields a run compares: suites as [{name, version, hash}], settings as a flat dict."""
    return {"schema": SCHEMA, "driftscope_version": __version__, "fingerprint": fingerprint,
            "tokenizer": tokenizer, "suites": suites, "settings": settings}


def check_manifest(manifest: dict, expect: dict, path: str | Path = "the base cache") -> None:
    """CacheMismatch naming the first field of `expect` the manifest differs on."""
    diff = first_difference(manifest, expect)
    if diff:
        where, cached, here = diff
        raise CacheMismatch(f"the base cache at {path} does not match this run: {where} is {_short(cached)} "
                            f"in the cache, {_short(here)} here", RECAPTURE)


def first_difference(cached, expected, where: str = "") -> tuple[str, object, object] | None:
    """(dotted field, cached value, expected value) of the first difference, or None.
    Dicts are compared on the expected keys only; lists item by item (a suite by its name)."""
    if isinstance(expected, dict):
        if not isinstance(cached, dict):
            return where or "manifest", cached, expected
        for key, value in expected.items():
            diff = first_difference(cached.get(key, "(absent)"), value, f"{where}.{key}" if where else str(key))
            if diff:
                return diff
        return None
    if isinstance(expected, (list, tuple)) and isinstance(cached, (list, tuple)):
        if len(cached) != len(expected):
            return where, _names(cached), _names(expected)
        for i, (c, e) in enumerate(zip(cached, expected)):
            label = e.get("name", i) if isinstance(e, dict) else i
            diff = first_difference(c, e, f"{where}[{label}]")
            if diff:
                return diff
        return None
    return None if cached == expected else (where, cached, expected)


def _names(items: list) -> list:
    return [x.get("name", x) if isinstance(x, dict) else x for x in items]


def _short(value, width: int = 24) -> str:
    """One line, at most `width` characters (a list of names: 60), for a message."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        value, width = "[" + ", ".join(value) + "]", 60
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _sha256(file: Path) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_json(path: Path, name: str) -> dict:
    try:
        value = json.loads((path / name).read_text())
    except FileNotFoundError:
        what = "no base cache" if not path.exists() else f"no {name} in the base cache"
        raise CacheMismatch(f"{what} at {path}", RECAPTURE) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CacheMismatch(f"{path / name} cannot be read: {_short(str(e), 60)}", RECAPTURE) from None
    if not isinstance(value, dict):
        raise CacheMismatch(f"{path / name} does not hold a JSON object", RECAPTURE)
    return value


def _read_tensors(path: Path, manifest: dict) -> dict[str, torch.Tensor]:
    file = path / TENSORS
    try:
        if _sha256(file) != manifest.get("tensors_sha256"):
            raise CacheMismatch(f"{file} is truncated or corrupted (its checksum differs from the manifest's)", RECAPTURE)
        tensors = load_file(str(file))
    except FileNotFoundError:
        raise CacheMismatch(f"no {TENSORS} in the base cache at {path}", RECAPTURE) from None
    except CacheMismatch:
        raise
    except Exception as e:  # safetensors raises its own error types for a malformed file
        raise CacheMismatch(f"{file} cannot be read: {_short(str(e), 60)}", RECAPTURE) from None
    missing = [k for k in ("fold_logp_sum", "fold_count", "p_sum", "p_n") if k not in tensors]
    if missing:
        raise CacheMismatch(f"{path} is not a complete base cache: missing {', '.join(missing)}", RECAPTURE)
    return tensors
