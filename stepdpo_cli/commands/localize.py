"""`stepdpo localize`: the first wrong step of each solution, by judge, rollouts, verifier or PRM (stages/localize.py)."""
from __future__ import annotations

from typing import Any, Callable, Optional

import typer
from typing_extensions import Annotated

from .. import log
from ..backends.generation import load_policy
from ..backends.registry import backend_kwargs, check_local_model, parse_backend_options
from ..parallel import split_over_workers
from ..records import DEFAULT_MAX_LINE_BYTES, InputError
from ..runner import run_records
from .options import (SEED, SERVERS_HELP, BackendOptionOpt, BatchSizeOpt, ConcurrencyOpt, DataParallelOpt, DtypeOpt,
                      GradeTimeoutOpt, InputOpt, MaxLineBytesOpt, OutputOpt, QuietOpt, ResumeOpt, SeedOpt,
                      SkipInvalidOpt, check_ranges, records_per_call)

EPILOG = "Example: stepdpo localize --method rollout --model hf:ckpt/sft -i wrong.jsonl > localized.jsonl"


def localize(
    method: Annotated[str, typer.Option(help="judge | rollout | verifier | prm (a process reward model: the "
                                              "first step whose reward is below --threshold).")] = "judge",
    prm: Annotated[Optional[str], typer.Option(help="prm: a PRM dir from `stepdpo train --objective prm`.")] = None,
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
    base_url: Annotated[Optional[str], typer.Option(help=f"openai: for --model/--judge, {SERVERS_HELP}; else $OPENAI_BASE_URL.")] = None,
    device: Annotated[str, typer.Option(help="hf: auto | cpu | cuda.")] = "auto",
    dtype: DtypeOpt = "auto",
    concurrency: ConcurrencyOpt = None,
    backend_option: BackendOptionOpt = None,
    rollouts: Annotated[int, typer.Option(help="rollout: continuations per step prefix.")] = 8,
    threshold: Annotated[Optional[float], typer.Option(help="rollout: a prefix whose success rate is <= this is a "
                                                            "dead end (default 0) | prm: the first step whose "
                                                            "reward is < this is the error (default 0.5).")] = None,
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
    from ..stages.localize import METHODS, localize_records, localize_summary, validate_localizable

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
        from ..localizers.verifier import load_callable

        if not verifier:
            raise InputError("--method verifier needs --verifier module:function", field="--verifier")
        options = {"fn": load_callable(verifier), "spec": verifier}
    elif method == "judge":
        from ..backends.registry import load_backend, parse_model_spec
        from ..localizers.judge import JudgeBudget, load_judge_prompt

        for name, limit in (("--max-requests", max_requests), ("--max-tokens-total", max_tokens_total)):
            if limit is not None and limit < 1:
                raise InputError(f"must be >= 1, got {limit}", field=name)
        if not judge:
            raise InputError("--method judge needs --judge SPEC (e.g. openai:gpt-4o)", field="--judge")
        prompt = load_judge_prompt(judge_prompt)
        kind = parse_model_spec(judge, backend).backend
        extra = {"endpoint": judge_endpoint} if kind == "openai" else {}
        extra = backend_kwargs(kind, {**extra, **parse_backend_options(backend_option)}, device=device, dtype=dtype,
                               batch_size=batch_size, base_url=base_url, concurrency=concurrency)
        check_local_model(kind, parse_model_spec(judge, backend).model, device, option="--judge")
        load = lambda: load_backend(judge, backend, **extra)  # noqa: E731
        options = {"spec": judge, "prompt_template": prompt,
                   "prompt_name": judge_prompt or "default", "neutral_is_error": neutral_is_error,
                   "max_tokens": judge_max_tokens, "batch_size": batch_size, "seed": seed,
                   "budget": JudgeBudget(max_requests, max_tokens_total)}
    elif method == "prm":
        from ..rewards.prm import ProcessRewardModel

        if not prm:
            raise InputError("--method prm needs --prm PATH (from stepdpo train --objective prm)", field="--prm")
        threshold = 0.5 if threshold is None else threshold
        if not 0.0 < threshold <= 1.0:
            raise InputError("must be in (0, 1]: the first step whose reward is below it is the error",
                             field="--threshold")
        model_prm = ProcessRewardModel(prm, device=device, dtype=dtype, lazy=True)  # reads as it was trained
        options = {"prm": model_prm, "threshold": threshold, "batch_size": batch_size, "spec": prm}
    else:
        from ..localizers.rollout import SEARCHES

        if not model:
            raise InputError("--method rollout needs --model SPEC (the policy)", field="--model")
        if search not in SEARCHES:
            raise InputError(f"choose one of {', '.join(SEARCHES)}", field="--search")
        if rollouts < 1:
            raise InputError("must be >= 1", field="--rollouts")
        threshold = 0.0 if threshold is None else threshold
        if not 0.0 <= threshold < 1.0:
            raise InputError("must be in [0, 1): a prefix is a dead end when its success rate is <= it",
                             field="--threshold")
        load = lambda: load_policy(model, backend, "--model", device=device, base_url=base_url,  # noqa: E731
                                   extra=backend_option, dtype=dtype, concurrency=concurrency, batch_size=batch_size)
        options = {"spec": model, "rollouts": rollouts,
                   "threshold": threshold, "search": search, "temperature": temperature, "top_p": top_p,
                   "max_tokens": max_tokens, "seed": seed, "batch_size": records_per_call(batch_size, rollouts),
                   "template": template, "check_root": check_root, "grade_timeout": grade_timeout,
                   "stop": tuple(stop or ())}
    if split_over_workers(data_parallel, parse_backend_options(backend_option), input=input, output=output,
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
