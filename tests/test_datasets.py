"""Dataset loaders on small local copies written in the hub datasets' own shapes (no downloads)."""
from __future__ import annotations

import json

import pytest
from datasets import Dataset

from stepdpo_cli import datasets as loaders
from stepdpo_cli.datasets import load_problems
from stepdpo_cli.records import InputError

GSM8K_ROWS = [
    {"question": "Tom has 3 apples and buys 1,231 more. How many?",
     "answer": "He has 3 + 1231 = <<3+1231=1234>>1234 apples.\n#### 1,234"},
    {"question": "What is 6 * 7?", "answer": "6 * 7 = 42\n#### 42"},
    {"question": "What is 10 - 4?", "answer": "#### 6"},
]
MATH_ROWS = [
    {"problem": "Compute $\\frac{2}{4}$.", "level": "Level 2", "type": "Prealgebra",
     "solution": "We simplify: $\\frac{2}{4} = \\boxed{\\frac{1}{2}}$."},
    {"problem": "Solve $x+1=3$.", "level": "Level 1", "type": "Algebra", "solution": "So $x = \\boxed{2}$."},
]
MATH500_ROWS = [
    {"problem": "Find $1+1$.", "solution": "$\\boxed{2}$", "answer": "2", "subject": "Algebra", "level": 1,
     "unique_id": "test/algebra/1.json"},
    {"problem": "Find $\\sqrt{4}$.", "solution": "$\\boxed{2}$", "answer": "2", "subject": "Number Theory", "level": 3,
     "unique_id": "test/number_theory/7.json"},
]


def test_gsm8k_parquet_answers_after_hashes(tmp_path):
    path = tmp_path / "gsm8k_test.parquet"
    Dataset.from_list(GSM8K_ROWS).to_parquet(str(path))
    records = list(load_problems(str(path)))
    assert [r["answer"] for r in records] == ["1234", "42", "6"]
    assert [r["id"] for r in records] == ["gsm8k/test/0", "gsm8k/test/1", "gsm8k/test/2"]
    assert records[0]["problem"] == GSM8K_ROWS[0]["question"]
    assert {r["dataset"] for r in records} == {"gsm8k"}
    assert [r["id"] for r in load_problems(str(path), limit=2)] == ["gsm8k/test/0", "gsm8k/test/1"]


def test_math_solution_boxed_answer_subject_and_level(tmp_path):
    path = tmp_path / "algebra.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in MATH_ROWS))
    records = list(load_problems(str(path)))
    assert [r["answer"] for r in records] == ["\\frac{1}{2}", "2"]
    assert [(r["subject"], r["level"], r["dataset"]) for r in records] == [("Prealgebra", 2, "math"), ("Algebra", 1, "math")]


def test_math500_saved_dataset_dir_keeps_unique_ids(tmp_path):
    Dataset.from_list(MATH500_ROWS).save_to_disk(str(tmp_path / "math500"))
    records = list(load_problems(str(tmp_path / "math500")))
    assert [r["id"] for r in records] == ["test/algebra/1.json", "test/number_theory/7.json"]
    assert [(r["subject"], r["level"], r["dataset"]) for r in records] == [("Algebra", 1, "math500"),
                                                                           ("Number Theory", 3, "math500")]


def test_official_step_dpo_test_file(tmp_path):
    path = tmp_path / "MATH_test_data.jsonl"
    rows = [{"idx": 0, "instruction": "What is $1/2 + 1/2$?", "answer": ["1"], "type": "Algebra", "level": "Level 1"},
            {"idx": 1, "instruction": "Name both roots.", "answer": ["2", "-2"]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = list(load_problems(str(path)))
    assert [r["id"] for r in records] == ["0", "1"]
    assert records[0]["problem"] == rows[0]["instruction"] and records[0]["answer"] == "1"
    assert records[1]["answer"] == ["2", "-2"]
    assert records[0]["dataset"] == "math" and records[0]["subject"] == "Algebra" and records[0]["level"] == 1


def test_named_datasets_use_the_hub_ids_and_configs(monkeypatch):
    calls = []

    def fake_load(path, config, split, **kw):
        calls.append((path, config, split))
        return GSM8K_ROWS if path == "openai/gsm8k" else MATH_ROWS[:1]

    monkeypatch.setattr(loaders, "_load_dataset", fake_load)
    assert len(list(load_problems("gsm8k", "test"))) == 3
    assert calls == [("openai/gsm8k", "main", "test")]
    calls.clear()
    math = list(load_problems("math", "test", limit=3))
    assert [c[1] for c in calls] == ["algebra", "counting_and_probability", "geometry"]
    assert math[0]["id"] == "math/test/algebra/0"


def test_unknown_or_broken_sources_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="unknown dataset"):
        list(load_problems("no-such-dataset"))
    bad = tmp_path / "problems.txt"
    bad.write_text("hello")
    with pytest.raises(InputError, match="unsupported file type"):
        list(load_problems(str(bad)))
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"problem": "no answer here"}) + "\n")
    with pytest.raises(InputError, match="answer"):
        list(load_problems(str(broken)))
