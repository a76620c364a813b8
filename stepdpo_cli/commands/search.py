"""`stepdpo search`: step-level MCTS per problem, one tree per record (stages/search.py)."""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Optional

import typer
from typing_extensions import Annotated

from .. import log
from ..backends.generation import GenerationModel
from ..backends.registry import parse_backend_options
from ..parallel import split_over_workers
from ..records import DEFAULT_MAX_LINE_BYTES
from ..runner import run_records
from .options import (SEED, BackendOpt, BackendOptionOpt, BaseUrlOpt, BatchSizeOpt, ConcurrencyOpt, DataParallelOpt,
                      DeviceOpt, DtypeOpt, GradeTimeoutOpt, InputOpt, MaxLineBytesOpt, ModelOpt, OutputOpt, QuietOpt,
                      ResumeOpt, SeedOpt, SkipInvalidOpt, TemplateOpt, check_ranges)

EPILOG = ("Example: stepdpo search --model ckpt/sft --simulations 32 --expand 2 --root-expand 4 -i problems.jsonl "
          "-o trees.jsonl")


def search(
    model: ModelOpt,
    simulations: Annotated[int, typer.Option(help="Simulations per problem (select, expand, evaluate, back up).")] = 16,
    expand: Annotated[int, typer.Option(help="Candidate next steps sampled when a node is expanded.")] = 2,
    root_expand: Annotated[int, typer.Option(help="Candidate first steps at the root (MCTS-DPO: more at the "
                                                  "root).")] = 4,
    depth: Annotated[int, typer.Option(help="Steps at most on a path; a node this deep is not expanded.")] = 8,
    c_puct: Annotated[float, typer.Option(help="PUCT exploration weight: Q + c * P * sqrt(N_parent) / (1 + N).")] = 1.0,
    rollouts: Annotated[int, typer.Option(help="Leaf value: the success rate of this many graded continuations "
                                               "(0: use --value).")] = 2,
    value: Annotated[Optional[str], typer.Option(help="Leaf value from a PRM or SVPO dir (its score of the leaf's last "
                                                      "step) instead of rollouts.")] = None,
    length_penalty: Annotated[float, typer.Option(help="Prior = exp(sum log pi / len^this), normalised over "
                                                       "siblings (MCTS-DPO's 1.25).")] = 1.25,
    max_step_tokens: Annotated[int, typer.Option(help="Tokens at most per expanded step.")] = 128,
    max_tokens: Annotated[int, typer.Option(help="Tokens at most per rollout.")] = 512,
    max_seconds: Annotated[float, typer.Option(help="Per chunk of problems: stop simulating after this long and "
                                                    "write the trees with status timeout (0: no limit).")] = 0.0,
    expansion: Annotated[str, typer.Option(help="step: sample each candidate up to the next step marker | "
                                               "continuation: sample whole continuations, the first step is the "
                                               "child and the rest its first rollout (our choice for speed: long "
                                               "decodes, one call per simulation at --rollouts 1).")] = "step",
    parallel_simulations: Annotated[int, typer.Option(
        help="Simulations per problem run together: this many distinct leaves picked with a virtual loss (each "
             "picked path counts one visit of value 0 until backed up), expanded and valued in the same backend "
             "calls. Our choice for speed, as batched AlphaZero-style MCTS does; 1 (the papers') runs them one at "
             "a time.")] = 1,
    temperature: Annotated[float, typer.Option(help="Sampling temperature of expansions and rollouts.")] = 1.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 1.0,
    template: TemplateOpt = None,
    backend: BackendOpt = None,
    batch_size: BatchSizeOpt = 64,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    base_url: BaseUrlOpt = None,
    concurrency: ConcurrencyOpt = None,
    backend_option: BackendOptionOpt = None,
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
    """Grow a step-level search tree per problem: adds tree, chosen_path, chosen_steps and search."""
    from ..stages.search import SearchSettings, search_records, validate_searchable

    log.set_quiet(quiet)
    settings = SearchSettings(simulations=simulations, expand=expand, root_expand=root_expand, depth=depth,
                              c_puct=c_puct, rollouts=rollouts, temperature=temperature, top_p=top_p,
                              max_step_tokens=max_step_tokens, max_tokens=max_tokens, length_penalty=length_penalty,
                              max_seconds=max_seconds, expansion=expansion,
                              parallel_simulations=parallel_simulations)
    settings.check()
    check_ranges(temperature=temperature, top_p=top_p, timeouts={"--grade-timeout": grade_timeout},
                 sizes={"--batch-size": batch_size, "--concurrency": concurrency, "--max-line-bytes": max_line_bytes})
    settings.check_leaf_values(value is not None)  # before a value model loads
    scorer = None
    if value is not None:
        from ..rewards.value import load_step_scorer

        scorer = load_step_scorer(value, device=device, dtype=dtype, lazy=True, option="--value")
    generator = GenerationModel(model, backend, template, max(expand, root_expand), batch_size,
                                parse_backend_options(backend_option), device=device, dtype=dtype, base_url=base_url,
                                concurrency=concurrency)
    if split_over_workers(data_parallel, generator.options, input=input, output=output, resume=resume,
                          skip_invalid=skip_invalid, validate=validate_searchable, max_line_bytes=max_line_bytes,
                          origin=lambda record: record.get("id"),
                          done_filter=lambda record, ids: str(record.get("id")) in ids):
        return
    counts: dict[str, Any] = {"problems": 0, "timeout": 0, "tokens": 0, "nodes": 0}

    def stage(records: Iterable[dict]) -> Iterator[dict]:
        for record in generator.run(records, search_records, settings=settings, seed=seed, value=scorer,
                                    grade_timeout=grade_timeout):
            counts["problems"] += 1
            counts["timeout"] += record["search"]["status"] == "timeout"
            counts["tokens"] += record["search"]["generated_tokens"]
            counts["nodes"] += len(record["tree"])
            yield record

    try:
        stats, _ = run_records(stage, input=input, output=output, resume=resume, skip_invalid=skip_invalid,
                               validate=validate_searchable, max_line_bytes=max_line_bytes)
    finally:
        generator.close()
    log.summary("search", {**counts, "invalid": stats.invalid})
