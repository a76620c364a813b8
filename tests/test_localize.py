"""`stepdpo localize`: the verifier method, input validation, CLI errors and the summary."""
from __future__ import annotations

import json
import os

import pytest
from conftest import run_cli
from scripted_policy import check_arith, make_record

from stepdpo_cli.localizers.verifier import load_callable, run_verifier
from stepdpo_cli.records import InputError
from stepdpo_cli.stages.localize import localize_records, validate_localizable

NUMBERS = [4, 8, 1, 6, 3]
HERE = os.path.dirname(os.path.abspath(__file__))
ENV = {"PYTHONPATH": HERE}


def _jsonl(records):
    return "".join(json.dumps(r) + "\n" for r in records)


def _rows(proc):
    assert proc.returncode == 0, proc.stderr.decode()
    return [json.loads(line) for line in proc.stdout.decode().splitlines()]


@pytest.mark.parametrize("wrong_at", [None, 1, 2, 3, 4])
def test_verifier_finds_the_known_first_error_and_its_correction(wrong_at):
    record = validate_localizable(make_record(NUMBERS, wrong_at))
    [row] = list(localize_records([record], "verifier", fn=check_arith, spec="x:y"))
    assert row["first_error_step"] == wrong_at
    assert row["localize_status"] == ("no_error" if wrong_at is None else "error_found")
    if wrong_at is not None:
        right = make_record(NUMBERS, None)["steps"][wrong_at - 1]
        assert row["reference_step"] == right and row["step_verdicts"][wrong_at - 1] is False


def test_verifier_list_form_padding_and_undecided():
    short = run_verifier(lambda p, s, r: [True], "p", ["a", "b"], {})
    assert short.verdicts == [True, None] and short.status == "undecided" and short.first_error is None
    first_false = run_verifier(lambda p, s, r: [True, None, False, False], "p", ["a", "b", "c", "d"], {})
    assert first_false.first_error == 3
    with pytest.raises(TypeError):
        run_verifier(lambda p, s, r: "yes", "p", ["a"], {})


def test_verifier_specs_module_and_file(tmp_path):
    assert load_callable("scripted_policy:check_arith") is check_arith
    file = tmp_path / "myverifier.py"
    file.write_text("def check(problem, steps, record):\n    return [len(s) < 5 for s in steps]\n")
    fn = load_callable(f"{file}:check")
    assert fn("p", ["ok", "too long"], {}) == [True, False]
    for bad in ("nocolon", "no_such_module_xyz:f", "scripted_policy:missing"):
        with pytest.raises(InputError, match="--verifier"):
            load_callable(bad)


def test_validation_splits_completion_and_names_bad_fields():
    record = {"id": "a", "problem": "p", "answer": "1", "completion": " x\nStep 2: y"}
    assert validate_localizable(record)["steps"] == [" x", " y"]
    with pytest.raises(InputError, match="steps"):
        validate_localizable({"id": "a", "problem": "p", "answer": "1"})
    with pytest.raises(InputError, match="steps"):
        validate_localizable({"id": "a", "problem": "p", "answer": "1", "steps": "x"})
    with pytest.raises(InputError, match="answer"):
        validate_localizable({"id": "a", "problem": "p", "steps": ["x"]})


def test_cli_verifier_keeps_fields_and_prints_summary(tmp_path):
    records = [make_record(NUMBERS, k, rid=f"p{i}/s0", extra_field=i) for i, k in enumerate([2, None, 4])]
    proc = run_cli("localize", "--method", "verifier", "--verifier", "scripted_policy:check_arith",
                   input=_jsonl(records), env=ENV)
    rows = _rows(proc)
    assert [r["first_error_step"] for r in rows] == [2, None, 4]
    assert [r["extra_field"] for r in rows] == [0, 1, 2] and rows[0]["completion"] == records[0]["completion"]
    assert rows[0]["localizer"] == {"method": "verifier", "verifier": "scripted_policy:check_arith"}
    stderr = proc.stderr.decode()
    assert "error_found=2" in stderr and "no_error=1" in stderr


def test_cli_resume_and_output_file(tmp_path):
    records = [make_record(NUMBERS, 2, rid=f"p{i}/s0") for i in range(3)]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(_jsonl(records))
    out.write_text(json.dumps({"id": "p0/s0", "first_error_step": 2}) + "\n" + '{"id": "p1/s0", "fir')
    proc = run_cli("localize", "--method", "verifier", "--verifier", "scripted_policy:check_arith",
                   "-i", str(src), "-o", str(out), "--resume", env=ENV)
    assert proc.returncode == 0, proc.stderr.decode()
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert ids == ["p0/s0", "p1/s0", "p2/s0"]


@pytest.mark.parametrize("args,field", [
    (["--method", "nope"], "--method"),
    (["--method", "verifier"], "--verifier"),
    (["--method", "judge"], "--judge"),
    (["--method", "rollout"], "--model"),
    (["--method", "rollout", "--model", "hf:x", "--threshold", "1"], "--threshold"),
    (["--method", "rollout", "--model", "hf:x", "--search", "ternary"], "--search"),
    (["--method", "verifier", "--verifier", "scripted_policy:nothing"], "--verifier"),
])
def test_cli_usage_errors_exit_2(args, field):
    proc = run_cli("localize", *args, input="", env=ENV)
    assert proc.returncode == 2 and field in proc.stderr.decode() and proc.stdout == b""


def test_cli_bad_record_names_line_and_field():
    lines = _jsonl([make_record(NUMBERS, 2)]) + json.dumps({"id": "x", "problem": "p", "answer": "1",
                                                           "steps": [1, 2]}) + "\n"
    proc = run_cli("localize", "--method", "verifier", "--verifier", "scripted_policy:check_arith",
                   input=lines, env=ENV)
    assert proc.returncode == 2
    assert "<stdin>:2: field 'steps'" in proc.stderr.decode()
