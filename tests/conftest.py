import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import tiny  # noqa: E402


@pytest.fixture(autouse=True)
def _user_paths(tmp_path, monkeypatch):
    """Every user path (cache, reports) points into the test's temp folder."""
    monkeypatch.setenv("DRIFTSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


@pytest.fixture(scope="session")
def family(tmp_path_factory) -> dict[str, Path]:
    """Tiny base, a fully tuned copy, a LoRA adapter and an identical copy."""
    return tiny.build_family(tmp_path_factory.mktemp("family"))


@pytest.fixture(scope="session")
def bpe_tokenizer(tmp_path_factory):
    return tiny.train_bpe(tmp_path_factory.mktemp("bpe"))


@pytest.fixture(scope="session")
def sp_tokenizer(tmp_path_factory):
    return tiny.train_bpe(tmp_path_factory.mktemp("sp"), sentencepiece=True)
