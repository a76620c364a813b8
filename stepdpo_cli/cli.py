"""The `stepdpo` command: parses options and wires stage functions to JSONL streams. Nothing else.

Each stage is a plain function over an iterator of records, importable without this module.
"""
from __future__ import annotations

import itertools
import os
import signal
import sys
import time
import traceback
from typing import Any, Callable, Iterable, Iterator, Optional

import typer
from typing_extensions import Annotated

from . import log
from .records import (DEFAULT_MAX_LINE_BYTES, InputError, ReadStats, RecordWriter, check_input, iter_jsonl,
                      finished_records, outcome_of, refuse_overwriting_input)

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
OutputOpt = Annotated[Optional[str], typer.Option("-o", "--output", help="Output JSONL (.gz: gzip), written as "
                                                   "OUTPUT.partial until the run ends; default stdout.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted or failed run: skip the inputs "
                                         "already in -o (or -o.partial); append.")]
SkipInvalidOpt = Annotated[bool, typer.Option("--skip-invalid", help="Log and skip bad records instead of exit 2.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (recorded in outputs).")]
SEED = 0  # the one default of --seed, every command
MaxLineBytesOpt = Annotated[int, typer.Option(
    "--max-line-bytes", help="Refuse an input line longer than this (exit 2 naming file and line; "
    "--skip-invalid skips it) before parsing it, so memory stays bounded. Default 1 MiB.")]
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
    source: Iterable[dict] | None = None,
    group_key: Callable[[dict], Any] | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    limit: int | None = None,
) -> tuple[ReadStats, RecordWriter]:
    """Read -> validate -> (skip done) -> stage -> write, flushing per record or per yielded group.

    `group_key(output record)`: the input a record came from, for stages that write several per input (resume
    then redoes the last input in -o whole). The output is opened only once the input is known readable and
    is not -o. A failed run (bad input, full disk) leaves an existing -o untouched and its finished records in
    -o.partial; an interrupted one moves what it finished to -o. --resume continues from either."""
    if resume and not output:
        raise InputError("--resume needs -o FILE", field="--resume")
    if source is None:
        check_input(input)
    refuse_overwriting_input(input, output)
    stats = ReadStats()
    writer = RecordWriter(output, resume=resume, group_key=group_key)
    if writer.adopted_partial:
        log.log(f"resume: continuing from {output}.partial, left by an interrupted run")
    outcome = "failed"
    try:
        # `source`: records that do not come from a JSONL file (e.g. eval --dataset gsm8k).
        records: Iterable[dict] = source if source is not None else iter_jsonl(
            input, skip_invalid=skip_invalid, stats=stats, validate=validate, log=log.warn,
            max_line_bytes=max_line_bytes)
        if limit is not None:  # the first `limit` inputs, before done ones are skipped: resume covers the same set
            records = itertools.islice(records, limit)
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
        outcome = "done"
    except BaseException as exc:
        outcome = outcome_of(type(exc))
        raise
    finally:
        left = writer.close(outcome)
        if left:
            log.log(f"{writer.written} finished record(s) kept in {left}; --resume continues from them")
    if stats.invalid:
        log.warn(f"{stats.invalid} invalid record(s) skipped")
    if stats.skipped_done:
        log.log(f"resume: {stats.skipped_done} record(s) already done in {output}")
    return stats, writer


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


# ---------------------------------------------------------------------------------------------- generation options

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Model spec: PATH, hf:PATH, vllm:PATH or openai:NAME.")]
BackendOpt = Annotated[Optional[str], typer.Option("--backend", help="hf | vllm | openai (default: from --model, else hf).")]
TemplateOpt = Annotated[Optional[str], typer.Option(
    "--template", help="chat | alpaca | qwen2-boxed | deepseek-math | raw (default: the model dir's stepdpo.json, "
    "else chat when the tokenizer has a chat template, else raw).")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="Sequences generated per backend call (hf decodes "
                                           "them together); records per call = batch-size / n.")]
NOpt = Annotated[int, typer.Option("-n", "--n", help="Solutions sampled per problem.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="hf: auto (cuda if available, else cpu) | cpu | cuda[:i].")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="hf/vllm: auto | float32 | bfloat16 | float16.")]
BaseUrlOpt = Annotated[Optional[str], typer.Option("--base-url", help="openai: server URL (e.g. http://127.0.0.1:8000/v1).")]
ConcurrencyOpt = Annotated[Optional[int], typer.Option("--concurrency", help="openai: requests in flight.")]
StopOpt = Annotated[Optional[list[str]], typer.Option("--stop", help="Stop string (repeatable); cut from the text.")]
GradeTimeoutOpt = Annotated[float, typer.Option("--grade-timeout", help="Seconds allowed per answer comparison.")]
ModelSpecOpt = Annotated[Optional[str], typer.Option("--model", "-m", help="Model spec: PATH, hf:PATH, vllm:PATH "
                                                     "or openai:NAME.")]


def check_ranges(*, temperature: float | None = None, top_p: float | None = None,
                 timeouts: dict[str, float] | None = None, sizes: dict[str, int | None] | None = None) -> None:
    """Range checks of the generation options, before anything is loaded or opened (exit 2 naming the option)."""
    if temperature is not None and not temperature >= 0:
        raise InputError(f"must be >= 0, got {temperature}", field="--temperature")
    if top_p is not None and not 0 < top_p <= 1:
        raise InputError(f"must be in (0, 1], got {top_p}", field="--top-p")
    for name, value in (timeouts or {}).items():  # 0 is documented: only the cheap grading tiers
        if not value >= 0:
            raise InputError(f"must be >= 0 (0: skip the symbolic tier), got {value}", field=name)
    for name, value in (sizes or {}).items():
        if value is not None and value < 1:
            raise InputError(f"must be >= 1, got {value}", field=name)


def records_per_call(batch_size: int, per_record: int) -> int:
    """--batch-size counts sequences in every stage; a record asks for `per_record` of them."""
    return max(1, batch_size // max(1, per_record))
BackendOptionOpt = Annotated[Optional[list[str]], typer.Option(
    "--backend-option", help="KEY=VALUE given to the backend as is (repeatable; VALUE parsed as JSON when it is), "
    "e.g. tensor_parallel_size=8, kv_cache_gb=4, endpoint=chat, api_key_env=MY_KEY.")]


DataParallelOpt = Annotated[int, typer.Option(
    "--data-parallel", help="N worker processes, each with its own engine on its own GPU group (tensor_parallel_size "
    "GPUs, see --backend-option), over an N-way split of the input, merged back in input order. Needs -o; "
    "--resume resumes every worker.")]


def _split_over_workers(workers: int, backend_options: dict[str, Any], *, input: str | None, output: str | None,
                        resume: bool, skip_invalid: bool, validate: Callable[[dict], dict], max_line_bytes: int,
                        origin: Callable[[dict], Any], done_filter: Callable[[dict, set[str]], bool],
                        group_key: Callable[[dict], Any] | None = None,
                        source: Iterable[dict] | None = None, drop_options: tuple[str, ...] = ()) -> bool:
    """--data-parallel N > 1 in the parent: run the command as N workers (parallel.py); True when it did."""
    from . import parallel

    if workers < 1:
        raise InputError("must be >= 1", field="--data-parallel")
    if workers == 1 or parallel.is_worker():
        return False
    records = source if source is not None else iter_jsonl(
        input, skip_invalid=skip_invalid, validate=validate, log=log.warn, max_line_bytes=max_line_bytes)
    tensor_parallel = int(backend_options.get("tensor_parallel_size", 1) or 1)
    parallel.run_data_parallel(sys.argv[1:], workers=workers, records=records, output=output, resume=resume,
                               origin=origin, done_filter=done_filter, tensor_parallel_size=tensor_parallel,
                               drop_options=drop_options, group_key=group_key)
    return True


def _backend_options(pairs: list[str] | None) -> dict[str, Any]:
    import json

    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise InputError(f"expected KEY=VALUE, got {pair!r}", field="--backend-option")
        try:
            options[key.strip()] = json.loads(value)
        except ValueError:
            options[key.strip()] = value
    return options


def check_local_model(kind: str, path: str, device: str | None = None, option: str = "--model") -> None:
    """Fail before any output is opened: a path (not a hub id) that does not exist, or a GPU that is not there."""
    if kind in ("hf", "vllm") and (os.path.isabs(path) or path.startswith((".", "~"))) \
            and not os.path.exists(os.path.expanduser(path)):
        raise InputError(f"no such model directory: {path}", field=option)
    if kind == "hf" and device and device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise InputError(f"{device} requested but no CUDA device is available (use --device cpu)",
                             field="--device")


BACKEND_KWARGS = {"hf": ("device", "dtype", "batch_size"), "vllm": ("dtype",), "openai": ("base_url", "concurrency")}


def backend_kwargs(kind: str, extra: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    """The CLI's options that backend `kind` takes (None: its default), then --backend-option's, as given."""
    kwargs = {k: v for k, v in options.items() if k in BACKEND_KWARGS[kind] and v is not None}
    kwargs.update(extra or {})
    return kwargs


class _GenerationModel:
    """The backend and template of sample/eval, loaded only once the first chunk of input has been read and
    validated: bad input fails in a second instead of after a model load, and empty input loads nothing."""

    def __init__(self, model: str, backend: str | None, template: str | None, n: int, batch_size: int,
                 extra: dict[str, Any] | None = None, **options: Any):
        from .backends.base import parse_model_spec

        self.spec, self.backend, self.requested_template = model, backend, template
        parsed = parse_model_spec(model, backend)  # a bad spec is a usage error before any input is read
        self.kind, self.path = parsed.backend, parsed.model
        check_local_model(parsed.backend, parsed.model, options.get("device"))
        self.options = backend_kwargs(self.kind, extra, **options, batch_size=batch_size)
        # Problems per backend call: hf fills `batch_size` rows; remote/vLLM backends get more to overlap.
        self.chunk_size = max(1, batch_size // n) * (1 if self.kind == "hf" else 4)
        self.engine: Any = None
        self.template: str | None = None

    def load(self) -> Any:
        from .backends.base import load_backend
        from .templates import template_for_model

        if self.engine is None:
            self.engine = load_backend(self.spec, self.backend, **self.options)
            self.template = template_for_model(self.requested_template, self.path, self.engine.tokenizer)
        return self.engine

    def run(self, records: Iterable[dict], stage: Callable[..., Iterator[Any]], **kwargs: Any) -> Iterator[Any]:
        import itertools

        records = iter(records)
        head = list(itertools.islice(records, self.chunk_size))
        if not head:
            return
        engine = self.load()
        yield from stage(itertools.chain(head, records), engine, template=self.template,
                         chunk_size=self.chunk_size, **kwargs)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


# ---------------------------------------------------------------------------------------------- grade

@app.command(epilog="Example: stepdpo grade -i samples.jsonl > graded.jsonl")
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
    from .stages.grade import grade_records, validate_gradable

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


# ---------------------------------------------------------------------------------------------- localize

def _load_policy(spec: str, backend: Optional[str], option: str, *, device: str = "auto",
                 base_url: Optional[str] = None, extra: Optional[list[str]] = None, dtype: str = "auto",
                 concurrency: Optional[int] = None, batch_size: int = 64) -> Any:
    """Load the policy for rollout/rectify the way `sample` does; a bad spec names the option (exit 2)."""
    try:
        engine = _GenerationModel(spec, backend, None, 1, batch_size, _backend_options(extra), device=device,
                                  dtype=dtype, base_url=base_url, concurrency=concurrency).load()
    except InputError as exc:
        raise InputError(exc.message, field=exc.field or option) from None
    return engine


@app.command(epilog="Example: stepdpo localize --method rollout --model hf:ckpt/sft -i wrong.jsonl > localized.jsonl")
def localize(
    method: Annotated[str, typer.Option(help="judge | rollout | verifier.")] = "judge",
    judge: Annotated[Optional[str], typer.Option(help="judge: model spec, e.g. openai:gpt-4o or hf:PATH.")] = None,
    judge_prompt: Annotated[Optional[str], typer.Option(help="judge: prompt file with {problem} {answer} {steps}.")] = None,
    judge_endpoint: Annotated[str, typer.Option(help="judge: openai endpoint (chat | completions).")] = "chat",
    neutral_is_error: Annotated[bool, typer.Option(help="judge: a 'neutral' step counts as the error (official).")] = False,
    judge_max_tokens: Annotated[int, typer.Option(help="judge: max tokens of the judge's answer.")] = 1024,
    max_requests: Annotated[Optional[int], typer.Option(help="judge: stop cleanly after this many judge requests "
                                                             "(one per record); --resume continues.")] = None,
    max_tokens_total: Annotated[Optional[int], typer.Option(help="judge: stop cleanly once the judge's prompt + "
                                                                 "completion tokens reach this (checked per batch); "
                                                                 "--resume continues.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="rollout: the policy's model spec.")] = None,
    backend: Annotated[Optional[str], typer.Option(help="Backend when the spec has no prefix (hf, vllm, openai).")] = None,
    base_url: Annotated[Optional[str], typer.Option(help="openai: server URL for --model/--judge (else $OPENAI_BASE_URL).")] = None,
    device: Annotated[str, typer.Option(help="hf: auto | cpu | cuda.")] = "auto",
    dtype: DtypeOpt = "auto",
    concurrency: ConcurrencyOpt = None,
    backend_option: BackendOptionOpt = None,
    rollouts: Annotated[int, typer.Option(help="rollout: continuations per step prefix.")] = 8,
    threshold: Annotated[float, typer.Option(help="rollout: a prefix whose success rate is <= this is a dead end.")] = 0.0,
    search: Annotated[str, typer.Option(help="rollout: linear | binary (OmegaPRM; assumes monotone success).")] = "linear",
    check_root: Annotated[bool, typer.Option(help="rollout: first roll out from the bare problem; never solved -> undecided.")] = False,
    verifier: Annotated[Optional[str], typer.Option(help="verifier: module:function or file.py:function.")] = None,
    template: Annotated[Optional[str], typer.Option(help="Template for records without a `template` field.")] = None,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (rollout; judge uses 0).")] = 0.8,
    top_p: Annotated[float, typer.Option(help="rollout: nucleus sampling.")] = 0.95,
    max_tokens: Annotated[int, typer.Option(help="Max new tokens per rollout or judge answer.")] = 512,
    stop: Annotated[Optional[list[str]], typer.Option("--stop", help="rollout: stop string (repeatable).")] = None,
    batch_size: BatchSizeOpt = 64,
    grade_timeout: GradeTimeoutOpt = 5.0,
    seed: SeedOpt = SEED,
    data_parallel: DataParallelOpt = 1,
    input: InputOpt = None,
    output: OutputOpt = None,
    resume: ResumeOpt = False,
    skip_invalid: SkipInvalidOpt = False,
    max_line_bytes: MaxLineBytesOpt = DEFAULT_MAX_LINE_BYTES,
    quiet: QuietOpt = False,
) -> None:
    """Find each solution's first wrong step: adds first_error_step, localize_status, localizer and evidence."""
    from .stages.localize import METHODS, localize_records, localize_summary, validate_localizable

    log.set_quiet(quiet)
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}", field="--method")
    if method != "judge" and (max_requests is not None or max_tokens_total is not None):
        raise InputError("only with --method judge", field="--max-requests" if max_requests is not None
                         else "--max-tokens-total")
    check_ranges(temperature=temperature, top_p=top_p, timeouts={"--grade-timeout": grade_timeout},
                 sizes={"--max-tokens": max_tokens, "--judge-max-tokens": judge_max_tokens,
                        "--batch-size": batch_size, "--rollouts": rollouts, "--concurrency": concurrency,
                        "--max-line-bytes": max_line_bytes})
    if data_parallel > 1 and (max_requests is not None or max_tokens_total is not None):
        raise InputError("a judge budget is one run's: not with --data-parallel (each worker would spend it)",
                         field="--data-parallel")
    options: dict[str, Any] = {}
    load: Callable[[], Any] | None = None  # the backend, loaded once the options are known good
    if method == "verifier":
        from .localizers.verifier import load_callable

        if not verifier:
            raise InputError("--method verifier needs --verifier module:function", field="--verifier")
        options = {"fn": load_callable(verifier), "spec": verifier}
    elif method == "judge":
        from .backends.base import load_backend, parse_model_spec
        from .localizers.judge import JudgeBudget, load_judge_prompt

        for name, limit in (("--max-requests", max_requests), ("--max-tokens-total", max_tokens_total)):
            if limit is not None and limit < 1:
                raise InputError(f"must be >= 1, got {limit}", field=name)
        if not judge:
            raise InputError("--method judge needs --judge SPEC (e.g. openai:gpt-4o)", field="--judge")
        prompt = load_judge_prompt(judge_prompt)
        kind = parse_model_spec(judge, backend).backend
        extra = {"endpoint": judge_endpoint} if kind == "openai" else {}
        extra = backend_kwargs(kind, {**extra, **_backend_options(backend_option)}, device=device, dtype=dtype,
                               batch_size=batch_size, base_url=base_url, concurrency=concurrency)
        check_local_model(kind, parse_model_spec(judge, backend).model, device, option="--judge")
        load = lambda: load_backend(judge, backend, **extra)  # noqa: E731
        options = {"spec": judge, "prompt_template": prompt,
                   "prompt_name": judge_prompt or "default", "neutral_is_error": neutral_is_error,
                   "max_tokens": judge_max_tokens, "batch_size": batch_size, "seed": seed,
                   "budget": JudgeBudget(max_requests, max_tokens_total)}
    else:
        from .localizers.rollout import SEARCHES

        if not model:
            raise InputError("--method rollout needs --model SPEC (the policy)", field="--model")
        if search not in SEARCHES:
            raise InputError(f"choose one of {', '.join(SEARCHES)}", field="--search")
        if rollouts < 1:
            raise InputError("must be >= 1", field="--rollouts")
        if not 0.0 <= threshold < 1.0:
            raise InputError("must be in [0, 1): a prefix is a dead end when its success rate is <= it",
                             field="--threshold")
        load = lambda: _load_policy(model, backend, "--model", device=device, base_url=base_url,  # noqa: E731
                                    extra=backend_option, dtype=dtype, concurrency=concurrency, batch_size=batch_size)
        options = {"spec": model, "rollouts": rollouts,
                   "threshold": threshold, "search": search, "temperature": temperature, "top_p": top_p,
                   "max_tokens": max_tokens, "seed": seed, "batch_size": records_per_call(batch_size, rollouts),
                   "template": template, "check_root": check_root, "grade_timeout": grade_timeout,
                   "stop": tuple(stop or ())}
    if _split_over_workers(data_parallel, _backend_options(backend_option), input=input, output=output,
                           resume=resume, skip_invalid=skip_invalid, validate=validate_localizable,
                           max_line_bytes=max_line_bytes, origin=lambda record: record.get("id"),
                           done_filter=lambda record, ids: str(record.get("id")) in ids):
        return
    if load is not None:
        options["backend"] = load()
    counts: dict[str, Any] = {}
    try:
        stats, _ = run_records(lambda records: localize_records(records, method, counts=counts, **options),
                               input=input, output=output, resume=resume, skip_invalid=skip_invalid,
                               validate=validate_localizable, max_line_bytes=max_line_bytes)
    finally:
        if "backend" in options:
            options["backend"].close()
    log.summary(f"localize ({method})", localize_summary(counts, stats.invalid))
    budget = options.get("budget")
    if budget is not None and budget.stopped_by:
        log.warn(f"stopped by {budget.stopped_by} after {budget.requests} judge request(s), {budget.tokens} "
                 f"token(s); every judged record is written: rerun with --resume (and a larger budget) to continue")


@app.command("score-localizer", epilog="Example: stepdpo score-localizer -i processbench_judged.jsonl; "
                                       "stepdpo score-localizer -i localized_rollout.jsonl --gold localized.jsonl")
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
    from .records import atomic_write_json, dumps
    from .scoring import gold_steps, report_rows, score_localizer

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


# ---------------------------------------------------------------------------------------------- rectify

@app.command(epilog="Example: stepdpo rectify --model hf:ckpt/sft --n 8 -i localized.jsonl > rectified.jsonl")
def rectify(
    model: Annotated[str, typer.Option("--model", "-m", help="The policy's model spec (hf:PATH, vllm:PATH, openai:NAME).")],
    backend: Annotated[Optional[str], typer.Option(help="Backend when the spec has no prefix.")] = None,
    base_url: Annotated[Optional[str], typer.Option(help="openai: server URL (else $OPENAI_BASE_URL).")] = None,
    device: Annotated[str, typer.Option(help="hf: auto | cpu | cuda.")] = "auto",
    dtype: DtypeOpt = "auto",
    concurrency: ConcurrencyOpt = None,
    backend_option: BackendOptionOpt = None,
    data_parallel: DataParallelOpt = 1,
    n: Annotated[int, typer.Option("-n", "--n", help="Continuations sampled per record.")] = 8,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.8,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling.")] = 0.95,
    max_tokens: Annotated[int, typer.Option(help="Max new tokens per continuation.")] = 512,
    drop_same: Annotated[bool, typer.Option(help="Drop winners whose step equals the wrong step (whitespace-normalised).")] = True,
    max_candidates: Annotated[Optional[int], typer.Option(help="Keep at most this many winners per record.")] = None,
    verify_chosen: Annotated[Optional[str], typer.Option(help="module:function: a winner's own steps must pass it.")] = None,
    verify_judge: Annotated[Optional[str], typer.Option(help="Judge model spec: a winner's own steps must be judged all correct.")] = None,
    judge_prompt: Annotated[Optional[str], typer.Option(help="Prompt file for --verify-judge ({problem} {answer} {steps}).")] = None,
    accept: Annotated[str, typer.Option(help="answer: a winner's continuation reaches the answer (the paper); step: only its first step must pass --verify-chosen / --verify-judge.")] = "answer",
    template: Annotated[Optional[str], typer.Option(help="Template for records without a `template` field.")] = None,
    stop: StopOpt = None,
    batch_size: BatchSizeOpt = 64,
    grade_timeout: GradeTimeoutOpt = 5.0,
    seed: SeedOpt = SEED,
    input: InputOpt = None,
    output: OutputOpt = None,
    resume: ResumeOpt = False,
    skip_invalid: SkipInvalidOpt = False,
    max_line_bytes: MaxLineBytesOpt = DEFAULT_MAX_LINE_BYTES,
    quiet: QuietOpt = False,
) -> None:
    """Sample continuations from the correct prefix; keep the correct ones' first steps as `candidates`."""
    from .stages.rectify import check_accept, rectify_records, validate_rectifiable

    log.set_quiet(quiet)
    check_ranges(temperature=temperature, top_p=top_p, timeouts={"--grade-timeout": grade_timeout},
                 sizes={"--n": n, "--max-tokens": max_tokens, "--batch-size": batch_size,
                        "--max-candidates": max_candidates, "--concurrency": concurrency,
                        "--max-line-bytes": max_line_bytes})
    check_accept(accept, bool(verify_chosen or verify_judge))
    if _split_over_workers(data_parallel, _backend_options(backend_option), input=input, output=output,
                           resume=resume, skip_invalid=skip_invalid, validate=validate_rectifiable,
                           max_line_bytes=max_line_bytes, origin=lambda record: record.get("id"),
                           done_filter=lambda record, ids: str(record.get("id")) in ids):
        return
    checker = None
    if verify_chosen:
        from .localizers.verifier import load_callable

        checker = load_callable(verify_chosen, option="--verify-chosen")
    judge_check = None
    if verify_judge:
        from .localizers.judge import winner_judge

        judge_check = winner_judge(verify_judge, judge_prompt)
    policy = _load_policy(model, backend, "--model", device=device, base_url=base_url, extra=backend_option,
                          dtype=dtype, concurrency=concurrency, batch_size=batch_size)
    counts: dict[str, Any] = {}
    try:
        stats, _ = run_records(
            lambda records: rectify_records(records, policy, spec=model, n=n, temperature=temperature, top_p=top_p,
                                            max_tokens=max_tokens, seed=seed, drop_same=drop_same,
                                            max_candidates=max_candidates, verify_chosen=checker,
                                            verify_spec=verify_chosen or "", template=template,
                                            judge_check=judge_check, judge_spec=verify_judge or "",
                                            batch_size=records_per_call(batch_size, n), accept=accept,
                                            counts=counts, grade_timeout=grade_timeout, stop=tuple(stop or ())),
            input=input, output=output, resume=resume, skip_invalid=skip_invalid, validate=validate_rectifiable,
            max_line_bytes=max_line_bytes,
        )
    finally:
        policy.close()
    sampled = counts.get("sampled", 0)
    log.summary("rectify", {"records": counts.get("records", 0), "rectified": counts.get("rectified", 0),
                            "skipped": counts.get("skipped", 0), "sampled": sampled,
                            "correct_rate": counts.get("correct", 0) / sampled if sampled else 0.0,
                            "candidates": counts.get("kept", 0), "dropped_same": counts.get("dropped_same", 0),
                            "failed_verify": counts.get("failed_verify", 0), "invalid": stats.invalid})


# ---------------------------------------------------------------------------------------------- pair

@app.command(epilog="Example: stepdpo pair -i rectified.jsonl > pairs.jsonl")
def pair(
    format: Annotated[str, typer.Option("--format", help="step (Math-Step-DPO-10K rows) | dpo (whole solutions) | sft (prefix + corrected continuation: the no-preference control).")] = "step",
    chosen_source: Annotated[str, typer.Option(help="model | reference-step (the OOD ablation).")] = "model",
    max_per_problem: Annotated[Optional[int], typer.Option(help="At most this many pairs per problem.")] = None,
    tokenizer: Annotated[Optional[str], typer.Option(help="Tokenizer path for the prefix/step token ratio.")] = None,
    input: InputOpt = None,
    output: OutputOpt = None,
    resume: ResumeOpt = False,
    skip_invalid: SkipInvalidOpt = False,
    max_line_bytes: MaxLineBytesOpt = DEFAULT_MAX_LINE_BYTES,
    quiet: QuietOpt = False,
) -> None:
    """Emit Step-DPO pairs (prompt, initial_reason_steps, chosen, rejected, full_chosen, full_rejected, ...)."""
    from .stages.pair import check_pair_options, pair_records, pair_summary, validate_pairable

    log.set_quiet(quiet)
    check_pair_options(format, chosen_source)
    check_ranges(sizes={"--max-per-problem": max_per_problem, "--max-line-bytes": max_line_bytes})
    lengths, unit = len, "chars"
    if tokenizer:
        from transformers import AutoTokenizer

        from .backends.base import parse_model_spec

        tok = AutoTokenizer.from_pretrained(parse_model_spec(tokenizer).model)  # a model spec works too
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
        done_filter=done, group_key=lambda row: row.get("source_id"), max_line_bytes=max_line_bytes,
    )
    log.summary("pair", {**pair_summary(counts, unit), "invalid": stats.invalid})


# ---------------------------------------------------------------------------------------------- train

def check_train_output(model: str, output: str) -> None:
    """--output equal to --model, or inside it, would overwrite the base model's weights (exit 2)."""
    from .backends.base import parse_model_spec

    path = parse_model_spec(model).model
    if not os.path.isdir(path):
        return  # a hub id: nothing local to overwrite
    base, out = os.path.realpath(path), os.path.realpath(output)
    if out == base or out.startswith(base.rstrip(os.sep) + os.sep):
        raise InputError(f"{output} is {'--model' if out == base else 'inside --model'} ({path}); training "
                         "would overwrite the base model: choose another directory", field="--output")


@app.command(epilog="Example: stepdpo train --objective step-dpo --model ckpt/sft --data pairs.jsonl --output ckpt/step-dpo")
def train(
    model: Annotated[str, typer.Option("--model", "-m", help="Policy: local HF dir, hub id or hf:PATH.")],
    data: Annotated[str, typer.Option("--data", "-i", help="Training rows (pairs or SFT rows): JSONL, - for stdin, a "
                                                     ".parquet/.json/.csv file, a save_to_disk folder or a hub "
                                                     "dataset id (e.g. xinlai/Math-Step-DPO-10K).")],
    output: Annotated[str, typer.Option("--output", "-o", help="Output model dir (also checkpoints, ref "
                                                               "log-probs); not --model or inside it.")],
    objective: Annotated[str, typer.Option(help="sft | dpo | step-dpo | full-step-dpo")] = "step-dpo",
    data_split: Annotated[str, typer.Option(help="Split of a hub dataset or save_to_disk DatasetDict.")] = "train",
    beta: Annotated[float, typer.Option(help="DPO beta.")] = 0.4,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate.")] = 5e-7,
    epochs: Annotated[float, typer.Option(help="Epochs (fractions allowed).")] = 1.0,
    batch_size: Annotated[int, typer.Option(help="Rows per micro-batch per process.")] = 4,
    grad_accum: Annotated[int, typer.Option(help="Gradient accumulation steps.")] = 1,
    scheduler: Annotated[str, typer.Option(help="cosine | linear | constant (with warmup).")] = "cosine",
    warmup_ratio: Annotated[float, typer.Option(help="Warmup fraction of the steps.")] = 0.1,
    max_length: Annotated[int, typer.Option(help="Max tokens of context + longest continuation.")] = 1024,
    max_tokens_per_batch: Annotated[int, typer.Option(help="Pack several pairs per row with no padding, rows of "
                                                           "at most this many tokens, one row per forward (0: one "
                                                           "left-padded row per pair). --batch-size stays pairs "
                                                           "per micro-step.")] = 0,
    template: Annotated[Optional[str], typer.Option(help="Prompt template (default: the model's recorded one, "
                                                         "else chat/raw); must match sample.")] = None,
    seed: SeedOpt = SEED,
    lora: Annotated[bool, typer.Option("--lora", help="Train LoRA adapters (peft), merged into the output.")] = False,
    lora_r: Annotated[int, typer.Option(help="LoRA rank.")] = 16,
    lora_alpha: Annotated[int, typer.Option(help="LoRA alpha.")] = 32,
    merge_lora: Annotated[bool, typer.Option("--merge-lora/--no-merge-lora", help="Merge adapters into the saved model.")] = True,
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing")] = False,
    bf16: Annotated[bool, typer.Option("--bf16", help="bf16 mixed precision: fp32 master weights and optimizer "
                                                      "state, bf16 autocast forward.")] = False,
    pure_bf16: Annotated[bool, typer.Option("--pure-bf16", help="Weights and optimizer state in bf16 (half the "
                                                                "memory; at lr ~5e-7 most updates round away).")] = False,
    max_prompt_length: Annotated[int, typer.Option(help="Context tokens kept at least when a row exceeds "
                                                        "--max-length (oldest dropped, BOS kept; official 512).")] = 512,
    step_text: Annotated[str, typer.Option(help="step-end: a step the solution continues ends with its newline | "
                                                "as-given: score chosen/rejected exactly as written (official).")] = "step-end",
    loss: Annotated[str, typer.Option(help="sigmoid (DPO) | ipo")] = "sigmoid",
    label_smoothing: Annotated[float, typer.Option(help="cDPO label smoothing (sigmoid loss).")] = 0.0,
    nll_weight: Annotated[float, typer.Option(help="Weight of a per-token NLL term on chosen.")] = 0.0,
    step_temperature: Annotated[float, typer.Option(help="full-step-dpo: gamma in softmax(gamma * step score).")] = 0.5,
    save_steps: Annotated[int, typer.Option(help="Checkpoint every N steps (0: never).")] = 0,
    logging_steps: Annotated[int, typer.Option(help="Metrics line every N steps.")] = 1,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint in --output.")] = False,
    report_to: Annotated[str, typer.Option(help="none, or trackers separated by commas: tensorboard (OUTPUT/runs), "
                                                "wandb (OUTPUT/wandb; WANDB_MODE=offline works), mlflow (file store "
                                                "OUTPUT/mlruns unless MLFLOW_TRACKING_URI), trackio. The run's "
                                                "config is logged.")] = "none",
    deepspeed: Annotated[Optional[str], typer.Option(help="zero2 | zero3 | zero3-offload | config JSON.")] = None,
    num_processes: Annotated[int, typer.Option(help="Processes (re-launches through accelerate launch).")] = 1,
    config_file: Annotated[Optional[str], typer.Option(help="accelerate config yaml (multi-node).")] = None,
    max_steps: Annotated[int, typer.Option(help="Stop after N optimizer steps (overrides --epochs).")] = 0,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.0,
    max_grad_norm: Annotated[float, typer.Option(help="Gradient clipping (0: off).")] = 1.0,
    skip_invalid: SkipInvalidOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train with SFT, DPO, Step-DPO or Full-Step-DPO; writes a HF model dir and metrics JSONL on stdout."""
    from .records import dumps
    from .train.data import OBJECTIVES
    from .train.launch import needs_launch, relaunch
    from .train.losses import LOSS_TYPES

    log.set_quiet(quiet)
    for name, value, allowed in (("--objective", objective, OBJECTIVES), ("--loss", loss, LOSS_TYPES),
                                 ("--scheduler", scheduler, ("cosine", "linear", "constant")),
                                 ("--step-text", step_text, ("step-end", "as-given"))):
        if value not in allowed:
            raise InputError(f"{value!r} is not one of {', '.join(allowed)}", field=name)
    from .train.loop import tracker_names

    tracker_names(report_to)  # an unknown or missing tracker is a usage error before anything loads
    check_ranges(sizes={"--batch-size": batch_size, "--grad-accum": grad_accum, "--max-length": max_length,
                        "--num-processes": num_processes, "--logging-steps": logging_steps})
    check_train_output(model, output)
    if max_tokens_per_batch < 0:
        raise InputError("must be >= 0", field="--max-tokens-per-batch")
    # Libraries (DeepSpeed's logger, accelerate) print to stdout; stdout must carry only metrics JSONL.
    # Metrics go to a duplicate of the real stdout, and fd 1 is pointed at stderr for everything else
    # (at /dev/null with -q: DeepSpeed print()s banners that no logging setting reaches).
    sys.stdout.flush()
    metrics_fd = os.dup(1)
    if quiet:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    else:
        os.dup2(2, 1)
    if needs_launch(num_processes, config_file, deepspeed):
        code = relaunch(sys.argv[1:], num_processes=num_processes, config_file=config_file, deepspeed=deepspeed,
                        data=data, output=output, objective=objective, stdout=metrics_fd, split=data_split)
        raise typer.Exit(code)
    from .train.loop import TrainConfig, train as run_training

    config = TrainConfig(
        model=model, data=data, data_split=data_split, output=output, objective=objective, beta=beta, lr=lr,
        epochs=epochs,
        batch_size=batch_size, grad_accum=grad_accum, scheduler=scheduler if scheduler != "constant"
        else "constant_with_warmup", warmup_ratio=warmup_ratio, max_length=max_length, template=template, seed=seed,
        lora=lora, lora_r=lora_r, lora_alpha=lora_alpha, merge_lora=merge_lora,
        gradient_checkpointing=gradient_checkpointing, bf16=bf16, pure_bf16=pure_bf16,
        max_prompt_length=max_prompt_length, step_text=step_text, loss=loss, label_smoothing=label_smoothing,
        nll_weight=nll_weight, step_temperature=step_temperature, save_steps=save_steps,
        logging_steps=logging_steps, resume=resume, report_to=report_to, deepspeed=deepspeed,
        max_steps=max_steps, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
        max_tokens_per_batch=max_tokens_per_batch, skip_invalid=skip_invalid,
    )

    metrics_out = os.fdopen(metrics_fd, "wb")

    def emit(metrics: dict) -> None:
        metrics_out.write(dumps(metrics))
        metrics_out.flush()

    run_training(config, emit=emit)


# ---------------------------------------------------------------------------------------------- sample / eval

@app.command(epilog="Example: stepdpo sample --model ckpt/sft -i problems.jsonl -o samples.jsonl --n 8 --keep wrong")
def sample(
    model: ModelOpt,
    input: InputOpt = None,
    output: OutputOpt = None,
    backend: BackendOpt = None,
    n: NOpt = 8,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0 = greedy).")] = 0.8,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 0.95,
    max_tokens: Annotated[int, typer.Option(help="Tokens generated at most per solution.")] = 512,
    seed: SeedOpt = SEED,
    keep: Annotated[str, typer.Option(help="all | wrong | right: which graded solutions to write.")] = "all",
    template: TemplateOpt = None,
    stop: StopOpt = None,
    batch_size: BatchSizeOpt = 64,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    base_url: BaseUrlOpt = None,
    concurrency: ConcurrencyOpt = None,
    grade_timeout: GradeTimeoutOpt = 5.0,
    backend_option: BackendOptionOpt = None,
    data_parallel: DataParallelOpt = 1,
    resume: ResumeOpt = False,
    skip_invalid: SkipInvalidOpt = False,
    max_line_bytes: MaxLineBytesOpt = DEFAULT_MAX_LINE_BYTES,
    quiet: QuietOpt = False,
) -> None:
    """Sample n step-wise solutions per problem and grade them: one record per kept solution."""
    from .backends.base import SamplingParams
    from .stages.sample import KEEP_CHOICES, SampleStats, is_problem_done, sample_records, validate_problem

    log.set_quiet(quiet)
    if keep not in KEEP_CHOICES:
        raise InputError(f"choose one of {', '.join(KEEP_CHOICES)}", field="--keep")
    check_ranges(temperature=temperature, top_p=top_p, timeouts={"--grade-timeout": grade_timeout},
                 sizes={"--n": n, "--max-tokens": max_tokens, "--batch-size": batch_size,
                        "--concurrency": concurrency, "--max-line-bytes": max_line_bytes})
    generator = _GenerationModel(model, backend, template, n, batch_size, _backend_options(backend_option),
                                 device=device, dtype=dtype, base_url=base_url, concurrency=concurrency)
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=tuple(stop or ()))
    if _split_over_workers(data_parallel, generator.options, input=input, output=output, resume=resume,
                           skip_invalid=skip_invalid, validate=validate_problem, max_line_bytes=max_line_bytes,
                           origin=lambda record: record.get("problem_id"), done_filter=is_problem_done(n),
                           group_key=lambda record: record.get("problem_id")):
        return
    counts = SampleStats()
    try:
        with log.progress("sample", total=None) as advance:
            stats, writer = run_records(
                lambda records: generator.run(records, sample_records, params=params, seed=seed, keep=keep,
                                              grade_timeout=grade_timeout, stats=counts, advance=advance),
                input=input, output=output, resume=resume, skip_invalid=skip_invalid, validate=validate_problem,
                done_filter=is_problem_done(n), group_key=lambda record: record.get("problem_id"),
                max_line_bytes=max_line_bytes,
            )
    finally:
        generator.close()
    log.summary("sample", {**counts.as_summary(), "template": generator.template, "invalid": stats.invalid,
                           **{f"finish_{k}": v for k, v in sorted(counts.by_finish.items())}})


@app.command("eval", epilog="Example: stepdpo eval --model ckpt/step-dpo --dataset gsm8k --limit 200 "
                            "-o results.jsonl --summary summary.json")
def eval_command(
    model: ModelOpt,
    input: InputOpt = None,
    output: OutputOpt = None,
    dataset: Annotated[Optional[str], typer.Option(
        "--dataset", help="gsm8k | math | math500 (hub or HF cache) or a local file/dir in one of those shapes; "
        "instead of -i.")] = None,
    split: Annotated[str, typer.Option(help="Dataset split (with --dataset).")] = "test",
    limit: Annotated[Optional[int], typer.Option(help="Evaluate the first N problems only.")] = None,
    summary_path: Annotated[Optional[str], typer.Option("--summary", help="Write the summary JSON here.")] = None,
    backend: BackendOpt = None,
    n: Annotated[int, typer.Option("-n", "--n", help="Samples per problem: 1 = one answer; k > 1 = majority vote, "
                                                    "pass@k and mean accuracy.")] = 1,
    temperature: Annotated[float, typer.Option(help="0 = greedy (default); set > 0 with --n > 1.")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 1.0,
    max_tokens: Annotated[int, typer.Option(help="Tokens generated at most per solution.")] = 1024,
    seed: SeedOpt = SEED,
    template: TemplateOpt = None,
    stop: StopOpt = None,
    batch_size: BatchSizeOpt = 64,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    base_url: BaseUrlOpt = None,
    concurrency: ConcurrencyOpt = None,
    grade_timeout: GradeTimeoutOpt = 5.0,
    backend_option: BackendOptionOpt = None,
    data_parallel: DataParallelOpt = 1,
    resume: ResumeOpt = False,
    skip_invalid: SkipInvalidOpt = False,
    max_line_bytes: MaxLineBytesOpt = DEFAULT_MAX_LINE_BYTES,
    quiet: QuietOpt = False,
) -> None:
    """Accuracy of a model on problems (greedy, or k samples): per-record results, a table on stderr."""
    import itertools

    from .backends.base import SamplingParams
    from .datasets import load_problems
    from .stages.evaluate import EvalStats, evaluate_records
    from .stages.sample import validate_problem

    log.set_quiet(quiet)
    if dataset and input:
        raise InputError("give either -i FILE or --dataset NAME, not both", field="--dataset")
    check_ranges(temperature=temperature, top_p=top_p, timeouts={"--grade-timeout": grade_timeout},
                 sizes={"--n": n, "--max-tokens": max_tokens, "--batch-size": batch_size, "--limit": limit,
                        "--concurrency": concurrency, "--max-line-bytes": max_line_bytes})
    if n > 1 and temperature <= 0:
        log.warn("--n > 1 with temperature 0 gives n identical greedy answers; set --temperature")
    source = load_problems(dataset, split, limit) if dataset else None
    generator = _GenerationModel(model, backend, template, n, batch_size, _backend_options(backend_option),
                                 device=device, dtype=dtype, base_url=base_url, concurrency=concurrency)
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=tuple(stop or ()))
    results = EvalStats()
    earlier = {str(r.get("id")) for r in finished_records(output)} if data_parallel > 1 and resume and output \
        else set()
    workers_source = source if source is not None else itertools.islice(iter_jsonl(
        input, skip_invalid=skip_invalid, validate=validate_problem, log=log.warn, max_line_bytes=max_line_bytes),
        limit)
    if _split_over_workers(
            data_parallel, generator.options, input=input, output=output, resume=resume, skip_invalid=skip_invalid,
            validate=validate_problem, max_line_bytes=max_line_bytes, origin=lambda record: record.get("id"),
            done_filter=lambda record, ids: str(record.get("id")) in ids, source=workers_source,
            drop_options=("--summary", "--dataset", "--split", "--limit")):
        stats = ReadStats()  # the summary: from the merged records (workers' own summaries are per shard)
        for done in iter_jsonl(output, skip_invalid=True):
            results.add(done)
            if str(done.get("id")) not in earlier:  # tokens: this run's, as in one process
                results.tokens += sum((done.get("generation") or {}).get("num_tokens") or [0])
            generator.template = generator.template or done.get("template")
        # the workers generate at once: tokens/s is the run's tokens over its wall time (model loads included)
        results.generate_seconds = time.perf_counter() - results.started
        _print_eval_summary(results, n, model, generator, dataset, input, split, limit, stats, summary_path,
                            temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed, stop=stop)
        return
    if resume and output:
        for done in finished_records(output):  # the summary covers earlier runs' records too
            if "correct" in done:
                results.add(done)
    try:
        with log.progress("eval", total=limit) as advance:
            def stage(records: Iterable[dict]) -> Iterator[dict]:
                return generator.run(records, evaluate_records, params=params, seed=seed,
                                     grade_timeout=grade_timeout, stats=results, advance=advance)

            stats, _ = run_records(stage, input=input, output=output, resume=resume, skip_invalid=skip_invalid,
                                   validate=validate_problem, source=source, max_line_bytes=max_line_bytes,
                                   limit=limit)
    finally:
        generator.close()
    _print_eval_summary(results, n, model, generator, dataset, input, split, limit, stats, summary_path,
                        temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed, stop=stop)


def _print_eval_summary(results: Any, n: int, model: str, generator: "_GenerationModel", dataset: str | None,
                        input: str | None, split: str, limit: int | None, stats: ReadStats, summary_path: str | None,
                        *, temperature: float, top_p: float, max_tokens: int, seed: int, stop: list[str] | None) -> None:
    from .records import atomic_write_json

    settings = {"n": n, "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens, "seed": seed,
                "stop": list(stop or ()), "split": split if dataset else None, "limit": limit}
    report = results.summary(n, model=model, backend=generator.kind, template=generator.template,
                             source=dataset or input or "<stdin>", settings=settings, invalid=stats.invalid)
    log.table(f"eval: {model}", results.table_rows(n))
    if summary_path:
        atomic_write_json(summary_path, report)
    low, high = report["ci95"]
    log.summary("eval", {"problems": report["count"], "accuracy": report["accuracy"],
                         "ci95": f"[{low:.3f}, {high:.3f}]", "tokens_per_s": report["tokens_per_s"],
                         "wall_s": report["wall_seconds"]})


# ---------------------------------------------------------------------------------------------- view

@app.command(epilog="Example: stepdpo view pairs.jsonl -o pairs.html; stepdpo view metrics-dpo.jsonl "
                    "metrics-stepdpo.jsonl -o curves.html")
def view(
    files: Annotated[list[str], typer.Argument(help="JSONL file(s) of one kind (several metrics files overlay).")],
    output: Annotated[Optional[str], typer.Option("-o", "--output", help="HTML file (default: FILE with .html).")] = None,
    kind: Annotated[Optional[str], typer.Option(help="pairs | localized | eval | metrics | records "
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
    from .view import write_view

    log.set_quiet(quiet)
    if page_size < 1:
        raise InputError("must be >= 1", field="--page-size")
    if not output and files[0] == "-":
        raise InputError("reading stdin needs -o FILE.html", field="--output")
    target = output or os.path.splitext(files[0][:-3] if files[0].endswith(".gz") else files[0])[0] + ".html"
    result = write_view(files, target, kind=kind, title=title, page_size=page_size, evidence=evidence)
    log.summary("view", {**result, "output": target})


if __name__ == "__main__":  # pragma: no cover
    main()
