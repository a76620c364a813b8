"""examples/arith/study.py: the validation choice and the paired statistics docs/study.md reports."""
from __future__ import annotations

import json
import math
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples", "arith"))
import study  # noqa: E402


def _eval(directory, name, kind, correct, field="correct"):
    os.makedirs(directory / "eval", exist_ok=True)
    with open(directory / "eval" / f"{name}-{kind}.jsonl", "w") as handle:
        for i, value in enumerate(correct):
            handle.write(json.dumps({"id": f"p{i}", field: value}) + "\n")
    accuracy = sum(correct) / len(correct)
    (directory / "eval" / f"{name}-{kind}.json").write_text(json.dumps({"accuracy": accuracy, "count": len(correct)}))


def test_choose_takes_the_best_validation_accuracy_and_breaks_ties_toward_the_gentler_update(tmp_path):
    for name, accuracy in [("tune_stepdpo_lr5e-6_b0.1", 0.50), ("tune_stepdpo_lr2e-5_b0.1", 0.55),
                           ("tune_stepdpo_lr2e-5_b0.5", 0.55), ("tune_stepdpo_lr5e-5_b0.1", 0.40),
                           ("tune_dpo_lr5e-6_b0.5", 0.52), ("tune_dpo_lr5e-6_b0.1", 0.52),
                           ("tune_control_lr5e-6", 0.49), ("tune_control_lr2e-5", 0.51)]:
        _eval(tmp_path, name, "val", [1] * int(accuracy * 100) + [0] * (100 - int(accuracy * 100)))
    chosen = study.choose(str(tmp_path), nll=1.0)
    assert chosen["chosen"]["stepdpo"] == {"lr": "2e-5", "beta": "0.1", "nll_weight": "0"}
    assert chosen["chosen"]["dpo"]["beta"] == "0.1" and chosen["chosen"]["control"]["lr"] == "2e-5"
    # the ablations share Step-DPO's values; only what they ablate differs
    assert chosen["chosen"]["nll"] == {"lr": "2e-5", "beta": "0.1", "nll_weight": "1.0"}
    assert chosen["chosen"]["ood"] == chosen["chosen"]["r2"] == chosen["chosen"]["stepdpo"]
    assert study.train_args(chosen, "nll") == "--lr 2e-5 --beta 0.1 --nll-weight 1.0"
    assert study.train_args(chosen, "control") == "--lr 2e-5"
    assert len(chosen["validation"]) == 8


def test_compare_pairs_problems_and_averages_seeds_per_problem(tmp_path):
    regime = tmp_path / "r"
    _eval(regime, "sft", "greedy", [1, 1, 0, 0, 1, 0, 1, 0])
    _eval(regime, "stepdpo_s1", "greedy", [1, 1, 1, 0, 1, 0, 1, 0])  # fixes p2
    _eval(regime, "stepdpo_s2", "greedy", [1, 1, 1, 1, 1, 0, 0, 0])  # fixes p2, p3; breaks p6
    d = study.compare(str(tmp_path), "r", "stepdpo", "sft", "greedy", ["1", "2"])
    diffs = [0, 0, 1, 0.5, 0, 0, -0.5, 0]
    mean = sum(diffs) / 8
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / 7)
    assert d["n"] == 8 and d["mean"] == pytest.approx(mean) and d["half"] == pytest.approx(1.96 * sd / math.sqrt(8))
    assert d["per_seed"] == pytest.approx([1 / 8, 1 / 8])
    assert "no difference detected" in study.verdict(d, "stepdpo", "sft")
    # sampled evals: mean_correct per problem
    _eval(regime, "sft", "sampled", [0.5] * 8, field="mean_correct")
    _eval(regime, "stepdpo_s1", "sampled", [1.0] * 8, field="mean_correct")
    _eval(regime, "stepdpo_s2", "sampled", [1.0] * 8, field="mean_correct")
    s = study.compare(str(tmp_path), "r", "stepdpo", "sft", "sampled", ["1", "2"])
    assert s["mean"] == pytest.approx(0.5) and s["half"] == 0
    assert study.verdict(s, "stepdpo", "sft").startswith("Step-DPO is better")


def test_right_step_mass_reads_rectify_verified_over_n():
    rows = [{"rectify": {"n": 8, "verified": 2}}, {"rectify": {"n": 8, "verified": 0}},
            {"rectify": {"n": 8, "verified": 6}}, {"rectify": {"skipped": "no first_error_step"}}]
    mass = study.right_step_mass(rows)
    assert mass["states"] == 3 and mass["mean"] == pytest.approx(1 / 3) and mass["median"] == 0.25
    assert mass["any"] == pytest.approx(2 / 3) and mass["half"] == pytest.approx(1 / 3)
