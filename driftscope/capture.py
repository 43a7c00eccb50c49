"""Tokenise probes, batch them, and capture distributions at scored positions.

The decoder body runs as usual; a forward pre-hook on the LM head gathers the
final hidden states at the scored positions only and hands the head a single
position per row, so the model never builds (batch, length, vocab) logits.
We then project the gathered (N, d_model) states ourselves.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch

from driftscope.architectures import softcap_of  # one reader of the softcap, for lens and outputs
from driftscope.errors import DriftscopeError
from driftscope.placement import head_device
from driftscope.probes import Probe

# position kinds: right after the prompt / inside the gold answer / along the base's greedy continuation
NEXT, ANSWER, CONTINUATION = 0, 1, 2
KINDS = {NEXT: "next", ANSWER: "answer", CONTINUATION: "continuation"}  # as the positions table names them
PLACEHOLDER = "DRIFTSCOPEPROMPT"  # stands for the user's content when locating the chat header


def join(prompt: str, continuation: str) -> tuple[str, str]:
    """The scored text is prompt + continuation, with one space between them
    when the prompt does not already end in whitespace."""
    if prompt and not prompt[-1].isspace() and continuation and not continuation[0].isspace():
        return prompt, " " + continuation
    return prompt, continuation


@dataclass(frozen=True)
class Encoded:
    """One probe as token ids: ids = prompt ids + answer ids (teacher forcing)."""

    index: int  # position of the probe in the run's probe list
    ids: tuple[int, ...]
    n_prompt: int
    n_answer: int
    truncated: int  # prompt tokens dropped to fit max_length: few-shot exemplars first, then the middle
    n_head: int = 0  # leading prompt tokens never dropped: BOS and the chat header
    max_length: int | None = None  # the most tokens the probe may take, decoded ones included
    n_shots: int = 0  # tokens of few-shot exemplars kept after the head: the first to go
    continuation: bool = False  # ids = prompt ids + the base's greedy continuation (continuation.py), not the answer


def probe_chat(probe: Probe, chat: bool) -> bool:
    """The chat-template choice for a probe: its suite's when set, else the run's."""
    return chat if probe.chat is None else probe.chat


def resolve_chat(probes: list[Probe], tokenizer, mode: str) -> list[Probe]:
    """The probes with their suites' chat choices settled: an explicit --chat-template
    on or off wins over every suite's header (the probes follow the run); with
    auto, a suite saying "on" needs a chat template."""
    if mode in ("on", "off"):
        return [replace(p, chat=None) if p.chat is not None else p for p in probes]
    wants = sorted({p.suite for p in probes if p.chat})
    if wants and not getattr(tokenizer, "chat_template", None):
        raise DriftscopeError(f"suite {wants[0]!r} asks for the chat template, and the base tokenizer has none",
                              "use --chat-template off, or remove \"chat_template\" from the suite's _suite header")
    return probes


def render_prompt(tokenizer, prompt: str, chat: bool) -> str:
    """The prompt as the model sees it; with the chat template, all of it
    (few-shot exemplars included) is the one user turn."""
    if chat:
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return prompt


def header_text(tokenizer, chat: bool) -> str:
    """What the rendered prompt holds before the user's content: the chat
    template's system turn and user header, or nothing."""
    if not chat:
        return ""
    return _before_content(tokenizer, "", chat)


def _before_content(tokenizer, prefix: str, chat: bool) -> str:
    """The rendered text before the user's content that follows `prefix`."""
    rendered = render_prompt(tokenizer, prefix + PLACEHOLDER, chat)
    return rendered.split(PLACEHOLDER)[0] if PLACEHOLDER in rendered else ""


def token_ids(tokenizer, text: str, special: bool) -> list[int]:
    # verbose=False: no "longer than the maximum" warning; encode() cuts a long prompt itself
    return list(tokenizer(text, add_special_tokens=special, verbose=False)["input_ids"])


def common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def split_pair(tokenizer, context: str, answer: str, special: bool) -> tuple[list[int], list[int]]:
    """Prompt ids and answer ids, cut from the tokenisation of the joined text.

    As lm-eval's `_encode_pair`: the continuation is whole[len(context ids):], so
    the answer's tokens are those the model sees after the prompt (no stray
    space marker from tokenising " answer" on its own). Where the prompt's
    trailing whitespace merges into the answer's first token ("A: " + "Paris"),
    it moves to the answer, as lm-eval moves it; where it stays a token of its
    own (a chat template's final newline), it stays with the prompt, so the
    next-token position and the decoding prompt are the prompt as written.
    """
    context, continuation = join(context, answer)
    whole = token_ids(tokenizer, context + continuation, special)
    ctx = token_ids(tokenizer, context, special)
    if whole[: len(ctx)] != ctx and context != context.rstrip():
        ctx = token_ids(tokenizer, context.rstrip(), special)
    return ctx, whole[len(ctx):]


def cut_middle(ids: list[int], n_head: int, room: int) -> list[int]:
    """At most `room` of `ids`: the first n_head kept, then the rest's start and
    end in halves (the end gets the odd token), its middle dropped."""
    if len(ids) <= room:
        return ids
    head = min(n_head, room)
    front = (room - head) // 2
    back = room - head - front
    return ids[: head + front] + ids[len(ids) - back:]


def fit(ids: list[int], n_head: int, n_shots: int, room: int) -> list[int]:
    """At most `room` of `ids` (= head, exemplars, the item's own prompt): the
    exemplars go first, earliest tokens first; only when the item's prompt
    still does not fit is its middle cut (cut_middle), so its end is kept."""
    if len(ids) <= room:
        return ids
    drop = min(len(ids) - room, n_shots)
    return cut_middle(ids[:n_head] + ids[n_head + drop:], n_head, room)


def head_length(tokenizer, chat: bool) -> int:
    """Tokens of BOS and the chat header: what every prompt starts with."""
    return len(token_ids(tokenizer, header_text(tokenizer, chat), not chat))


def encode(probe: Probe, index: int, tokenizer, chat: bool, max_length: int, header: str | None = None) -> Encoded:
    """Token ids of prompt + answer, at most max_length of them. The answer is
    kept whole where it fits; a prompt too long loses its few-shot exemplars
    first (earliest tokens first), then the middle of its own content, never
    BOS, the chat header or its end. The exemplars sit inside the user turn
    of the chat template. `header`: header_text(tokenizer, chat)."""
    use = probe_chat(probe, chat)
    text = render_prompt(tokenizer, probe.text, use)
    special = not use  # a chat template writes its own BOS
    if probe.answer is None:
        prompt_ids, answer_ids = token_ids(tokenizer, text, special), []
    else:
        prompt_ids, answer_ids = split_pair(tokenizer, text, probe.answer, special)
    head = header_text(tokenizer, use) if header is None or use != chat else header
    n_head = common_prefix(token_ids(tokenizer, head, special), prompt_ids)
    n_shots = 0
    if probe.shots:
        n_shots = max(0, common_prefix(token_ids(tokenizer, head + probe.shots, special), prompt_ids) - n_head)
    answer_ids = answer_ids[: max(0, max_length - n_head - 1)]
    kept = fit(prompt_ids, n_head, n_shots, max_length - len(answer_ids))
    truncated = len(prompt_ids) - len(kept)
    return Encoded(index, tuple(kept + answer_ids), len(kept), len(answer_ids), truncated,
                   n_head, max_length, max(0, n_shots - truncated))


def encode_all(probes: list[Probe], tokenizer, chat: bool, max_length: int) -> list[Encoded]:
    """encode() every probe; a max length with no room for a prompt is refused."""
    head = max(head_length(tokenizer, m) for m in {probe_chat(p, chat) for p in probes} | {chat})
    if max_length < head + 2:
        raise DriftscopeError(f"--max-length {max_length} leaves no room for a prompt: a probe needs {head + 2} tokens at least "
                              f"(BOS and chat header: {head}; one prompt token; one answer token)",
                              f"use --max-length {head + 2} or more, or leave it unset for the model's context")
    header = header_text(tokenizer, chat)
    return [encode(p, i, tokenizer, chat, max_length, header) for i, p in enumerate(probes)]


def decoding_prompt(e: Encoded, max_new: int) -> list[int]:
    """The prompt to decode from, cut so that it and max_new tokens fit max_length
    (absolute position embeddings have no row past the context): exemplars first."""
    prompt = list(e.ids[: e.n_prompt])
    return prompt if e.max_length is None else fit(prompt, e.n_head, e.n_shots, e.max_length - max_new)


@dataclass
class Batch:
    """Right-padded ids and the scored positions, flattened over the batch.

    input_ids, attention_mask: (B, T). rows, cols: (N,) the batch row and the
    position whose output predicts the next token. gold: (N,) the token that
    follows (-1 where the probe has no answer, and along a continuation). kind: (N,)
    NEXT, ANSWER or CONTINUATION. probe: (N,) index of the probe. offset: (N,) 0 for
    NEXT, k inside the answer, k = 1..n after the k-th continuation token. A batch
    holds continuation sequences only, or none (make_batches is given one or the other).
    """

    items: list[Encoded]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    gold: torch.Tensor
    kind: torch.Tensor
    probe: torch.Tensor
    offset: torch.Tensor

    @property
    def is_continuation(self) -> bool:
        return bool(len(self.kind)) and int(self.kind[0]) == CONTINUATION

    def to(self, device) -> "Batch":
        for name in ("input_ids", "attention_mask", "rows", "cols"):
            setattr(self, name, getattr(self, name).to(device))
        return self


def collate(items: list[Encoded], pad_id: int) -> Batch:
    width = max(len(e.ids) for e in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    rows, cols, gold, kind, probe, offset = [], [], [], [], [], []
    for r, e in enumerate(items):
        ids[r, : len(e.ids)] = torch.tensor(e.ids)
        mask[r, : len(e.ids)] = 1
        for col, k, g, what in _scored(e):
            rows.append(r)
            cols.append(col)
            gold.append(g)
            kind.append(what)
            probe.append(e.index)
            offset.append(k)
    t = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
    return Batch(items, ids, mask, t(rows), t(cols), t(gold), t(kind), t(probe), t(offset))


def _scored(e: Encoded):
    """(column, offset, gold, kind) of each scored position of one sequence."""
    if e.continuation:  # the position whose input is the k-th continuation token; the next position is NEXT's
        for k in range(1, e.n_answer + 1):
            yield e.n_prompt - 1 + k, k, -1, CONTINUATION
        return
    # Position n_prompt-1 predicts the first answer token (or is the bare next token).
    for k in range(max(1, e.n_answer)):
        yield e.n_prompt - 1 + k, k, (e.ids[e.n_prompt + k] if e.n_answer else -1), (NEXT if k == 0 else ANSWER)


def pad_id(tokenizer) -> int:
    """The id that pads batches: the tokenizer's pad token, else EOS, else 0 (masked either way)."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id or 0


def make_batches(encoded: list[Encoded], batch_size: int, pad_id: int) -> list[Batch]:
    """Length-sorted batches: little padding, and padding never changes a figure."""
    order = sorted(encoded, key=lambda e: (len(e.ids), e.index))
    return [collate(order[i : i + batch_size], pad_id) for i in range(0, len(order), batch_size)]


# Every (rows, vocab) tensor of the metrics has this many elements at most: 16 MiB in float64.
BLOCK_ELEMENTS = 1 << 21


def block_rows(vocab: int, elements: int | None = None) -> int:
    """Rows per block: a multiple of 8, from 8 to 512, with rows x vocab <= elements where it can."""
    return max(8, min(512, (elements or BLOCK_ELEMENTS) // max(vocab, 1) // 8 * 8))


def padded_index(start: int, n: int, size: int) -> torch.Tensor:
    """(size,) indices start .. start+n-1, the last repeated up to `size`: a block's rows."""
    return torch.arange(start, start + size).clamp_max(start + n - 1)


@dataclass
class Block:
    """Scored positions of one batch, `size` rows at a time.

    Every block of a run has the same number of rows: the last one of a batch
    repeats its final real position up to `size`. So every (rows, vocab) tensor
    the metrics allocate has one shape for the whole run, whatever the batches'
    makeup, and the work per block is bounded by BLOCK_ELEMENTS. Only the first
    `n` rows count.

    index: (size,) rows of the batch's scored positions (into CaptureState.final).
    gold, kind, probe, offset: (n,) as in Batch, for the real rows.
    """

    index: torch.Tensor
    n: int
    gold: torch.Tensor
    kind: torch.Tensor
    probe: torch.Tensor
    offset: torch.Tensor

    @property
    def size(self) -> int:
        return len(self.index)

    def pad(self, values: torch.Tensor) -> torch.Tensor:
        """(n,) values of the real rows -> (size,), padded as the block's rows are."""
        return values[self.index - self.index[0]]


def blocks(batch: Batch, size: int):
    """Yield the batch's scored positions as Blocks of exactly `size` rows."""
    total = len(batch.gold)
    for start in range(0, total, size):
        n = min(size, total - start)
        real = slice(start, start + n)
        yield Block(padded_index(start, n, size), n, batch.gold[real], batch.kind[real], batch.probe[real],
                    batch.offset[real])


@dataclass
class CaptureState:
    """What the hooks gathered on the last forward pass."""

    rows: torch.Tensor | None = None
    cols: torch.Tensor | None = None
    final: torch.Tensor | None = None  # (N, d_model) input of the LM head
    modules: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (N, d_model)


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


@contextmanager
def capture(model: torch.nn.Module, modules: dict[str, torch.nn.Module] | None = None):
    """Hooks that gather hidden states at `state.rows, state.cols` only.

    Yields a CaptureState; set its rows/cols before each forward pass. Every
    hook is removed on exit, also after an exception.
    """
    state = CaptureState()
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError("model has no output embeddings (LM head)")

    def shrink_head(_module, args):
        hidden = args[0]  # (B, T, d_model)
        if hidden.dim() != 3 or state.rows is None:  # project() on gathered states, or another state's pass
            return None
        state.final = hidden[state.rows, state.cols]
        # no rows: the model's own logits are (B, 0, V), unused, and its head reads none of its
        # weight (at a 262k vocabulary even one row per sequence read 671 MB per forward pass)
        return (hidden[:, :0, :],) + tuple(args[1:])

    def gather(name):
        def hook(_module, _args, output):
            if state.rows is not None:  # a model shared by checkpoints (adapters) runs others' passes too
                state.modules[name] = _first(output)[state.rows, state.cols]

        return hook

    handles = [head.register_forward_pre_hook(shrink_head)]
    try:
        for name, module in (modules or {}).items():
            handles.append(module.register_forward_hook(gather(name)))
        yield state
    finally:
        for h in handles:
            h.remove()


def project(model, hidden: torch.Tensor, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """LM head on gathered states -> (log-probs over ids [0, vocab), log-mass
    on ids >= vocab), both float32. (N, d_model) -> (N, vocab), (N,).
    The head computes wherever it landed (--device-map); the results come back
    to the states' device."""
    logits = model.get_output_embeddings()(hidden.to(head_device(model))).float().to(hidden.device)
    cap = softcap_of(model)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    full = torch.log_softmax(logits, dim=-1)
    extra = torch.logsumexp(full[:, vocab:], dim=-1) if full.shape[-1] > vocab else torch.full_like(full[:, 0], float("-inf"))
    return torch.log_softmax(logits[:, :vocab], dim=-1), extra


@torch.inference_mode()
def forward(model, state: CaptureState, batch: Batch) -> None:
    """One forward pass: fills state.final (N, d_model) and state.modules."""
    state.rows, state.cols = batch.rows, batch.cols
    state.modules.clear()
    try:
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    finally:  # the hooks act on this pass only: a model shared by checkpoints runs each one's
        state.rows = state.cols = None


@torch.inference_mode()
def project_block(model, state: CaptureState, block: Block, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """project() on one block's rows of the last forward pass: (block.size, vocab), (block.size,)."""
    return project(model, state.final[block.index.to(state.final.device)], vocab)


@torch.inference_mode()
def score(model, state: CaptureState, batch: Batch, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass; log-probs at all the batch's scored positions (N, vocab)."""
    forward(model, state, batch)
    return project(model, state.final, vocab)
