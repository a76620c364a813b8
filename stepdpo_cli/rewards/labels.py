"""PRM training labels: which rows `train --objective prm` reads and what each step's target is.

Three label sources for stepdpo records (a solution's `steps` or `completion`), chosen by `--prm-labels`:

- `final-answer` (default; Full-Step-DPO's N=1): every step takes its solution's correctness (`correct`).
- `first-error`: a localizer's verdict (`first_error_step` k from `localize`): steps before k are 1, k and
  after 0; `no_error` makes every step 1; `undecided` rows are skipped (counted).
- `step-scores`: soft targets, the rollout localizer's success rates (`step_scores`, Math-Shepherd style);
  an unmeasured step (null: binary search skips some) is 1 before the first error and 0 from it on.

TRL's stepwise-supervision rows (`prompt`, `completions` = the steps, `labels` = one bool or number per
step; trl-lib/math_shepherd, plaguss/prm_800k_trl) always train on their own labels; a leading "Step k:"
marker in a step is dropped, since stepdpo writes its own.
"""
from __future__ import annotations

import re
from typing import Any

from ..records import InputError
from ..steps import split_steps

LABEL_SOURCES = ("final-answer", "first-error", "step-scores")
_LEADING_MARKER = re.compile(r"^\s*(?:\*\*)?Step\s+\d{1,4}\s*[:.](?:\*\*)?", re.IGNORECASE)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_trl_row(record: dict) -> bool:
    return "completions" in record and "labels" in record


def problem_text(record: dict) -> str:
    for name in ("problem", "prompt", "question", "instruction"):
        if isinstance(record.get(name), str):
            return record[name]
    raise InputError("missing (also looked for prompt, question, instruction)", field="problem")


def record_steps(record: dict) -> list[str]:
    """A record's step bodies: `steps`, else its `completion` split; InputError when it has neither."""
    steps = record.get("steps")
    if steps is None:
        completion = record.get("completion")
        if not isinstance(completion, str):
            raise InputError("missing (and no `completion` to split into steps)", field="steps")
        return split_steps(completion)
    if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
        raise InputError("must be a list of strings", field="steps")
    if not steps:
        raise InputError("is empty", field="steps")
    return steps


def trl_steps(completions: list[str]) -> list[str]:
    """TRL steps as stepdpo bodies (" text", any "Step k:" marker dropped)."""
    return [" " + _LEADING_MARKER.sub("", step).strip() for step in completions]


def step_labels(record: dict, source: str) -> list[float] | None:
    """Targets for each step of `record` (None: the row carries no label, e.g. an undecided localizer)."""
    if is_trl_row(record):
        return [float(v) for v in record["labels"]]
    steps = record_steps(record)
    if source == "final-answer":
        return [float(bool(record["correct"]))] * len(steps)
    k = record.get("first_error_step")
    if source == "first-error":
        if k is None:
            return None if record.get("localize_status") != "no_error" else [1.0] * len(steps)
        return [1.0 if i < k - 1 else 0.0 for i in range(len(steps))]
    scores = record["step_scores"]
    return [float(v) if _number(v) else (1.0 if k is None or i < k - 1 else 0.0) for i, v in enumerate(scores)]


def prm_validator(source: str):
    """`validate` for `iter_jsonl`: the fields the label source needs, with one-line errors naming them."""
    if source not in LABEL_SOURCES:
        raise InputError(f"{source!r} is not one of {', '.join(LABEL_SOURCES)}", field="--prm-labels")

    def validate(record: dict) -> dict:
        problem_text(record)
        if is_trl_row(record):
            completions, labels = record["completions"], record["labels"]
            if not isinstance(completions, list) or not completions or not all(isinstance(c, str) for c in completions):
                raise InputError("must be a non-empty list of step strings", field="completions")
            if not isinstance(labels, list) or not all(isinstance(v, bool) or _number(v) for v in labels):
                raise InputError("must be a list of booleans or numbers", field="labels")
            if len(labels) != len(completions):
                raise InputError(f"has {len(labels)} labels for {len(completions)} steps", field="labels")
            return record
        steps = record_steps(record)
        if source == "final-answer" and not isinstance(record.get("correct"), bool):
            raise InputError("missing or not a boolean: --prm-labels final-answer needs each solution graded "
                             "(stepdpo sample writes it)", field="correct")
        if source == "first-error":
            k = record.get("first_error_step")
            if k is None and "localize_status" not in record:
                raise InputError("missing: --prm-labels first-error needs localize's output", field="first_error_step")
            if k is not None and (not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= len(steps)):
                raise InputError(f"must be a step number in 1..{len(steps)}", field="first_error_step")
        if source == "step-scores":
            scores = record.get("step_scores")
            if not isinstance(scores, list) or not all(v is None or _number(v) for v in scores):
                raise InputError("missing or not a list of numbers (null for unmeasured): --prm-labels step-scores "
                                 "needs `localize --method rollout`", field="step_scores")
            if len(scores) != len(steps):
                raise InputError(f"has {len(scores)} scores but the solution has {len(steps)} step(s)",
                                 field="step_scores")
        return record

    return validate
