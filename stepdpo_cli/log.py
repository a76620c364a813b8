"""stderr-only logging, progress bars and summary tables: stdout belongs to JSONL."""
from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

# soft_wrap: a message is one line however long (a log file or pipe gets whole records, not 80 columns).
console = Console(stderr=True, highlight=False, soft_wrap=True)
_quiet = False

# What libraries read at import to decide on progress bars and chatter (tqdm, huggingface_hub, transformers,
# datasets, DeepSpeed): set before they are imported, and inherited by `accelerate launch` children.
_QUIET_ENV = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
              "DATASETS_VERBOSITY": "error", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
              "DS_LOG_LEVEL": "error", "PYTHONWARNINGS": "ignore"}


def set_quiet(quiet: bool) -> None:
    """-q: no progress, summaries or library warnings; errors still print."""
    global _quiet
    _quiet = quiet
    if not quiet:
        return
    import logging
    import os
    import warnings

    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)  # loggers set their own levels at import (DeepSpeed's INFO banner)


def log(message: str) -> None:
    if not _quiet:
        console.print(message, markup=False)


def warn(message: str) -> None:
    console.print(f"warning: {message}", markup=False, style="yellow")


@contextlib.contextmanager
def progress(description: str, total: int | None = None, *, completed: int = 0,
             status: bool = False) -> Iterator[Any]:
    """A rich progress bar on stderr; yields `advance(n=1, status=None)`. Silent when quiet or stderr is not a
    terminal. `status=True` adds a free text column (e.g. train's loss) and the estimated time left."""
    if _quiet or not console.is_terminal:
        yield lambda n=1, status=None: None
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if status:
        columns += [TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[status]}", markup=False)]
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=total, completed=completed, status="")

        def advance(n: int = 1, status: str | None = None) -> None:
            bar.update(task, advance=n, **({"status": status} if status is not None else {}))

        yield advance


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
