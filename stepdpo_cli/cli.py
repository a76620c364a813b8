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
        _die(interrupted, 130, debug)
    except Exception as exc:  # noqa: BLE001 - the one place runtime failures become exit 1
        if isinstance(exc, click_error):  # usage errors: click's own message, exit 2
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click_abort):  # click turns Ctrl-C (and EOF at a prompt) into Abort
            _die(interrupted, 130, debug)
        _die(f"error: {type(exc).__name__}: {exc}".splitlines()[0], 1, debug)
    if result == 130 and not isinstance(result, bool):  # newer typer turns Ctrl-C into a returned 130
        _die(interrupted, 130, debug)
    if isinstance(result, int) and not isinstance(result, bool):
        sys.exit(result)


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


# ---------------------------------------------------------------------------------------------- localize

def _load_policy(spec: str, backend: Optional[str], option: str) -> Any:
    """Load a generation backend for localize/rectify; a bad spec names the option (exit 2)."""
    from .backends.base import load_backend

    try:
        return load_backend(spec, backend)
    except InputError as exc:
        raise InputError(exc.message, field=exc.field or option) from None


@app.command(epilog="Example: stepdpo localize --method rollout --model hf:ckpt/sft -i wrong.jsonl > localized.jsonl")
def localize(
    method: Annotated[str, typer.Option(help="judge | rollout | verifier.")] = "judge",
    judge: Annotated[Optional[str], typer.Option(help="judge: model spec, e.g. openai:gpt-4o or hf:PATH.")] = None,
    judge_prompt: Annotated[Optional[str], typer.Option(help="judge: prompt file with {problem} {answer} {steps}.")] = None,
    judge_endpoint: Annotated[str, typer.Option(help="judge: openai endpoint (chat | completions).")] = "chat",
    neutral_is_error: Annotated[bool, typer.Option(help="judge: a 'neutral' step counts as the error (official).")] = False,
    model: Annotated[Optional[str], typer.Option(help="rollout: the policy's model spec.")] = None,
    backend: Annotated[Optional[str], typer.Option(help="Backend when the spec has no prefix (hf, vllm, openai).")] = None,
    rollouts: Annotated[int, typer.Option(help="rollout: continuations per step prefix.")] = 8,
    threshold: Annotated[float, typer.Option(help="rollout: a prefix whose success rate is <= this is a dead end.")] = 0.0,
    search: Annotated[str, typer.Option(help="rollout: linear | binary (OmegaPRM; assumes monotone success).")] = "linear",
    verifier: Annotated[Optional[str], typer.Option(help="verifier: module:function or file.py:function.")] = None,
    template: Annotated[Optional[str], typer.Option(help="Template for records without a `template` field.")] = None,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (rollout; judge uses 0).")] = 0.8,
    top_p: Annotated[float, typer.Option(help="rollout: nucleus sampling.")] = 0.95,
    max_tokens: Annotated[int, typer.Option(help="Max new tokens per rollout or judge answer.")] = 512,
    batch_size: Annotated[int, typer.Option(help="Records per generate call.")] = 32,
    seed: SeedOpt = 0,
    input: InputOpt = None,
    output: OutputOpt = None,
    resume: ResumeOpt = False,
    skip_invalid: SkipInvalidOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Find each solution's first wrong step: adds first_error_step, localize_status, localizer and evidence."""
    from .stages.localize import METHODS, localize_records, localize_summary, validate_localizable

    log.set_quiet(quiet)
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}", field="--method")
    options: dict[str, Any] = {}
    if method == "verifier":
        from .localizers.verifier import load_callable

        if not verifier:
            raise InputError("--method verifier needs --verifier module:function", field="--verifier")
        options = {"fn": load_callable(verifier), "spec": verifier}
    elif method == "judge":
        from .backends.base import load_backend, parse_model_spec
        from .localizers.judge import load_judge_prompt

        if not judge:
            raise InputError("--method judge needs --judge SPEC (e.g. openai:gpt-4o)", field="--judge")
        prompt = load_judge_prompt(judge_prompt)
        extra = {"endpoint": judge_endpoint} if parse_model_spec(judge, backend).backend == "openai" else {}
        options = {"backend": load_backend(judge, backend, **extra), "spec": judge, "prompt_template": prompt,
                   "prompt_name": judge_prompt or "default", "neutral_is_error": neutral_is_error,
                   "max_tokens": max_tokens, "batch_size": batch_size, "seed": seed}
    else:
        from .localizers.rollout import SEARCHES

        if not model:
            raise InputError("--method rollout needs --model SPEC (the policy)", field="--model")
        if search not in SEARCHES:
            raise InputError(f"choose one of {', '.join(SEARCHES)}", field="--search")
        if rollouts < 1:
            raise InputError("must be >= 1", field="--rollouts")
        options = {"backend": _load_policy(model, backend, "--model"), "spec": model, "rollouts": rollouts,
                   "threshold": threshold, "search": search, "temperature": temperature, "top_p": top_p,
                   "max_tokens": max_tokens, "seed": seed, "batch_size": batch_size, "template": template}
    counts: dict[str, Any] = {}
    stats, _ = run_records(lambda records: localize_records(records, method, counts=counts, **options),
                           input=input, output=output, resume=resume, skip_invalid=skip_invalid,
                           validate=validate_localizable)
    log.summary(f"localize ({method})", localize_summary(counts, stats.invalid))


# ---------------------------------------------------------------------------------------------- rectify

@app.command(epilog="Example: stepdpo rectify --model hf:ckpt/sft --n 8 -i localized.jsonl > rectified.jsonl")
def rectify(
    model: Annotated[str, typer.Option(help="The policy's model spec (hf:PATH, vllm:PATH, openai:NAME).")],
    backend: Annotated[Optional[str], typer.Option(help="Backend when the spec has no prefix.")] = None,
    n: Annotated[int, typer.Option("--n", help="Continuations sampled per record.")] = 8,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.8,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling.")] = 0.95,
    max_tokens: Annotated[int, typer.Option(help="Max new tokens per continuation.")] = 512,
    drop_same: Annotated[bool, typer.Option(help="Drop winners whose step equals the wrong step (whitespace-normalised).")] = True,
    max_candidates: Annotated[Optional[int], typer.Option(help="Keep at most this many winners per record.")] = None,
    verify_chosen: Annotated[Optional[str], typer.Option(help="module:function: a winner's own steps must pass it.")] = None,
    template: Annotated[Optional[str], typer.Option(help="Template for records without a `template` field.")] = None,
    batch_size: Annotated[int, typer.Option(help="Records per generate call.")] = 32,
    seed: SeedOpt = 0,
    input: InputOpt = None,
    output: OutputOpt = None,
    resume: ResumeOpt = False,
    skip_invalid: SkipInvalidOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Sample continuations from the correct prefix; keep the correct ones' first steps as `candidates`."""
    from .stages.rectify import rectify_records, validate_rectifiable

    log.set_quiet(quiet)
    if n < 1:
        raise InputError("must be >= 1", field="--n")
    checker = None
    if verify_chosen:
        from .localizers.verifier import load_callable

        checker = load_callable(verify_chosen, option="--verify-chosen")
    policy = _load_policy(model, backend, "--model")
    counts: dict[str, Any] = {}
    stats, _ = run_records(
        lambda records: rectify_records(records, policy, spec=model, n=n, temperature=temperature, top_p=top_p,
                                        max_tokens=max_tokens, seed=seed, drop_same=drop_same,
                                        max_candidates=max_candidates, verify_chosen=checker,
                                        verify_spec=verify_chosen or "", template=template,
                                        batch_size=batch_size, counts=counts),
        input=input, output=output, resume=resume, skip_invalid=skip_invalid, validate=validate_rectifiable,
    )
    sampled = counts.get("sampled", 0)
    log.summary("rectify", {"records": counts.get("records", 0), "rectified": counts.get("rectified", 0),
                            "skipped": counts.get("skipped", 0), "sampled": sampled,
                            "correct_rate": counts.get("correct", 0) / sampled if sampled else 0.0,
                            "candidates": counts.get("kept", 0), "dropped_same": counts.get("dropped_same", 0),
                            "failed_verify": counts.get("failed_verify", 0), "invalid": stats.invalid})


# ---------------------------------------------------------------------------------------------- pair

@app.command(epilog="Example: stepdpo pair -i rectified.jsonl > pairs.jsonl")
def pair(
    format: Annotated[str, typer.Option("--format", help="step (Math-Step-DPO-10K rows) | dpo (whole solutions).")] = "step",
    chosen_source: Annotated[str, typer.Option(help="model | reference-step (the OOD ablation).")] = "model",
    max_per_problem: Annotated[Optional[int], typer.Option(help="At most this many pairs per problem.")] = None,
    tokenizer: Annotated[Optional[str], typer.Option(help="Tokenizer path for the prefix/step token ratio.")] = None,
    input: InputOpt = None,
    output: OutputOpt = None,
    resume: ResumeOpt = False,
    skip_invalid: SkipInvalidOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Emit Step-DPO pairs (prompt, initial_reason_steps, chosen, rejected, full_chosen, full_rejected, ...)."""
    from .stages.pair import pair_records, pair_summary, validate_pairable

    log.set_quiet(quiet)
    lengths, unit = len, "chars"
    if tokenizer:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer)
        lengths, unit = (lambda text: len(tok(text, add_special_tokens=False)["input_ids"])), "tokens"
    counts: dict[str, Any] = {}
    # Pair ids are "{source id}/cJ": on resume, a source record is done when any of its pairs is written.
    sources: set[str] = set()

    def done(record: dict, ids: set[str]) -> bool:
        if not sources:
            sources.update(i.rsplit("/", 1)[0] for i in ids)
        return str(record.get("id")) in sources

    stats, _ = run_records(
        lambda records: pair_records(records, format=format, chosen_source=chosen_source,
                                     max_per_problem=max_per_problem, counts=counts, lengths=lengths),
        input=input, output=output, resume=resume, skip_invalid=skip_invalid, validate=validate_pairable,
        done_filter=done,
    )
    log.summary("pair", {**pair_summary(counts, unit), "invalid": stats.invalid})


if __name__ == "__main__":  # pragma: no cover
    main()
