"""stderr-only logging, progress bars and summary tables: stdout belongs to JSONL."""
from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console(stderr=True, highlight=False)
_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def log(message: str) -> None:
    if not _quiet:
        console.print(message, markup=False)


def warn(message: str) -> None:
    console.print(f"warning: {message}", markup=False, style="yellow")


@contextlib.contextmanager
def progress(description: str, total: int | None = None) -> Iterator[Any]:
    """A rich progress bar on stderr; yields `advance(n=1)`. Silent when quiet or stderr is not a terminal."""
    if _quiet or not console.is_terminal:
        yield lambda n=1: None
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


def table(title: str, rows: list[dict], columns: list[str] | None = None) -> None:
    if _quiet or not rows:
        return
    columns = columns or list(rows[0])
    out = Table(title=title, title_justify="left")
    for name in columns:
        out.add_column(name, justify="right" if isinstance(rows[0].get(name), (int, float)) else "left")
    for row in rows:
        out.add_row(*[_fmt(row.get(c)) for c in columns])
    console.print(out)


def summary(title: str, values: dict) -> None:
    """One line of key=value pairs, e.g. `sample: problems=100 samples=800 accuracy=0.412`."""
    if _quiet:
        return
    console.print(f"{title}: " + " ".join(f"{k}={_fmt(v)}" for k, v in values.items()), markup=False)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
