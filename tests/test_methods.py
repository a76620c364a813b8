"""examples/arith/methods.py: the q-value inputs, the tuned run behind a final, the cost columns and the check."""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples", "arith"))
import methods  # noqa: E402


def _write(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in rows)


def test_merge_keeps_the_samples_order_and_puts_rolled_records_in_place(tmp_path):
    samples = [{"id": f"p{i // 2}/{i % 2}", "problem_id": f"p{i // 2}", "correct": i % 2 == 0} for i in range(6)]
    _write(tmp_path / "s.jsonl", samples)
    assert methods.wrong(str(tmp_path / "s.jsonl"), str(tmp_path / "w.jsonl")) == 3
    wrong = [json.loads(line) for line in open(tmp_path / "w.jsonl")]
    assert [r["id"] for r in wrong] == ["p0/1", "p1/1", "p2/1"]
    _write(tmp_path / "r.jsonl", [dict(r, step_scores=[0.5, 0.0]) for r in wrong[::-1]])  # any order back
    methods.merge(str(tmp_path / "s.jsonl"), str(tmp_path / "r.jsonl"), str(tmp_path / "m.jsonl"))
    merged = [json.loads(line) for line in open(tmp_path / "m.jsonl")]
    assert [r["id"] for r in merged] == [r["id"] for r in samples]  # a problem's samples stay together
    assert [("step_scores" in r) for r in merged] == [False, True] * 3


def test_tuned_name_is_the_tuning_run_of_the_chosen_values():
    chosen = {"chosen": {"stepdpo": {"lr": "2e-5", "beta": "0.5", "nll_weight": "0"}, "control": {"lr": "5e-5",
                                                                                                    "beta": None}}}
    assert methods.tuned_name(chosen, "stepdpo") == "tune_stepdpo_lr2e-5_b0.5"
    assert methods.tuned_name(chosen, "control") == "tune_control_lr5e-5"


def test_data_cost_sums_every_stage_a_method_needs_and_their_tokens(tmp_path):
    times = [{"stage": "sample", "seconds": 9.0, "cpu": 8.0}, {"stage": "localize", "seconds": 1.0, "cpu": 1.0},
             {"stage": "rectify", "seconds": 5.0, "cpu": 4.0}, {"stage": "pair", "seconds": 1.0},  # no cpu: wall
             {"stage": "search", "seconds": 3.0, "cpu": 2.0}, {"stage": "search", "seconds": 30.0, "cpu": 20.0}]
    _write(tmp_path / "samples.jsonl", [{"generation": {"num_tokens": 10}}, {"generation": {"num_tokens": 5}}])
    _write(tmp_path / "rectified.jsonl", [{"rectify": {"generated_tokens": 40}}, {"rectify": {"skipped": "x"}}])
    _write(tmp_path / "pairs_stepdpo.jsonl", [{"problem_id": "a"}, {"problem_id": "a"}, {"problem_id": "b"}])
    _write(tmp_path / "trees.jsonl", [{"search": {"generated_tokens": 7}}])
    _write(tmp_path / "pairs_tree.jsonl", [{"problem_id": "a"}])
    cost = methods.data_cost(str(tmp_path), times, "control")  # the control trains on Step-DPO's rows
    assert cost == {"tokens": 55, "cpu": 14.0, "pairs": 3, "problems": 2, "file": "pairs_stepdpo"}
    tree = methods.data_cost(str(tmp_path), times, "svpo")
    assert tree["tokens"] == 7 and tree["cpu"] == 20.0  # a rerun's time replaces the interrupted one's


def test_check_names_every_missing_method_seed_and_section(tmp_path):
    directory = tmp_path / "reach"
    (directory / "eval").mkdir(parents=True)
    (directory / "chosen.json").write_text("{}")
    for name in ["sft-greedy", "sft-sampled", "select-prm", "beam-prm", "beam-value"] + [
            f"{m}_s{s}-{k}" for m in methods.METHODS for s in ("1", "2") for k in ("greedy", "sampled")]:
        (directory / "eval" / f"{name}.json").write_text(json.dumps({"count": 5}))
    for _, name in methods.DATA.values():
        _write(directory / f"{name}.jsonl", [{"problem_id": "a"}])
    out = tmp_path / "methods.md"
    out.write_text("\n".join(methods.SECTIONS) + "\n" + "\n".join(f"| {methods.LABELS[m]} |" for m in methods.METHODS))
    assert methods.check(str(directory), ["1", "2"], 5, str(out)) == []
    os.remove(directory / "eval" / "svpo_s2-sampled.json")
    (directory / "eval" / "mcts_s1-greedy.json").write_text(json.dumps({"count": 4}))
    out.write_text(out.read_text().replace("## Validation", ""))
    problems = methods.check(str(directory), ["1", "2"], 5, str(out))
    assert problems == ["mcts_s1-greedy.json: 4 problems", "svpo_s2-sampled.json: missing", f"{out}: no ## Validation"]
