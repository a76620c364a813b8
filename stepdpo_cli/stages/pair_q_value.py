"""`stepdpo pair --strategy q-value`: pairs at each wrong solution's critical step (Setlur et al. 2024).

Input: `localize --method rollout` output, where `step_scores[i-1]` is Q after step i (the success rate of
continuations from the prefix ending there; null where not rolled out). A wrong solution's **critical step** c
is the first step with the lowest measured Q: the step after which success is least likely.

- `--format dpo` (whole solutions: Setlur et al.'s pair): chosen = a correct solution of the same problem (the
  `--top` first correct records of the problem, in input order: its samples must be together, as `sample --keep all` writes
  them), rejected = the wrong solution's prefix ending at step c. Rows are whole-solution rows (`prompt`,
  `initial_reason_steps` = the CoT prefix, `chosen`, `rejected`), with `full_rejected` = the whole wrong
  solution. Note `train --objective dpo` ends every whole continuation with EOS, the rejected prefix included.
- `--format step` (the step-level variant, the shared prefix in the prompt): `initial_reason_steps` = the wrong
  solution's steps before c, rejected = its step c, chosen = a rectified continuation's first step at c
  (`rectify`'s `candidates`, which exist at c when the record's `first_error_step` is c); a record whose
  candidates are for another step gives none (counted). Rows are Step-DPO rows.

Every row: `id` = "{record id}/q{j}", `source_id`, `problem_id`, `critical_step`, `critical_q`, `format` =
"q-value-dpo" or "q-value-step", `answer`, `dataset`. Wrong records without a measured Q give none (counted).
"""
from __future__ import annotations

from typing import Iterable, Iterator

from ..records import InputError
from ..steps import STEP_PREFIX, join_steps, prefix_text
from .pair_full_step import graded_steps, problem_groups, problem_key

FORMATS = ("dpo", "step")


def critical_step(step_scores: list) -> tuple[int, float] | None:
    """(1-based step, its Q) of the first lowest measured Q, or None when nothing was measured."""
    measured = [(i + 1, float(q)) for i, q in enumerate(step_scores or [])
                if isinstance(q, (int, float)) and not isinstance(q, bool)]
    if not measured:
        return None
    low = min(q for _, q in measured)
    return next((i, q) for i, q in measured if q == low)


def validate_q_record(record: dict) -> dict:
    """A graded, rollout-localized solution: problem, steps, correct; step_scores for wrong ones."""
    steps = graded_steps(record, "q-value")
    scores = record.get("step_scores")
    if scores is not None and (not isinstance(scores, list) or len(scores) != len(steps) or not all(
            q is None or (isinstance(q, (int, float)) and not isinstance(q, bool)) for q in scores)):
        raise InputError(f"must be a list of one Q (a number or null) per step ({len(steps)})", field="step_scores")
    return record


def _base(record: dict, c: int, q: float, suffix: str, fmt: str) -> dict:
    return {"answer": record.get("answer"), "dataset": record.get("dataset", ""), "id": f"{record['id']}/{suffix}",
            "source_id": record["id"], "problem_id": problem_key(record), "critical_step": c, "critical_q": q,
            "first_error_step": c, "format": f"q-value-{fmt}", "template": record.get("template")}


def q_value_rows(group: list[dict], *, format: str = "dpo", top: int = 1, counts: dict | None = None) -> list[dict]:
    """The rows of one problem's records (see the module doc)."""
    counts = counts if counts is not None else {}

    def drop(reason: str) -> None:
        counts["dropped_" + reason] = counts.get("dropped_" + reason, 0) + 1

    correct = [r for r in group if r["correct"]][:top]
    rows = []
    for record in group:
        if record["correct"]:
            continue
        found = critical_step(record.get("step_scores") or [])
        if found is None:
            drop("no_q")
            continue
        c, q = found
        steps = record["steps"]
        if format == "dpo":
            if not correct:
                drop("no_correct_solution")
                continue
            rejected = join_steps(steps[:c])
            for j, winner in enumerate(correct):
                chosen = join_steps(winner["steps"])
                rows.append({"prompt": record["problem"], "initial_reason_steps": STEP_PREFIX, "chosen": chosen,
                             "rejected": rejected, "full_chosen": chosen, "full_rejected": join_steps(steps),
                             "chosen_id": winner["id"], **_base(record, c, q, f"q{j}", format)})
        else:
            candidates = record.get("candidates") or []
            if record.get("first_error_step") != c or not candidates:
                drop("no_candidate_at_critical_step")
                continue
            for j, candidate in enumerate(candidates[:top]):
                rows.append({"prompt": record["problem"], "initial_reason_steps": prefix_text(steps, c),
                             "chosen": candidate["text"], "rejected": steps[c - 1],
                             "full_chosen": candidate.get("continuation", candidate["text"]),
                             "full_rejected": join_steps(list(steps[c - 1:]), start=c),
                             **_base(record, c, q, f"q{j}", format)})
    return rows


def q_value_pair_records(records: Iterable[dict], *, format: str = "dpo", top: int = 1,
                         counts: dict | None = None) -> Iterator[list[dict]]:
    """Yield each problem's rows as one group; `counts`: records, pairs, drop reasons."""
    if format not in FORMATS:
        raise InputError(f"{format!r} is not one of {', '.join(FORMATS)}", field="--format")
    if top < 1:
        raise InputError("must be >= 1", field="--top")
    counts = counts if counts is not None else {}
    for group in problem_groups(records):
        counts["records"] = counts.get("records", 0) + len(group)
        rows = q_value_rows(group, format=format, top=top, counts=counts)
        counts["pairs"] = counts.get("pairs", 0) + len(rows)
        if rows:
            yield rows
