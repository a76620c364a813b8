"""`stepdpo view`: one self-contained HTML page of a stage's output (view.py)."""
from __future__ import annotations

import os
from typing import Optional

import typer
from typing_extensions import Annotated

from .. import log
from ..records import InputError
from .options import QuietOpt

EPILOG = ("Example: stepdpo view pairs.jsonl -o pairs.html; stepdpo view metrics-dpo.jsonl "
          "metrics-stepdpo.jsonl -o curves.html")


def view(
    files: Annotated[list[str], typer.Argument(help="JSONL file(s) of one kind (several metrics files overlay).")],
    output: Annotated[Optional[str], typer.Option("-o", "--output", help="HTML file (default: FILE with .html).")] = None,
    kind: Annotated[Optional[str], typer.Option(help="pairs | localized | eval | metrics | trees | records "
                                                     "(default: recognised from the fields).")] = None,
    title: Annotated[Optional[str], typer.Option(help="Page title.")] = None,
    page_size: Annotated[int, typer.Option(help="Records per page.")] = 50,
    evidence: Annotated[Optional[str], typer.Option(help="pairs: the localize output they came from; its judge "
                                                         "text, verdicts and rollout rates are shown with each "
                                                         "pair (matched by source_id).")] = None,
    quiet: QuietOpt = False,
) -> None:
    """One self-contained HTML page (no network) to look at a stage's output: pairs with a word diff,
    localized steps, eval accuracy charts, training curves; search, filter and paging in the page."""
    from ..view import write_view

    log.set_quiet(quiet)
    if page_size < 1:
        raise InputError("must be >= 1", field="--page-size")
    if not output and files[0] == "-":
        raise InputError("reading stdin needs -o FILE.html", field="--output")
    target = output or os.path.splitext(files[0][:-3] if files[0].endswith(".gz") else files[0])[0] + ".html"
    result = write_view(files, target, kind=kind, title=title, page_size=page_size, evidence=evidence)
    log.summary("view", {**result, "output": target})
