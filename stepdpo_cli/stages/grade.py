"""The `grade` stage: add `prediction` and `correct` to records that carry an answer and a completion.

Usable alone (`stepdpo grade`) or from Python; `sample` and `eval` call `stepdpo_cli.grading` directly.
"""
from __future__ import annotations

from typing import Iterable, Iterator

from ..grading import answers_match, extract_answer
from ..records import InputError, ensure_id, normalize_answer


def validate_gradable(record: dict) -> dict:
    """Require `answer` and one of `completion` / `prediction` (strings); keep every other field."""
    if "answer" not in record or record["answer"] is None:
        raise InputError("missing", field="answer")
    record["answer"] = normalize_answer(record["answer"])
    if isinstance(record.get("completion"), str):
        pass
    elif "completion" in record and record["completion"] is not None:
        raise InputError(f"must be a string, not {type(record['completion']).__name__}", field="completion")
    elif "prediction" not in record:
        raise InputError("missing (need 'completion' or 'prediction')", field="completion")
    elif record["prediction"] is not None and not isinstance(record["prediction"], (str, int, float)):
        raise InputError(f"must be a string, not {type(record['prediction']).__name__}", field="prediction")
    ensure_id(record)
    return record


def grade_records(records: Iterable[dict], *, timeout: float = 5.0,
                  counts: dict[str, int] | None = None) -> Iterator[dict]:
    """Yield each record with `prediction` (extracted from `completion` when present) and `correct` added."""
    counts = counts if counts is not None else {}
    for record in records:
        if isinstance(record.get("completion"), str):
            prediction = extract_answer(record["completion"])
        else:
            value = record.get("prediction")
            prediction = None if value is None else str(value)
        correct = answers_match(prediction, record["answer"], timeout=timeout)
        record["prediction"] = prediction
        record["correct"] = correct
        counts["graded"] = counts.get("graded", 0) + 1
        counts["correct"] = counts.get("correct", 0) + int(correct)
        yield record
