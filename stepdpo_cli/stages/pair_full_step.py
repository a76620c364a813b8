"""`stepdpo pair --strategy full-step`: Full-Step-DPO's pairs from PRM-scored solutions (Xu et al. 2025).

Per problem (records sharing `problem_id`, contiguous as `sample` writes them): rank its solutions by
`prm_score` (the mean step reward from `stepdpo score`), keep the `top` highest-scoring correct ones and the
`top` lowest-scoring wrong ones, and pair every kept correct with every kept wrong solution: top x top rows
(the paper: 4 x 4 = 16 of 32 samples). A side with fewer than `top` solutions gives what it has (3 correct and
1 wrong: 3 x 1 rows); a problem with no correct or no wrong solution gives none (counted as dropped). Ties keep
sample order.

Rows are whole-solution pairs in the shape `train --objective full-step-dpo` reads: prompt, initial_reason_steps
(the CoT prefix), chosen / rejected (the solutions' step text), full_chosen / full_rejected, chosen_step_scores /
rejected_step_scores (their step_rewards), answer, dataset, id = "{problem_id}/fs{i}-{j}" (i-th best correct,
j-th worst wrong), chosen_id / rejected_id and their prm scores, problem_id, format "full-step".
"""
from __future__ import annotations

from typing import Iterable, Iterator

from ..records import InputError
from ..steps import STEP_PREFIX, join_steps

DEFAULT_TOP = 4
_NOT_COPIED = frozenset({"problem", "completion", "steps", "prediction", "prediction_source", "correct", "generation",
                         "sample_index", "step_rewards", "prm_score", "step_scores", "first_error_step",
                         "localize_status", "localizer", "candidates", "id"})


def graded_steps(record: dict, strategy: str) -> list[str]:
    """The steps of a graded solution with its problem (InputError naming the field otherwise)."""
    from ..rewards.labels import record_steps

    steps = record_steps(record)
    if not isinstance(record.get("problem"), str):
        raise InputError("missing", field="problem")
    if not isinstance(record.get("correct"), bool):
        raise InputError(f"missing or not a boolean: pair --strategy {strategy} needs graded samples", field="correct")
    return steps


def validate_scored(record: dict) -> dict:
    """A graded, PRM-scored solution: `steps`, `correct`, `step_rewards` (one per step), `prm_score`."""
    steps = graded_steps(record, "full-step")
    rewards = record.get("step_rewards")
    if not isinstance(rewards, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                for v in rewards):
        raise InputError("missing or not a list of numbers: run `stepdpo score --prm PATH` first",
                         field="step_rewards")
    if len(rewards) != len(steps):
        raise InputError(f"has {len(rewards)} rewards but the solution has {len(steps)} step(s)",
                         field="step_rewards")
    if not isinstance(record.get("prm_score"), (int, float)) or isinstance(record.get("prm_score"), bool):
        raise InputError("missing or not a number: run `stepdpo score --prm PATH` first", field="prm_score")
    return record


def problem_key(record: dict) -> str:
    return str(record.get("problem_id") or record["problem"])


def problem_groups(records: Iterable[dict]) -> Iterator[list[dict]]:
    """Consecutive records of one problem; a problem that comes back after another is an input error."""
    closed: set[str] = set()
    group: list[dict] = []
    for record in records:
        key = problem_key(record)
        if group and key != problem_key(group[0]):
            closed.add(problem_key(group[0]))
            yield group
            group = []
        if key in closed:
            raise InputError(f"problem {key!r} appears again after other problems: full-step pairs need each "
                             "problem's solutions together (as `sample` writes them; sort by problem_id)",
                             field="problem_id")
        group.append(record)
    if group:
        yield group


def full_step_rows(group: list[dict], top: int = DEFAULT_TOP) -> list[dict]:
    """The top x top rows of one problem's scored solutions (see the module doc)."""
    correct = sorted((r for r in group if r["correct"]), key=lambda r: -r["prm_score"])[:top]
    wrong = sorted((r for r in group if not r["correct"]), key=lambda r: r["prm_score"])[:top]
    rows = []
    for i, winner in enumerate(correct, start=1):
        for j, loser in enumerate(wrong, start=1):
            chosen, rejected = join_steps(winner["steps"]), join_steps(loser["steps"])
            base = {k: v for k, v in winner.items() if k not in _NOT_COPIED}
            rows.append({**base, "prompt": winner["problem"], "initial_reason_steps": STEP_PREFIX,
                         "chosen": chosen, "rejected": rejected, "full_chosen": chosen, "full_rejected": rejected,
                         "chosen_step_scores": list(winner["step_rewards"]),
                         "rejected_step_scores": list(loser["step_rewards"]),
                         "answer": winner.get("answer"), "dataset": winner.get("dataset", ""),
                         "id": f"{problem_key(winner)}/fs{i}-{j}", "problem_id": problem_key(winner),
                         "chosen_id": winner.get("id"), "rejected_id": loser.get("id"),
                         "chosen_prm_score": winner["prm_score"], "rejected_prm_score": loser["prm_score"],
                         "format": "full-step", "template": winner.get("template"), "prm": winner.get("prm")})
    return rows


def full_step_pair_records(records: Iterable[dict], *, top: int = DEFAULT_TOP,
                           counts: dict | None = None) -> Iterator[list[dict]]:
    """Yield each problem's rows as one group; `counts`: records, problems, pairs and drop reasons."""
    if top < 1:
        raise InputError("must be >= 1", field="--top")
    counts = counts if counts is not None else {}
    for group in problem_groups(records):
        counts["records"] = counts.get("records", 0) + len(group)
        rows = full_step_rows(group, top)
        if not rows:
            reason = "dropped_no_correct" if not any(r["correct"] for r in group) else "dropped_no_wrong"
            counts[reason] = counts.get(reason, 0) + 1
            continue
        counts["problems"] = counts.get("problems", 0) + 1
        counts["pairs"] = counts.get("pairs", 0) + len(rows)
        yield rows
