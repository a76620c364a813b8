"""`stepdpo score-localizer`: a localizer against gold first-error labels, ProcessBench's metric (scoring.py)."""
from __future__ import annotations

import sys
from typing import Optional

import typer
from typing_extensions import Annotated

from .. import log
from ..records import InputError, iter_jsonl
from .options import InputOpt, QuietOpt

EPILOG = ("Example: stepdpo score-localizer -i processbench_judged.jsonl; "
          "stepdpo score-localizer -i localized_rollout.jsonl --gold localized.jsonl")
NAME = "score-localizer"


def score_localizer_command(
    input: InputOpt = None,
    gold: Annotated[Optional[str], typer.Option(help="Reference localize output (e.g. an exact verifier's): its "
                                                     "first_error_step is the gold label, matched by id. "
                                                     "Default: each record's own `label` (ProcessBench).")] = None,
    summary_path: Annotated[Optional[str], typer.Option("--summary", help="Also write the report JSON here.")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Score localized records against gold first-error labels: ProcessBench's accuracy on erroneous and on
    correct solutions and their F1, exact-step accuracy, early/late confusion. The report is one JSON line on
    stdout and a table on stderr."""
    from ..records import atomic_write_json, dumps
    from ..scoring import gold_steps, report_rows, score_localizer

    log.set_quiet(quiet)

    def with_id(record: dict) -> dict:  # --gold matches records by id: one without is bad input, not a crash
        if record.get("id") is None:
            raise InputError("missing: records are matched to --gold by id", field="id")
        return record
    reference = gold_steps(iter_jsonl(gold, validate=with_id)) if gold else None
    report = score_localizer(iter_jsonl(input, validate=with_id if gold else None), reference)
    if not report["records"]:
        raise InputError("no record to score" + (" (no id in common with --gold)" if gold else ""),
                         source=input or "<stdin>")
    log.table("localizer vs gold first error" + (f" ({gold})" if gold else ""), report_rows(report))
    if summary_path:
        atomic_write_json(summary_path, report)
    sys.stdout.buffer.write(dumps(report))
    sys.stdout.flush()
