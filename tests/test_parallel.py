"""`--data-parallel N`: N workers over an N-way split of the input give the records of one process, in the
same order; a failed worker keeps its finished records and --resume completes the run."""
from __future__ import annotations

import json
import os

import pytest

from conftest import run_cli
from stepdpo_cli.parallel import strip_options, work_dir

ENV = {"OMP_NUM_THREADS": "1"}


def _problems(path, count: int) -> str:
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What is {i} + {i + 1}?",
                                        "answer": str(2 * i + 1)}) + "\n" for i in range(count)))
    return str(path)


def test_two_hf_workers_write_the_records_of_one_in_input_order(tiny_model, tmp_path):
    source = _problems(tmp_path / "problems.jsonl", 5)
    args = ["sample", "--model", tiny_model, "-i", source, "--n", "2", "--max-tokens", "12", "--seed", "7"]
    one = run_cli(*args, "-o", str(tmp_path / "one.jsonl"), env=ENV)
    assert one.returncode == 0, one.stderr.decode()[-2000:]
    two = run_cli(*args, "--data-parallel", "2", "-o", str(tmp_path / "two.jsonl"), env=ENV)
    assert two.returncode == 0, two.stderr.decode()[-2000:]
    assert two.stdout == b""  # stdout carries only JSONL: here none, the records are in -o
    assert b"data-parallel: 2 workers on 5 record(s)" in two.stderr
    expected = (tmp_path / "one.jsonl").read_bytes()
    assert (tmp_path / "two.jsonl").read_bytes() == expected
    assert [json.loads(line)["id"] for line in expected.splitlines()][:4] == ["q0/s0", "q0/s1", "q1/s0", "q1/s1"]
    assert not os.path.exists(work_dir(str(tmp_path / "two.jsonl")))  # worker files removed after the merge
    # --resume on a finished output redoes its last problem (it may have been torn) and loses nothing.
    again = run_cli(*args, "--data-parallel", "2", "-o", str(tmp_path / "two.jsonl"), "--resume", env=ENV)
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    assert (tmp_path / "two.jsonl").read_bytes() == expected


@pytest.mark.slow
def test_an_interrupted_data_parallel_run_resumes_to_the_same_records(tiny_model, tmp_path):
    source = _problems(tmp_path / "problems.jsonl", 5)
    args = ["sample", "--model", tiny_model, "-i", source, "--n", "2", "--max-tokens", "12", "--seed", "7"]
    one = run_cli(*args, "-o", str(tmp_path / "one.jsonl"), env=ENV)
    assert one.returncode == 0, one.stderr.decode()[-2000:]
    expected = (tmp_path / "one.jsonl").read_bytes()
    # Simulated interruption: worker 1 finished its first problem, nothing merged yet.
    out = tmp_path / "three.jsonl"
    root = work_dir(str(out))
    os.makedirs(root)
    first_of_shard_1 = [line for line in expected.splitlines(keepends=True) if b'"problem_id":"q1"' in line]
    (tmp_path / "three.jsonl.dp" / "out-1.jsonl").write_bytes(b"".join(first_of_shard_1))
    resumed = run_cli(*args, "--data-parallel", "2", "-o", str(out), "--resume", env=ENV)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    assert out.read_bytes() == expected


def test_data_parallel_needs_an_output_file(tiny_model, tmp_path):
    source = _problems(tmp_path / "problems.jsonl", 2)
    result = run_cli("sample", "--model", tiny_model, "-i", source, "--data-parallel", "2", env=ENV)
    assert result.returncode == 2 and b"--data-parallel" in result.stderr and result.stdout == b""


def test_worker_arguments_drop_the_parents_io_options():
    argv = ["sample", "--model", "m", "-i", "in.jsonl", "--output=o.jsonl", "--data-parallel", "4", "--resume",
            "--n", "2", "--summary", "s.json"]
    assert strip_options(argv, {"-i", "--output", "--data-parallel", "--summary"}, {"--resume"}) == [
        "sample", "--model", "m", "--n", "2"]


@pytest.mark.slow
def test_eval_data_parallel_matches_one_process_and_summarises_all_records(tiny_model, tmp_path):
    source = _problems(tmp_path / "problems.jsonl", 5)
    args = ["eval", "--model", tiny_model, "-i", source, "--max-tokens", "8", "--limit", "4"]
    one = run_cli(*args, "-o", str(tmp_path / "one.jsonl"), "--summary", str(tmp_path / "one.json"), env=ENV)
    assert one.returncode == 0, one.stderr.decode()[-2000:]
    two = run_cli(*args, "-o", str(tmp_path / "two.jsonl"), "--summary", str(tmp_path / "two.json"),
                  "--data-parallel", "2", env=ENV)
    assert two.returncode == 0, two.stderr.decode()[-2000:]
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    first, second = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert second["count"] == first["count"] == 4 and second["accuracy"] == first["accuracy"]
    assert second["template"] == first["template"] and second["tokens"] == first["tokens"]
    assert second["tokens_per_s"] > 0  # the workers' tokens over the run's wall time


@pytest.mark.slow
def test_rectify_data_parallel_matches_one_process(tiny_model, tmp_path):
    from scripted_policy import make_record

    records = [make_record([3, 5, 7, i], wrong_at=2, rid=f"p{i}/s0", first_error_step=2) for i in range(4)]
    source = tmp_path / "localized.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    args = ["rectify", "--model", tiny_model, "-i", str(source), "--n", "2", "--max-tokens", "8", "--seed", "1"]
    one = run_cli(*args, "-o", str(tmp_path / "one.jsonl"), env=ENV)
    assert one.returncode == 0, one.stderr.decode()[-2000:]
    two = run_cli(*args, "-o", str(tmp_path / "two.jsonl"), "--data-parallel", "2", env=ENV)
    assert two.returncode == 0, two.stderr.decode()[-2000:]
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    assert len((tmp_path / "one.jsonl").read_bytes().splitlines()) == 4


@pytest.mark.slow
def test_localize_rollout_data_parallel_matches_one_process(tiny_model, tmp_path):
    from scripted_policy import make_record

    records = [make_record([3, 5, 7, i], wrong_at=2, rid=f"p{i}/s0") for i in range(4)]
    source = tmp_path / "wrong.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    args = ["localize", "--method", "rollout", "--model", tiny_model, "-i", str(source), "--rollouts", "2",
            "--max-tokens", "8", "--seed", "3"]
    one = run_cli(*args, "-o", str(tmp_path / "one.jsonl"), env=ENV)
    assert one.returncode == 0, one.stderr.decode()[-2000:]
    two = run_cli(*args, "-o", str(tmp_path / "two.jsonl"), "--data-parallel", "2", env=ENV)
    assert two.returncode == 0, two.stderr.decode()[-2000:]
    assert b"data-parallel: 2 workers on 4 record(s)" in two.stderr
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    assert len((tmp_path / "one.jsonl").read_bytes().splitlines()) == 4


def test_localize_data_parallel_checks_options_first_and_refuses_a_judge_budget(tmp_path):
    source = tmp_path / "wrong.jsonl"
    source.write_text("")
    result = run_cli("localize", "--judge", "openai:gpt-4o", "--max-requests", "10", "--data-parallel", "2",
                     "-i", str(source), "-o", str(tmp_path / "out.jsonl"), env=ENV)
    assert result.returncode == 2 and b"--data-parallel" in result.stderr and result.stdout == b""
    # options are checked before the split: one line from the parent, no worker started
    result = run_cli("localize", "--method", "rollout", "--data-parallel", "2", "-i", str(source),
                     "-o", str(tmp_path / "out.jsonl"), env=ENV)
    assert result.returncode == 2 and b"field '--model'" in result.stderr
    assert b"data-parallel:" not in result.stderr and not os.path.exists(work_dir(str(tmp_path / "out.jsonl")))
