"""What compare prints fits an 80-column terminal: the verdict is never cut, a
long checkpoint label wraps whole, and changes read in percentage points."""

from rich.console import Console

from driftscope.cli import VERDICT_STYLE, headline_table


def checkpoint(label: str, verdict: str, change: float | None = -0.123) -> dict:
    return {"label": label, "figures": {"verdict": verdict, "accuracy_change": change, "recovered": 0.83,
                                        "kl": {"mean": 1.2345, "p99": 123.456}, "top1_agreement": 0.912,
                                        "classes": {"numeric": {"shift": 0.2101}}}}


def render(checkpoints) -> list[str]:
    console = Console(width=80, record=True, file=open("/dev/null", "w"))
    console.print(headline_table(checkpoints))
    return console.export_text().splitlines()


def test_every_verdict_and_label_is_readable_at_80_columns():
    long = "a-very-long-checkpoint-name-from-a-training-run-step-12000"
    cks = [checkpoint(f"{v}-ckpt" if i else long, v) for i, v in enumerate(VERDICT_STYLE)]
    lines = render(cks)
    assert max(len(line) for line in lines) <= 80
    for v in VERDICT_STYLE:  # whole, on a row of its own checkpoint
        assert any(f" {v} " in line for line in lines), v
    assert long in "".join(line.split()[0] for line in lines if line.strip() and not line.startswith(" checkpoint"))


def test_changes_read_in_points():
    (row,) = [line for line in render([checkpoint("lora", "output-bias")]) if line.strip().startswith("lora")]
    assert "-12.3 pt" in row and "+21.0 pt" in row and "91.2%" in row
