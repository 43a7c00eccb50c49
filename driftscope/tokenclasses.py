"""Token classes: named sets of token ids, decided once per tokenizer.

A class is decided from each token's text with the tokenizer's space markers
stripped ("Ġ42" and "▁42" are both "42"). Built-in classes register exactly as a
user's `--class NAME=REGEX` does, through `TokenClass`. Five of them form a
partition of the vocabulary (every id in exactly one), used to split KL into a
change of output type and a change of content.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from dataclasses import dataclass
from typing import Callable

import torch

from driftscope.errors import DriftscopeError

NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety "
    "hundred thousand million billion"
).split()

_NUMERIC = re.compile(
    r"[0-9]+"  # 42
    r"|[0-9]+(?:st|nd|rd|th)"  # 3rd
    r"|[0-9]*\.[0-9]+|[0-9]+\.[0-9]*"  # 3.14, .5, 3.
    r"|[0-9]{1,3}(?:,[0-9]{3})+"  # 1,000
    r"|(?:" + "|".join(NUMBER_WORDS) + r")",
    re.IGNORECASE,
)
_NUMERIC_FIRST = "[0-9.%s]" % "".join(sorted({w[0] for w in NUMBER_WORDS}))  # under IGNORECASE, as _NUMERIC
_OPTION = re.compile(r"\(?[A-E][).:]?|\([A-E]\)")

# Markers tokenizers use for a leading space or a newline inside token strings.
_SPACE_MARKERS = {"Ġ": " ", "▁": " ", "Ċ": "\n", "ĉ": "\t"}
_UNMARK = str.maketrans(_SPACE_MARKERS)
_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece byte fallback
_SEP = "\x00"


@dataclass(frozen=True)
class TokenClass:
    name: str
    matches: Callable[[str], bool]  # called on the stripped text
    description: str = ""
    special: bool = False  # membership decided by the tokenizer's special ids, not text
    match_all: Callable[[list[str]], list[bool]] | None = None  # `matches` over a vocabulary at once, faster

    def decide(self, texts: list[str]) -> list[bool]:
        return self.match_all(texts) if self.match_all is not None else [self.matches(t) for t in texts]


def _is_punct(text: str) -> bool:
    return bool(text) and all(unicodedata.category(ch)[0] in "PS" for ch in text)


def _all_punct(texts: list[str]) -> list[bool]:
    """_is_punct of each text, each character's category looked up once."""
    other = {ch for ch in set().union(*texts) if unicodedata.category(ch)[0] not in "PS"}
    return [t != "" and other.isdisjoint(t) for t in texts]


def _regex(name: str, rx: re.Pattern, description: str, first: str | None = None) -> TokenClass:
    """A class of the texts `rx` fully matches. `first`: a one-character pattern (under rx's
    flags) that every character a match can start with matches: texts starting otherwise are
    decided without running rx (most of a vocabulary)."""
    fullmatch = rx.fullmatch

    def match_all(texts: list[str]) -> list[bool]:
        if first is None:
            return [fullmatch(t) is not None for t in texts]
        can_start = re.compile(first, rx.flags).fullmatch
        starts = {c for c in {t[:1] for t in texts} if c and can_start(c)}
        return [t[:1] in starts and fullmatch(t) is not None for t in texts]

    return TokenClass(name, lambda t: fullmatch(t) is not None, description, match_all=match_all)


def regex_class(name: str, pattern: str) -> TokenClass:
    """A user class: tokens whose stripped text fully matches `pattern`."""
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise DriftscopeError(f"--class {name}: bad regular expression ({e})", "write NAME=REGEX, e.g. yesno=(?i)yes|no")
    return _regex(name, rx, f"user regex {pattern}")


BUILTIN: dict[str, TokenClass] = {
    c.name: c
    for c in (
        TokenClass("special", lambda t: False, "EOS, pad, BOS and other control tokens", special=True),
        _regex("numeric", _NUMERIC, "digits, ordinals, decimals, 1,000, zero..billion", _NUMERIC_FIRST),
        TokenClass("whitespace", lambda t: t == "", "spaces, tabs and newlines only"),
        TokenClass("punctuation", _is_punct, "punctuation and symbols only", match_all=_all_punct),
        _regex("option_letter", _OPTION, "A-E as option letters: A, (A, A), A., A:", r"[(A-E]"),
    )
}
# The partition for the KL split, in priority order; "other" takes the rest.
PARTITION = ("special", "numeric", "whitespace", "punctuation", "other")


def token_texts(tokenizer) -> list[str]:
    """Each id's surface text, space markers turned back into spaces."""
    backend = getattr(tokenizer, "backend_tokenizer", None)  # a fast tokenizer: its ids read in Rust, one call each
    ids = range(len(tokenizer))
    pieces = [p or "" for p in ([backend.id_to_token(i) for i in ids] if backend is not None
                                else tokenizer.convert_ids_to_tokens(list(ids)))]
    joined = _SEP.join(pieces)
    if joined.count(_SEP) == len(pieces) - 1:  # unmarked all at once: no piece holds the separator
        for marker, text in _SPACE_MARKERS.items():
            joined = joined.replace(marker, text)
        texts = joined.split(_SEP) if pieces else []
    else:
        texts = [p.translate(_UNMARK) for p in pieces]
    if "<0x" in joined:
        for i, piece in enumerate(pieces):
            m = _BYTE.fullmatch(piece) if piece.startswith("<0x") else None
            if m:
                b = int(m.group(1), 16)
                texts[i] = chr(b) if b < 128 else "\ufffd"
    return texts


def strip_text(text: str) -> str:
    """Text without surrounding whitespace; a whitespace-only token becomes ""."""
    return text.strip()


@dataclass(frozen=True)
class ClassTable:
    """Membership of every scored id in every class.

    V is the run's one vocabulary width (see `vocab_width`): every
    vocabulary-sized structure of a run has V rows or columns.
    membership: (V, C) bool, one column per name in `names` (built-ins, then user).
    partition:  (V, P) bool one-hot over PARTITION.
    texts: (V,) each id's text. beyond_head: the tokenizer's ids >= V, which
    no LM head scores (added tokens without a resized head): in no class.
    """

    names: tuple[str, ...]
    membership: torch.Tensor
    partition: torch.Tensor
    texts: tuple[str, ...]
    beyond_head: int = 0

    @property
    def width(self) -> int:
        return self.membership.shape[0]

    def ids(self, name: str) -> torch.Tensor:
        return self.membership[:, self.names.index(name)].nonzero().flatten()


def build_classes(texts: list[str], special_ids: set[int], user: dict[str, str] | None = None) -> ClassTable:
    """Decide every class for every token text (pure: no tokenizer needed)."""
    classes = dict(BUILTIN)
    for name, pattern in (user or {}).items():
        if name in classes or name == "other":
            raise DriftscopeError(f"--class {name}: that name is built in", "pick another class name")
        classes[name] = regex_class(name, pattern)
    stripped = [t.strip() for t in texts]  # strip_text, inlined: 262k calls
    names = tuple(classes)
    # each column decided in a Python list, then one tensor through a bytearray (Python bools
    # to bytes in C): item assignment into a tensor costs a microsecond each, seconds at 262k ids
    as_tensor = lambda col: torch.frombuffer(bytearray(col), dtype=torch.bool) if col else torch.zeros(0, dtype=torch.bool)  # noqa: E731
    special = as_tensor([i in special_ids for i in range(len(texts))])
    textual = as_tensor([t != "" for t in texts]) & ~special
    columns = [special if cls.special else as_tensor(cls.decide(stripped)) & textual for cls in classes.values()]
    member = torch.stack(columns, 1)  # the built-in classes: never no column
    partition = torch.zeros(len(texts), len(PARTITION), dtype=torch.bool)
    taken = torch.zeros(len(texts), dtype=torch.bool)
    for j, name in enumerate(PARTITION[:-1]):
        col = member[:, names.index(name)] & ~taken
        partition[:, j] = col
        taken |= col
    partition[:, -1] = ~taken
    return ClassTable(names, member, partition, tuple(texts))


def special_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    for tid, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(added, "special", False):
            ids.add(int(tid))
    return {i for i in ids if i is not None and 0 <= i < len(tokenizer)}


def vocab_width(tokenizer, models) -> int:
    """The run's one vocabulary width: ids [0, V) are those the tokenizer has and
    every model's LM head scores. A tokenizer longer than a head (tokens added
    without resize_token_embeddings, e.g. CodeLlama's 32,004 against 32,000 rows)
    leaves its last ids out; a head longer than the tokenizer (padded rows, a
    tuned model's new tokens) leaves its last rows out."""
    return min([len(tokenizer)] + [m.get_output_embeddings().weight.shape[0] for m in models])


def classes_for(tokenizer, user: dict[str, str] | None = None, width: int | None = None) -> ClassTable:
    """The class table over ids [0, width) (default: the whole tokenizer)."""
    texts = token_texts(tokenizer)
    width = len(texts) if width is None else width
    if not 0 < width <= len(texts):
        raise ValueError(f"vocabulary width {width} outside the tokenizer's 1..{len(texts)} ids")
    table = build_classes(texts[:width], {i for i in special_ids(tokenizer) if i < width}, user)
    return dataclasses.replace(table, beyond_head=len(texts) - width)
