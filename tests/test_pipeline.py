"""The chain `sample | localize | rectify | pair` as a shell pipeline and as separate files: same result."""
from __future__ import annotations

import json
import os
import random
import shlex
import subprocess
import sys

import pytest
from conftest import ROOT
from scripted_policy import ScriptedPolicy, problem_text, serve_policy

HERE = os.path.dirname(os.path.abspath(__file__))
CLI = f"{shlex.quote(sys.executable)} -m stepdpo_cli"


def _problems(count: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        numbers = [rng.randint(1, 9) for _ in range(rng.randint(3, 6))]
        rows.append({"id": f"q{i}", "problem": problem_text(numbers), "answer": sum(numbers), "dataset": "add"})
    return "".join(json.dumps(r) + "\n" for r in rows)


def _sh(command: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": HERE, **env}, timeout=600)


def _chain(tmp_path, stages: list[str], env: dict) -> tuple[bytes, bytes]:
    """Run the stages piped (stdin -> stdout) and file to file; return both final outputs."""
    first, *rest = stages
    piped = _sh(f"{CLI} {first} < {tmp_path / 'problems.jsonl'}" + "".join(f" | {CLI} {s}" for s in rest), env)
    assert piped.returncode == 0, piped.stderr.decode()[-2000:]
    previous = tmp_path / "problems.jsonl"
    for index, stage in enumerate(stages):
        current = tmp_path / f"stage{index}.jsonl"
        proc = _sh(f"{CLI} {stage} -i {previous} -o {current}", env)
        assert proc.returncode == 0, proc.stderr.decode()[-2000:]
        previous = current
    return piped.stdout, previous.read_bytes()


def test_chain_through_a_local_server_yields_the_known_pairs(tmp_path):
    (tmp_path / "problems.jsonl").write_text(_problems(6))
    server, url = serve_policy(ScriptedPolicy(error_percent=50))
    try:
        env = {"OPENAI_BASE_URL": url, "OPENAI_API_KEY": "sk-local"}
        stages = ["sample --model openai:policy --n 4 --keep wrong --template raw --seed 11",
                  "localize --method rollout --model openai:policy --rollouts 4 --search binary --seed 11",
                  "rectify --model openai:policy --n 4 --seed 11",
                  "pair"]
        piped, files = _chain(tmp_path, stages, env)
    finally:
        server.shutdown()
        server.server_close()
    assert piped == files and piped
    rows = [json.loads(line) for line in piped.decode().splitlines()]
    for row in rows:  # the chosen step is arithmetic that continues the prefix correctly; rejected is not
        assert row["chosen"] != row["rejected"] and row["initial_reason_steps"].endswith(
            f"Step {row['first_error_step']}:")
        assert row["localizer"]["method"] == "rollout" and row["template"] == "raw"
    localized = [json.loads(line) for line in (tmp_path / "stage1.jsonl").read_text().splitlines()]
    from scripted_policy import check_arith

    for record in localized:  # rollout agrees with the programmatic checker on every sampled solution
        verdicts = check_arith(record["problem"], record["steps"], record)["verdicts"]
        assert record["first_error_step"] == verdicts.index(False) + 1


@pytest.mark.slow  # ~8 model loads: about a minute on 2 busy cores
def test_chain_with_the_tiny_model_pipes_and_files_agree(tiny_model, tmp_path):
    (tmp_path / "problems.jsonl").write_text(_problems(3))
    stages = [f"sample --model hf:{tiny_model} --n 2 --max-tokens 24 --template raw --seed 5",
              "localize --method verifier --verifier scripted_policy:flag_first_step",
              f"rectify --model hf:{tiny_model} --n 2 --max-tokens 16 --seed 5",
              "pair --chosen-source reference-step"]
    piped, files = _chain(tmp_path, stages, {"OMP_NUM_THREADS": "1"})
    assert piped == files
    rows = [json.loads(line) for line in piped.decode().splitlines()]
    # 3 problems x 2 samples; both samples of a problem share prompt, prefix and chosen: deduped to one.
    assert len(rows) == 3 and all(r["chosen"] == " 1 + 1 = 2." and r["first_error_step"] == 1 for r in rows)
    rectified = [json.loads(line) for line in (tmp_path / "stage2.jsonl").read_text().splitlines()]
    assert all(r["rectify"]["n"] == 2 for r in rectified)
