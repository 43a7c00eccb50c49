"""The scoring progress bar that `compare` and `demo` show on the terminal."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def scoring_bar(console) -> Iterator[Callable[[int, int], None]]:
    """A transient rich bar; yields the `progress(done, total)` callback compare takes.

    With no console (a library call) or one that is not a terminal, yields a
    callback that does nothing: there a transient bar would leave an empty line
    before any error.
    """
    if console is None or not console.is_terminal:
        yield lambda done, total: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]scoring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("scoring", total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)
