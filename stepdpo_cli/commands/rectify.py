"""`stepdpo rectify`: continue from the correct prefix; correct continuations give candidates (stages/rectify.py)."""
from __future__ import annotations

from typing import Any, Optional

import typer
from typing_extensions import Annotated

from .. import log
from ..backends.generation import load_policy
from ..backends.registry import parse_backend_options
from ..parallel import split_over_workers
from ..records import DEFAULT_MAX_LINE_BYTES
from ..runner import run_records
from .options import (SEED, SERVERS_HELP, BackendOptionOpt, BatchSizeOpt, ConcurrencyOpt, DataParallelOpt, DtypeOpt,
                      GradeTimeoutOpt, InputOpt, MaxLineBytesOpt, OutputOpt, QuietOpt, ResumeOpt, SeedOpt,
                      SkipInvalidOpt, StopOpt, check_ranges, records_per_call)

EPILOG = "Example: stepdpo rectify --model hf:ckpt/sft --n 8 -i localized.jsonl > rectified.jsonl"


def rectify(
    model: Annotated[str, typer.Option("--model", "-m", help="The policy's model spec (hf:PATH, vllm:PATH, openai:NAME).")],
    backend: Annotated[Optional[str], typer.Option(help="Backend when the spec has no prefix.")] = None,
    base_url: Annotated[Optional[str], typer.Option(help=f"openai: {SERVERS_HELP}; else $OPENAI_BASE_URL.")] = None,
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
    from ..stages.rectify import check_accept, rectify_records, validate_rectifiable

    log.set_quiet(quiet)
    check_ranges(temperature=temperature, top_p=top_p, timeouts={"--grade-timeout": grade_timeout},
                 sizes={"--n": n, "--max-tokens": max_tokens, "--batch-size": batch_size,
                        "--max-candidates": max_candidates, "--concurrency": concurrency,
                        "--max-line-bytes": max_line_bytes})
    check_accept(accept, bool(verify_chosen or verify_judge))
    if split_over_workers(data_parallel, parse_backend_options(backend_option), input=input, output=output,
                          resume=resume, skip_invalid=skip_invalid, validate=validate_rectifiable,
                          max_line_bytes=max_line_bytes, origin=lambda record: record.get("id"),
                          done_filter=lambda record, ids: str(record.get("id")) in ids):
        return
    checker = None
    if verify_chosen:
        from ..localizers.verifier import load_callable

        checker = load_callable(verify_chosen, option="--verify-chosen")
    judge_check = None
    if verify_judge:
        from ..localizers.judge import winner_judge

        judge_check = winner_judge(verify_judge, judge_prompt)
    policy = load_policy(model, backend, "--model", device=device, base_url=base_url, extra=backend_option,
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
