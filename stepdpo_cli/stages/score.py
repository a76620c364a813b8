"""`stepdpo score --prm PATH`: every step of every solution scored by a process reward model.

Adds `step_rewards` (one float in [0, 1] per step, the PRM's sigmoid at the step's last token), `prm_score`
(the solution's aggregate of them: mean by default, Full-Step-DPO's "average step reward") and `prm`
({model, aggregate, template}). Records with several solutions (`eval --n K` output, `completions`) get
`completions_step_rewards` and `completions_prm_score` instead, one entry per completion. Every other field
flows through.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

from ..records import InputError, batched, normalize_problem
from ..rewards.labels import record_steps
from ..rewards.prm import aggregate
from ..steps import split_steps


def validate_scorable(record: dict) -> dict:
    """A problem and its solution: `steps` (list of str), a `completion` to split, or `completions` (list)."""
    normalize_problem(record, require_answer=False)
    if "steps" not in record and "completion" not in record and isinstance(record.get("completions"), list):
        if not record["completions"] or not all(isinstance(c, str) for c in record["completions"]):
            raise InputError("must be a non-empty list of strings", field="completions")
        return record
    record_steps(record)
    return record


def solutions_of(record: dict) -> list[list[str]]:
    """The step bodies of each solution the record holds (one, or one per completion)."""
    if "steps" not in record and "completion" not in record and isinstance(record.get("completions"), list):
        return [split_steps(c) for c in record["completions"]]
    return [record_steps(record)]


def score_records(records: Iterable[dict], prm: Any, *, how: str = "mean", chunk_size: int = 64,
                  advance: Callable[[int], Any] = lambda n: None) -> Iterator[dict]:
    """Yield each record with its step rewards; `prm.score([(problem, bodies)])` does the work (rewards/prm.py)."""
    aggregate([1.0], how)  # an unknown aggregate fails before any model call
    for chunk in batched(records, max(1, chunk_size)):
        solutions = [solutions_of(record) for record in chunk]
        flat = [(record["problem"], bodies) for record, sols in zip(chunk, solutions) for bodies in sols]
        rewards = iter(prm.score(flat))
        settings = {"model": getattr(prm, "path", None), "aggregate": how, "template": getattr(prm, "template", None)}
        for record, sols in zip(chunk, solutions):
            mine = [next(rewards) for _ in sols]
            if "steps" not in record and "completion" not in record and "completions" in record:
                record["completions_step_rewards"] = mine
                record["completions_prm_score"] = [aggregate(r, how) for r in mine]
            else:
                record["step_rewards"] = mine[0]
                record["prm_score"] = aggregate(mine[0], how)
            record["prm"] = settings
            advance(1)
            yield record
