"""`stepdpo search`: MCTS trees from a scripted step-wise policy (same seed, same tree; visit counts add up; the
chosen path is the right solution), from the CLI with the tiny model, and tree pairs from its output."""
from __future__ import annotations

import json

import orjson
import pytest

from conftest import run_cli
from scripted_policy import ScriptedPolicy, problem_text
from stepdpo_cli.backends.base import Completion, truncate_at_stop
from stepdpo_cli.records import InputError
from stepdpo_cli.search.pairs import tree_pair_rows
from stepdpo_cli.stages.search import SearchSettings, search_records

ENV = {"OMP_NUM_THREADS": "1"}


class StepwisePolicy(ScriptedPolicy):
    """The scripted policy as an engine honours `stop`: expansions end at the next step marker."""

    def generate(self, requests, params):
        out = []
        for request, completions in zip(requests, super().generate(requests, params)):
            row = []
            for c in completions:
                text, matched = truncate_at_stop(c.text, params.stop)
                row.append(Completion(text, max(len(text) // 4, 1), "stop",
                                      logprobs=[-0.5] * max(len(text) // 4, 1) if params.logprobs else None,
                                      stop_reason=matched))
            out.append(row)
        return out


def _problems(n: int = 6) -> list[dict]:
    numbers = [[3 + i, 4, 2 + i % 3, 5] for i in range(n)]
    return [{"id": f"q{i}", "problem": problem_text(nums), "answer": str(sum(nums))} for i, nums in enumerate(numbers)]


def _search(policy, **kw):
    settings = SearchSettings(**{"simulations": 12, "expand": 2, "root_expand": 3, "rollouts": 2, **kw})
    return list(search_records(_problems(), policy, template="raw", settings=settings, seed=7, chunk_size=4))


def test_the_same_seed_grows_the_same_trees_and_visits_add_up():
    first, again = _search(StepwisePolicy(error_percent=40)), _search(StepwisePolicy(error_percent=40))
    assert orjson.dumps(first) == orjson.dumps(again)
    for record in first:
        nodes = {n["id"]: n for n in record["tree"]}
        assert nodes[0]["visits"] == sum(n["evaluations"] for n in nodes.values())
        for node in nodes.values():
            below = sum(c["visits"] for c in nodes.values() if c["parent"] == node["id"])
            assert node["visits"] == node["evaluations"] + below
        assert record["search"]["status"] == "done" and record["search"]["simulations"] == 12


def test_expansions_of_all_problems_share_one_backend_call_per_phase():
    policy = StepwisePolicy(error_percent=40)
    list(search_records(_problems(4), policy, template="raw", seed=7, chunk_size=4,
                        settings=SearchSettings(simulations=3, expand=2, root_expand=3, rollouts=2)))
    assert len(policy.calls) <= 2 * 3  # per simulation: one expansion call and one rollout call for 4 problems
    assert policy.calls[0] == (4, 12)  # the first: 4 roots x 3 candidate first steps


def test_the_chosen_path_is_a_right_solution_and_tree_pairs_prefer_right_steps():
    records = _search(StepwisePolicy(error_percent=40))
    right = [r for r in records if r["tree"][r["chosen_path"][-1]]["correct"]]
    assert len(right) >= 5, [r["chosen_steps"] for r in records]
    rows = [row for r in records for row in tree_pair_rows(r)]
    assert rows and all(0.0 <= row["label_smoothing"] <= 0.5 and row["chosen_q"] > row["rejected_q"] for row in rows)


def test_a_budget_of_zero_or_no_value_is_a_usage_error():
    with pytest.raises(InputError) as bad:
        list(search_records(_problems(1), StepwisePolicy(), template="raw", settings=SearchSettings(simulations=0)))
    assert bad.value.field == "--simulations"
    with pytest.raises(InputError) as bad:
        list(search_records(_problems(1), StepwisePolicy(), template="raw", settings=SearchSettings(rollouts=0)))
    assert bad.value.field == "--rollouts"


def test_a_chunk_past_its_time_is_recorded_as_timeout_not_dropped():
    records = list(search_records(_problems(2), StepwisePolicy(), template="raw", chunk_size=2,
                                  settings=SearchSettings(simulations=50, max_seconds=1e-9)))
    assert [r["search"]["status"] for r in records] == ["timeout", "timeout"] and len(records) == 2


def test_cli_search_then_pair_tree(tiny_model, tmp_path):
    problems = tmp_path / "p.jsonl"
    problems.write_bytes(b"".join(orjson.dumps(p) + b"\n" for p in _problems(2)))
    out = tmp_path / "trees.jsonl"
    proc = run_cli("search", "-m", tiny_model, "-i", str(problems), "-o", str(out), "--simulations", "3",
                   "--max-step-tokens", "4", "--max-tokens", "4", "--template", "raw", "--parallel-simulations", "2",
                   env=ENV)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == ["q0", "q1"] and all(len(r["tree"]) >= 4 for r in records)
    assert all(r["search"]["settings"]["parallel_simulations"] == 2 and r["search"]["simulations"] == 3
               for r in records)
    pairs = run_cli("pair", "--strategy", "tree", "-i", str(out))
    assert pairs.returncode == 0, pairs.stderr.decode()
    bad = run_cli("search", "-m", tiny_model, "-i", str(problems), "--simulations", "0", env=ENV)
    assert bad.returncode == 2 and "--simulations" in bad.stderr.decode()
    bad = run_cli("search", "-m", tiny_model, "-i", str(problems), "--parallel-simulations", "0", env=ENV)
    assert bad.returncode == 2 and "--parallel-simulations" in bad.stderr.decode()
    no_answer = tmp_path / "na.jsonl"
    no_answer.write_text('{"id": "a", "problem": "Add: 1 + 2"}\n')
    bad = run_cli("search", "-m", tiny_model, "-i", str(no_answer), env=ENV)
    lines = [ln for ln in bad.stderr.decode().splitlines() if ln.strip() and "WARNING" not in ln]
    assert bad.returncode == 2 and len(lines) == 1 and "field 'answer'" in lines[0]


def test_continuation_expansion_is_one_call_per_simulation_and_reproducible():
    policy = StepwisePolicy(error_percent=40)
    first = _search(policy, expansion="continuation", rollouts=1)
    # 2 chunks x 12 simulations, every call an expansion (2 candidates, 3 at a root): no rollout call at all
    assert len(policy.calls) <= 24 and policy.calls[0] == (4, 12)
    assert all(total in (2 * prompts, 3 * prompts) for prompts, total in policy.calls)
    again = _search(StepwisePolicy(error_percent=40), expansion="continuation", rollouts=1)
    assert orjson.dumps(first) == orjson.dumps(again)
    for record in first:
        nodes = {n["id"]: n for n in record["tree"]}
        assert nodes[0]["visits"] == sum(n["evaluations"] for n in nodes.values())
        assert all(n["visits"] == n["evaluations"] + sum(c["visits"] for c in nodes.values() if c["parent"] == i)
                   for i, n in nodes.items())
        assert all(n["step"] and "\nStep" not in n["step"] for i, n in nodes.items() if i)  # children are steps
        assert record["search"]["settings"]["expansion"] == "continuation"
    right = [r for r in first if r["tree"][r["chosen_path"][-1]]["correct"]]
    assert len(right) >= 5, [r["chosen_steps"] for r in first]


def test_continuation_tail_is_the_first_rollout():
    policy = StepwisePolicy(error_percent=40)
    _search(policy, expansion="continuation", rollouts=3, simulations=2)
    # per simulation: the expansion call, then 2 more rollouts per new non-terminal child (the tail was the first)
    rollout_calls = policy.calls[1::2]
    assert rollout_calls and all(total == 2 * prompts for prompts, total in rollout_calls)


def test_first_step_priors_read_only_the_first_steps_tokens(tiny_model):
    from transformers import AutoTokenizer

    from stepdpo_cli.stages.search import _first_step

    text = "3 + 4 = 7.\nStep 2: 7 + 2 = 9.\nStep 3: The answer is: 9"
    c = Completion(text, 20, "stop", logprobs=[-1.0] * 20)
    step, marker, logprobs, count = _first_step(c, None)
    assert step == "3 + 4 = 7." and marker == "\nStep" and count == round(20 * len(step) / len(text)) == len(logprobs)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    _, _, logprobs, count = _first_step(c, tokenizer)
    assert count == len(tokenizer.encode(step, add_special_tokens=False)) == len(logprobs)
    last = Completion("The answer is: 9", 5, "stop", logprobs=[-0.2] * 5)
    assert _first_step(last, tokenizer) == ("The answer is: 9", None, [-0.2] * 5, 5)  # terminal: all of it


def test_continuation_expansion_needs_rollouts_not_a_value_model():
    with pytest.raises(InputError) as bad:
        list(search_records(_problems(1), StepwisePolicy(), template="raw", value=object(),
                            settings=SearchSettings(expansion="continuation")))
    assert bad.value.field == "--expansion"
    with pytest.raises(InputError) as bad:
        SearchSettings(expansion="whole").check()
    assert bad.value.field == "--expansion"


def test_parallel_simulations_keep_the_budget_in_fewer_backend_calls():
    one, together = StepwisePolicy(error_percent=40), StepwisePolicy(error_percent=40)
    first = _search(one)
    batched_trees = _search(together, parallel_simulations=4)
    assert orjson.dumps(batched_trees) == orjson.dumps(_search(StepwisePolicy(error_percent=40),
                                                               parallel_simulations=4))
    for record in batched_trees:
        nodes = {n["id"]: n for n in record["tree"]}
        for node in nodes.values():
            below = sum(c["visits"] for c in nodes.values() if c["parent"] == node["id"])
            assert node["visits"] == node["evaluations"] + below
        # every simulation evaluated at least one node; each is numbered, so the budget is exact
        assert record["search"]["simulations"] == 12 and sum(n["evaluations"] for n in nodes.values()) >= 12
    assert len(together.calls) <= 0.75 * len(one.calls), (len(together.calls), len(one.calls))
    assert max(rows for _, rows in together.calls) > max(rows for _, rows in one.calls)  # wider calls
    assert any(r["tree"] != b["tree"] for r, b in zip(first, batched_trees))  # a different (batched) search


def test_parallel_simulations_of_zero_is_a_usage_error():
    with pytest.raises(InputError) as bad:
        list(search_records(_problems(1), StepwisePolicy(), template="raw",
                            settings=SearchSettings(parallel_simulations=0)))
    assert bad.value.field == "--parallel-simulations"
