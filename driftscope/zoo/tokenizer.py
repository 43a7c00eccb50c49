"""A word-level tokenizer for the world, saved so AutoTokenizer loads it.

Words are split on whitespace only, so "A:" is one token and the scoring rule
"prompt + ' ' + answer" tokenises the prompt as a prefix of the full text.
Every text starts with <bos>; training appends <eos> after the answer so a
greedy decode stops after one word.
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast


def build_tokenizer(vocab: list[str]) -> PreTrainedTokenizerFast:
    ids = {w: i for i, w in enumerate(vocab)}
    tok = Tokenizer(models.WordLevel(vocab=ids, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", ids["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=64,
        clean_up_tokenization_spaces=False,
    )


def encode(vocab_ids: dict[str, int], text: str) -> list[int]:
    """What the saved tokenizer gives (tests hold the two equal), without its overhead."""
    return [vocab_ids["<bos>"]] + [vocab_ids.get(w, vocab_ids["<unk>"]) for w in text.split()]

