"""`stepdpo eval` on the tiny model: exact summary numbers (accuracy, Wilson CI, groups), majority vote and
pass@k, --dataset with a local GSM8K-shaped file, the atomic summary file."""
from __future__ import annotations

import gzip
import json

import pytest

from conftest import run_cli
from stepdpo_cli.backends.base import SamplingParams
from stepdpo_cli.backends.hf import HFBackend
from stepdpo_cli.grading import answers_match
from stepdpo_cli.stages.evaluate import EvalStats, evaluate_records, majority_vote, wilson_interval

ENV = {"OMP_NUM_THREADS": "1"}


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_wilson_interval_known_values():
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 0.0)


def test_majority_vote_counts_and_breaks_ties_by_first_sample():
    assert majority_vote(["3", None, "4", "4", " 3"]) == "3"  # 3 and " 3" are one answer, seen first
    assert majority_vote(["12", "7", "7"]) == "7"
    assert majority_vote([None, ""]) is None


@pytest.fixture(scope="module")
def backend(tiny_model):
    return HFBackend(tiny_model, batch_size=64)


@pytest.fixture(scope="module")
def scored_problems(backend, tmp_path_factory):
    """Problems whose reference is the tiny model's own (seeded, sampled) answer for half of them, so they are
    right, and an impossible one for the rest: the expected accuracy is known exactly. (Greedy decoding of
    the random model repeats one character and never writes a number.)"""
    rows = [{"id": f"e{i}", "problem": f"Compute {i} * {i + 3} and add {i}.", "answer": "-999999",
             "dataset": "toy", "level": 1 + i % 2} for i in range(40)]
    sampled = list(evaluate_records([dict(r) for r in rows], backend, SamplingParams(temperature=1.0, max_tokens=24),
                                    template="raw", seed=4))
    answered = [r for r in sampled if r["prediction"] is not None]
    assert len(answered) >= 4, "the tiny model wrote no numbers; cannot build the fixture"
    chosen = {r["id"]: r["prediction"] for r in answered[: len(answered) // 2]}
    for row in rows:
        row["answer"] = chosen.get(row["id"], "-999999")
    return rows, chosen


def test_eval_cli_summary_numbers_across_resume(tiny_model, scored_problems, tmp_path):
    rows, chosen = scored_problems
    source = write_jsonl(tmp_path / "test.jsonl", rows)
    out, summary_path = tmp_path / "results.jsonl", tmp_path / "summary.json"
    args = ("eval", "--model", tiny_model, "-i", source, "-o", str(out), "--summary", str(summary_path),
            "--max-tokens", "24", "--template", "raw", "--temperature", "1.0", "--seed", "4")
    first = run_cli(*args, "--limit", "10", env=ENV)
    assert first.returncode == 0 and json.loads(summary_path.read_text())["count"] == 10
    # --limit counts inputs, not new work: resumed, the run covers the same first 15 an uninterrupted one would
    more = run_cli(*args, "--limit", "15", "--resume", env=ENV)
    assert more.returncode == 0 and json.loads(summary_path.read_text())["count"] == 15
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [r["id"] for r in rows[:15]]
    result = run_cli(*args, "--resume", env=ENV)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == [r["id"] for r in rows]
    assert {r["id"] for r in records if r["correct"]} == set(chosen)
    summary = json.loads(summary_path.read_text())
    total, right = len(rows), len(chosen)
    assert (summary["count"], summary["correct"]) == (total, right)
    assert summary["accuracy"] == pytest.approx(right / total)
    assert summary["ci95"] == pytest.approx(list(wilson_interval(right, total)))
    levels = summary["by"]["level"]
    assert sum(v["correct"] for v in levels.values()) == right and summary["by"]["dataset"]["toy"]["count"] == total
    assert summary["model"] == tiny_model and summary["template"] == "raw"
    assert summary["settings"]["temperature"] == 1.0 and summary["wall_seconds"] > 0
    err = result.stderr.decode()
    assert "level=1" in err and f"accuracy={right / total:.4g}" in err


def test_eval_resume_summary_counts_a_killed_gz_runs_records(tiny_model, scored_problems, tmp_path):
    """A killed run of `-o x.jsonl.gz` leaves x.jsonl.gz.partial, gzip with no trailer: --resume's summary
    still counts its records (they are read as gzip, up to the last whole line)."""
    rows, chosen = scored_problems
    source = write_jsonl(tmp_path / "test.jsonl", rows)
    out, summary_path = tmp_path / "results.jsonl.gz", tmp_path / "summary.json"
    args = ("eval", "--model", tiny_model, "-i", source, "-o", str(out), "--summary", str(summary_path),
            "--max-tokens", "24", "--template", "raw", "--temperature", "1.0", "--seed", "4")
    assert run_cli(*args, "--limit", "10", env=ENV).returncode == 0
    partial = tmp_path / "results.jsonl.gz.partial"
    partial.write_bytes(out.read_bytes()[:-8])  # as a kill leaves it: every record flushed, no gzip trailer
    out.unlink()
    result = run_cli(*args, "--resume", env=ENV)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    summary = json.loads(summary_path.read_text())
    assert (summary["count"], summary["correct"]) == (len(rows), len(chosen))
    with gzip.open(out, "rt") as handle:
        assert [json.loads(line)["id"] for line in handle] == [r["id"] for r in rows]


def test_majority_pass_at_k_and_mean_are_consistent(backend, scored_problems):
    rows, _ = scored_problems
    params = SamplingParams(n=4, temperature=1.0, max_tokens=24)
    stats = EvalStats()
    records = list(evaluate_records([dict(r) for r in rows[:12]], backend, params, template="raw", seed=1, stats=stats))
    for record in records:
        oks = [p is not None and answers_match(p, record["answer"]) for p in record["predictions"]]
        assert len(record["predictions"]) == len(record["completions"]) == 4
        assert record["majority"] == majority_vote(record["predictions"]) == record["prediction"]
        assert record["pass_at_k"] == any(oks) and record["mean_correct"] == sum(oks) / 4
    summary = stats.summary(4)
    assert summary["pass_at_k"] == sum(r["pass_at_k"] for r in records) / 12
    assert summary["mean_accuracy"] == pytest.approx(sum(r["mean_correct"] for r in records) / 12)
    again = list(evaluate_records([dict(r) for r in rows[:12]], backend, params, template="raw", seed=1))
    assert [r["predictions"] for r in again] == [r["predictions"] for r in records]  # seeded


def test_eval_dataset_local_gsm8k_file_with_limit(tiny_model, tmp_path):
    from datasets import Dataset

    path = tmp_path / "gsm8k.parquet"
    Dataset.from_list([{"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"}
                       for i in range(6)]).to_parquet(str(path))
    result = run_cli("eval", "--model", tiny_model, "--dataset", str(path), "--limit", "3", "--max-tokens", "8",
                     "-q", env=ENV)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [(r["id"], r["answer"], r["dataset"]) for r in records] == [
        ("gsm8k/test/0", "1", "gsm8k"), ("gsm8k/test/1", "2", "gsm8k"), ("gsm8k/test/2", "3", "gsm8k")]
    missing = run_cli("eval", "--model", tiny_model, "--dataset", "nonexistent", env=ENV)
    assert missing.returncode == 2 and b"--dataset" in missing.stderr

