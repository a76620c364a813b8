"""`stepdpo rectify`: continuations from the correct prefix; correct ones become candidate chosen steps."""
from __future__ import annotations

import json

import pytest
from conftest import run_cli
from scripted_policy import ScriptedPolicy, check_arith, make_record, solution_steps

from stepdpo_cli.records import InputError, derive_seed
from stepdpo_cli.stages.localize import localize_records, validate_localizable
from stepdpo_cli.stages.rectify import rectify_records, same_step, validate_rectifiable
from stepdpo_cli.steps import prefix_text
from stepdpo_cli.templates import generation_prompt

NUMBERS = [4, 8, 1, 6, 3]


def _localized(wrong_at, rid="p0/s0"):
    record = validate_localizable(make_record(NUMBERS, wrong_at, rid=rid))
    return next(iter(localize_records([record], "verifier", fn=check_arith, spec="t")))


def _rectify(records, policy=None, **kw):
    policy = policy or ScriptedPolicy()
    kw.setdefault("n", 4)
    return [r for batch in rectify_records(records, policy, **kw) for r in batch], policy


def test_candidates_are_the_correct_first_steps_from_the_same_context_sample_used():
    [row], policy = _rectify([_localized(3)], seed=5)
    right = solution_steps(NUMBERS)[2]
    assert [c["text"] for c in row["candidates"]] == [right] * 4
    assert all(c["prediction"] == "22" and c["continuation"].startswith(right) for c in row["candidates"])
    assert row["rectify"]["n"] == 4 and row["rectify"]["correct"] == 4 and row["rectify"]["kept"] == 4
    # the scripted policy counts a character as a token; every continuation was kept, so all are here
    assert row["rectify"]["generated_tokens"] == sum(len(c["continuation"]) for c in row["candidates"])
    assert row["candidates"][0]["seed"] == derive_seed(5, "p0/s0") == row["rectify"]["seed"]
    expected = generation_prompt(row["problem"], "raw", None, reason_prefix=prefix_text(row["steps"], 3))
    assert policy.prompts == [expected]


def test_wrong_continuations_are_not_kept_and_max_candidates_caps():
    [row], _ = _rectify([_localized(1)], policy=ScriptedPolicy(error_percent=50), n=8)
    assert 0 < row["rectify"]["correct"] < 8 and row["rectify"]["kept"] == row["rectify"]["correct"]
    assert all(c["prediction"] == "22" for c in row["candidates"])
    [capped], _ = _rectify([_localized(1)], max_candidates=1)
    assert len(capped["candidates"]) == 1


def test_drop_same_removes_winners_identical_to_the_rejected_step():
    record = _localized(3)
    record["steps"][2] = "  " + solution_steps(NUMBERS)[2].strip() + "\n"  # mislocated: step 3 is right
    [row], _ = _rectify([record])
    assert row["candidates"] == [] and row["rectify"]["dropped_same"] == 4
    [kept], _ = _rectify([record], drop_same=False)
    assert len(kept["candidates"]) == 4
    assert same_step(" a  b\n", "a b") and not same_step("a b", "a c")


def test_verify_chosen_rejects_winners_whose_own_steps_are_wrong():
    def strict(problem, steps, record):  # pretends every continuation's last addition is wrong
        return [True] * (len(steps) - 2) + [False, True]

    [row], _ = _rectify([_localized(2)], verify_chosen=strict, verify_spec="t:strict")
    assert row["candidates"] == [] and row["rectify"]["failed_verify"] == 4
    [ok], _ = _rectify([_localized(2)], verify_chosen=check_arith)
    assert len(ok["candidates"]) == 4


def test_step_acceptance_keeps_verified_first_steps_whose_continuation_goes_wrong_later():
    policy = ScriptedPolicy(error_percent=60)
    [by_answer], _ = _rectify([_localized(2)], policy=policy, n=12, verify_chosen=check_arith)
    [by_step], _ = _rectify([_localized(2)], policy=policy, n=12, verify_chosen=check_arith, accept="step")
    right = solution_steps(NUMBERS)[1]
    assert all(c["text"] == right for c in by_step["candidates"])  # only the checked first step matters
    late = [c for c in by_step["candidates"] if not c["reaches_answer"]]
    assert late and all(c["prediction"] != "22" for c in late)
    assert [c["index"] for c in by_answer["candidates"]] == [
        c["index"] for c in by_step["candidates"] if c["reaches_answer"]]
    assert by_answer["rectify"]["settings"]["accept"] == "answer" and by_step["rectify"]["settings"]["accept"] == "step"
    # A continuation whose own first step is wrong is still refused.
    info = by_step["rectify"]
    assert info["failed_verify"] + info["dropped_same"] > 0
    assert len(by_step["candidates"]) + info["failed_verify"] + info["dropped_same"] == 12
    # verified / n: the share of samples whose first step is right, counted before --max-candidates cuts.
    [capped], _ = _rectify([_localized(2)], policy=policy, n=12, verify_chosen=check_arith, accept="step",
                           max_candidates=1)
    assert capped["rectify"]["verified"] == info["verified"] == len(by_step["candidates"]) > 1
    assert len(capped["candidates"]) == capped["rectify"]["kept"] == 1
    with pytest.raises(InputError, match="--verify-chosen"):
        _rectify([_localized(2)], accept="step")
    with pytest.raises(InputError, match="--accept"):
        _rectify([_localized(2)], accept="first")


def test_records_without_an_error_pass_through_and_batching_does_not_change_results():
    records = [_localized(k, rid=f"p{i}/s0") for i, k in enumerate([2, None, 4, 1, 3])]
    counts: dict = {}
    small, _ = _rectify([dict(r, steps=list(r["steps"])) for r in records], batch_size=2, seed=1,
                        policy=ScriptedPolicy(error_percent=40), counts=counts)
    large, _ = _rectify([dict(r, steps=list(r["steps"])) for r in records], batch_size=64, seed=1,
                        policy=ScriptedPolicy(error_percent=40))
    assert small == large and [r["id"] for r in small] == [r["id"] for r in records]
    assert small[1]["candidates"] == [] and small[1]["rectify"]["skipped"]
    assert counts["records"] == 4 and counts["skipped"] == 1


def test_validation_requires_a_localized_record():
    with pytest.raises(InputError, match="first_error_step"):
        validate_rectifiable(make_record(NUMBERS, 2))
    with pytest.raises(InputError, match="first_error_step"):
        validate_rectifiable(dict(make_record(NUMBERS, 2), first_error_step=9))


def test_cli_rectify_needs_a_model_and_reports_bad_specs():
    proc = run_cli("rectify", input="")
    assert proc.returncode == 2
    proc = run_cli("rectify", "--model", "hf:/no/such/model/dir", "--accept", "step", input="")
    assert proc.returncode == 2 and b"--verify-chosen" in proc.stderr and b"Traceback" not in proc.stderr
    proc = run_cli("rectify", "--model", "hf:/no/such/model/dir", input=json.dumps(_localized(2)) + "\n")
    assert proc.returncode in (1, 2) and b"Traceback" not in proc.stderr and proc.stdout == b""


def test_cli_rectify_with_the_tiny_model_keeps_every_record(tiny_model):
    records = [_localized(2, rid="a/s0"), _localized(None, rid="b/s0")]
    lines = "".join(json.dumps(r) + "\n" for r in records)
    args = ("rectify", "--model", f"hf:{tiny_model}", "--n", "2", "--max-tokens", "8", "--seed", "3")
    first, again = run_cli(*args, input=lines), run_cli(*args, input=lines)
    assert first.returncode == 0, first.stderr.decode()
    rows = [json.loads(line) for line in first.stdout.decode().splitlines()]
    assert [r["id"] for r in rows] == ["a/s0", "b/s0"] and rows[0]["rectify"]["n"] == 2
    assert rows[0]["rectify"]["settings"]["model"] == f"hf:{tiny_model}"
    assert first.stdout == again.stdout  # same seed, same output
    assert "rectify:" in first.stderr.decode()


def test_cli_verify_judge_filters_winners_through_real_local_servers():
    from scripted_policy import make_record, serve_chat, serve_policy

    policy_server, policy_url = serve_policy(ScriptedPolicy())
    # The judge passes every solution of the first problem and finds a wrong step in the second's.
    judge_server, judge_url = serve_chat(
        lambda prompt: "All steps are correct." if "4 + 8 + 1" in prompt else "Step 2 is incorrect.")
    try:
        records = [_localized(3, rid="a/s0"), validate_localizable(make_record([2, 2, 2], 1, rid="b/s0"))]
        records[1] = next(iter(localize_records([records[1]], "verifier", fn=check_arith, spec="t")))
        lines = "".join(json.dumps(r) + "\n" for r in records)
        proc = run_cli("rectify", "--model", "openai:policy", "--base-url", policy_url, "--n", "3",
                       "--verify-judge", "openai:judge", input=lines,
                       env={"OPENAI_BASE_URL": judge_url, "OPENAI_API_KEY": "sk-x"})
    finally:
        for server in (policy_server, judge_server):
            server.shutdown()
            server.server_close()
    assert proc.returncode == 0, proc.stderr.decode()
    a, b = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert a["rectify"]["kept"] == 3 and a["rectify"]["settings"]["verify_judge"] == "openai:judge"
    assert b["rectify"]["correct"] == 3 and b["candidates"] == [] and b["rectify"]["failed_verify"] == 3
