"""`stepdpo eval`: accuracy of a model on problems, greedy or k samples, with a summary (stages/evaluate.py)."""
from __future__ import annotations

import time
from typing import Any, Iterable, Iterator, Optional

import typer
from typing_extensions import Annotated

from .. import log
from ..backends.generation import GenerationModel
from ..backends.registry import parse_backend_options
from ..parallel import split_over_workers
from ..records import DEFAULT_MAX_LINE_BYTES, InputError, ReadStats, finished_records, iter_jsonl
from ..runner import run_records
from .options import (SEED, BackendOpt, BackendOptionOpt, BaseUrlOpt, BatchSizeOpt, ConcurrencyOpt, DataParallelOpt,
                      DeviceOpt, DtypeOpt, GradeTimeoutOpt, InputOpt, MaxLineBytesOpt, ModelOpt, OutputOpt, QuietOpt,
                      ResumeOpt, SeedOpt, SkipInvalidOpt, StopOpt, TemplateOpt, check_ranges)

EPILOG = ("Example: stepdpo eval --model ckpt/step-dpo --dataset gsm8k --limit 200 "
          "-o results.jsonl --summary summary.json")
NAME = "eval"


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
    prm: Annotated[Optional[str], typer.Option("--prm", help="A PRM dir (stepdpo train --objective prm): score every "
                                                             "sampled solution; with --n K the summary's selectors "
                                                             "compare best-of-n, weighted-vote and majority on the "
                                                             "same samples.")] = None,
    value: Annotated[Optional[str], typer.Option("--value", help="An SVPO model dir (stepdpo train --objective "
                                                                 "svpo): its value head scores the steps instead "
                                                                 "of a PRM, (tanh v + 1) / 2 at each step's end; "
                                                                 "--search beam is value-guided step beam search "
                                                                 "(AlphaMath's SBS).")] = None,
    select: Annotated[Optional[str], typer.Option(help="With --prm: the selector whose answer is `prediction` / "
                                                       "`correct`: best-of-n (default) | weighted-vote | majority.")] = None,
    aggregate: Annotated[str, typer.Option(help="With --prm: a solution's score from its step rewards: mean | min | "
                                                "last | prod.")] = "mean",
    search: Annotated[str, typer.Option(help="none: sample whole solutions | beam: step-level beam search with "
                                             "--prm (each round: --expand next steps per beam, keep the "
                                             "--beam-width best by PRM score).")] = "none",
    beam_width: Annotated[int, typer.Option(help="beam: beams kept per round.")] = 4,
    expand: Annotated[int, typer.Option(help="beam: next steps sampled per beam per round.")] = 4,
    max_steps: Annotated[int, typer.Option(help="beam: rounds (steps) at most; --max-tokens bounds each step.")] = 16,
    data_parallel: DataParallelOpt = 1,
    resume: ResumeOpt = False,
    skip_invalid: SkipInvalidOpt = False,
    max_line_bytes: MaxLineBytesOpt = DEFAULT_MAX_LINE_BYTES,
    quiet: QuietOpt = False,
) -> None:
    """Accuracy of a model on problems (greedy, or k samples): per-record results, a table on stderr."""
    import itertools

    from ..backends.base import SamplingParams
    from ..datasets import load_problems
    from ..stages.evaluate import EvalStats, evaluate_records
    from ..stages.sample import validate_problem

    log.set_quiet(quiet)
    if dataset and input:
        raise InputError("give either -i FILE or --dataset NAME, not both", field="--dataset")
    check_ranges(temperature=temperature, top_p=top_p, timeouts={"--grade-timeout": grade_timeout},
                 sizes={"--n": n, "--max-tokens": max_tokens, "--batch-size": batch_size, "--limit": limit,
                        "--concurrency": concurrency, "--max-line-bytes": max_line_bytes})
    if n > 1 and temperature <= 0:
        log.warn("--n > 1 with temperature 0 gives n identical greedy answers; set --temperature")
    if value is not None and prm is not None:
        raise InputError("give one step scorer: --prm or --value", field="--value")
    scorer, rescore = _prm_options(prm or value, select, aggregate, search, n, beam_width, expand, max_steps,
                                   temperature, device, dtype, grade_timeout, option="--value" if value else "--prm")
    source = load_problems(dataset, split, limit) if dataset else None
    generator = GenerationModel(model, backend, template, n, batch_size, parse_backend_options(backend_option),
                                device=device, dtype=dtype, base_url=base_url, concurrency=concurrency)
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=tuple(stop or ()))
    results = EvalStats()
    earlier = {str(r.get("id")) for r in finished_records(output)} if data_parallel > 1 and resume and output \
        else set()
    workers_source = source if source is not None else itertools.islice(iter_jsonl(
        input, skip_invalid=skip_invalid, validate=validate_problem, log=log.warn, max_line_bytes=max_line_bytes),
        limit)
    if split_over_workers(
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
                            temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed, stop=stop,
                            extra=_search_settings(prm or value, select, aggregate, search, beam_width, expand,
                                                   max_steps, key="value" if value else "prm"))
        return
    if resume and output:
        for done in finished_records(output):  # the summary covers earlier runs' records too
            if "correct" in done:
                results.add(done)
    try:
        with log.progress("eval", total=limit) as advance:
            def stage(records: Iterable[dict]) -> Iterator[dict]:
                if search == "beam":
                    return generator.run(records, _beam_stage(scorer, results), beam_width=beam_width, expand=expand,
                                         max_steps=max_steps, temperature=temperature, top_p=top_p,
                                         max_step_tokens=max_tokens, how=aggregate, seed=seed,
                                         grade_timeout=grade_timeout, advance=advance)
                return generator.run(records, evaluate_records, params=params, seed=seed,
                                     grade_timeout=grade_timeout, stats=results, advance=advance, rescore=rescore)

            stats, _ = run_records(stage, input=input, output=output, resume=resume, skip_invalid=skip_invalid,
                                   validate=validate_problem, source=source, max_line_bytes=max_line_bytes,
                                   limit=limit)
    finally:
        generator.close()
    _print_eval_summary(results, n, model, generator, dataset, input, split, limit, stats, summary_path,
                        temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed, stop=stop,
                        extra=_search_settings(prm or value, select, aggregate, search, beam_width, expand, max_steps,
                                               key="value" if value else "prm"))


def _print_eval_summary(results: Any, n: int, model: str, generator: "GenerationModel", dataset: str | None,
                        input: str | None, split: str, limit: int | None, stats: ReadStats, summary_path: str | None,
                        *, temperature: float, top_p: float, max_tokens: int, seed: int, stop: list[str] | None,
                        extra: dict | None = None) -> None:
    from ..records import atomic_write_json

    settings = {"n": n, "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens, "seed": seed,
                "stop": list(stop or ()), "split": split if dataset else None, "limit": limit, **(extra or {})}
    report = results.summary(n, model=model, backend=generator.kind, template=generator.template,
                             source=dataset or input or "<stdin>", settings=settings, invalid=stats.invalid)
    log.table(f"eval: {model}", results.table_rows(n))
    if summary_path:
        atomic_write_json(summary_path, report)
    low, high = report["ci95"]
    log.summary("eval", {"problems": report["count"], "accuracy": report["accuracy"],
                         "ci95": f"[{low:.3f}, {high:.3f}]", "tokens_per_s": report["tokens_per_s"],
                         "wall_s": report["wall_seconds"]})


def _prm_options(prm: str | None, select: str | None, aggregate: str, search: str, n: int, beam_width: int,
                 expand: int, max_steps: int, temperature: float, device: str, dtype: str, grade_timeout: float,
                 option: str = "--prm"):
    """Check the PRM options (usage errors before anything loads); (lazy PRM or None, eval's rescore hook)."""
    from ..rewards.prm import AGGREGATES, ProcessRewardModel
    from ..stages.select import SELECTORS, prm_selector

    if search not in ("none", "beam"):
        raise InputError(f"{search!r} is not one of none, beam", field="--search")
    if aggregate not in AGGREGATES:
        raise InputError(f"{aggregate!r} is not one of {', '.join(AGGREGATES)}", field="--aggregate")
    if select is not None and select not in SELECTORS:
        raise InputError(f"{select!r} is not one of {', '.join(SELECTORS)}", field="--select")
    check_ranges(sizes={"--beam-width": beam_width, "--expand": expand, "--max-steps": max_steps})
    if prm is None:
        if search == "beam":
            raise InputError("beam search needs a step scorer: --prm PATH", field="--search")
        if select is not None:
            raise InputError("selecting among samples needs --prm PATH", field="--select")
        return None, None
    if search == "beam" and n > 1:
        raise InputError("beam search returns one solution per problem: leave --n at 1", field="--n")
    if search == "beam" and expand > 1 and temperature <= 0:
        log.warn("--search beam with temperature 0 expands every beam into identical steps; set --temperature")
    if option == "--value":
        from ..rewards.value import ValueModel

        scorer = ValueModel(prm, device=device, dtype=dtype, lazy=True)
    else:
        scorer = ProcessRewardModel(prm, device=device, dtype=dtype, lazy=True)
    if search == "beam":
        return scorer, None
    return scorer, prm_selector(scorer, select=select or "best-of-n", how=aggregate, grade_timeout=grade_timeout)


def _beam_stage(scorer: Any, results: Any):
    """`stage(records, engine, template=, chunk_size=, ...)` for GenerationModel.run: beam search, tallied."""
    from ..stages.beam import BeamStats, beam_search_records

    def stage(records: Iterable[dict], engine: Any, *, template: str, chunk_size: int, **options: Any):
        stats = BeamStats()
        for record in beam_search_records(records, engine, scorer, template=template, chunk_size=chunk_size,
                                          stats=stats, **options):
            results.add(record)
            results.tokens = results.tokens + record["search"]["num_tokens"]
            results.generate_seconds = stats.generate_seconds + stats.score_seconds
            yield record

    return stage


def _search_settings(prm: str | None, select: str | None, aggregate: str, search: str, beam_width: int,
                     expand: int, max_steps: int, key: str = "prm") -> dict:
    if prm is None:
        return {}
    out: dict[str, Any] = {key: prm, "aggregate": aggregate, "search": search}
    if search == "beam":
        out.update(beam_width=beam_width, expand=expand, max_steps=max_steps)
    else:
        out["select"] = select or "best-of-n"
    return out
