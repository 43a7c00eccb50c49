"""Token classes on a byte-level BPE and a SentencePiece-style tokenizer."""

import pytest

from driftscope.errors import DriftscopeError
from driftscope.tokenclasses import PARTITION, build_classes, classes_for, token_texts


def classify(texts, specials=frozenset(), user=None):
    table = build_classes(list(texts), set(specials), user)
    return {t: {n for j, n in enumerate(table.names) if table.membership[i, j]} for i, t in enumerate(texts)}


def test_numeric_definition_on_surface_text():
    got = classify([" 42", "3rd", " seven", "1,000", " 3.14", ".5", "Seven", " ", "A", "abc", "12a", "1,00", "\n", "!?", " (B"])
    numeric = {t for t, c in got.items() if "numeric" in c}
    assert numeric == {" 42", "3rd", " seven", "1,000", " 3.14", ".5", "Seven"}
    assert got[" "] == {"whitespace"} and got["\n"] == {"whitespace"}
    assert got["!?"] == {"punctuation"}
    assert "option_letter" in got["A"] and "option_letter" in got[" (B"]


# Byte-level BPE pre-splits "1,000" at the comma and "3rd" into "3" "rd" (the GPT-2
# regex), so those two are only whole tokens in the SentencePiece style.
@pytest.mark.parametrize("fixture, marker, pieces", [
    ("bpe_tokenizer", "Ġ", ["Ġ42", "Ġseven", "000"]),
    ("sp_tokenizer", "▁", ["▁42", "▁3rd", "▁seven", "▁1,000"]),
])
def test_real_tokenizers_strip_space_markers(request, fixture, marker, pieces):
    tok = request.getfixturevalue(fixture)
    table = classes_for(tok)
    vocab = tok.get_vocab()
    texts = token_texts(tok)

    def is_numeric(piece):
        return bool(table.membership[vocab[piece], table.names.index("numeric")])

    for piece in pieces:
        if piece not in vocab:  # make sure the test is not vacuous
            pytest.fail(f"{piece!r} is not in the trained vocabulary")
        assert is_numeric(piece), piece
    assert not is_numeric(marker) and not is_numeric("A")
    assert texts[vocab[marker]] == " "
    assert table.membership[vocab[marker], table.names.index("whitespace")]
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    assert table.membership[eos, table.names.index("special")]
    # The partition covers every id exactly once.
    assert (table.partition.sum(1) == 1).all()
    assert table.partition.shape[1] == len(PARTITION)


@pytest.mark.parametrize("fixture", ["bpe_tokenizer", "sp_tokenizer"])
def test_token_texts_read_through_the_backend_equal_convert_ids_to_tokens(request, fixture):
    """token_texts reads a fast tokenizer's ids in Rust; added tokens, special or not, read
    the same as through transformers' convert_ids_to_tokens."""
    import copy

    tok = copy.deepcopy(request.getfixturevalue(fixture))
    tok.add_tokens(["<new_word>"])
    tok.add_special_tokens({"additional_special_tokens": ["<|tool|>"]})
    slow = type("Slow", (), {"__len__": lambda self: len(tok), "convert_ids_to_tokens": lambda self, ids: tok.convert_ids_to_tokens(ids)})()
    assert token_texts(tok) == token_texts(slow)
    assert token_texts(tok)[-2:] == ["<new_word>", "<|tool|>"]


def test_user_class_and_bad_regex():
    got = classify([" yes", "No", "maybe"], user={"yesno": "(?i)yes|no"})
    assert "yesno" in got[" yes"] and "yesno" in got["No"] and "yesno" not in got["maybe"]
    with pytest.raises(DriftscopeError, match="bad regular expression"):
        build_classes(["a"], set(), {"broken": "("})
    with pytest.raises(DriftscopeError, match="built in"):
        build_classes(["a"], set(), {"numeric": "x"})


def test_build_classes_equals_the_token_by_token_definition():
    """build_classes decides in lists (fast at 262k ids); the rule it implements, token by token."""
    import torch

    from driftscope.tokenclasses import BUILTIN, regex_class, strip_text

    texts = ["", " ", "42", " 3rd", "A", "(B)", "hello", "!!", "\n", "twelve", "<eos>", "", "1,000", ".5", "yes", "No",
             "«", " —", "€5", "㊀", "a…", "…", "_", "²", "\u0301", "ſeven", "TWO", "(e"]  # No numbers, a mark, case folds
    special = {10, 11}
    user = {"yn": "(?i)yes|no"}
    table = build_classes(texts, special, user)
    classes = {**BUILTIN, "yn": regex_class("yn", user["yn"])}
    want = torch.zeros(len(texts), len(classes), dtype=torch.bool)
    for j, cls in enumerate(classes.values()):
        for i, t in enumerate(texts):
            want[i, j] = (i in special) if cls.special else (i not in special and t != "" and cls.matches(strip_text(t)))
    assert table.names == tuple(classes)
    assert torch.equal(table.membership, want)
    punct = table.membership[:, table.names.index("punctuation")]
    assert [texts[i] for i in punct.nonzero().flatten().tolist()] == ["!!", "«", " —", "…", "_"]
    assert table.partition.sum(1).tolist() == [1] * len(texts)
    assert build_classes([], set()).membership.shape == (0, len(BUILTIN))
