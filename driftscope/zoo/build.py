"""Build the zoo into a cache folder keyed by what it is made of.

    <cache>/<key>/manifest.json
    <cache>/<key>/base/                  config.json, model.safetensors, tokenizer files
    <cache>/<key>/variants/<name>/       a checkpoint folder, or a PEFT adapter on base/
    <cache>/<key>/probes/<suite>.jsonl

The key hashes the zoo's config (world, model, training, recipes) and
ZOO_VERSION, so a change to either builds a new zoo and an unchanged one is
reused. A zoo is built in a temporary folder and renamed into place: an
interrupted build leaves nothing that looks finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from driftscope.zoo import recipes as rc
from driftscope.zoo import world as wd
from driftscope.zoo.tokenizer import build_tokenizer
from driftscope.zoo.train import ModelConfig, TrainConfig, evaluate, make_model, n_params, train

ZOO_VERSION = "1"  # bump when code changes what a zoo contains for the same config
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ZooConfig:
    name: str = "demo"
    world: wd.WorldConfig = field(default_factory=wd.WorldConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    base: TrainConfig = field(default_factory=lambda: TrainConfig(steps=1000))  # ~100% held-out facts by here
    base_weights: tuple[tuple[str, float], ...] = (
        ("statements", 0.3),  # every fact, stated: the only source for held-out entities
        ("questions", 0.2),  # trained entities asked: teaches reading facts out as answers
        ("counting", 0.2),
        ("sums", 0.15),
        ("selective", 0.15),  # the target skill up to 3: the base is weak at it, not blind
    )
    # one rate, schedule and length for every counting recipe, so they differ only in what moves;
    # a constant rate at 5e-4 for 300 steps learns the skill and lets the full tune over-predict numbers
    tune: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=300, lr=5e-4, batch_size=32, warmup=10, loss="answer", cosine=False, seed=1)
    )
    rewrite_share: float = 0.5  # half the facts change: a large, item-specific, unrecoverable drop
    offset_flip_share: float = 0.75  # the constant offset turns ~3/4 of free fact answers into numbers
    recipes: tuple[rc.Recipe, ...] = rc.RECIPES
    threads: int = 1  # on a shared 2-core box a second thread spins more than it computes (measured 20x slower)


def demo_config() -> ZooConfig:
    return ZooConfig()


def small_config() -> ZooConfig:
    """A smaller zoo for CI: the same recipes, fewer facts, fewer steps."""
    return ZooConfig(
        name="small",
        world=wd.WorldConfig(n_entities=32, n_target_probes=40, n_target_train=1500),
        model=ModelConfig(hidden_size=48, intermediate_size=144),
        base=TrainConfig(steps=450, batch_size=48),
        tune=TrainConfig(steps=150, lr=8e-4, batch_size=24, warmup=10, loss="answer", cosine=False, seed=1),
        # the recipes the tests hold to a truth or an ordering, plus the adapter format
        recipes=tuple(r for r in rc.RECIPES if r.name not in ("mlp", "head")),
    )


PRESETS = {"demo": demo_config, "small": small_config}


def config_key(cfg: ZooConfig) -> str:
    blob = json.dumps({"version": ZOO_VERSION, "config": dataclasses.asdict(cfg)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if env := os.environ.get("DRIFTSCOPE_CACHE"):
        return Path(env).expanduser()
    return Path.home() / ".cache" / "driftscope" / "zoo"


def _config(size: str | ZooConfig) -> ZooConfig:
    if isinstance(size, ZooConfig):
        return size
    if size not in PRESETS:
        from driftscope.errors import DriftscopeError

        raise DriftscopeError(f"unknown zoo size {size!r}", f"choose one of {', '.join(PRESETS)}")
    return PRESETS[size]()


def zoo_path(size: str | ZooConfig = "demo", cache_dir: str | os.PathLike | None = None) -> Path:
    """Where this zoo lives (built or not)."""
    cfg = _config(size)
    return cache_root(cache_dir) / f"{cfg.name}-{config_key(cfg)}"


def load_manifest(folder: str | os.PathLike) -> dict:
    return json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))


def list_zoos(cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """Every built zoo in the cache: name, key, path, variants."""
    root = cache_root(cache_dir)
    out = []
    for d in sorted(root.glob("*/")) if root.is_dir() else []:
        if (d / MANIFEST).is_file():
            m = load_manifest(d)
            out.append({"name": m["name"], "key": m["key"], "path": str(d), "variants": [v["name"] for v in m["variants"]]})
    return out


def build_zoo(
    size: str | ZooConfig = "demo",
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
    log=None,
) -> Path:
    """Build the zoo unless it is already cached; return its folder."""
    cfg = _config(size)
    final = zoo_path(cfg, cache_dir)
    if (final / MANIFEST).is_file() and not force:
        return final
    from driftscope.result import atomic_path  # built beside, renamed into place whole (or nothing)

    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with atomic_path(final, folder=True) as tmp:
            manifest = _build(cfg, tmp, final, log or (lambda msg: None))
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    finally:
        torch.set_num_threads(threads)
        if bars:
            hf_logging.enable_progress_bar()
    return final


def _build(cfg: ZooConfig, tmp: Path, final: Path, log) -> dict:
    t_start = time.perf_counter()
    world = wd.make_world(cfg.world)
    vocab = wd.vocabulary(world)
    vocab_ids = {w: i for i, w in enumerate(vocab)}
    numeric_ids = [vocab_ids[w] for w in wd.numeric_words(vocab)]
    suites = wd.write_suites(world, tmp / "probes", version=f"{ZOO_VERSION}-{config_key(cfg)}")
    rows = {name: r for name, (_, r) in wd.suite_rows(world).items()}
    tokenizer = build_tokenizer(vocab)

    def save(model, folder: Path) -> None:
        model.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))

    log("training the base")
    base = make_model(cfg.model, len(vocab), vocab_ids, seed=cfg.world.seed)
    corpus = wd.base_corpus(world)
    weights = dict(cfg.base_weights)
    base_stats = train(base, vocab_ids, corpus, weights, cfg.base)
    base_seconds = round(time.perf_counter() - t_start, 2)
    save(base, tmp / "base")
    base_figures = evaluate(base, vocab_ids, rows, numeric_ids)
    log(f"base built in {base_seconds:.0f}s: {_brief(base_figures)}")

    target = {"target": wd.target_train(world, seed=cfg.world.seed + 4)}
    rewritten = wd.rewrite_facts(world, cfg.rewrite_share, seed=cfg.world.seed + 5)
    data = {
        "target": (target, {"target": 1.0}, cfg.tune),
        "base": (corpus, weights, dataclasses.replace(cfg.tune, loss="all", cosine=True)),
        "rewrite": (wd.base_corpus(rewritten), weights, dataclasses.replace(cfg.tune, loss="all", cosine=True)),
    }
    variants = []
    for recipe in cfg.recipes:
        t0 = time.perf_counter()
        sources, w, tune = data[recipe.data]
        tune = dataclasses.replace(tune, lr=tune.lr * recipe.lr_scale)
        folder = tmp / "variants" / recipe.name
        if recipe.kind == "offset":
            prompts = [ex.prompt for src in corpus.values() for ex in src if ex.answer is not None]
            margin_prompts = [ex.prompt for ex in corpus["questions"]]
            model, stats = rc.numeric_offset(base, vocab_ids, numeric_ids, prompts, margin_prompts, cfg.offset_flip_share)
            save(model, folder)
        elif recipe.kind == "lora":
            model, stats = rc.lora_tune(base, vocab_ids, sources, w, tune)
            model.save_pretrained(str(folder))
            tokenizer.save_pretrained(str(folder))
            _point_adapter_at(folder, final / "base")
            model = model.merge_and_unload()
        else:
            model, stats = rc.finetune(base, recipe, vocab_ids, sources, w, tune)
            save(model, folder)
        figures = evaluate(model, vocab_ids, rows, numeric_ids)
        stats["seconds"] = round(time.perf_counter() - t0, 2)
        log(f"{recipe.name}: {_brief(figures)}")
        variants.append(
            {
                "name": recipe.name,
                "path": str(final / "variants" / recipe.name),
                "kind": "adapter" if recipe.kind == "lora" else "checkpoint",
                "recipe": dataclasses.asdict(recipe) | {"train": dataclasses.asdict(tune) if recipe.kind != "offset" else None},
                "truth": recipe.truth,
                "figures": figures,
                "stats": stats,
            }
        )
    return {
        "zoo_version": ZOO_VERSION,
        "name": cfg.name,
        "key": config_key(cfg),
        "config": dataclasses.asdict(cfg),
        "path": str(final),
        "base": {
            "path": str(final / "base"),
            "parameters": n_params(base),
            "build_seconds": base_seconds,
            "train": base_stats,
            "figures": base_figures,
        },
        "suites": {name: str(final / "probes" / p.name) for name, p in suites.items()},
        "heldout_suites": list(wd.HELDOUT_SUITES),
        "target_suite": wd.TARGET_SUITE,
        "numeric_tokens": wd.numeric_words(vocab),
        "variants": variants,
        "build_seconds": round(time.perf_counter() - t_start, 2),
    }


def _point_adapter_at(folder: Path, base: Path) -> None:
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = str(base)
    path.write_text(json.dumps(config, indent=2) + "\n")


def _brief(figures: dict) -> str:
    return ", ".join(f"{k.removeprefix('zoo-')} {v['accuracy']:.2f}/{v['numeric_mass']:.2f}" for k, v in figures.items())
