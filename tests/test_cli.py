"""The command line as users meet it: exit codes, one-line errors, stdout only JSONL, -o/--resume/--skip-invalid.

Uses `stepdpo grade` (fast, no model) as the record stage: every stage goes through the same `run_records`.
"""
from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time

import orjson
import pytest

from conftest import ROOT, default_sigint, run_cli


def jsonl(*records: dict) -> str:
    return "".join(orjson.dumps(r).decode() + "\n" for r in records)


def parse_stdout(proc: subprocess.CompletedProcess) -> list[dict]:
    return [orjson.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def read_records(path) -> list[dict]:
    return [orjson.loads(line) for line in open(path, "rb") if line.strip()]


GOOD = [{"id": f"r{i}", "completion": f"So the answer is $\\boxed{{{i}}}$.", "answer": str(i), "dataset": "gsm8k"}
        for i in range(5)]


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    parse_stdout(proc)  # whatever reached stdout before the error is still whole JSONL
    return lines[0]


def test_module_help_lists_the_commands():
    proc = run_cli("--help")
    assert proc.returncode == 0
    out = proc.stdout.decode()
    assert "Usage" in out and "grade" in out


def test_version():
    from stepdpo_cli import __version__

    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.decode().strip() == __version__


def test_stdout_carries_only_jsonl_and_records_flow_through(tmp_path):
    proc = run_cli("grade", input=jsonl(*GOOD))
    assert proc.returncode == 0, proc.stderr
    records = parse_stdout(proc)  # every stdout line parses
    assert [r["id"] for r in records] == [r["id"] for r in GOOD]
    assert all(r["correct"] is True and r["dataset"] == "gsm8k" for r in records)  # fields kept
    assert "grade:" in proc.stderr.decode()  # the summary goes to stderr
    quiet = run_cli("grade", "-q", input=jsonl(*GOOD))
    assert quiet.stderr == b"" and quiet.stdout == proc.stdout


def test_a_broken_line_3_exits_2_with_one_line_naming_file_and_line(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text(jsonl(GOOD[0], GOOD[1]) + '{"id": "r2", "completion": "x", \n' + jsonl(GOOD[3]))
    proc = run_cli("grade", "-i", str(path))
    line = assert_one_line_error(proc, f"{path}:3", "bad JSON")
    assert line.startswith("stepdpo: error:")
    assert [r["id"] for r in parse_stdout(proc)] == ["r0", "r1"]  # streamed before the bad line


def test_skip_invalid_skips_counts_and_writes_the_rest(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text(jsonl(GOOD[0], GOOD[1]) + "{oops\n" + jsonl(GOOD[3], GOOD[4]))
    out = tmp_path / "graded.jsonl"
    proc = run_cli("grade", "-i", str(path), "-o", str(out), "--skip-invalid")
    assert proc.returncode == 0, proc.stderr
    assert [r["id"] for r in read_records(out)] == ["r0", "r1", "r3", "r4"]
    err = proc.stderr.decode()
    assert f"{path}:3" in err and "1 invalid record(s) skipped" in err and "invalid=1" in err


def test_a_missing_field_is_named(tmp_path):
    proc = run_cli("grade", input=jsonl(GOOD[0], {"id": "x", "completion": "\\boxed{1}"}))
    assert_one_line_error(proc, "<stdin>:2", "field 'answer'", "missing")


def test_a_wrong_type_is_named(tmp_path):
    proc = run_cli("grade", input=jsonl({"id": "x", "completion": 5, "answer": "5"}))
    assert_one_line_error(proc, "<stdin>:1", "field 'completion'", "must be a string")


def test_a_missing_input_file_exits_2():
    assert_one_line_error(run_cli("grade", "-i", "/nonexistent/in.jsonl"), "/nonexistent/in.jsonl", "no such file")


def test_usage_errors_exit_2():
    proc = run_cli("grade", "--no-such-option")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr.decode()
    assert_one_line_error(run_cli("grade", "--resume", input=jsonl(GOOD[0])), "--resume", "-o")


def test_gzip_input(tmp_path):
    path = tmp_path / "samples.jsonl.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(jsonl(*GOOD).encode())
    proc = run_cli("grade", "-i", str(path))
    assert proc.returncode == 0, proc.stderr
    assert len(parse_stdout(proc)) == len(GOOD)


def test_resume_repairs_a_torn_file_skips_done_ids_and_never_duplicates(tmp_path):
    out = tmp_path / "graded.jsonl"
    done = parse_stdout(run_cli("grade", "-q", input=jsonl(*GOOD[:2])))
    out.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in done) + b'{"id": "r2", "predic')
    proc = run_cli("grade", "-o", str(out), "--resume", input=jsonl(*GOOD))
    assert proc.returncode == 0, proc.stderr
    ids = [r["id"] for r in read_records(out)]
    assert ids == ["r0", "r1", "r2", "r3", "r4"]
    assert "2 record(s) already done" in proc.stderr.decode()
    again = run_cli("grade", "-o", str(out), "--resume", input=jsonl(*GOOD))  # nothing left to do
    assert again.returncode == 0 and [r["id"] for r in read_records(out)] == ids


def test_output_is_flushed_per_record_so_a_killed_run_loses_nothing_finished(tmp_path):
    """Feed records one by one, kill -9 the stage mid-stream: every record it finished is complete on disk
    (in OUT.partial, which --resume continues)."""
    out = tmp_path / "graded.jsonl.partial"
    proc = subprocess.Popen([sys.executable, "-m", "stepdpo_cli", "grade", "-o", str(tmp_path / "graded.jsonl")],
                            cwd=ROOT, stdin=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        for i, record in enumerate(GOOD[:3]):
            proc.stdin.write(jsonl(record).encode())
            proc.stdin.flush()
            deadline = time.monotonic() + 60
            while not (out.exists() and out.read_bytes().count(b"\n") == i + 1):
                assert proc.poll() is None and time.monotonic() < deadline, "record never reached the file"
                time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    assert [r["id"] for r in read_records(out)] == ["r0", "r1", "r2"]
    assert out.read_bytes().endswith(b"\n")
    resumed = run_cli("grade", "-o", str(tmp_path / "graded.jsonl"), "--resume", input=jsonl(*GOOD))
    assert resumed.returncode == 0 and "left by an interrupted run" in resumed.stderr.decode()
    assert [r["id"] for r in read_records(tmp_path / "graded.jsonl")] == [r["id"] for r in GOOD]


def test_ctrl_c_exits_130_with_a_resume_hint(tmp_path):
    out = tmp_path / "graded.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "stepdpo_cli", "grade", "-o", str(out)], cwd=ROOT,
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=default_sigint)
    proc.stdin.write(jsonl(GOOD[0]).encode())
    proc.stdin.flush()
    deadline = time.monotonic() + 60
    while not (os.path.exists(f"{out}.partial") and open(f"{out}.partial", "rb").read().endswith(b"\n")):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in err.decode() and "--resume" in err.decode()
    assert [r["id"] for r in read_records(out)] == ["r0"]


def test_a_closed_pipe_downstream_is_not_an_error():
    """`stepdpo grade < big.jsonl | head -1` must not print a traceback."""
    many = jsonl(*[{**GOOD[0], "id": f"r{i}"} for i in range(20000)]).encode()
    shell = f"{sys.executable} -m stepdpo_cli grade -q | head -n 1"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", shell], input=many, capture_output=True, cwd=ROOT,
                          env={**os.environ}, timeout=300)
    assert proc.stdout.count(b"\n") == 1
    assert b"Traceback" not in proc.stderr


@pytest.mark.parametrize("debug", ["1"])
def test_stepdpo_debug_shows_the_traceback_for_developers(debug):
    proc = run_cli("grade", "-i", "/nonexistent/in.jsonl", env={"STEPDPO_DEBUG": debug})
    assert proc.returncode == 2 and "Traceback" in proc.stderr.decode()


def test_output_onto_the_input_file_is_refused_before_it_is_emptied(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(jsonl(*GOOD))
    assert_one_line_error(run_cli("grade", "-i", str(path), "-o", str(path)), "same file as the input")
    assert [r["id"] for r in read_records(path)] == [r["id"] for r in GOOD]


def test_every_problem_alias_and_answer_form_through_sample(tiny_model, tmp_path):
    """Users bring GSM8K/MATH/MetaMath files with different field names: `sample` reads them all."""
    problems = [{"problem": "1+1?", "answer": 2}, {"prompt": "2+2?", "answer": "4"},
                {"question": "3+3?", "answer": [6, "six"]}, {"instruction": "4+4?", "answer": 8.0, "id": 7}]
    proc = run_cli("sample", "--model", tiny_model, "--n", "1", "--max-tokens", "2", "--keep", "all",
                   input=jsonl(*problems), env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    records = parse_stdout(proc)
    assert [r["problem"] for r in records] == ["1+1?", "2+2?", "3+3?", "4+4?"]
    assert [r["answer"] for r in records] == ["2", "4", ["6", "six"], "8"]
    assert records[1]["prompt"] == "2+2?" and records[2]["question"] == "3+3?"  # originals kept
    assert records[3]["id"].startswith("7")
    bad = run_cli("sample", "--model", tiny_model, "--n", "1", "--max-tokens", "2",
                  input=jsonl(problems[0], {"question": "no answer"}))
    assert_one_line_error(bad, "<stdin>:2", "field 'answer'")
