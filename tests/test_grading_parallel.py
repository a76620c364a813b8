"""Grading across records in parallel: input order and verdicts as a sequential run, a pathological answer costs
its own timeout while the other records are graded, and records read before bad input are not lost."""
from __future__ import annotations

import json
import time

import pytest

from stepdpo_cli.grading import worker as grading_worker
from stepdpo_cli.grading import grade_many, map_in_order
from stepdpo_cli.records import InputError
from stepdpo_cli.stages.grade import grade_records

SLOW = ("The answer is $(\\sin x+\\cos x+\\tan x)^{12}$.", "\\sin(x)+1")  # several seconds of sympy


def _records() -> list[dict]:
    rows = [{"id": f"r{k}", "completion": f"So $x > {k}$.", "answer": f"{k} < x"} for k in range(12)]
    rows += [{"id": "box", "completion": "\\boxed{\\frac{3}{4}}", "answer": "0.75"},
             {"id": "hedge", "completion": "#### 14 or 16", "answer": "16"},
             {"id": "given", "prediction": 7, "answer": "7"},
             {"id": "bad", "completion": "So $x > 3$.", "answer": "x < 3"}]
    return rows


def test_parallel_grading_keeps_order_and_verdicts():
    sequential = [dict(r) for r in grade_records(_records(), threads=1)]
    parallel = [dict(r) for r in grade_records(_records(), threads=4)]
    assert parallel == sequential
    assert [r["id"] for r in parallel] == [r["id"] for r in _records()]
    by_id = {r["id"]: r for r in parallel}
    assert by_id["r3"]["correct"] and by_id["box"]["correct"] and not by_id["bad"]["correct"]
    assert by_id["hedge"]["correct"] is False
    assert (by_id["box"]["prediction_source"], by_id["r0"]["prediction_source"], by_id["given"]["prediction_source"]) \
        == ("boxed", "math_span", "given")


def test_a_pathological_answer_costs_its_timeout_not_the_runs():
    timeout = 2.0
    rows = [{"id": "slow", "completion": SLOW[0], "answer": SLOW[1]}] + _records()
    before = grading_worker.symbolic_calls
    start = time.monotonic()
    stream = grade_records(rows, timeout=timeout, threads=4)
    first = next(stream)
    calls_when_slow_done = grading_worker.symbolic_calls - before
    rest = list(stream)
    assert first["id"] == "slow" and first["correct"] is False
    # while the slow comparison ran out its time, the other records were being graded (sequentially: 1 call)
    assert calls_when_slow_done >= 8
    assert time.monotonic() - start < 4 * timeout + 10  # bounded by the timeout, not by sympy's whim
    assert [r["id"] for r in rest] == [r["id"] for r in _records()]


def test_records_read_before_bad_input_are_all_yielded_first():
    def rows():
        yield from ({"id": f"r{k}", "prediction": str(k), "answer": str(k)} for k in range(10))
        raise InputError("bad line", field="answer")

    seen = []
    with pytest.raises(InputError):
        for record in grade_records(rows(), threads=4):
            seen.append(record["id"])
    assert seen == [f"r{k}" for k in range(10)]


def test_grade_many_matches_one_at_a_time():
    items = [("\\boxed{2}", "2"), ("\\boxed{3}", "2"), ("#### 1,000", "1000"), ("$x \\in [1,2]$", "[1, 2]")]
    assert grade_many(items, threads=3) == grade_many(items, threads=1)
    assert [correct for _, _, correct in grade_many(items)] == [True, False, True, True]
    assert list(map_in_order(lambda x: x * x, range(50), threads=5)) == [(x, x * x) for x in range(50)]


def test_stepdpo_grade_an_over_long_box_is_not_an_answer():
    """Issue 11 row 8: the right answer buried in a 3000-entry matrix or 50k nested braces is not graded correct
    (before, the last number inside the box was taken)."""
    from conftest import run_cli

    rows = [{"id": "matrix", "completion": "\\boxed{\\begin{pmatrix}" + "1&" * 2999 + "1\\end{pmatrix}}", "answer": "1"},
            {"id": "nested", "completion": "\\boxed{" + "{" * 50_000 + "1" + "}" * 50_000 + "}", "answer": "1"},
            {"id": "code", "completion": "#### __import__('os').system('true') or 18", "answer": "18"},
            {"id": "fine", "completion": "so $\\boxed{1}$", "answer": "1"}]
    result = run_cli("grade", input="".join(json.dumps(r) + "\n" for r in rows))
    assert result.returncode == 0, result.stderr.decode()
    out = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [(r["id"], r["correct"], r["prediction_source"]) for r in out] == [
        ("matrix", False, "oversized"), ("nested", False, "oversized"), ("code", False, "hashes"),
        ("fine", True, "boxed")]
