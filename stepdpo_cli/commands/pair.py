"""`stepdpo pair`: Step-DPO, DPO or SFT rows from rectified records (stages/pair.py), or Full-Step-DPO's pairs
from PRM-scored samples (--strategy full-step: stages/pair_full_step.py)."""
from __future__ import annotations

from typing import Any, Optional

import typer
from typing_extensions import Annotated

from .. import log
from ..records import DEFAULT_MAX_LINE_BYTES, InputError
from ..runner import run_records
from .options import InputOpt, MaxLineBytesOpt, OutputOpt, QuietOpt, ResumeOpt, SkipInvalidOpt, check_ranges

EPILOG = ("Example: stepdpo pair -i rectified.jsonl > pairs.jsonl; stepdpo pair --strategy full-step --top 4 "
          "-i scored.jsonl > full_step_pairs.jsonl")
STRATEGIES = ("localize", "full-step", "tree", "q-value")


def pair(
    strategy: Annotated[str, typer.Option(help="localize: from localized + rectified records (Step-DPO; see "
                                               "--format) | full-step: per problem, the --top best-scored correct x "
                                               "--top worst-scored wrong solutions of `stepdpo score` output "
                                               "(Full-Step-DPO); fewer on a side give fewer rows | tree: from "
                                               "`stepdpo search` trees, at each node of the chosen path its best vs "
                                               "worst child by Q, with label_smoothing from visit counts "
                                               "(MCTS-DPO) | q-value: at each wrong solution's critical step (the "
                                               "first lowest rollout Q), --format dpo: a correct solution of the "
                                               "problem vs the wrong prefix ending there (Setlur et al.), --format "
                                               "step: the rectified step vs the wrong one there.")] = "localize",
    rejected: Annotated[str, typer.Option(help="tree: the rejected child: worst (lowest Q) | second (second "
                                               "best).")] = "worst",
    min_q_gap: Annotated[float, typer.Option(help="tree: skip a node whose chosen and rejected Q differ by "
                                                  "less.")] = 0.0,
    top: Annotated[int, typer.Option(help="full-step: solutions kept per side (paper: 4, so 16 pairs) | q-value: "
                                          "chosen texts per wrong solution (correct solutions or candidates).")] = 4,
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
    from ..stages.pair import check_pair_options, pair_records, pair_summary, validate_pairable

    log.set_quiet(quiet)
    if strategy not in STRATEGIES:
        raise InputError(f"{strategy!r} is not one of {', '.join(STRATEGIES)}", field="--strategy")
    if strategy == "full-step":
        return _full_step(top, input, output, resume, skip_invalid, max_line_bytes)
    if strategy == "tree":
        return _tree(rejected, min_q_gap, input, output, resume, skip_invalid, max_line_bytes)
    if strategy == "q-value":
        return _q_value(format, top, input, output, resume, skip_invalid, max_line_bytes)
    check_pair_options(format, chosen_source)
    check_ranges(sizes={"--max-per-problem": max_per_problem, "--max-line-bytes": max_line_bytes})
    lengths, unit = len, "chars"
    if tokenizer:
        from transformers import AutoTokenizer

        from ..backends.registry import parse_model_spec

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


def _full_step(top: int, input: str | None, output: str | None, resume: bool, skip_invalid: bool,
               max_line_bytes: int) -> None:
    from ..stages.pair_full_step import full_step_pair_records, problem_key, validate_scored

    check_ranges(sizes={"--top": top, "--max-line-bytes": max_line_bytes})
    counts: dict[str, Any] = {}
    problems: set[str] = set()

    def done(record: dict, ids: set[str]) -> bool:  # rows are "{problem_id}/fsI-J": a problem is done whole
        if not problems:
            problems.update(i.rsplit("/", 1)[0] for i in ids)
        return problem_key(record) in problems

    stats, _ = run_records(lambda records: full_step_pair_records(records, top=top, counts=counts),
                           input=input, output=output, resume=resume, skip_invalid=skip_invalid,
                           validate=validate_scored, done_filter=done, group_key=lambda row: row.get("problem_id"),
                           max_line_bytes=max_line_bytes)
    log.summary("pair (full-step)", {"records": counts.get("records", 0), "problems": counts.get("problems", 0),
                                     "pairs": counts.get("pairs", 0),
                                     **{k: v for k, v in sorted(counts.items()) if k.startswith("dropped_")},
                                     "invalid": stats.invalid})


def _tree(rejected: str, min_q_gap: float, input: str | None, output: str | None, resume: bool, skip_invalid: bool,
          max_line_bytes: int) -> None:
    from ..search.pairs import tree_pair_records, validate_tree

    if rejected not in ("worst", "second"):
        raise InputError(f"{rejected!r} is not one of worst, second", field="--rejected")
    counts = {"records": 0, "pairs": 0}
    sources: set[str] = set()

    def done(record: dict, ids: set[str]) -> bool:  # rows are "{record id}/tN"
        if not sources:
            sources.update(i.rsplit("/", 1)[0] for i in ids)
        return str(record.get("id")) in sources

    def stage(records):
        for rows in tree_pair_records(records, rejected=rejected, min_gap=min_q_gap, counts=counts):
            yield rows

    stats, _ = run_records(stage, input=input, output=output, resume=resume, skip_invalid=skip_invalid,
                           validate=validate_tree, done_filter=done, group_key=lambda row: row.get("source_id"),
                           max_line_bytes=max_line_bytes)
    log.summary("pair (tree)", {**counts, "invalid": stats.invalid})


def _q_value(format: str, top: int, input: str | None, output: str | None, resume: bool, skip_invalid: bool,
             max_line_bytes: int) -> None:
    from ..stages.pair_q_value import q_value_pair_records, validate_q_record

    counts: dict[str, Any] = {}
    sources: set[str] = set()

    def done(record: dict, ids: set[str]) -> bool:  # rows are "{record id}/qJ"; the last problem is redone whole
        if not sources:
            sources.update(i.rsplit("/", 1)[0] for i in ids)
        return str(record.get("id")) in sources

    stats, _ = run_records(lambda records: q_value_pair_records(records, format=format, top=top, counts=counts),
                           input=input, output=output, resume=resume, skip_invalid=skip_invalid,
                           validate=validate_q_record, done_filter=done, group_key=lambda row: row.get("problem_id"),
                           max_line_bytes=max_line_bytes)
    log.summary("pair (q-value)", {**{k: v for k, v in sorted(counts.items())}, "invalid": stats.invalid})
