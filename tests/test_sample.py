"""`stepdpo sample` on the tiny model: record fields, seeds recorded and reproducible whatever the batching,
--keep, Ctrl-C keeps every finished record and --resume completes the rest without duplicates."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, default_sigint, run_cli
from stepdpo_cli.backends.base import SamplingParams
from stepdpo_cli.backends.hf import HFBackend
from stepdpo_cli.records import derive_seed
from stepdpo_cli.stages.sample import SampleStats, sample_records
from stepdpo_cli.steps import split_steps

ENV = {"OMP_NUM_THREADS": "1"}


def problems(count: int) -> list[dict]:
    return [{"id": f"q{i}", "question": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1), "dataset": "toy"}
            for i in range(count)]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def read_jsonl(path) -> list[dict]:
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


@pytest.fixture(scope="module")
def backend(tiny_model):
    return HFBackend(tiny_model, batch_size=16)


def test_sample_records_fields_and_seeds(backend):
    params = SamplingParams(n=3, temperature=0.8, top_p=0.95, max_tokens=12)
    stats = SampleStats()
    groups = list(sample_records(iter(problems(2)), backend, params, template="raw", seed=11, stats=stats))
    assert [len(g) for g in groups] == [3, 3]
    first = groups[0][0]
    assert first["id"] == "q0/s0" and first["problem_id"] == "q0" and first["sample_index"] == 0
    assert first["question"] == "What is 0 + 1?" and first["dataset"] == "toy"  # input fields flow through
    assert first["steps"] == split_steps(first["completion"])
    assert isinstance(first["correct"], bool) and "prediction" in first
    assert first["template"] == "raw"
    generation = first["generation"]
    assert generation["seed"] == derive_seed(11, "q0") and generation["run_seed"] == 11
    assert (generation["n"], generation["temperature"], generation["top_p"], generation["max_tokens"]) == (3, 0.8, 0.95, 12)
    assert generation["backend"] == "hf" and generation["num_tokens"] <= 12
    assert stats.problems == 2 and stats.samples == 6 and stats.kept == 6 and stats.tokens > 0


def test_keep_filters_graded_samples(backend):
    params = SamplingParams(n=2, temperature=1.0, max_tokens=8)
    rows = [{"id": "a", "problem": "p", "answer": "7"}]
    everything = [r for g in sample_records(iter(rows), backend, params, template="raw") for r in g]
    right = [r for g in sample_records(iter(rows), backend, params, template="raw", keep="right") for r in g]
    wrong = [r for g in sample_records(iter(rows), backend, params, template="raw", keep="wrong") for r in g]
    assert right == [r for r in everything if r["correct"]]
    assert wrong == [r for r in everything if not r["correct"]]


def library_run(model: str, rows: list[dict], *, n: int, max_tokens: int, seed: int, batch_size: int,
                template: str = "chat") -> list[dict]:
    """What `stepdpo sample` should write, computed in-process with the stage function."""
    engine = HFBackend(model, batch_size=batch_size)
    params = SamplingParams(n=n, temperature=0.8, top_p=0.95, max_tokens=max_tokens)
    chunk = max(1, batch_size // n)
    return [r for g in sample_records(iter(rows), engine, params, template=template, seed=seed, chunk_size=chunk)
            for r in g]


def test_cli_output_is_reproducible_whatever_the_batch_size(tiny_model, tmp_path):
    rows = problems(5)
    source = write_jsonl(tmp_path / "problems.jsonl", rows)
    result = run_cli("sample", "--model", tiny_model, "-i", source, "--n", "3", "--max-tokens", "16", "--seed", "3",
                     "--batch-size", "64", "--backend-option", "shared_prefill=false", env=ENV)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    cli_records = [json.loads(line) for line in result.stdout.decode().splitlines()]  # stdout: JSONL only
    assert len(cli_records) == 15 and {r["template"] for r in cli_records} == {"chat"}
    assert b"sample: problems=5 samples=15 kept=15" in result.stderr
    # Same seed, other batch sizes (other packing of problems and rows), prompt prefill shared (library
    # default) or per sample (the CLI run above, via --backend-option): the same records.
    for batch_size in (64, 4, 3):
        assert library_run(tiny_model, problems(5), n=3, max_tokens=16, seed=3, batch_size=batch_size) == cli_records
    other = library_run(tiny_model, problems(5), n=3, max_tokens=16, seed=4, batch_size=64)
    assert [r["completion"] for r in other] != [r["completion"] for r in cli_records]


def test_cli_bad_input_names_file_line_and_field(tiny_model, tmp_path):
    source = write_jsonl(tmp_path / "bad.jsonl", [{"id": "ok", "problem": "p", "answer": "1"}, {"id": "x", "problem": "q"}])
    result = run_cli("sample", "--model", tiny_model, "-i", source, "--max-tokens", "4", env=ENV)
    assert result.returncode == 2
    assert f"{source}:2: field 'answer'" in result.stderr.decode()


def test_sigint_keeps_finished_records_and_resume_completes(tiny_model, tmp_path):
    count, n = 40, 2
    source = write_jsonl(tmp_path / "problems.jsonl", problems(count))
    out = tmp_path / "samples.jsonl"
    args = ["sample", "--model", tiny_model, "-i", source, "-o", str(out), "--n", str(n), "--max-tokens", "48",
            "--batch-size", str(n), "--seed", "5", "-q"]
    proc = subprocess.Popen([sys.executable, "-m", "stepdpo_cli", *args], cwd=ROOT, env={**os.environ, **ENV},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=default_sigint)
    deadline = time.time() + 240
    written = tmp_path / "samples.jsonl.partial"  # where a run writes until it ends or is interrupted
    while time.time() < deadline and (not written.exists() or written.stat().st_size == 0) and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert b"rerun with --resume" in err
    partial = read_jsonl(out)  # every line is a whole record
    assert 0 < len(partial) < count * n and len(partial) % n == 0  # whole problems only (one group per write)

    resumed = run_cli(*args[:-5], "--batch-size", "64", "--seed", "5", "-q", "--resume", env=ENV)  # other packing
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    records = read_jsonl(out)
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == count * n
    assert records[:len(partial)] == partial

    uninterrupted = library_run(tiny_model, problems(count), n=n, max_tokens=48, seed=5, batch_size=64)
    assert sorted(records, key=lambda r: r["id"]) == sorted(uninterrupted, key=lambda r: r["id"])
