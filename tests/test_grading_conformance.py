"""Agreement with the labelled cases of three public grader test suites (tests/data/grading_*.json).

Each case is fed as a user would feed `stepdpo grade`: the suite's prediction as the completion, its gold as
the answer. Agreement is printed per suite and overall; every disagreement is listed by id, with the reason
when the data records one (a case where stepdpo knowingly gives the other verdict).
"""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from stepdpo_cli.grading import grade

DATA = Path(__file__).parent / "data"
SUITES = {"Math-Verify": "grading_math_verify.json", "MARIO_EVAL": "grading_mario_eval.json",
          "hendrycks/math": "grading_hendrycks_math.json"}


def _load(name: str) -> list[dict]:
    data = json.loads((DATA / SUITES[name]).read_text())
    assert data["source"]["repository"] and len(data["source"]["commit"]) == 40 and data["source"]["paths"]
    return data["cases"]


TIMEOUT = 10.0


def _timed_verdict(case: dict) -> tuple[bool, float]:
    start = time.monotonic()
    verdict = grade(case["prediction"], case["gold"], timeout=TIMEOUT)[1]
    return verdict, time.monotonic() - start


def test_agreement_with_public_grader_suites():
    rows, lines, unexpected, slowest = {}, [], [], 0.0
    assert grade("$x > 3$", "3 < x")[1]  # start the symbolic workers outside the timed cases
    with ThreadPoolExecutor(4) as pool:  # the symbolic workers are shared across threads
        for name in SUITES:
            cases = _load(name)
            timed = list(pool.map(_timed_verdict, cases))
            verdicts = [verdict for verdict, _ in timed]
            slowest = max([slowest] + [seconds for _, seconds in timed])
            disagreements = [c for c, v in zip(cases, verdicts) if v != c["correct"]]
            rows[name] = (len(cases) - len(disagreements), len(cases))
            for case in disagreements:
                reason = case.get("disagree")
                lines.append(f"  {case['id']}: suite says {case['correct']} - {reason or 'UNEXPECTED'}")
                if not reason:
                    unexpected.append(case["id"])
    agreed, total = sum(a for a, _ in rows.values()), sum(n for _, n in rows.values())
    report = "\n".join([f"{name}: {a}/{n} = {a / n:.3f}" for name, (a, n) in rows.items()]
                       + [f"overall: {agreed}/{total} = {agreed / total:.3f}",
                          f"slowest case: {slowest:.2f} s (per-comparison timeout {TIMEOUT:.0f} s)", "disagreements:"]
                       + lines)
    print(report)
    assert all(a / n >= 0.95 for a, n in rows.values()), report
    assert agreed / total >= 0.98, report
    assert not unexpected, report
    assert slowest < TIMEOUT, report  # two comparisons at most per case, and none ran out its time


def test_every_knowing_disagreement_still_disagrees():
    """A `disagree` reason must describe what the grader does today, or it is a stale excuse."""
    stale = []
    for name in SUITES:
        for case in _load(name):
            if case.get("disagree") and grade(case["prediction"], case["gold"], timeout=TIMEOUT)[1] == case["correct"]:
                stale.append(case["id"])
    assert not stale
