"""Grading: the final answer of a completion, and whether it equals the reference. Time-bounded, never `eval`.

The face of the package: `grade_answer` (prediction, the rule that found it, correct), `grade`, `grade_many`
(threads, input order), `answers_match` and `extract`. Inside: extract.py (which answer a text gives),
compare.py (equivalence tiers), numeric.py (arithmetic LaTeX at sample points), worker.py (math-verify in
worker processes killed on overrun), threads.py (`map_in_order`).
"""
from __future__ import annotations

from typing import Iterable

from .compare import answers_match, reference_answer
from .extract import MAX_ANSWER_CHARS, SOURCES, extract, extract_answer
from .threads import grade_threads, map_in_order

__all__ = ["MAX_ANSWER_CHARS", "SOURCES", "answers_match", "extract", "extract_answer", "grade", "grade_answer",
           "grade_many", "grade_threads", "map_in_order", "reference_answer"]


def grade_answer(text: str, reference: str | list[str], timeout: float = 5.0) -> tuple[str | None, str | None, bool]:
    """(extracted prediction, the extraction rule that found it, correct) for a completion."""
    prediction, source = extract(text)
    return prediction, source, answers_match(prediction, reference, timeout=timeout)


def grade(text: str, reference: str | list[str], timeout: float = 5.0) -> tuple[str | None, bool]:
    """(extracted prediction, correct) for a completion."""
    prediction, _, correct = grade_answer(text, reference, timeout)
    return prediction, correct


def grade_many(items: Iterable[tuple[str, str | list[str]]], timeout: float = 5.0,
               threads: int | None = None) -> list[tuple[str | None, str | None, bool]]:
    """`grade_answer` over (completion, reference) pairs, in parallel, results in input order."""
    return [result for _, result in map_in_order(lambda item: grade_answer(item[0], item[1], timeout), items,
                                                 threads=threads)]
