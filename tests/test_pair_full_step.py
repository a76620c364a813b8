"""pair --strategy full-step: exactly top x top rows per problem from PRM-scored samples, in train's shape."""
from __future__ import annotations

import json

import orjson
import pytest

from conftest import run_cli
from stepdpo_cli.records import InputError
from stepdpo_cli.stages.pair_full_step import full_step_pair_records, full_step_rows
from stepdpo_cli.steps import join_steps
from stepdpo_cli.train.data import validator


def _sample(problem: str, j: int, correct: bool, score: float) -> dict:
    steps = [f" step one of {j}.", f" The answer is {'7' if correct else '8'}."]
    return {"id": f"{problem}/s{j}", "problem_id": problem, "problem": f"Problem {problem}", "answer": "7",
            "steps": steps, "completion": join_steps(steps), "correct": correct, "dataset": "toy", "level": 3,
            "step_rewards": [score, score], "prm_score": score, "sample_index": j}


def _group(problem: str = "p0", right=(0.9, 0.2, 0.8, 0.5, 0.7), wrong=(0.1, 0.6, 0.3, 0.05, 0.9, 0.4)) -> list[dict]:
    samples = [_sample(problem, j, True, s) for j, s in enumerate(right)]
    return samples + [_sample(problem, len(right) + j, False, s) for j, s in enumerate(wrong)]


def test_top_four_by_four_from_a_hand_made_group():
    rows = full_step_rows(_group(), top=4)
    assert len(rows) == 16
    best_right = ["p0/s0", "p0/s2", "p0/s4", "p0/s3"]  # 0.9, 0.8, 0.7, 0.5
    worst_wrong = ["p0/s8", "p0/s5", "p0/s7", "p0/s10"]  # 0.05, 0.1, 0.3, 0.4
    assert [(r["chosen_id"], r["rejected_id"]) for r in rows] == [(c, w) for c in best_right for w in worst_wrong]
    assert rows[0]["id"] == "p0/fs1-1" and rows[-1]["id"] == "p0/fs4-4"
    first = rows[0]
    assert first["chosen"] == join_steps([" step one of 0.", " The answer is 7."])
    assert first["chosen_step_scores"] == [0.9, 0.9] and first["rejected_step_scores"] == [0.05, 0.05]
    assert first["initial_reason_steps"] == "Let's think step by step.\nStep 1:" and first["format"] == "full-step"
    assert first["dataset"] == "toy" and first["level"] == 3  # the problem's own fields flow through
    assert "step_rewards" not in first and "correct" not in first
    check = validator("full-step-dpo")
    assert all(check(dict(r)) for r in rows)  # the rows train --objective full-step-dpo reads


def test_fewer_than_top_on_a_side_gives_what_there_is():
    assert len(full_step_rows(_group(right=(0.9, 0.2, 0.8), wrong=(0.5,)), top=4)) == 3
    counts: dict = {}
    groups = list(full_step_pair_records(_group("a", wrong=()) + _group("b", right=()) + _group("c"), top=2,
                                         counts=counts))
    assert [len(g) for g in groups] == [4] and groups[0][0]["problem_id"] == "c"
    assert counts["dropped_no_wrong"] == 1 and counts["dropped_no_correct"] == 1 and counts["pairs"] == 4


def test_a_problem_split_across_the_input_is_an_input_error():
    records = _group("a")[:2] + _group("b") + _group("a")[2:]
    with pytest.raises(InputError, match="appears again") as bad:
        list(full_step_pair_records(records))
    assert bad.value.field == "problem_id"


def test_cli_rows_and_bad_scores(tmp_path):
    inp = tmp_path / "scored.jsonl"
    inp.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in _group("p0") + _group("p1")))
    proc = run_cli("pair", "--strategy", "full-step", "--top", "2", "-i", str(inp))
    assert proc.returncode == 0, proc.stderr.decode()
    rows = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert [r["id"] for r in rows] == [f"p{p}/fs{i}-{j}" for p in (0, 1) for i in (1, 2) for j in (1, 2)]
    assert "pairs=8" in proc.stderr.decode()
    bad = _group("p0")
    bad[3]["step_rewards"] = [0.5]
    inp.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in bad))
    proc = run_cli("pair", "--strategy", "full-step", "-i", str(inp))
    err = proc.stderr.decode().strip()
    assert proc.returncode == 2 and "\n" not in err and f"{inp}:4: field 'step_rewards'" in err
    assert "1 rewards but the solution has 2 step(s)" in err
    proc = run_cli("pair", "--strategy", "tree-of-nothing", "-i", str(inp))
    assert proc.returncode == 2 and "--strategy" in proc.stderr.decode()


# ---------------------------------------------------------------------------------------------- q-value pairs

def _rolled(problem: str, j: int, correct: bool, scores, candidates=None, k=None) -> dict:
    steps = [" 3 + 4 = 7.", " 7 + 2 = 9.", " The answer is 9."] if correct else \
        [" 3 + 4 = 7.", " 7 + 2 = 10.", " 10 + 1 = 11.", " The answer is 11."]
    record = {"id": f"{problem}/s{j}", "problem_id": problem, "problem": "Add: 3 + 4 + 2", "answer": "9",
              "steps": steps, "correct": correct, "step_scores": scores, "first_error_step": k}
    if candidates is not None:
        record["candidates"] = candidates
    return record


def test_q_value_pairs_at_the_critical_step_from_a_hand_made_rollout_group():
    from stepdpo_cli.stages.pair_q_value import critical_step, q_value_rows

    assert critical_step([0.75, None, 0.0, 0.0]) == (3, 0.0) and critical_step([None, None]) is None
    assert critical_step([0.5, 0.25, 0.5, 0.0]) == (4, 0.0) and critical_step([0.5, 0.25, 0.5, 1.0]) == (2, 0.25)
    group = [_rolled("p", 0, False, [0.75, 0.25, 0.0, 0.0], k=3,
                     candidates=[{"text": " 9 + 1 = 10.", "continuation": " 9 + 1 = 10.\nStep 4: The answer is 10."}]),
             _rolled("p", 1, True, [1.0, 1.0, 1.0]), _rolled("p", 2, False, [None, None, None, None]),
             _rolled("p", 3, True, [1.0, 1.0, 1.0])]
    counts: dict = {}
    rows = q_value_rows(group, format="dpo", top=1, counts=counts)
    assert len(rows) == 1 and counts == {"dropped_no_q": 1}
    (row,) = rows
    assert row["chosen"] == " 3 + 4 = 7.\nStep 2: 7 + 2 = 9.\nStep 3: The answer is 9." and row["chosen_id"] == "p/s1"
    assert row["rejected"] == " 3 + 4 = 7.\nStep 2: 7 + 2 = 10.\nStep 3: 10 + 1 = 11."  # the prefix through step 3
    assert row["critical_step"] == 3 and row["critical_q"] == 0.0 and row["id"] == "p/s0/q0"
    assert len(q_value_rows(group, format="dpo", top=2)) == 2  # both correct solutions as chosen
    (step,) = q_value_rows(group, format="step")
    assert step["initial_reason_steps"] == "Let's think step by step.\nStep 1: 3 + 4 = 7.\nStep 2: 7 + 2 = 10.\nStep 3:"
    assert (step["chosen"], step["rejected"]) == (" 9 + 1 = 10.", " 10 + 1 = 11.")
    assert validator("step-dpo")(dict(step)) and validator("dpo")(dict(row))
    elsewhere = [{**group[0], "first_error_step": 2}]  # candidates rectify another step: no step pair
    counts = {}
    assert q_value_rows(elsewhere, format="step", counts=counts) == [] and counts == {
        "dropped_no_candidate_at_critical_step": 1}


def test_q_value_cli(tmp_path):
    inp = tmp_path / "rolled.jsonl"
    rows = [_rolled("p", 0, False, [0.75, 0.25, 0.0, 0.0], k=3), _rolled("p", 1, True, [1.0, 1.0, 1.0])]
    inp.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    proc = run_cli("pair", "--strategy", "q-value", "--format", "dpo", "-i", str(inp))
    assert proc.returncode == 0, proc.stderr.decode()
    assert [json.loads(line)["id"] for line in proc.stdout.decode().splitlines()] == ["p/s0/q0"]
    proc = run_cli("pair", "--strategy", "q-value", "--format", "sft", "-i", str(inp))
    assert proc.returncode == 2 and "--format" in proc.stderr.decode()
    rows[0]["step_scores"] = [0.5]
    inp.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    proc = run_cli("pair", "--strategy", "q-value", "--format", "dpo", "-i", str(inp))
    assert proc.returncode == 2 and f"{inp}:1: field 'step_scores'" in proc.stderr.decode()
