"""`stepdpo pair`: Math-Step-DPO-10K rows from rectified records, whole-solution DPO rows, OOD rows."""
from __future__ import annotations

import json

import pytest
from conftest import run_cli
from scripted_policy import ScriptedPolicy, check_arith, make_record, solution_steps

from stepdpo_cli.stages.localize import localize_records, validate_localizable
from stepdpo_cli.stages.pair import pair_records, pair_summary, validate_pairable
from stepdpo_cli.stages.rectify import rectify_records
from stepdpo_cli.steps import STEP_PREFIX, join_steps

NUMBERS = [4, 8, 1, 6, 3]
MATH_STEP_DPO_FIELDS = {"dataset", "prompt", "initial_reason_steps", "chosen", "rejected", "full_chosen",
                        "full_rejected", "answer"}


def _rectified(wrong_at, rid="p0/s0", n=2, **extra):
    record = validate_localizable(make_record(NUMBERS, wrong_at, rid=rid, **extra))
    record = next(iter(localize_records([record], "verifier", fn=check_arith, spec="t")))
    return next(iter(rectify_records([record], ScriptedPolicy(), n=n)))[0]


def _pairs(records, **kw):
    return [row for group in pair_records(records, **kw) for row in group]


def test_step_rows_have_the_released_shape_and_exact_texts():
    [row] = _pairs([_rectified(3, dataset="arith")])  # 2 candidates, same chosen step: deduped
    steps, right = make_record(NUMBERS, 3)["steps"], solution_steps(NUMBERS)
    assert MATH_STEP_DPO_FIELDS <= set(row)
    assert row["prompt"] == "Add: 4 + 8 + 1 + 6 + 3" and row["dataset"] == "arith" and row["answer"] == "22"
    assert row["initial_reason_steps"] == STEP_PREFIX + steps[0] + "\nStep 2:" + steps[1] + "\nStep 3:"
    assert row["chosen"] == right[2] and row["rejected"] == steps[2]
    assert row["full_chosen"] == join_steps(right[2:], start=3)
    assert row["full_rejected"] == join_steps(steps[2:], start=3)
    assert row["full_rejected"].startswith(row["rejected"] + "\nStep 4:")
    assert (row["id"], row["source_id"], row["first_error_step"]) == ("p0/s0/c0", "p0/s0", 3)
    assert row["localizer"]["method"] == "verifier" and row["template"] == "raw"


def test_dedupe_by_prompt_prefix_and_chosen_and_max_per_problem():
    counts: dict = {}
    records = [_rectified(3, rid="p0/s0"), _rectified(3, rid="p0/s1"), _rectified(2, rid="p0/s2")]
    rows = _pairs(records, counts=counts)
    # Every candidate of the same prefix has the same chosen step: one row per distinct (prompt, prefix, chosen).
    assert [r["id"] for r in rows] == ["p0/s0/c0", "p0/s2/c0"]
    assert counts["dropped_duplicate"] == 4
    capped = _pairs(records, max_per_problem=1, counts=(c2 := {}))
    assert len(capped) == 1 and c2["dropped_max_per_problem"] == 2  # both candidates of p0/s2


def test_records_without_errors_or_candidates_are_counted_not_paired():
    undecided = dict(make_record(NUMBERS, 2, rid="u/s0"), first_error_step=None, localize_status="undecided")
    none = dict(make_record(NUMBERS, None, rid="n/s0"), first_error_step=None, localize_status="no_error")
    empty = dict(make_record(NUMBERS, 2, rid="e/s0"), first_error_step=2, candidates=[])
    counts: dict = {}
    assert _pairs([validate_pairable(r) for r in (undecided, none, empty)], counts=counts) == []
    summary = pair_summary(counts)
    assert summary["pairs"] == 0 and summary["dropped_undecided"] == 1
    assert summary["dropped_no_error_step"] == 1 and summary["dropped_no_candidates"] == 1


def test_empty_and_identical_steps_are_dropped():
    record = _rectified(2)
    record["candidates"] = [{"text": "   ", "continuation": "   "},
                            {"text": record["steps"][1] + "  ", "continuation": "x"}]
    counts: dict = {}
    assert _pairs([record], counts=counts) == []
    assert counts["dropped_empty"] == 1 and counts["dropped_identical"] == 1


def test_dpo_format_uses_whole_solutions_from_the_same_material():
    record = _rectified(3)
    record["step_scores"] = [1.0, 1.0, 0.0, None, 0.0]
    [row] = _pairs([record], format="dpo")
    assert row["initial_reason_steps"] == STEP_PREFIX
    assert row["chosen"] == join_steps(solution_steps(NUMBERS)) and row["rejected"] == record["completion"]
    assert row["full_chosen"] == row["chosen"] and row["format"] == "dpo"
    # Measured rates where known, the localizer's labels elsewhere: what full-step-dpo training reads.
    assert row["rejected_step_scores"] == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert row["chosen_step_scores"] == [1.0, 1.0, 1.0, 1.0, 1.0]
    [plain] = _pairs([_rectified(2)], format="dpo")  # a verifier's labels only
    assert plain["rejected_step_scores"] == [1.0, 0.0, 0.0, 0.0, 0.0]


def test_sft_format_is_the_corrected_continuation_after_the_same_prefix():
    record = _rectified(3)
    [step_row] = _pairs([dict(record)])
    [row] = _pairs([dict(record)], format="sft")
    assert row["initial_reason_steps"] == step_row["initial_reason_steps"]
    assert row["completion"] == step_row["full_chosen"] == join_steps(solution_steps(NUMBERS)[2:], start=3)
    assert "chosen" not in row and "rejected" not in row and row["format"] == "sft"


def test_whole_solution_formats_skip_winners_whose_continuation_misses_the_answer():
    record = _rectified(3)
    record["candidates"] = [dict(c, reaches_answer=False) for c in record["candidates"]]  # rectify --accept step
    [step_row] = _pairs([dict(record)])
    assert step_row["provenance"]["reaches_answer"] is False
    for format in ("dpo", "sft"):
        counts: dict = {}
        assert _pairs([dict(record)], format=format, counts=counts) == []
        assert counts["dropped_no_candidate_reaches_answer"] == 1


def test_pairs_carry_the_problem_fields_of_their_record():
    [row] = _pairs([_rectified(2, level=3, subject="arith")])
    assert row["level"] == 3 and row["subject"] == "arith" and row["problem_id"] == "p0"
    assert "candidates" not in row and "completion" not in row and "steps" not in row


def test_reference_step_source_is_the_ood_ablation():
    record = validate_localizable(make_record(NUMBERS, 2))
    record = next(iter(localize_records([record], "verifier", fn=check_arith, spec="t")))
    [row] = _pairs([record], chosen_source="reference-step")
    assert row["chosen"] == solution_steps(NUMBERS)[1] and row["id"] == "p0/s0/ref"
    assert row["provenance"]["chosen_source"] == "reference-step"
    counts: dict = {}
    assert _pairs([_rectified(2) | {"reference_step": None}], chosen_source="reference-step", counts=counts) == []
    assert counts["dropped_no_reference_step"] == 1


def test_summary_reports_mean_step_and_prefix_ratio():
    counts: dict = {}
    rows = _pairs([_rectified(3, rid="a/s0"), _rectified(1, rid="b/s0")], counts=counts)
    summary = pair_summary(counts)
    assert summary["pairs"] == len(rows) == 2 and summary["mean_step_index"] == 2.0
    assert summary["prefix_step_ratio_chars"] > 1.0


def test_cli_pair_file_and_stdin_agree_and_resume(tmp_path):
    records = [_rectified(k, rid=f"p{i}/s0") for i, k in enumerate([1, 2, 3])]
    src, out = tmp_path / "rect.jsonl", tmp_path / "pairs.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    piped = run_cli("pair", input=src.read_bytes())
    assert piped.returncode == 0, piped.stderr.decode()
    assert "pair: " in piped.stderr.decode() and "pairs=3" in piped.stderr.decode()
    lines = piped.stdout.decode().splitlines()
    out.write_text(lines[0] + "\n")
    resumed = run_cli("pair", "-i", str(src), "-o", str(out), "--resume")
    assert resumed.returncode == 0 and out.read_text().splitlines() == lines


def test_cli_pair_token_ratio_with_a_tokenizer(tiny_model):
    line = json.dumps(_rectified(3)) + "\n"
    proc = run_cli("pair", "--tokenizer", f"hf:{tiny_model}", input=line)
    assert proc.returncode == 0 and "prefix_step_ratio_tokens=" in proc.stderr.decode()


@pytest.mark.parametrize("args", [["--format", "nope"], ["--chosen-source", "gpt"],
                                  ["--format", "dpo", "--chosen-source", "reference-step"]])
def test_cli_pair_bad_options_exit_2(args):
    proc = run_cli("pair", *args, input=json.dumps(_rectified(2)) + "\n")
    assert proc.returncode == 2 and proc.stdout == b""


def test_train_accepts_pair_rows_for_each_objective(tiny_model):
    data = pytest.importorskip("stepdpo_cli.train.data")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    records = [_rectified(k, rid=f"p{i}/s0") for i, k in enumerate([1, 3, 4])]
    step_rows = _pairs([dict(r) for r in records])
    dpo_rows = _pairs([dict(r) for r in records], format="dpo")
    for objective, rows in (("step-dpo", step_rows), ("dpo", dpo_rows), ("full-step-dpo", dpo_rows)):
        validate = data.validator(objective)
        examples = data.encode_rows([validate(dict(r)) for r in rows], tokenizer, "raw", objective, 512)
        assert len(examples) == len(rows) == 3, objective
        assert all(e.chosen and e.rejected for e in examples)
    sft_rows = _pairs([dict(r) for r in records], format="sft")
    validate = data.validator("sft")
    assert len(data.encode_rows([validate(dict(r)) for r in sft_rows], tokenizer, "raw", "sft", 512)) == 3
