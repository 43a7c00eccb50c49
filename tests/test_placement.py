"""--device-map: a model spread by accelerate (here: the CPU and disk, since CI
has no GPU) gives the same figures as the resident model; what cannot work
is refused in one line."""


import pytest
from typer.testing import CliRunner

import driftscope
from driftscope.cli import app
from driftscope.errors import ModelError
from driftscope.models import load_base
from driftscope.placement import parse_max_memory

pytest.importorskip("accelerate")
SPILL = "cpu=120KiB"  # the tiny model holds 172 KiB of weights: the rest goes to disk


def run(family, tmp_path, name, *tuned, **settings):
    return driftscope.compare(family["base"], [family[t] for t in tuned], ["general"], out=tmp_path, name=name,
                              html=False, **settings)


def test_the_tiny_base_spills_to_disk(family):
    ck = load_base(family["base"], device_map="auto", max_memory=SPILL)
    assert sum(p.numel() * 4 for p in ck.model.parameters()) > 120 * 1024  # tiny, but over the budget
    assert "disk" in ck.model.hf_device_map.values() and "cpu" in ck.model.hf_device_map.values()


def test_an_offloaded_run_equals_the_resident_one(family, tmp_path):
    spread = run(family, tmp_path, "spread", "tuned", device_map="auto", max_memory=SPILL).summary
    resident = run(family, tmp_path, "resident", "tuned", layers=False).summary
    a, b = spread["checkpoints"][0]["figures"], resident["checkpoints"][0]["figures"]
    for key in ("mean", "p99"):
        assert a["kl"][key] == pytest.approx(b["kl"][key], rel=1e-6)
    assert a["classes"]["numeric"]["shift"] == pytest.approx(b["classes"]["numeric"]["shift"], abs=1e-7)
    assert (a["accuracy_base"], a["accuracy_tuned"], a["verdict"]) == (b["accuracy_base"], b["accuracy_tuned"], b["verdict"])
    assert any("no layer figures (--device-map offloaded" in n for n in spread["notes"])


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("extra, needle", [
    (["--max-memory", "0=20GiB"], "--max-memory needs --device-map"),
    (["--device-map", "everywhere"], "--device-map everywhere: unknown map"),
    (["--device-map", "auto", "--max-memory", "0=lots"], "cannot read '0=lots'"),
    (["--device-map", "auto", "--max-memory", "cpu=1KiB"], "every weight went to disk"),
])
def test_placement_that_cannot_work_is_one_line(family, tmp_path, extra, needle):
    out = tmp_path / "runs"
    result = cli("compare", family["base"], family["tuned"], "--out", out, *extra)
    assert result.exit_code == 2 and needle in result.output and "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir())


def test_an_adapter_on_an_offloaded_base_is_refused(family, tmp_path):
    result = cli("compare", family["base"], family["lora"], "--device-map", "auto", "--max-memory", SPILL,
                 "--out", tmp_path / "runs")
    assert result.exit_code == 2 and "cannot apply an adapter to a base whose weights --device-map offloaded" in result.output
    assert "merge_and_unload" in result.output


def test_without_accelerate_the_map_is_refused(family, monkeypatch):
    monkeypatch.setattr("driftscope.placement.accelerate_available", lambda: False)
    with pytest.raises(ModelError, match="needs the accelerate package"):
        load_base(family["base"], device_map="auto")


def test_max_memory_reads_as_accelerate_takes_it():
    assert parse_max_memory("0=20GiB, cpu=60GiB,1=8 GB") == {0: "20GiB", "cpu": "60GiB", 1: "8GB"}
    assert parse_max_memory(None) is None
