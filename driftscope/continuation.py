"""Continuation positions (`--continue N`): the base's greedy continuation of N
tokens after each prompt, scored teacher-forced in both models.

A fine-tune can leave the first token alone and still lead the text elsewhere
a few tokens on. Before the drift pass the base decodes up to N tokens after
every probe's prompt (greedy, batched, with answers.greedy: each row stops at
EOS or at its budget). Each probe with a non-empty continuation then gets one
more sequence, prompt + continuation, whose positions after the 1st .. n-th
continuation token are scored as kind CONTINUATION, offset 1..n (the position
before the 1st token is the probe's NEXT position, scored already). A probe
with a gold answer gets the same: its continuation is its own sequence after
the prompt, never mixed into the answer positions.

- The continuation is the base's, decided once: a base cache records it
  (items.json "continuation") and every checkpoint is fed exactly those tokens.
- The prompt is never cut for it: a probe's budget is N or the room its prompt
  leaves in the context, whichever is smaller. EOS ends a continuation and is
  not scored as an input.
- The figures are reported apart (drift.py's continuation scope): they never
  enter the headline (next and answer) figures, token movers or layer figures.
"""

from __future__ import annotations

import numpy as np

from driftscope.answers import greedy
from driftscope.capture import CONTINUATION, NEXT, Encoded, make_batches, pad_id
from driftscope.errors import DriftscopeError
from driftscope.memory import release_free_memory

# "Diverges later" (see `diverges_later`): thresholds on the checkpoint's own next-position KLs.
HARMLESS_QUANTILE = 0.5  # at the first token: at most the median
LARGE_QUANTILE = 0.9  # later: above what only the worst tenth of probes show at their first token


def check(n: int, max_length: int | None = None) -> None:
    """--continue N: 0 (off) or more, and fewer than the tokens a probe may hold."""
    if n < 0:
        raise DriftscopeError(f"--continue {n}: must be 0 (off) or a number of tokens", "e.g. --continue 16")
    if max_length is not None and n >= max_length:
        raise DriftscopeError(f"--continue {n}: beyond the context: a probe holds at most {max_length} tokens, "
                              "prompt included", f"use --continue {max(1, max_length // 4)} or less")


def budget(e: Encoded, n: int) -> int:
    """Tokens to decode after a probe's prompt: n, or the room its prompt leaves."""
    room = n if e.max_length is None else e.max_length - e.n_prompt
    return max(0, min(n, room))


def decode(base_ck, encoded: list[Encoded], n: int, batch_size: int) -> dict[int, tuple[int, ...]]:
    """The base's greedy continuation of every probe: probe index -> ids (EOS and what
    follows dropped; empty where the base ends at once or the prompt fills the context)."""
    tok = base_ck.tokenizer
    todo = sorted((e for e in encoded if budget(e, n) > 0), key=lambda e: (e.n_prompt, e.index))
    out = {e.index: () for e in encoded}
    with base_ck.active():  # adapters sharing the base: all off
        for i in range(0, len(todo), batch_size):
            chunk = todo[i : i + batch_size]
            new = greedy(base_ck.model, [list(e.ids[: e.n_prompt]) for e in chunk], [budget(e, n) for e in chunk],
                         pad_id(tok), tok.eos_token_id)
            for e, ids in zip(chunk, new):
                out[e.index] = _until_eos(ids, tok.eos_token_id)
            release_free_memory()
    return out


def _until_eos(ids: list[int], eos: int | None) -> tuple[int, ...]:
    return tuple(ids[: ids.index(eos)] if eos is not None and eos in ids else ids)


def sequences(encoded: list[Encoded], tokens: dict[int, tuple[int, ...]]) -> list[Encoded]:
    """One continuation sequence per probe with a non-empty continuation: its prompt + the tokens."""
    out = []
    for e in encoded:
        cont = tuple(tokens.get(e.index, ()))
        if cont:
            out.append(Encoded(e.index, e.ids[: e.n_prompt] + cont, e.n_prompt, len(cont), e.truncated, e.n_head,
                               e.max_length, e.n_shots, continuation=True))
    return out


def attach(inputs, tokens: dict[int, tuple[int, ...]], n: int, batch_size: int, tokenizer) -> None:
    """Add the continuation sequences to `inputs` as batches of their own, after the
    others: every pass that walks inputs.batches scores them, in the same order."""
    inputs.continue_n = n
    inputs.continuation = {int(i): tuple(int(t) for t in ids) for i, ids in tokens.items()}
    inputs.continuations = sequences(inputs.encoded, inputs.continuation)
    inputs.batches = inputs.batches + make_batches(inputs.continuations, batch_size, pad_id(tokenizer))


def from_cache(items: dict) -> dict[int, tuple[int, ...]]:
    """The continuation a base cache recorded (items.json: JSON keys are strings)."""
    return {int(i): tuple(ids) for i, ids in (items.get("continuation") or {}).items()}


def diverges_later(probe: np.ndarray, kind: np.ndarray, kl: np.ndarray, agree: np.ndarray) -> dict:
    """How often a probe that looks harmless at the first token diverges later.

    Over one checkpoint's scored positions (kept rows: finite ones), a probe
    with a continuation *diverges later* when
      - at its next position the tuned top-1 is the base's and its KL is at most
        the median next-position KL over the checkpoint's probes, and
      - at some continuation position the tuned top-1 differs from the base's
        (its greedy text would fork from the base's there) with a KL above the
        90th percentile of the next-position KLs.
    The fork condition keeps noise-level drift (an identical copy, a
    re-quantisation) from counting however long the continuation; the KL bar
    keeps a near tie from counting. `share` = probes that diverge later / probes
    with a continuation and a finite next position; `forks` = the share whose
    continuation forks anywhere, whatever their first token.
    """
    nxt, cont, agree = kind == NEXT, kind == CONTINUATION, agree.astype(bool)
    out = {"share": float("nan"), "n": 0, "n_probes": 0, "forks": float("nan"),
           "next_kl_median": float("nan"), "next_kl_p90": float("nan")}
    if not nxt.any() or not cont.any():
        return out
    small = float(np.quantile(kl[nxt], HARMLESS_QUANTILE))
    large = float(np.quantile(kl[nxt], LARGE_QUANTILE))
    probes = np.intersect1d(np.unique(probe[cont]), probe[nxt])
    if not len(probes):
        return out
    fork = np.zeros(len(probes), dtype=bool)
    at = np.searchsorted(probes, probe[cont])
    mine = (at < len(probes)) & (probes[np.minimum(at, len(probes) - 1)] == probe[cont])
    np.logical_or.at(fork, at[mine], (~agree[cont] & (kl[cont] > large))[mine])
    forks_any = np.zeros(len(probes), dtype=bool)
    np.logical_or.at(forks_any, at[mine], ~agree[cont][mine])
    order = np.argsort(probe[nxt], kind="stable")
    where = order[np.searchsorted(probe[nxt][order], probes)]
    harmless = agree[nxt][where] & (kl[nxt][where] <= small)
    hits = int((harmless & fork).sum())
    out.update(share=hits / len(probes), n=hits, n_probes=len(probes), forks=float(forks_any.mean()),
               next_kl_median=small, next_kl_p90=large)
    return out


def sentence(f: dict) -> str:
    """summary.json's continuation figures in one line (terminal and report)."""
    d = f["diverges_later"]
    if not f["n_positions"]:
        return f"no continuation positions scored (--continue {f['tokens']}: the base ended every prompt at once)"
    return (f"over the base's continuation ({f['tokens']} tokens, {f['n_positions']} positions) KL mean "
            f"{_num(f['kl']['mean'], '.3f')}, p99 {_num(f['kl']['p99'], '.3f')}, top-1 agree "
            f"{_num(f['top1_agreement'], '.1%')}; diverges later: {_num(d['share'], '.0%')} of {d['n_probes']} probes "
            f"(forks anywhere: {_num(d['forks'], '.0%')})")


def _num(x, spec: str) -> str:
    return "-" if x is None or x != x else format(x, spec)
