"""What every model of a run is shown: the probes with their exemplars, encoded
once with the base tokenizer, batched, and the one vocabulary width.

`prepare` builds it before any forward pass; the base, each tuned checkpoint
and a base cache (basecapture.py) all see exactly these inputs, which
`Inputs.digest` names.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from driftscope.capture import Batch, Encoded, encode_all, make_batches, pad_id, probe_chat, resolve_chat
from driftscope.errors import DriftscopeError, ProbeError
from driftscope.fewshot import with_shots
from driftscope.probes import Probe, ProbeSuite, load_suite
from driftscope.tokenclasses import ClassTable, classes_for, vocab_width

DEFAULT_SUITES = ("world_knowledge", "yes_no", "commonsense")  # 571 choice items: README "The default probes"


@dataclass
class Inputs:
    suites: list[ProbeSuite]
    probes: list[Probe]  # every suite's probes, exemplars set
    shots_used: dict[str, dict]  # per suite: fewshot asked and drawn (fewshot.with_shots)
    chat: bool  # the run's chat-template choice (a suite header may set its own)
    max_length: int
    encoded: list[Encoded]
    batches: list[Batch]
    vocab: int  # the one width of every (.., vocab) structure (tokenclasses.vocab_width)
    table: ClassTable
    classes: dict[str, str]  # extra token classes NAME -> REGEX
    continue_n: int = 0  # --continue N: tokens of the base's continuation asked for (continuation.py)
    continuation: dict[int, tuple[int, ...]] = field(default_factory=dict)  # probe index -> the base's tokens
    continuations: list[Encoded] = field(default_factory=list)  # their sequences, batched after the others

    @property
    def suite_of(self) -> list[str]:
        return [p.suite for p in self.probes]

    @property
    def probe_ids(self) -> list[str]:
        return [p.id for p in self.probes]

    def truncated(self) -> dict[str, int]:
        """Prompts cut to fit max_length, per suite."""
        out = {s.name: 0 for s in self.suites}
        for e in self.encoded:
            out[self.probes[e.index].suite] += e.truncated > 0
        return out

    def by_suite(self) -> dict[str, dict]:
        """What each suite was run with: exemplars and chat template (summary.json settings)."""
        return {name: {**used, "chat_template": next(probe_chat(p, self.chat) for p in self.probes if p.suite == name)}
                for name, used in self.shots_used.items()}

    def suites_manifest(self) -> list[dict]:
        return [{"name": s.name, "version": s.version, "hash": s.hash} for s in self.suites]

    def digest(self) -> str:
        """sha256 of every encoded probe (its ids and where scoring starts), every
        continuation sequence and the class table: two runs with equal digests show
        every model the same thing. Without continuations, the digest is what it
        was before they existed (older base caches still match)."""
        h = hashlib.sha256()
        for e in self.encoded:
            h.update(json.dumps([e.index, e.ids, e.n_prompt, e.n_answer]).encode())
        for e in self.continuations:
            h.update(json.dumps(["continuation", e.index, e.ids, e.n_prompt]).encode())
        h.update(json.dumps([self.vocab, list(self.table.names), self.classes], sort_keys=True).encode())
        return h.hexdigest()


def load_suites(specs) -> list[ProbeSuite]:
    suites = [load_suite(s) for s in (specs or DEFAULT_SUITES)]
    seen: dict[str, str] = {}
    for s in suites:
        if s.name in seen:
            raise ProbeError(f"two probe suites are named {s.name!r} ({seen[s.name]} and {s.path})", "rename one in its _suite header")
        seen[s.name] = s.path
    return suites


def use_chat(tokenizer, mode: str) -> bool:
    has = bool(getattr(tokenizer, "chat_template", None))
    if mode == "on" and not has:
        raise DriftscopeError("--chat-template on: the base tokenizer has no chat template", "use --chat-template off or auto")
    if mode not in ("auto", "on", "off"):
        raise DriftscopeError(f"--chat-template {mode}: unknown mode", "use auto, on or off")
    return mode == "on" or (mode == "auto" and has)


def suite_chat(suite: ProbeSuite, chat: bool, mode: str) -> bool:
    """Whether a suite's prompts go through the chat template: an explicit --chat-template
    on or off decides; with auto, the suite header's on or off, else the run's (capture.resolve_chat)."""
    if mode in ("on", "off"):
        return chat
    return {"on": True, "off": False}.get(suite.chat_template, chat)


def prepare(suites: list[ProbeSuite], tokenizer, models: list, *, n_ctx: int, chat_template: str = "auto",
            fewshot: int | None = None, seed: int = 0, max_length: int | None = None, batch_size: int = 16,
            classes: dict[str, str] | None = None, vocab: int | None = None) -> Inputs:
    """Encode and batch the suites for `tokenizer`; `models` set the vocabulary width
    (or `vocab` when no model is at hand, e.g. scoring against a cache)."""
    chat = use_chat(tokenizer, chat_template)
    # the same exemplars for the base and every checkpoint
    probes, shots_used = with_shots(suites, fewshot, seed, lambda suite: suite_chat(suite, chat, chat_template))
    probes = resolve_chat(probes, tokenizer, chat_template)  # a suite header's chat choice, unless on/off was explicit
    length = min(n_ctx if max_length is None else max_length, n_ctx)
    encoded = encode_all(probes, tokenizer, chat, length)  # refuses a max_length with no room for a prompt
    batches = make_batches(encoded, batch_size, pad_id(tokenizer))
    width = vocab if vocab is not None else vocab_width(tokenizer, models)
    return Inputs(suites, probes, shots_used, chat, length, encoded, batches, width,
                  classes_for(tokenizer, classes, width), classes or {})
