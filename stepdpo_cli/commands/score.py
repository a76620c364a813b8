"""`stepdpo score`: step rewards from a process reward model for any records with steps (stages/score.py)."""
from __future__ import annotations

from typing import Optional

import typer
from typing_extensions import Annotated

from .. import log
from ..parallel import split_over_workers
from ..records import DEFAULT_MAX_LINE_BYTES, InputError
from ..runner import run_records
from .options import (DataParallelOpt, DeviceOpt, DtypeOpt, InputOpt, MaxLineBytesOpt, OutputOpt, QuietOpt, ResumeOpt,
                      SkipInvalidOpt, check_ranges)

EPILOG = ("Example: stepdpo sample --model ckpt/sft -i problems.jsonl --n 16 | stepdpo score --prm ckpt/prm "
          "| stepdpo pair --strategy full-step > pairs.jsonl")

PrmOpt = Annotated[str, typer.Option("--prm", help="A PRM dir from `stepdpo train --objective prm` (loads with "
                                                   "stepdpo_cli.rewards.load_prm).")]


def score(
    prm: PrmOpt,
    backend: Annotated[str, typer.Option(help="hf (transformers) | vllm (vLLM's pooling runner, token_classify; "
                                              "the same rewards).")] = "hf",
    aggregate: Annotated[str, typer.Option(help="The solution's prm_score from its step rewards: mean (Full-Step-DPO's "
                                                "average step reward) | min | last | prod.")] = "mean",
    template: Annotated[Optional[str], typer.Option(help="Prompt template the PRM reads (default: the one it was "
                                                         "trained with, from its stepdpo.json).")] = None,
    batch_size: Annotated[int, typer.Option(help="Solutions per PRM forward (fixed-shape batches: a solution's "
                                                 "rewards never depend on its neighbours).")] = 8,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    data_parallel: DataParallelOpt = 1,
    input: InputOpt = None,
    output: OutputOpt = None,
    resume: ResumeOpt = False,
    skip_invalid: SkipInvalidOpt = False,
    max_line_bytes: MaxLineBytesOpt = DEFAULT_MAX_LINE_BYTES,
    quiet: QuietOpt = False,
) -> None:
    """Score every step with a PRM: adds step_rewards (one per step, in [0, 1]), prm_score and prm."""
    from ..rewards.prm import AGGREGATES, PRM_BACKENDS, load_prm
    from ..stages.score import score_records, validate_scorable

    log.set_quiet(quiet)
    if aggregate not in AGGREGATES:
        raise InputError(f"{aggregate!r} is not one of {', '.join(AGGREGATES)}", field="--aggregate")
    check_ranges(sizes={"--batch-size": batch_size, "--max-line-bytes": max_line_bytes})
    if backend not in PRM_BACKENDS:
        raise InputError(f"{backend!r} is not one of {', '.join(PRM_BACKENDS)}", field="--backend")
    model = load_prm(prm, backend, device=device, dtype=dtype, batch_size=batch_size, template=template, lazy=True)
    if split_over_workers(data_parallel, {}, input=input, output=output, resume=resume, skip_invalid=skip_invalid,
                          validate=validate_scorable, max_line_bytes=max_line_bytes,
                          origin=lambda record: record.get("id"),
                          done_filter=lambda record, ids: str(record.get("id")) in ids):
        return
    try:
        with log.progress("score", total=None) as advance:
            stats, _ = run_records(lambda records: score_records(records, model, how=aggregate,
                                                                 chunk_size=batch_size * (1 if backend == "hf" else 16),
                                                                 advance=advance),
                                   input=input, output=output, resume=resume, skip_invalid=skip_invalid,
                                   validate=validate_scorable, max_line_bytes=max_line_bytes)
    finally:
        model.close()
    s = model.stats
    log.summary("score", {"solutions": s.solutions, "steps": s.steps, "steps_per_s": round(s.steps / s.seconds, 1)
                          if s.seconds else 0.0, "tokens_per_s": round(s.tokens / s.seconds, 1) if s.seconds else 0.0,
                          "invalid": stats.invalid})
