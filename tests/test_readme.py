"""The README's CI job and gates file, run exactly as written, on tiny models."""

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def ci_steps() -> list[str]:
    """The `run:` lines of the README's workflow, minus the install step (done here)."""
    (workflow,) = [b for b in blocks("yaml") if "driftscope compare" in b]
    steps = [line.split("- run:", 1)[1].strip() for line in workflow.splitlines() if "- run:" in line]
    assert steps[0].startswith("pip install torch==2.13.0")
    return steps[1:]


@pytest.fixture
def repo(family, tmp_path):
    """A checkout like the README's: models/base, models/tuned, gates.toml."""
    (tmp_path / "models").mkdir()
    shutil.copytree(family["base"], tmp_path / "models" / "base")
    (gates,) = [b for b in blocks("toml") if "[[gate]]" in b]
    (tmp_path / "gates.toml").write_text(gates)
    return tmp_path


def run_steps(repo: Path) -> list[subprocess.CompletedProcess]:
    env = {**__import__("os").environ, "GITHUB_STEP_SUMMARY": str(repo / "summary.md")}
    done = []
    for step in ci_steps():
        done.append(subprocess.run(["bash", "-c", step], cwd=repo, env=env, capture_output=True, text=True, timeout=600))
    return done


def test_ci_example_passes_an_unchanged_model(repo, family):
    shutil.copytree(family["copy"], repo / "models" / "tuned")
    compare, summary = run_steps(repo)
    assert compare.returncode == 0, compare.stdout + compare.stderr
    assert "gates passed" in compare.stdout
    assert (repo / "reports" / "ci" / "gates.json").is_file()
    junit = ET.parse(repo / "drift-junit.xml").getroot()
    assert sum(int(s.get("failures", 0)) for s in junit.iter("testsuite")) == 0
    assert "passed" in (repo / "summary.md").read_text()


def test_ci_example_fails_a_drifted_model(repo, family):
    shutil.copytree(family["tuned"], repo / "models" / "tuned")
    compare, _ = run_steps(repo)
    assert compare.returncode == 1, compare.stdout + compare.stderr
    assert "gates failed" in compare.stdout
    junit = ET.parse(repo / "drift-junit.xml").getroot()
    assert sum(int(s.get("failures", 0)) for s in junit.iter("testsuite")) >= 1
    assert "fail" in (repo / "drift.md").read_text()
