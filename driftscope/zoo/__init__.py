"""The zoo: a synthetic world, a tiny base model and fine-tunes with known truth.

    build_zoo("demo") -> folder with manifest.json, base/, variants/, probes/
"""

from driftscope.zoo.build import (
    ZOO_VERSION,
    ZooConfig,
    build_zoo,
    cache_root,
    demo_config,
    list_zoos,
    load_manifest,
    small_config,
    zoo_path,
)
from driftscope.zoo.demo import run_demo

__all__ = [
    "ZOO_VERSION",
    "ZooConfig",
    "build_zoo",
    "cache_root",
    "demo_config",
    "list_zoos",
    "load_manifest",
    "run_demo",
    "small_config",
    "zoo_path",
]
