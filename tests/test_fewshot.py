"""Few-shot prompts (driftscope.fewshot) and a suite header's own settings:
exemplars from the same suite, seeded, never the item itself, cut first when
a prompt is too long; "fewshot" and "chat_template" in the _suite header,
with --fewshot and an explicit --chat-template winning."""

import json

import pytest

from driftscope.capture import decoding_prompt, encode, encode_all, probe_chat, render_prompt, resolve_chat, token_ids
from driftscope.errors import DriftscopeError, ProbeError
from driftscope.fewshot import SEPARATOR, draw, exemplar, with_shots
from driftscope.probes import list_suites, load_suite

ITEMS = [
    {"id": "q1", "prompt": "Q: What is the capital of France?\nA:", "answer": "Paris", "choices": ["Paris", "Rome"]},
    {"id": "q2", "prompt": "Q: What is 2 + 3?\nA:", "answer": "5"},
    {"id": "q3", "prompt": "Q: What colour is grass?\nA:", "answer": "green"},
    {"id": "q4", "prompt": "Q: What is the capital of Japan?\nA:", "answer": "Tokyo", "choices": ["Tokyo", "Osaka"]},
    {"id": "q5", "prompt": "The cat sat on the", "answer": None},  # no answer: never an exemplar
    {"id": "q6", "prompt": "Q: How many days are in a week?\nA:", "answer": "7"},
]


def write(tmp_path, header: dict | None = None, name="fs"):
    path = tmp_path / f"{name}.jsonl"
    lines = [{"_suite": {"name": name, **(header or {})}}] + [{k: v for k, v in i.items() if v is not None} for i in ITEMS]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def test_exemplars_from_the_suite_never_the_item(tmp_path):
    suite = load_suite(write(tmp_path))
    for p in suite.probes:
        chosen = draw(suite, p, 3, seed=0)
        assert len(chosen) == 3 and p.id not in {c.id for c in chosen}
        assert all(c.answer is not None for c in chosen)
    probes, used = with_shots([suite], 3, seed=0)
    assert used == {"fs": {"fewshot": 3, "fewshot_drawn": 3}}
    assert with_shots([suite], 3, seed=0)[0] == probes  # the same draw every time: base and tuned see one prompt
    assert [p.shots for p in with_shots([suite], 3, seed=1)[0]] != [p.shots for p in probes]  # --seed draws others
    first = probes[0]
    assert first.text.endswith(SEPARATOR + ITEMS[0]["prompt"]) and first.prompt == ITEMS[0]["prompt"]
    assert first.shots.count("\nA: ") == 3  # each exemplar is its prompt and its gold answer


def test_exemplar_is_prompt_and_gold_answer(tmp_path):
    q1 = load_suite(write(tmp_path)).probes[0]
    assert exemplar(q1) == "Q: What is the capital of France?\nA: Paris"  # a choice item: its gold choice's text


def test_header_default_and_override(tmp_path):
    suite = load_suite(write(tmp_path, {"fewshot": 2}))
    assert suite.fewshot == 2
    assert with_shots([suite], None, 0)[1]["fs"]["fewshot"] == 2  # not given: the suite's own
    probes, used = with_shots([suite], 0, 0)  # given as 0: zero-shot
    assert used["fs"]["fewshot"] == 0 and all(p.shots == "" for p in probes)
    assert with_shots([suite], 50, 0)[1]["fs"]["fewshot_drawn"] == 5  # all 5 answered items (for the unanswered q5)


def test_a_chat_default_apart_from_the_plain_one(tmp_path, bpe_tokenizer):
    """"fewshot_chat" is the header's default when the prompts go through the chat template
    (the built-in suites: 3 exemplars plain, none in a chat turn); --fewshot wins over both."""
    from driftscope.inputs import prepare

    suite = load_suite(write(tmp_path, {"fewshot": 3, "fewshot_chat": 0}))
    assert (suite.fewshot, suite.fewshot_chat) == (3, 0)
    assert with_shots([suite], None, 0, lambda s: True)[1]["fs"]["fewshot"] == 0
    assert with_shots([suite], None, 0, lambda s: False)[1]["fs"]["fewshot"] == 3
    assert with_shots([suite], 2, 0, lambda s: True)[1]["fs"]["fewshot"] == 2
    assert load_suite(write(tmp_path, {"fewshot": 2}, name="plain")).fewshot_chat is None  # then "fewshot" serves both
    used = lambda mode: prepare([suite], bpe_tokenizer, [], n_ctx=512, chat_template=mode, vocab=400).shots_used  # noqa: E731
    assert used("auto")["fs"]["fewshot"] == 3  # no chat template on this tokenizer: plain prompts
    bpe_tokenizer.chat_template = "<|user|>{{ messages[0]['content'] }}<|end|><|assistant|>"
    try:
        assert used("auto")["fs"]["fewshot"] == 0 and used("off")["fs"]["fewshot"] == 3
        off = load_suite(write(tmp_path, {"fewshot": 3, "fewshot_chat": 0, "chat_template": "off"}, name="off"))
        assert prepare([off], bpe_tokenizer, [], n_ctx=512, vocab=400).shots_used["off"]["fewshot"] == 3
    finally:
        bpe_tokenizer.chat_template = None


def test_the_builtin_suites_run_few_shot_on_plain_prompts_only():
    for suite in list_suites():
        if suite.name != "general":
            assert (suite.fewshot, suite.fewshot_chat) == (3, 0), suite.name


@pytest.mark.parametrize("header, needle", [({"fewshot": -1}, "fewshot"), ({"fewshot": "3"}, "fewshot"),
                                            ({"fewshot_chat": 1.5}, "fewshot_chat"),
                                            ({"chat_template": "maybe"}, "chat_template")])
def test_bad_header_settings(tmp_path, header, needle):
    with pytest.raises(ProbeError, match=needle):
        load_suite(write(tmp_path, header))


def test_bad_fewshot_is_refused(tmp_path):
    with pytest.raises(DriftscopeError, match="--fewshot"):
        with_shots([load_suite(write(tmp_path))], -2, 0)


def test_truncation_cuts_the_exemplars_first(tmp_path, bpe_tokenizer):
    probes, _ = with_shots([load_suite(write(tmp_path))], 4, seed=0)
    p = probes[0]
    own = token_ids(bpe_tokenizer, p.prompt, False)
    full = encode(p, 0, bpe_tokenizer, False, 10_000)
    room = len(full.ids) - 8  # too long by 8 tokens, fewer than the exemplars hold
    e = encode(p, 0, bpe_tokenizer, False, room)
    kept = list(e.ids[: e.n_prompt])
    assert e.truncated == 8 and e.n_shots == full.n_shots - 8
    assert kept[e.n_head:] == list(full.ids[e.n_head + 8: full.n_prompt])  # the exemplars lost their start only
    assert kept[-len(own) + 1:] == list(full.ids[full.n_prompt - len(own) + 1: full.n_prompt])  # the item's prompt whole
    short = decoding_prompt(e, 5)  # decoding cuts again: exemplars first
    assert len(short) == e.max_length - 5 and short[-len(own) + 1:] == kept[-len(own) + 1:]


def test_chat_template_holds_the_exemplars_in_the_user_turn(tmp_path, bpe_tokenizer):
    probes, _ = with_shots([load_suite(write(tmp_path))], 2, seed=0)
    bpe_tokenizer.chat_template = "<|user|>{{ messages[0]['content'] }}<|end|><|assistant|>"
    try:
        text = render_prompt(bpe_tokenizer, probes[0].text, True)
        assert text == "<|user|>" + probes[0].shots + probes[0].prompt + "<|end|><|assistant|>"
        e = encode(probes[0], 0, bpe_tokenizer, True, 10_000)
        assert e.n_head > 0 and e.n_shots > 0
    finally:
        bpe_tokenizer.chat_template = None


def test_suite_chat_setting_and_explicit_override(tmp_path, bpe_tokenizer):
    off = load_suite(write(tmp_path, {"chat_template": "off"}))
    assert off.chat_template == "off" and all(p.chat is False for p in off.probes)
    bpe_tokenizer.chat_template = "<|user|>{{ messages[0]['content'] }}<|end|><|assistant|>"
    try:
        auto = resolve_chat(list(off.probes), bpe_tokenizer, "auto")
        assert not probe_chat(auto[0], True)  # the suite's "off" holds under auto
        e = encode_all(auto, bpe_tokenizer, True, 10_000)[0]
        assert list(e.ids[: e.n_prompt]) == token_ids(bpe_tokenizer, auto[0].prompt, True)  # no template
        explicit = resolve_chat(list(off.probes), bpe_tokenizer, "on")
        assert probe_chat(explicit[0], True)  # an explicit --chat-template on wins
    finally:
        bpe_tokenizer.chat_template = None
    on = load_suite(write(tmp_path, {"chat_template": "on"}, name="on"))
    with pytest.raises(DriftscopeError, match="chat template"):
        resolve_chat(list(on.probes), bpe_tokenizer, "auto")


def test_lmeval_suites_say_chat_template_off(tmp_path):
    from test_lmeval import samples

    from driftscope.lmeval import import_samples, write_suite

    suite = load_suite(write_suite(import_samples(samples("drift_mc", tmp_path)), tmp_path / "mc.jsonl"))
    assert suite.chat_template == "off" and all(p.chat is False for p in suite.probes)


def test_compare_records_fewshot_per_suite(tmp_path, family):
    import driftscope

    result = driftscope.compare(family["base"], [family["copy"]], [write(tmp_path, {"fewshot": 2, "chat_template": "off"})],
                                out=tmp_path / "runs", html=False, layers=False, weights=False, max_length=64)
    settings = json.loads((result.path / "summary.json").read_text())["settings"]
    assert settings["fewshot"] is None
    assert settings["by_suite"] == {"fs": {"fewshot": 2, "fewshot_drawn": 2, "chat_template": False}}
    assert result.summary["checkpoints"][0]["figures"]["kl"]["mean"] == pytest.approx(0, abs=1e-6)  # same prompts both sides
