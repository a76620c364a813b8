"""`stepdpo sample`: n graded step-wise solutions per problem (stages/sample.py)."""
from __future__ import annotations

import typer
from typing_extensions import Annotated

from .. import log
from ..backends.generation import GenerationModel
from ..backends.registry import parse_backend_options
from ..parallel import split_over_workers
from ..records import DEFAULT_MAX_LINE_BYTES, InputError
from ..runner import run_records
from .options import (SEED, BackendOpt, BackendOptionOpt, BaseUrlOpt, BatchSizeOpt, ConcurrencyOpt, DataParallelOpt,
                      DeviceOpt, DtypeOpt, GradeTimeoutOpt, InputOpt, MaxLineBytesOpt, ModelOpt, NOpt, OutputOpt,
                      QuietOpt, ResumeOpt, SeedOpt, SkipInvalidOpt, StopOpt, TemplateOpt, check_ranges)

EPILOG = "Example: stepdpo sample --model ckpt/sft -i problems.jsonl -o samples.jsonl --n 8 --keep wrong"


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
    from ..backends.base import SamplingParams
    from ..stages.sample import KEEP_CHOICES, SampleStats, is_problem_done, sample_records, validate_problem

    log.set_quiet(quiet)
    if keep not in KEEP_CHOICES:
        raise InputError(f"choose one of {', '.join(KEEP_CHOICES)}", field="--keep")
    check_ranges(temperature=temperature, top_p=top_p, timeouts={"--grade-timeout": grade_timeout},
                 sizes={"--n": n, "--max-tokens": max_tokens, "--batch-size": batch_size,
                        "--concurrency": concurrency, "--max-line-bytes": max_line_bytes})
    generator = GenerationModel(model, backend, template, n, batch_size, parse_backend_options(backend_option),
                                device=device, dtype=dtype, base_url=base_url, concurrency=concurrency)
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=tuple(stop or ()))
    if split_over_workers(data_parallel, generator.options, input=input, output=output, resume=resume,
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
