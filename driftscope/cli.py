"""The command line: parse, call the public API, print, exit.

Exit codes: 0 passed, 1 a gate failed, 2 bad usage or input, 3 inconclusive.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Is held-out forgetting after a fine-tune lost knowledge, or output bias?")
probes_app = typer.Typer(no_args_is_help=True, help="List and validate probe suites.")
app.add_typer(probes_app, name="probes")

out = Console()
err = Console(stderr=True)


def friendly(fn):
    """Turn a DriftscopeError into one line on stderr and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from driftscope.errors import DriftscopeError

        try:
            return fn(*args, **kwargs)
        except DriftscopeError as e:
            err.print(f"[bold red]error:[/] {e.reason}", highlight=False, soft_wrap=True)
            if e.hint:
                err.print(f"  {e.hint}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code)
        except KeyboardInterrupt:
            err.print("interrupted: nothing was written")
            raise typer.Exit(130)

    return wrapper


def parse_classes(specs: list[str]) -> dict[str, str]:
    from driftscope.errors import DriftscopeError

    classes = {}
    for spec in specs:
        name, sep, pattern = spec.partition("=")
        if not sep or not name.strip() or not pattern:
            raise DriftscopeError(f"--class {spec!r}: expected NAME=REGEX", "e.g. --class yesno='(?i)yes|no'")
        classes[name.strip()] = pattern
    return classes


@app.command()
@friendly
def compare(
    base: Annotated[Path, typer.Argument(help="Base model folder.")],
    tuned: Annotated[list[Path], typer.Argument(help="Tuned model or PEFT adapter folders; several give drift over training.")],
    probes: Annotated[Optional[list[str]], typer.Option("--probes", "-p", help="Suite file or built-in suite name (repeatable). Default: general.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Probes per forward pass.")] = 16,
    max_length: Annotated[Optional[int], typer.Option(help="Tokens per probe (default: the model's context).")] = None,
    chat_template: Annotated[str, typer.Option(help="auto, on or off: wrap prompts in the chat template.")] = "auto",
    cls: Annotated[Optional[list[str]], typer.Option("--class", help="Extra token class NAME=REGEX (repeatable).")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder the run is written under.")] = Path("reports"),
    name: Annotated[Optional[str], typer.Option(help="Run folder name (default: time and model names).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for everything random.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run of the same name.")] = False,
    allow_pickle: Annotated[bool, typer.Option(help="Allow .bin weights (loaded with weights_only).")] = False,
    verdict: Annotated[Optional[list[str]], typer.Option("--verdict", help="Verdict threshold KEY=VALUE (repeatable): alpha, min_drop, stable_margin, bias_recovery, loss_recovery, bootstrap.")] = None,
):
    """Compare TUNED checkpoints with BASE on held-out probes."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    import driftscope

    thresholds = driftscope.Thresholds.from_pairs(dict(kv.partition("=")[::2] for kv in verdict or []))
    with Progress(TextColumn("[bold]scoring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task("scoring", total=None)
        result = driftscope.compare(
            base, tuned, probes, classes=parse_classes(cls or []), out=out_dir, name=name, overwrite=overwrite,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            device=device, dtype=dtype, batch_size=batch_size, max_length=max_length,
            chat_template=chat_template, seed=seed, allow_pickle=allow_pickle, thresholds=thresholds,
        )
    print_headline(result)
    out.print(f"run written to [bold]{result.path}[/]", highlight=False)


def _fmt(x, spec=".4f", signed=False) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "-"
    return format(x, ("+" if signed else "") + spec)


VERDICT_STYLE = {"stable": "green", "output-bias": "yellow", "knowledge-loss": "red", "mixed": "red",
                 "inconclusive": "magenta", "no-answers": "dim"}


def print_headline(result) -> None:
    for c in result.checkpoints:
        f = c["figures"]
        style = VERDICT_STYLE.get(f.get("verdict"), "bold")
        prefix = f"{c['label']}: " if len(result.checkpoints) > 1 else ""
        out.print(f"[{style}]{prefix}{f.get('verdict_sentence', '')}[/]", highlight=False, soft_wrap=True)
    table = Table(title="drift against the base", title_justify="left")
    for col in ("checkpoint", "verdict", "acc. change", "recovered", "KL mean", "KL p99", "top-1 agree", "numeric shift"):
        table.add_column(col, justify="left" if col in ("checkpoint", "verdict") else "right")
    for c in result.checkpoints:
        f = c["figures"]
        change = f.get("accuracy_change")
        table.add_row(c["label"], f.get("verdict", "-"), _fmt(None if change is None else change * 100, "+.1f"),
                      _fmt(f.get("recovered"), ".0%"), _fmt(f["kl"]["mean"]), _fmt(f["kl"]["p99"]),
                      _fmt(f["top1_agreement"], ".1%"), _fmt(f["classes"]["numeric"]["shift"], ".3f", True))
    out.print(table)
    for c in result.checkpoints:
        f = c["figures"]
        notes = []
        if f.get("nonfinite_positions"):
            notes.append(f"{f['nonfinite_positions']} positions had non-finite logits and were left out")
        if f.get("truncated_prompts"):
            notes.append(f"{f['truncated_prompts']} prompts were longer than the context; their start was cut")
        if c["vocab"]["status"] == "extended":
            notes.append(f"tuned tokenizer adds {c['vocab']['new_tokens']} tokens; compared on the shared ids "
                         f"(mean tuned mass on new ids {_fmt(f['new_token_mass'], '.2%')})")
        for n in notes:
            out.print(f"note ({c['label']}): {n}", highlight=False)


@probes_app.command("list")
@friendly
def probes_list():
    """Built-in probe suites with their item counts."""
    import driftscope

    table = Table()
    for col in ("suite", "version", "items", "with answer", "multiple choice"):
        table.add_column(col, no_wrap=True)
    table.add_column("description", overflow="ellipsis", no_wrap=True)
    for s in driftscope.list_suites():
        n_mc = sum(p.is_choice for p in s.probes)
        table.add_row(s.name, s.version, str(len(s)), str(s.n_with_answer), str(n_mc), s.description)
    out.print(table)


@probes_app.command("validate")
@friendly
def probes_validate(file: Annotated[str, typer.Argument(help="Suite file (JSONL, CSV or Parquet) or suite name.")]):
    """Check a suite file; errors name the file and line."""
    import driftscope

    s = driftscope.load_suite(file)
    out.print(f"ok: {s.path}: suite {s.name!r} version {s.version}, {len(s)} probes, "
              f"{s.n_with_answer} with answers, sha256 {s.hash[:12]}", highlight=False)


def main() -> None:
    app(prog_name="driftscope")


if __name__ == "__main__":
    sys.exit(main())
