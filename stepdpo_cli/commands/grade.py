"""`stepdpo grade`: extract and grade the final answer of records that have one (stages/grade.py)."""
from __future__ import annotations

import typer
from typing_extensions import Annotated

from .. import log
from ..records import DEFAULT_MAX_LINE_BYTES
from ..runner import run_records
from .options import InputOpt, MaxLineBytesOpt, OutputOpt, QuietOpt, ResumeOpt, SkipInvalidOpt, check_ranges

EPILOG = "Example: stepdpo grade -i samples.jsonl > graded.jsonl"


def grade(
    input: InputOpt = None,
    output: OutputOpt = None,
    resume: ResumeOpt = False,
    skip_invalid: SkipInvalidOpt = False,
    grade_timeout: Annotated[float, typer.Option("--grade-timeout", "--timeout",
                                                 help="Seconds allowed per answer comparison.")] = 5.0,
    max_line_bytes: MaxLineBytesOpt = DEFAULT_MAX_LINE_BYTES,
    quiet: QuietOpt = False,
) -> None:
    """Grade records with `completion` (or `prediction`) and `answer`: adds `prediction`, `prediction_source`
    and `correct`.

    The answer is taken from \\boxed{}, "Final Answer", "####" or "The answer is"; else the last $..$ math; else
    a completion that is itself a bare answer; else the last number of plain prose. `prediction_source` names
    the rule. Records are graded STEPDPO_GRADE_THREADS (default 4) at a time, in input order.
    """
    from ..stages.grade import grade_records, validate_gradable

    log.set_quiet(quiet)
    check_ranges(timeouts={"--grade-timeout": grade_timeout}, sizes={"--max-line-bytes": max_line_bytes})
    counts: dict[str, int] = {}
    stats, writer = run_records(
        lambda records: grade_records(records, timeout=grade_timeout, counts=counts),
        input=input, output=output, resume=resume, skip_invalid=skip_invalid, validate=validate_gradable,
        max_line_bytes=max_line_bytes,
    )
    total = counts.get("graded", 0)
    log.summary("grade", {"records": total, "correct": counts.get("correct", 0),
                          "accuracy": (counts.get("correct", 0) / total) if total else 0.0,
                          "invalid": stats.invalid})
