"""The `stepdpo` command: parses options and wires stage functions to JSONL streams. Nothing else.

Each stage is a plain function over an iterator of records, importable without this module.
"""
from __future__ import annotations

import os
import signal
import sys
import traceback
from typing import Any, Callable, Iterable, Iterator, Optional

import typer
from typing_extensions import Annotated

from . import log
from .records import InputError, ReadStats, RecordWriter, iter_jsonl

app = typer.Typer(
    name="stepdpo",
    help="Step-wise preference data and Step-DPO training for math reasoning. "
    "Stages read JSONL on stdin (or -i) and write JSONL on stdout (or -o).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Options every record stage shares.
InputOpt = Annotated[Optional[str], typer.Option("-i", "--input", help="Input JSONL (.gz ok); default stdin.")]
OutputOpt = Annotated[Optional[str], typer.Option("-o", "--output", help="Output JSONL; default stdout.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Skip records whose id is already in -o; append.")]
SkipInvalidOpt = Annotated[bool, typer.Option("--skip-invalid", help="Log and skip bad records instead of exit 2.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (recorded in outputs).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or summary on stderr.")]


class StageFailure(Exception):
    """A runtime failure a stage reports with a clear message (exit 1)."""


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    """Stages: sample | localize | rectify | pair, then train and eval; grade stands alone."""
    if version:
        from . import __version__

        print(__version__)
        raise typer.Exit()


def run_records(
    stage: Callable[[Iterable[dict]], Iterator[Any]],
    *,
    input: str | None,
    output: str | None,
    resume: bool = False,
    skip_invalid: bool = False,
    validate: Callable[[dict], dict] | None = None,
    done_filter: Callable[[dict, set[str]], bool] | None = None,
) -> tuple[ReadStats, RecordWriter]:
    """Read -> validate -> (skip done) -> stage -> write, flushing per record or per yielded group."""
    if resume and not output:
        raise InputError("--resume needs -o FILE", field="--resume")
    stats = ReadStats()
    writer = RecordWriter(output, resume=resume)
    try:
        records: Iterable[dict] = iter_jsonl(input, skip_invalid=skip_invalid, stats=stats, validate=validate,
                                             log=log.warn)
        if resume and writer.done_ids:
            done = writer.done_ids
            is_done = done_filter or (lambda record, ids: str(record.get("id")) in ids)

            def pending(source: Iterable[dict]) -> Iterator[dict]:
                for record in source:
                    if is_done(record, done):
                        stats.skipped_done += 1
                        continue
                    yield record

            records = pending(records)
        for item in stage(records):
            if isinstance(item, list):
                writer.write_many(item)
            else:
                writer.write(item)
    finally:
        writer.close()
    if stats.invalid:
        log.warn(f"{stats.invalid} invalid record(s) skipped")
    if stats.skipped_done:
        log.log(f"resume: {stats.skipped_done} record(s) already done in {output}")
    return stats, writer


def main() -> None:
    """Entry point: maps failures to exit codes (2 input/usage, 1 runtime, 130 interrupted), no tracebacks."""
    signal.signal(signal.SIGPIPE, signal.SIG_DFL) if hasattr(signal, "SIGPIPE") else None
    debug = bool(os.environ.get("STEPDPO_DEBUG"))
    try:
        app(standalone_mode=False)
    except InputError as exc:
        _die(f"error: {exc}", 2, debug)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", None) if isinstance(exc, typer.Exit) else exc.code
        sys.exit(code or 0)
    except KeyboardInterrupt:
        _die("interrupted: every finished record is on disk; rerun with --resume to continue", 130, debug)
    except Exception as exc:  # noqa: BLE001 - the one place runtime failures become exit 1
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            _die("aborted", 130, debug)
        _die(f"error: {type(exc).__name__}: {exc}".splitlines()[0], 1, debug)


def _die(message: str, code: int, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    print(f"stepdpo: {message}", file=sys.stderr)
    sys.exit(code)


# ---------------------------------------------------------------------------------------------- grade

@app.command(epilog="Example: stepdpo grade -i samples.jsonl > graded.jsonl")
def grade(
    input: InputOpt = None,
    output: OutputOpt = None,
    resume: ResumeOpt = False,
    skip_invalid: SkipInvalidOpt = False,
    timeout: Annotated[float, typer.Option(help="Seconds allowed per answer comparison.")] = 5.0,
    quiet: QuietOpt = False,
) -> None:
    """Grade records with `completion` (or `prediction`) and `answer`: adds `prediction` and `correct`."""
    from .stages.grade import grade_records, validate_gradable

    log.set_quiet(quiet)
    counts: dict[str, int] = {}
    stats, writer = run_records(
        lambda records: grade_records(records, timeout=timeout, counts=counts),
        input=input, output=output, resume=resume, skip_invalid=skip_invalid, validate=validate_gradable,
    )
    total = counts.get("graded", 0)
    log.summary("grade", {"records": total, "correct": counts.get("correct", 0),
                          "accuracy": (counts.get("correct", 0) / total) if total else 0.0,
                          "invalid": stats.invalid})


if __name__ == "__main__":  # pragma: no cover
    main()
