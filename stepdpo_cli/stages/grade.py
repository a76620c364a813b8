"""The `grade` stage: add `prediction` and `correct` to records that carry an answer and a completion.

Usable alone (`stepdpo grade`) or from Python; `sample` and `eval` call `stepdpo_cli.grading` directly.
"""
from __future__ import annotations

from typing import Iterable, Iterator

from ..grading import answers_match, extract, map_in_order
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


def _grade_one(record: dict, timeout: float) -> tuple[str | None, str | None, bool]:
    if isinstance(record.get("completion"), str):
        prediction, source = extract(record["completion"])
    else:
        value = record.get("prediction")
        prediction, source = (None, None) if value is None else (str(value), "given")
    return prediction, source, answers_match(prediction, record["answer"], timeout=timeout)


def grade_records(records: Iterable[dict], *, timeout: float = 5.0, counts: dict[str, int] | None = None,
                  threads: int | None = None) -> Iterator[dict]:
    """Yield each record with `prediction` (extracted from `completion` when present), `prediction_source` (the
    extraction rule, "given" for a supplied prediction) and `correct` added, in input order. Records are graded
    `threads` at a time (default `STEPDPO_GRADE_THREADS` or 4), so one pathological answer costs its own
    timeout, not the whole run's."""
    counts = counts if counts is not None else {}
    for record, (prediction, source, correct) in map_in_order(lambda r: _grade_one(r, timeout), records,
                                                              threads=threads):
        record["prediction"] = prediction
        record["prediction_source"] = source
        record["correct"] = correct
        counts["graded"] = counts.get("graded", 0) + 1
        counts["correct"] = counts.get("correct", 0) + int(correct)
        yield record
