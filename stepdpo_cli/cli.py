"""The `stepdpo` command: builds the app from the command modules and maps failures to exit codes. Nothing else.

Each command lives in `commands/` with its options beside the function it wires; each stage is a plain function
over an iterator of records (`stages/`, `localizers/`, `train/`), importable without this module.
"""
from __future__ import annotations

import os
import signal
import sys
import traceback
from typing import Any

import typer
from typing_extensions import Annotated

from .commands import evaluate, grade, localize, pair, rectify, sample, score, score_localizer, search, train, view
from .records import InputError

app = typer.Typer(
    name="stepdpo",
    help="Step-wise preference data and Step-DPO training for math reasoning. "
    "Stages read JSONL on stdin (or -i) and write JSONL on stdout (or -o).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# The order of `stepdpo --help`.
app.command(epilog=grade.EPILOG)(grade.grade)
app.command(epilog=localize.EPILOG)(localize.localize)
app.command(epilog=score.EPILOG)(score.score)
app.command(score_localizer.NAME, epilog=score_localizer.EPILOG)(score_localizer.score_localizer_command)
app.command(epilog=rectify.EPILOG)(rectify.rectify)
app.command(epilog=search.EPILOG)(search.search)
app.command(epilog=pair.EPILOG)(pair.pair)
app.command(epilog=train.EPILOG)(train.train)
app.command(epilog=sample.EPILOG)(sample.sample)
app.command(evaluate.NAME, epilog=evaluate.EPILOG)(evaluate.eval_command)
app.command(epilog=view.EPILOG)(view.view)


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        print(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    # Eager, so `stepdpo --version` works without a command (click checks for one before the callback).
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                          callback=_print_version)] = False,
) -> None:
    """Stages: sample | localize | rectify | pair, then train and eval; grade stands alone."""


def main() -> None:
    """Entry point: maps failures to exit codes (2 input/usage, 1 runtime, 130 interrupted), no tracebacks."""
    signal.signal(signal.SIGPIPE, signal.SIG_DFL) if hasattr(signal, "SIGPIPE") else None
    signal.signal(signal.SIGTERM, _raise_terminated)  # `kill`, a job scheduler: end as Ctrl-C does
    debug = bool(os.environ.get("STEPDPO_DEBUG"))
    interrupted = "interrupted: every finished record is on disk; rerun with --resume to continue"
    click_error, click_abort = _click_exception_types()
    try:
        # Without standalone mode click returns (not raises) the code of a `typer.Exit(code)`.
        result = app(standalone_mode=False)
    except InputError as exc:
        _die(f"error: {exc}", 2, debug)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", None) if isinstance(exc, typer.Exit) else exc.code
        sys.exit(code or 0)
    except KeyboardInterrupt:
        _die(interrupted, _interrupt_code(), debug)
    except Exception as exc:  # noqa: BLE001 - the one place runtime failures become exit 1
        if isinstance(exc, click_error):  # usage errors: click's own message, exit 2
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click_abort):  # click turns Ctrl-C (and EOF at a prompt) into Abort
            _die(interrupted, _interrupt_code(), debug)
        _die(f"error: {type(exc).__name__}: {exc}".splitlines()[0], 1, debug)
    if result == 130 and not isinstance(result, bool):  # newer typer turns Ctrl-C into a returned 130
        _die(interrupted, _interrupt_code(), debug)
    if isinstance(result, int) and not isinstance(result, bool):
        sys.exit(result)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so the same cleanup as Ctrl-C runs (exit 143)."""


def _raise_terminated(signum: int, frame: Any) -> None:
    global _terminated
    _terminated = True
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
    raise Terminated()


_terminated = False


def _interrupt_code() -> int:
    return 143 if _terminated else 130


def _click_exception_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """ClickException and Abort from click and from the copy of click that newer typer versions vendor."""
    import click

    errors: list[type] = [click.exceptions.ClickException]
    aborts: list[type] = [click.exceptions.Abort, typer.Abort]
    try:
        from typer._click import exceptions as vendored  # typer >= 0.2x
    except ImportError:
        pass
    else:
        errors.append(vendored.ClickException)
    return tuple(errors), tuple(aborts)


def _die(message: str, code: int, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    print(f"stepdpo: {message}", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
