"""Rollout localization: Monte-Carlo success rates per step prefix find the known first wrong step."""
from __future__ import annotations

import pytest
from scripted_policy import ScriptedPolicy, make_record

from stepdpo_cli.localizers.rollout import rollout_records
from stepdpo_cli.stages.localize import localize_records, validate_localizable
from stepdpo_cli.steps import prefix_text
from stepdpo_cli.templates import generation_prompt

NUMBERS8 = [3, 5, 7, 2, 9, 4, 6, 1]  # 7 additions + the answer step = 8 steps


def _run(records, search, policy=None, **kw):
    policy = policy or ScriptedPolicy()
    out = [r for batch in rollout_records([validate_localizable(dict(r)) for r in records], policy,
                                           rollouts=4, search=search, **kw) for r in batch]
    return out, policy


@pytest.mark.parametrize("search", ["linear", "binary"])
@pytest.mark.parametrize("wrong_at", [1, 2, 4, 6, 7])
def test_rollout_finds_the_known_first_error(search, wrong_at):
    [row], _ = _run([make_record(NUMBERS8, wrong_at)], search)
    assert row["first_error_step"] == wrong_at and row["localize_status"] == "error_found"
    assert row["step_scores"][wrong_at - 1] == 0.0 and len(row["step_scores"]) == 8
    assert row["rollouts_spent"] == 4 * sum(s is not None for s in row["step_scores"][:-1])
    assert row["localizer"]["method"] == "rollout" and row["localizer"]["search"] == search


def test_binary_agrees_with_linear_and_spends_fewer_rollouts_on_8_step_solutions():
    records = [make_record(NUMBERS8, k, rid=f"p{k}/s0") for k in range(1, 8)]
    linear, _ = _run(records, "linear")
    binary, _ = _run(records, "binary")
    assert [r["first_error_step"] for r in linear] == [r["first_error_step"] for r in binary] == list(range(1, 8))
    spent_linear = sum(r["rollouts_spent"] for r in linear)
    spent_binary = sum(r["rollouts_spent"] for r in binary)
    assert spent_binary < spent_linear
    assert all(r["rollouts_spent"] == 3 * 4 for r in binary)  # ceil(log2 8) prefixes each


def test_linear_scores_every_prefix_up_to_the_error():
    [row], _ = _run([make_record(NUMBERS8, 5)], "linear")
    assert row["step_scores"] == [1.0, 1.0, 1.0, 1.0, 0.0, None, None, 0.0]


class _CountingPolicy(ScriptedPolicy):
    generated = 0

    def generate(self, requests, params):
        outputs = super().generate(requests, params)
        self.generated += sum(c.num_tokens for cs in outputs for c in cs)
        return outputs


def test_rollout_tokens_are_what_the_records_rollouts_generated():
    policy = _CountingPolicy()
    rows, _ = _run([make_record(NUMBERS8, 3), make_record(NUMBERS8, 6, rid="q/s0")], "linear", policy)
    assert all(r["rollout_tokens"] > 0 for r in rows)
    assert sum(r["rollout_tokens"] for r in rows) == policy.generated


def test_correct_solution_has_no_error_and_binary_spends_nothing():
    [lin], _ = _run([make_record(NUMBERS8, None)], "linear")
    [bin_], _ = _run([make_record(NUMBERS8, None)], "binary")
    assert lin["first_error_step"] is None and lin["localize_status"] == "no_error"
    assert lin["step_scores"] == [1.0] * 8 and bin_["rollouts_spent"] == 0


def test_threshold_turns_a_rarely_solvable_prefix_into_the_error():
    policy = ScriptedPolicy(error_percent=60)
    loose, _ = _run([make_record(NUMBERS8, 7)], "linear", policy=policy, threshold=0.0)
    strict, _ = _run([make_record(NUMBERS8, 7)], "linear", policy=ScriptedPolicy(error_percent=60), threshold=0.9)
    assert strict[0]["first_error_step"] < loose[0]["first_error_step"] == 7


def test_rounds_batch_all_records_and_prompts_match_rectify_context():
    records = [make_record(NUMBERS8, k, rid=f"p{k}/s0") for k in (2, 5, 7)]
    out, policy = _run(records, "linear")
    # One generate call per round; the first round asks every record about its first prefix.
    assert policy.calls[0] == (3, 12) and len(policy.calls) == 7  # rounds = the deepest search (k=7)
    r = out[0]
    expected = generation_prompt(r["problem"], "raw", None, reason_prefix=prefix_text(r["steps"], 2))
    assert policy.prompts[0] == expected


def test_same_seed_same_result_and_counts_feed_the_summary():
    counts: dict = {}
    records = [make_record(NUMBERS8, 3, rid="a/s0"), make_record(NUMBERS8, None, rid="b/s0")]
    policy = ScriptedPolicy(error_percent=30)
    first = [r for item in localize_records([validate_localizable(dict(r)) for r in records], "rollout",
                                           counts=counts, backend=policy, rollouts=4, seed=7) for r in item]
    again = [r for item in localize_records([validate_localizable(dict(r)) for r in records], "rollout",
                                           backend=ScriptedPolicy(error_percent=30), rollouts=4, seed=7)
             for r in item]
    assert first == again
    assert counts["records"] == 2 and counts["rollouts"] == sum(r["rollouts_spent"] for r in first)


def test_check_root_keeps_unsolvable_problems_undecided():
    class Hopeless(ScriptedPolicy):  # never reaches the answer from any prefix
        def complete(self, prompt, seed, j):
            done = super().complete(prompt, seed, j)
            done.text = done.text.replace("boxed{", "boxed{9")
            return done

    [plain], _ = _run([make_record(NUMBERS8, 5)], "linear", policy=Hopeless())
    [checked], policy = _run([make_record(NUMBERS8, 5)], "binary", policy=Hopeless(), check_root=True)
    assert plain["first_error_step"] == 1  # without the check, "step 1" is all a hopeless policy can say
    assert checked["first_error_step"] is None and checked["localize_status"] == "undecided"
    assert checked["root_score"] == 0.0 and checked["rollouts_spent"] == 4
    [solvable], _ = _run([make_record(NUMBERS8, 5)], "binary", check_root=True)
    assert solvable["first_error_step"] == 5 and solvable["root_score"] == 1.0


def test_cli_rollout_with_the_tiny_model(tiny_model):
    import json

    from conftest import run_cli

    lines = "".join(json.dumps(make_record(NUMBERS8[:4], 2, rid=f"p{i}/s0")) + "\n" for i in range(2))
    args = ("localize", "--method", "rollout", "--model", f"hf:{tiny_model}", "--rollouts", "2",
            "--max-tokens", "8", "--search", "binary", "--seed", "4")
    first = run_cli(*args, input=lines)
    assert first.returncode == 0, first.stderr.decode()
    rows = [json.loads(line) for line in first.stdout.decode().splitlines()]
    # A random model never reaches the answer: every prefix is a dead end, so step 1 is the first error.
    assert [r["first_error_step"] for r in rows] == [1, 1] and all(r["rollouts_spent"] == 4 for r in rows)
    assert "rollouts=8" in first.stderr.decode()
