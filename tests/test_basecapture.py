"""The base capture on disk: round trip, another process, refusals, size."""

import json
import subprocess
import sys

import pytest
import torch

from driftscope.basecapture import POSITION_KEYS, BaseCapture, CacheMismatch, make_manifest
from driftscope.errors import DriftscopeError, OutputError
from driftscope.metrics.topk import default_k, summarise_base

SUITES = [{"name": "world_knowledge", "version": "1", "hash": "a" * 64}, {"name": "arithmetic", "version": "1", "hash": "b" * 64}]
SETTINGS = {"chat_template": "auto", "max_length": 512, "k": 16, "dtype": "float32", "seed": 0, "classes": []}


def manifest(**change) -> dict:
    m = make_manifest("fp-base-123", "tok-456", SUITES, SETTINGS)
    m.update(change)
    return m


def small_capture(n: int = 40, vocab: int = 300, k: int = 16, folds: int = 5) -> BaseCapture:
    g = torch.Generator().manual_seed(0)
    logp = torch.log_softmax(torch.randn(n, vocab, generator=g, dtype=torch.float64) * 3, -1)
    groups = (torch.rand(vocab, 4, generator=g) < 0.3).double()
    gold = torch.randint(-1, vocab, (n,), generator=g)
    positions = summarise_base(logp, k, groups, gold)
    positions.update(probe=torch.arange(n, dtype=torch.int32) // 2, kind=(torch.arange(n) % 2).to(torch.int8),
                     offset=(torch.arange(n) % 2).to(torch.int32), gold=gold.to(torch.int32))
    return BaseCapture(positions, fold_logp_sum=torch.randn(folds, vocab, generator=g, dtype=torch.float64),
                       fold_count=torch.arange(folds, dtype=torch.float64), p_sum=logp.exp().sum(0), p_n=n,
                       items={"answers": {"0": "Paris", "3": "7"}, "choice_loglik": [[-1.5, -3.25], [-0.5]]},
                       manifest=manifest(), extra={"hidden": torch.randn(n, 8, generator=g).half()})


@pytest.fixture
def saved(tmp_path):
    capture = small_capture()
    return capture, capture.save(tmp_path / "cache")


def assert_same(a: BaseCapture, b: BaseCapture):
    assert set(a.positions) == set(b.positions) == set(POSITION_KEYS)
    for key in a.positions:
        assert a.positions[key].dtype == b.positions[key].dtype, key
        assert torch.equal(a.positions[key].nan_to_num(), b.positions[key].nan_to_num()), key
    for name in ("fold_logp_sum", "fold_count", "p_sum"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.p_n == b.p_n and a.items == b.items and a.extra.keys() == b.extra.keys()
    assert all(torch.equal(a.extra[k], b.extra[k]) for k in a.extra)
    assert {k: b.manifest[k] for k in a.manifest} == a.manifest


def test_round_trip(saved):
    capture, path = saved
    assert sorted(p.name for p in path.iterdir()) == ["base.safetensors", "items.json", "manifest.json"]
    again = BaseCapture.load(path, expect={"fingerprint": "fp-base-123", "suites": SUITES, "settings": SETTINGS})
    assert_same(capture, again)
    assert again.manifest["k"] == 16 and again.manifest["vocab"] == 300 and again.n_positions == 40


def test_a_capture_written_by_one_process_is_read_by_another(saved):
    capture, path = saved
    code = ("import json, sys; from driftscope.basecapture import BaseCapture; c = BaseCapture.load(sys.argv[1]); "
            "print(json.dumps([c.n_positions, c.k, float(c.p_sum.sum()), float(c.positions['entropy'].sum()), c.items]))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    n, k, p_total, entropy_total, items = json.loads(out.stdout)
    assert (n, k, items) == (40, 16, capture.items)
    assert p_total == float(capture.p_sum.sum()) and entropy_total == float(capture.positions["entropy"].sum())


@pytest.mark.parametrize("field,run,shown", [
    ("fingerprint", {"fingerprint": "fp-other-999"}, "fp-other-999"),
    ("tokenizer", {"tokenizer": "tok-other"}, "tok-other"),
    ("suites[arithmetic].hash", {"suites": [SUITES[0], {**SUITES[1], "hash": "c" * 64}]}, "cccc"),
    ("suites", {"suites": SUITES[:1]}, "world_knowledge"),
    ("settings.max_length", {"settings": {**SETTINGS, "max_length": 1024}}, "1024"),
    ("settings.chat_template", {"settings": {**SETTINGS, "chat_template": "off"}}, "off"),
])
def test_a_mismatched_cache_is_refused_naming_the_field(saved, field, run, shown):
    _, path = saved
    with pytest.raises(CacheMismatch) as e:
        BaseCapture.load(path, expect=run)
    message = str(e.value)
    assert "\n" not in message and isinstance(e.value, DriftscopeError)
    assert f": {field} is " in message and shown in message
    assert "driftscope capture" in e.value.hint and len(message) - len(str(path)) < 250


def test_another_schema_is_refused(saved):
    _, path = saved
    m = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**m, "schema": 99}))
    with pytest.raises(CacheMismatch, match="schema 99"):
        BaseCapture.load(path)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage-manifest", "no-manifest", "no-tensors", "no-folder"])
def test_a_damaged_cache_is_refused_in_one_line(saved, damage):
    _, path = saved
    tensors = path / "base.safetensors"
    if damage == "truncate":
        tensors.write_bytes(tensors.read_bytes()[: tensors.stat().st_size // 2])
    elif damage == "flip":
        data = bytearray(tensors.read_bytes())
        data[-5] ^= 0xFF
        tensors.write_bytes(bytes(data))
    elif damage == "garbage-manifest":
        (path / "manifest.json").write_text("{not json")
    elif damage == "no-manifest":
        (path / "manifest.json").unlink()
    elif damage == "no-tensors":
        tensors.unlink()
    else:
        path = path.parent / "nowhere"
    with pytest.raises(CacheMismatch) as e:
        BaseCapture.load(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_a_failed_save_leaves_nothing(tmp_path, monkeypatch):
    import driftscope.basecapture as bc

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bc, "save_file", broken)
    with pytest.raises(OutputError, match="No space left"):
        small_capture().save(tmp_path / "cache")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_cache_is_kept_unless_overwrite(saved):
    capture, path = saved
    with pytest.raises(OutputError, match="already exists"):
        capture.save(path)
    capture.items = {"answers": {"0": "Lyon"}}
    capture.save(path, overwrite=True)
    assert BaseCapture.load(path).items == capture.items
    assert sorted(p.name for p in path.parent.iterdir()) == ["cache"]  # no temporary folder left


def test_cache_size_within_one_percent_of_a_uint16_file(tmp_path):
    """Wikitext-like scale: 20k positions of a 49152-token vocabulary at the default k."""
    n, vocab, groups = 20_000, 49152, 10
    k = default_k(vocab, groups)
    summary = summarise_base(torch.log_softmax(torch.randn(2, vocab), -1), k, torch.zeros(vocab, groups))
    positions = {key: v[:1].expand(n, *v.shape[1:]).clone() for key, v in summary.items()}
    positions.update(probe=torch.zeros(n, dtype=torch.int32), kind=torch.zeros(n, dtype=torch.int8),
                     offset=torch.zeros(n, dtype=torch.int32), gold=torch.zeros(n, dtype=torch.int32))
    capture = BaseCapture(positions, torch.zeros(5, vocab, dtype=torch.float64), torch.zeros(5, dtype=torch.float64),
                          torch.zeros(vocab, dtype=torch.float64), n, manifest=manifest())
    per_position = sum(v[0].nbytes for v in positions.values())
    assert per_position <= 0.01 * 2 * vocab
    assert capture.size_ratio() <= 0.01
    path = capture.save(tmp_path / "cache")
    assert (path / "base.safetensors").stat().st_size <= 0.01 * capture.uint16_nbytes


def test_a_cache_missing_a_tensor_is_refused(tmp_path):
    capture = small_capture()
    del capture.positions["tail_varentropy"]
    path = capture.save(tmp_path / "cache")
    with pytest.raises(CacheMismatch, match="missing tail_varentropy"):
        BaseCapture.load(path)
