"""The grade stage: from Python (grade_records, validate_gradable) and as `stepdpo grade` (files, stdin, -o,
exit codes, stdout carrying only JSONL)."""
from __future__ import annotations

import json

import pytest

from conftest import run_cli
from stepdpo_cli.records import InputError
from stepdpo_cli.stages.grade import grade_records, validate_gradable

RECORDS = [
    {"id": "p1", "completion": "Step 1: 2+3=5.\nStep 2: So the answer is $\\boxed{5}$.", "answer": "5",
     "dataset": "gsm8k", "sample_index": 0},
    {"id": "p2", "completion": "Step 1: 48/2 = 24.\n#### 70", "answer": 72},
    {"id": "p3", "prediction": "\\dfrac{1}{2}", "answer": ["0.5", "1/2"]},
    {"id": "p4", "completion": "I give up.", "answer": "3"},
]


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def test_grade_records_adds_prediction_and_correct_and_keeps_fields():
    counts: dict[str, int] = {}
    out = list(grade_records((validate_gradable(dict(r)) for r in RECORDS), counts=counts))
    assert [r["correct"] for r in out] == [True, False, True, False]
    assert [r["prediction"] for r in out] == ["5", "70", "\\dfrac{1}{2}", None]
    assert out[0]["dataset"] == "gsm8k" and out[0]["sample_index"] == 0 and out[0]["completion"] == RECORDS[0]["completion"]
    assert out[1]["answer"] == "72"  # numbers are normalised to strings, as every stage reads them
    assert counts == {"graded": 4, "correct": 2}


def test_completion_wins_over_a_stale_prediction():
    record = validate_gradable({"id": "x", "completion": "The answer is 7.", "prediction": "6", "answer": "7"})
    assert next(grade_records([record]))["prediction"] == "7"


@pytest.mark.parametrize("record,field", [
    ({"completion": "5"}, "answer"),
    ({"answer": "5"}, "completion"),
    ({"answer": "5", "completion": 5}, "completion"),
    ({"answer": "5", "prediction": {"x": 1}}, "prediction"),
    ({"answer": True, "completion": "5"}, "answer"),
])
def test_validate_names_the_bad_field(record, field):
    with pytest.raises(InputError) as err:
        validate_gradable(record)
    assert err.value.field == field


def test_validate_gives_an_id():
    assert validate_gradable({"prediction": "1", "answer": "1"})["id"]


def test_cli_file_in_stdout_out(tmp_path):
    source = tmp_path / "samples.jsonl"
    source.write_text(_jsonl(RECORDS))
    result = run_cli("grade", "-i", str(source))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.decode().splitlines()]  # stdout is pure JSONL
    assert [r["id"] for r in lines] == ["p1", "p2", "p3", "p4"]
    assert [r["correct"] for r in lines] == [True, False, True, False]
    assert b"grade: records=4 correct=2 accuracy=0.5" in result.stderr


def test_cli_stdin_and_output_file(tmp_path):
    out = tmp_path / "graded.jsonl"
    result = run_cli("grade", "-o", str(out), "--quiet", input=_jsonl(RECORDS[:2]))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"" and result.stderr == b""
    assert [json.loads(line)["correct"] for line in out.read_text().splitlines()] == [True, False]


def test_cli_resume_grades_only_new_records(tmp_path):
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text(_jsonl(RECORDS[:2]))
    assert run_cli("grade", "-i", str(source), "-o", str(out)).returncode == 0
    source.write_text(_jsonl(RECORDS))
    assert run_cli("grade", "-i", str(source), "-o", str(out), "--resume").returncode == 0
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["p1", "p2", "p3", "p4"]


def test_cli_bad_record_exits_2_naming_file_line_field(tmp_path):
    source = tmp_path / "bad.jsonl"
    source.write_text(_jsonl([RECORDS[0], {"id": "q", "completion": "5"}]))
    result = run_cli("grade", "-i", str(source))
    assert result.returncode == 2
    message = result.stderr.decode().strip().splitlines()[-1]
    assert f"{source}:2" in message and "'answer'" in message
    assert len(result.stdout.decode().splitlines()) == 1  # the good record before it was written


def test_cli_skip_invalid_and_bad_json(tmp_path):
    source = tmp_path / "mixed.jsonl"
    source.write_text(_jsonl([RECORDS[0]]) + "{not json\n" + _jsonl([{"id": "q", "answer": "1"}, RECORDS[1]]))
    result = run_cli("grade", "-i", str(source), "--skip-invalid")
    assert result.returncode == 0
    assert [json.loads(line)["id"] for line in result.stdout.decode().splitlines()] == ["p1", "p2"]
    assert b"invalid=2" in result.stderr
    assert run_cli("grade", "-i", str(source)).returncode == 2


def test_cli_missing_input_file_exits_2(tmp_path):
    result = run_cli("grade", "-i", str(tmp_path / "nope.jsonl"))
    assert result.returncode == 2 and b"no such file" in result.stderr
