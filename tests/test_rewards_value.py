"""SVPO (rewards/value.py, train --objective svpo): the value head reads each step's last token, trains with
the policy on tree pairs' Q, saves beside a plain HF dir, and scores steps like a PRM (beam search keeps the step
it values)."""
from __future__ import annotations

import json
import random

import orjson
import pytest
import torch

from conftest import run_cli
from test_rewards import _TwoWay

from stepdpo_cli.steps import prefix_text

ENV = {"OMP_NUM_THREADS": "1"}


def _tree_rows(n: int, seed: int = 0) -> list[dict]:
    """Tree-pair rows on additions: the right partial sum (Q 1) vs its negation (Q 0) at a random step."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        nums = [rng.randint(1, 9) for _ in range(rng.randint(3, 4))]
        k = rng.randint(1, len(nums) - 1)
        acc, done = nums[0], []
        for j in range(1, k):
            done.append(f" {acc} + {nums[j]} = {acc + nums[j]}.")
            acc += nums[j]
        total = acc + nums[k]
        rows.append({"id": f"r{i}", "prompt": "Add: " + " + ".join(map(str, nums)),
                     "initial_reason_steps": prefix_text(done, k), "chosen": f" {acc} + {nums[k]} = {total}.",
                     "rejected": f" {acc} + {nums[k]} = {-total}.", "chosen_q": 1.0, "rejected_q": 0.0,
                     "label_smoothing": 0.1, "answer": str(sum(nums))})
    return rows


@pytest.fixture(scope="module")
def svpo(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("svpo")
    (root / "rows.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in _tree_rows(64)))
    proc = run_cli("train", "--objective", "svpo", "-m", tiny_model, "--data", str(root / "rows.jsonl"), "--output",
                   str(root / "svpo"), "--template", "raw", "--lr", "2e-3", "--max-steps", "40", "--batch-size", "8",
                   "--value-weight", "4", env=ENV)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return {"dir": str(root / "svpo"), "metrics": [json.loads(line) for line in proc.stdout.splitlines()],
            "model": tiny_model}


def test_value_positions_are_each_steps_last_token():
    from stepdpo_cli.train.data import Example, pack
    from stepdpo_cli.train.objectives import value_positions

    examples = [Example("a", [1, 2, 3], [4, 5], [6, 7, 8]), Example("b", [1], [9], [10])]
    batch = pack(examples, 0)
    chosen, rejected = value_positions(examples, batch.input_ids.shape[1])
    assert [batch.input_ids[b, p].item() for b, p in enumerate(chosen)] == [5, 9]
    assert [batch.input_ids[b, p].item() for b, p in enumerate(rejected)] == [8, 10]


def test_svpo_trains_its_value_head_and_saves_a_plain_policy_beside_it(svpo):
    from transformers import AutoModelForCausalLM

    metrics = svpo["metrics"]
    assert metrics[-1]["value_loss"] < 0.5 * metrics[0]["value_loss"]
    assert metrics[-1]["value_accuracy"] == 1.0 and {"sft_loss", "margin"} <= metrics[-1].keys()
    meta = json.loads(open(f"{svpo['dir']}/stepdpo.json").read())
    assert meta["objective"] == "svpo" and meta["value_head"]["target"] == "2Q - 1"
    policy = AutoModelForCausalLM.from_pretrained(svpo["dir"])  # no value-head keys in the LM's weights
    base = AutoModelForCausalLM.from_pretrained(svpo["model"])
    assert policy.state_dict().keys() == base.state_dict().keys()
    assert any(not torch.equal(policy.state_dict()[k], v) for k, v in base.state_dict().items())


def test_the_value_model_scores_steps_and_guides_beam_search(svpo):
    from stepdpo_cli.rewards.value import ValueModel, load_step_scorer
    from stepdpo_cli.stages.beam import beam_search_records

    value = load_step_scorer(svpo["dir"])
    assert isinstance(value, ValueModel)
    (right, wrong) = value.score([("Add: 3 + 4 + 2", [" 3 + 4 = 7."]), ("Add: 3 + 4 + 2", [" 3 + 4 = -7."])])
    assert 0 <= wrong[0] < 0.5 < right[0] <= 1
    problems = [{"id": "q0", "problem": "Add: 3 + 4 + 2", "answer": "9"},
                {"id": "q1", "problem": "Add: 5 + 1 + 1 + 6", "answer": "13"}]
    results = list(beam_search_records(problems, _TwoWay(), value, template="raw", beam_width=1, expand=2))
    assert [r["correct"] for r in results] == [True, True] and all("-" not in r["completion"] for r in results)


def test_svpo_usage_errors(svpo, tmp_path):
    rows = _tree_rows(2)
    del rows[1]["rejected_q"]
    (tmp_path / "rows.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    base = ["train", "--objective", "svpo", "-m", svpo["model"], "--output", str(tmp_path / "o")]
    proc = run_cli(*base, "--data", str(tmp_path / "rows.jsonl"))
    assert proc.returncode == 2 and f"{tmp_path / 'rows.jsonl'}:2: field 'rejected_q'" in proc.stderr.decode()
    proc = run_cli(*base, "--data", str(tmp_path / "rows.jsonl"), "--lora")
    assert proc.returncode == 2 and "--lora" in proc.stderr.decode()
    proc = run_cli("eval", "-m", svpo["model"], "--value", svpo["model"], "--search", "beam", "--temperature", "1",
                   input=b'{"id": "a", "problem": "Add: 1 + 2", "answer": "3"}\n')
    assert proc.returncode == 2 and "not an SVPO model dir" in proc.stderr.decode()
