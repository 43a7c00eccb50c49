"""The synthetic world: invented entities with attributes, counting and sums.

Everything here is a pure function of a WorldConfig (its seed included), so a
world, its training text and its probe suites rebuild bit for bit. Every answer
is one word-level token, so "answered right" is one argmax.

Fact answers are colours, places and sizes; counting and sum answers are
digits. Both ask in the same "Q: ... ? A:" form, so a tune that learns "after
A: comes a number" shows up as numeric mass on fact questions.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from pathlib import Path

COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black")
HOMES = ("forest", "river", "cave", "hill", "lake", "desert", "marsh", "field")
SIZES = ("tiny", "small", "big", "huge")
OBJECTS = ("dot", "star", "cat", "bell", "cup", "leaf", "coin", "drum", "kite", "shoe")

# attribute -> (values, statement template, question template)
ATTRIBUTES: dict[str, tuple[tuple[str, ...], str, str]] = {
    "colour": (COLOURS, "the colour of the {e} is {v} .", "Q: what colour is the {e} ? A:"),
    "home": (HOMES, "the {e} lives in the {v} .", "Q: where does the {e} live ? A:"),
    "size": (SIZES, "the size of the {e} is {v} .", "Q: how big is the {e} ? A:"),
}
SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "gl", "kr", "pl", "sn", "tr")
_VOWELS = ("a", "e", "i", "o", "u", "oo")
_CODAS = ("b", "g", "k", "m", "n", "p", "rp", "sh", "x", "z")


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 0
    n_entities: int = 48  # 48 x 3 facts: a paired test has items, a tiny model still learns them in a minute
    heldout_share: float = 0.4  # entities never asked in training: their answers are known only from statements
    max_count: int = 9  # plain counting 1..9: one token per answer, learnable by two layers
    heldout_count_share: float = 0.3  # (object, n) pairs never seen: counting is tested, not recalled
    max_addend: int = 6  # sums of 0..6: 49 pairs, a lookup a tiny model can fill in
    heldout_sum_share: float = 0.2
    target_max_count: int = 6  # the fine-tune's skill: count one object among distractors, up to 6
    base_target_max_count: int = 3  # the base sees that skill only up to 3: weak at it, as a base LMM is at counting
    target_max_distractors: int = 4
    n_target_probes: int = 60
    n_target_train: int = 3000  # a pool larger than any tune's steps x batch needs to repeat much


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str | None = None  # None: a statement, trained on every token

    @property
    def text(self) -> str:
        return self.prompt if self.answer is None else f"{self.prompt} {self.answer}"


@dataclass(frozen=True)
class Fact:
    entity: str
    attribute: str
    value: str


@dataclass(frozen=True)
class World:
    config: WorldConfig
    entities: tuple[str, ...]
    facts: tuple[Fact, ...]
    heldout_entities: frozenset[str]
    heldout_counts: frozenset[tuple[str, int]]
    heldout_sums: frozenset[tuple[int, int]]

    def with_facts(self, facts: tuple[Fact, ...]) -> World:
        return replace(self, facts=facts)


def make_world(cfg: WorldConfig) -> World:
    rng = random.Random(cfg.seed)
    entities = _names(rng, cfg.n_entities)
    facts = tuple(
        Fact(e, attr, rng.choice(values)) for e in entities for attr, (values, _, _) in ATTRIBUTES.items()
    )
    n_held = round(cfg.heldout_share * len(entities))
    heldout_entities = frozenset(rng.sample(entities, n_held))
    counts = [(o, n) for o in OBJECTS for n in range(1, cfg.max_count + 1)]
    sums = [(a, b) for a in range(cfg.max_addend + 1) for b in range(cfg.max_addend + 1)]
    return World(
        config=cfg,
        entities=tuple(entities),
        facts=facts,
        heldout_entities=heldout_entities,
        heldout_counts=frozenset(rng.sample(counts, round(cfg.heldout_count_share * len(counts)))),
        heldout_sums=frozenset(rng.sample(sums, round(cfg.heldout_sum_share * len(sums)))),
    )


def _names(rng: random.Random, n: int) -> list[str]:
    taken = set(COLOURS + HOMES + SIZES + OBJECTS) | {"the", "is", "of", "in", "how", "big"}
    names: list[str] = []
    while len(names) < n:
        name = rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
        if rng.random() < 0.3:
            name += rng.choice(_VOWELS) + rng.choice(_CODAS)
        if name not in taken:
            taken.add(name)
            names.append(name)
    return names


def vocabulary(world: World) -> list[str]:
    """Every word the world can say; specials first so their ids are fixed."""
    cfg = world.config
    top = max(cfg.max_count, 2 * cfg.max_addend, cfg.target_max_count)
    words: set[str] = set()
    for ex in _all_examples(world):
        words.update(ex.text.split())
    words.update(str(i) for i in range(top + 1))
    return list(SPECIALS) + sorted(words)


def numeric_words(vocab: list[str]) -> list[str]:
    return [w for w in vocab if w.isdigit()]


# -- training text ------------------------------------------------------------


def statements(world: World) -> list[Example]:
    return [Example(ATTRIBUTES[f.attribute][1].format(e=f.entity, v=f.value)) for f in world.facts]


def fact_questions(world: World, heldout: bool) -> list[Example]:
    return [
        Example(ATTRIBUTES[f.attribute][2].format(e=f.entity), f.value)
        for f in world.facts
        if (f.entity in world.heldout_entities) == heldout
    ]


def counting(world: World, heldout: bool) -> list[Example]:
    return [
        Example(f"Q: how many {o} : {' '.join([o] * n)} ? A:", str(n))
        for o in OBJECTS
        for n in range(1, world.config.max_count + 1)
        if ((o, n) in world.heldout_counts) == heldout
    ]


def sums(world: World, heldout: bool) -> list[Example]:
    top = world.config.max_addend
    return [
        Example(f"Q: {a} plus {b} ? A:", str(a + b))
        for a in range(top + 1)
        for b in range(top + 1)
        if ((a, b) in world.heldout_sums) == heldout
    ]


def base_corpus(world: World) -> dict[str, list[Example]]:
    """The base model's training sources (nothing held out appears here)."""
    return {
        "statements": statements(world),
        "questions": fact_questions(world, heldout=False),
        "counting": counting(world, heldout=False),
        "sums": sums(world, heldout=False),
        "selective": base_selective(world),
    }


def base_selective(world: World) -> list[Example]:
    """The target skill in a narrow range (counts up to base_target_max_count)."""
    cfg = world.config
    held = frozenset(ex.prompt for ex in target_probes(world))
    return target_examples(world, 400, seed=cfg.seed + 3, exclude=held, max_count=cfg.base_target_max_count)


def target_examples(
    world: World, n: int, seed: int, exclude: frozenset[str] = frozenset(), max_count: int | None = None
) -> list[Example]:
    """The fine-tune's narrow task: count one object among others."""
    cfg = world.config
    top = max_count or cfg.target_max_count
    rng = random.Random(seed)
    out: list[Example] = []
    seen = set(exclude)
    while len(out) < n:
        obj, *others = rng.sample(OBJECTS, 3)
        k = rng.randint(1, top)
        seq = [obj] * k + [rng.choice(others) for _ in range(rng.randint(1, cfg.target_max_distractors))]
        rng.shuffle(seq)
        ex = Example(f"Q: count {obj} in : {' '.join(seq)} ? A:", str(k))
        if ex.prompt not in seen:
            seen.add(ex.prompt)
            out.append(ex)
    return out


def target_probes(world: World) -> list[Example]:
    return target_examples(world, world.config.n_target_probes, seed=world.config.seed + 1)


def target_train(world: World, seed: int) -> list[Example]:
    held = frozenset(ex.prompt for ex in target_probes(world))
    return target_examples(world, world.config.n_target_train, seed=seed, exclude=held)


def rewrite_facts(world: World, share: float, seed: int) -> World:
    """The same world with `share` of the facts given another value."""
    rng = random.Random(seed)
    facts = list(world.facts)
    for i in sorted(rng.sample(range(len(facts)), round(share * len(facts)))):
        f = facts[i]
        values = [v for v in ATTRIBUTES[f.attribute][0] if v != f.value]
        facts[i] = Fact(f.entity, f.attribute, rng.choice(values))
    return world.with_facts(tuple(facts))


def _all_examples(world: World) -> list[Example]:
    out = [ex for src in base_corpus(world).values() for ex in src]
    out += fact_questions(world, True) + counting(world, True) + sums(world, True)
    out += target_examples(world, 1, seed=0) + [
        Example(ATTRIBUTES[a][1].format(e=world.entities[0], v=v)) for a in ATTRIBUTES for v in ATTRIBUTES[a][0]
    ]
    return out


# -- probe suites -------------------------------------------------------------

HELDOUT_SUITES = ("zoo-facts-mc", "zoo-facts-free", "zoo-counting", "zoo-arithmetic")
TARGET_SUITE = "zoo-target-counting"


def suite_rows(world: World) -> dict[str, tuple[str, list[dict]]]:
    """suite name -> (description, probe rows), all held out from base training."""
    rng = random.Random(world.config.seed + 2)
    mc, free = [], []
    for f in world.facts:
        if f.entity not in world.heldout_entities:
            continue
        values, _, question = ATTRIBUTES[f.attribute]
        prompt = question.format(e=f.entity)
        choices = [f.value] + rng.sample([v for v in values if v != f.value], 3)
        rng.shuffle(choices)
        pid = f"{f.entity}-{f.attribute}"
        mc.append({"id": pid, "prompt": prompt, "answer": f.value, "choices": choices, "task": "facts", "tags": [f.attribute]})
        free.append({"id": pid, "prompt": prompt, "answer": f.value, "task": "facts", "tags": [f.attribute]})
    count_rows = [
        {"id": f"count-{i}", "prompt": ex.prompt, "answer": ex.answer, "task": "counting", "tags": [f"n={ex.answer}"]}
        for i, ex in enumerate(counting(world, heldout=True))
    ]
    sum_rows = [
        {"id": f"sum-{i}", "prompt": ex.prompt, "answer": ex.answer, "task": "arithmetic"}
        for i, ex in enumerate(sums(world, heldout=True))
    ]
    target_rows = [
        {"id": f"target-{i}", "prompt": ex.prompt, "answer": ex.answer, "task": "target-counting"}
        for i, ex in enumerate(target_probes(world))
    ]
    return {
        "zoo-facts-mc": ("held-out entity facts, four choices of the same attribute", mc),
        "zoo-facts-free": ("held-out entity facts, free answer (one word)", free),
        "zoo-counting": ("plain counting of (object, n) pairs never trained", count_rows),
        "zoo-arithmetic": ("sums of pairs never trained", sum_rows),
        TARGET_SUITE: ("the fine-tunes' task: count one object among distractors", target_rows),
    }


def write_suites(world: World, folder: Path, version: str) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (description, rows) in suite_rows(world).items():
        path = folder / f"{name}.jsonl"
        header = {"_suite": {"name": name, "version": version, "description": description}}
        lines = [json.dumps(header)] + [json.dumps(r) for r in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths[name] = path
    return paths
