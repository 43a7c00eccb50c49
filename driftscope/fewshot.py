"""Few-shot prompts: K exemplars from the same suite before each item.

An exemplar is an item with a gold answer, written as its prompt and answer
(a choice item with its gold choice's text), joined as the scored text is
(capture.join). Exemplars are separated by a blank line, and a blank line
separates them from the item's own prompt:

    Q: What is 2+2? A: 4

    Q: Capital of Italy? A: Rome

    Q: Capital of France? A:

Each item draws its own K exemplars, never itself, from the suite's answered
items with a generator seeded by (seed, suite, item id): the draw is the same
on every run with that seed and, being done once before encoding, the same
for the base and every tuned checkpoint. The exemplars live in Probe.shots,
apart from the prompt, so that truncation cuts them first (capture.encode)
and the item's own prompt is kept whole. With the chat template on they sit
inside the one user turn, before the question.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np

from driftscope.capture import join
from driftscope.errors import DriftscopeError
from driftscope.probes import Probe, ProbeSuite

SEPARATOR = "\n\n"


def exemplar(p: Probe) -> str:
    prompt, answer = join(p.prompt, p.answer or "")
    return prompt + answer


def _rng(seed: int, suite: str, item: str) -> np.random.Generator:
    # A stable per-item stream: Python's hash() of a str changes between processes.
    digest = hashlib.sha256(f"{suite}\0{item}".encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


def draw(suite: ProbeSuite, item: Probe, k: int, seed: int) -> list[Probe]:
    """Up to k answered items of the suite other than `item`, in a seeded order."""
    pool = [p for p in suite.probes if p.answer is not None and p.id != item.id]
    if k <= 0 or not pool:
        return []
    picks = _rng(seed, suite.name, item.id).choice(len(pool), size=min(k, len(pool)), replace=False)
    return [pool[i] for i in picks]


def render(chosen: list[Probe]) -> str:
    """The exemplars as the text before an item's prompt ("" for none)."""
    return SEPARATOR.join(exemplar(p) for p in chosen) + SEPARATOR if chosen else ""


def suite_k(suite: ProbeSuite, fewshot: int | None, chat: bool = False) -> int:
    """The number of exemplars for a suite: --fewshot when given, else the suite header's
    (its "fewshot_chat" when the suite's prompts go through the chat template and it has one)."""
    if fewshot is not None and (isinstance(fewshot, bool) or not isinstance(fewshot, int) or fewshot < 0):
        raise DriftscopeError(f"--fewshot {fewshot}: must be a whole number >= 0", "use --fewshot 0 for zero-shot, or 3 or 5")
    if fewshot is not None:
        return fewshot
    return suite.fewshot_chat if chat and suite.fewshot_chat is not None else suite.fewshot


def with_shots(suites: list[ProbeSuite], fewshot: int | None, seed: int,
               chat_of=lambda suite: False) -> tuple[list[Probe], dict[str, dict]]:
    """Every suite's probes with their exemplars set, and per suite what was used:
    {"fewshot": K asked, "fewshot_drawn": the most exemplars any item got}
    (fewer than K when the suite has fewer other answered items). `chat_of(suite)`:
    whether its prompts go through the chat template."""
    probes, used = [], {}
    for suite in suites:
        k = suite_k(suite, fewshot, chat_of(suite))
        drawn = 0
        for p in suite.probes:
            chosen = draw(suite, p, k, seed)
            drawn = max(drawn, len(chosen))
            probes.append(replace(p, shots=render(chosen)))
        used[suite.name] = {"fewshot": k, "fewshot_drawn": drawn}
    return probes, used
