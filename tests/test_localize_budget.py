"""The judge's cost in `stepdpo localize`: token usage per record and in the summary, and --max-requests /
--max-tokens-total stopping a run cleanly so that --resume finishes it exactly as an uninterrupted run."""
from __future__ import annotations

import json

import pytest

from conftest import run_cli
from scripted_policy import serve_chat

VERDICT = "Step 1 is right.\nFinal Decision: Step 1: correct; Step 2: incorrect"


def _records(n: int = 5) -> str:
    return "".join(json.dumps({"id": f"p{i}/s0", "problem": f"What is {i}+1?", "answer": str(i + 1),
                               "steps": [f" {i} + 1 = {i + 1}.", f" So {i + 2}."]}) + "\n" for i in range(n))


@pytest.fixture()
def judge():
    server, url = serve_chat(lambda prompt: VERDICT)  # usage: 1 prompt token, 1 completion token per request
    yield {"OPENAI_BASE_URL": url, "OPENAI_API_KEY": "sk-test"}
    server.shutdown()
    server.server_close()


def _localize(tmp_path, env, *extra, name="out.jsonl"):
    data = tmp_path / "wrong.jsonl"
    data.write_text(_records())
    return run_cli("localize", "--method", "judge", "--judge", "openai:judge", "-i", str(data),
                   "-o", str(tmp_path / name), *extra, env=env)


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_usage_per_record_and_totals(judge, tmp_path):
    proc = _localize(tmp_path, judge)
    assert proc.returncode == 0, proc.stderr.decode()
    rows = _rows(tmp_path / "out.jsonl")
    assert [r["judge_usage"] for r in rows] == [{"requests": 1, "prompt_tokens": 1, "completion_tokens": 1}] * 5
    summary = proc.stderr.decode()
    assert "judge_requests=5 judge_prompt_tokens=5 judge_completion_tokens=5" in summary


def test_max_requests_stops_cleanly_and_resume_finishes(judge, tmp_path):
    full = _localize(tmp_path, judge, name="full.jsonl")
    assert full.returncode == 0
    proc = _localize(tmp_path, judge, "--max-requests", "3", "--batch-size", "2")
    assert proc.returncode == 0, proc.stderr.decode()
    assert [r["id"] for r in _rows(tmp_path / "out.jsonl")] == ["p0/s0", "p1/s0", "p2/s0"]
    assert "stopped by --max-requests after 3 judge request(s), 6 token(s)" in proc.stderr.decode()
    proc = _localize(tmp_path, judge, "--resume")
    assert proc.returncode == 0, proc.stderr.decode()
    assert (tmp_path / "out.jsonl").read_bytes() == (tmp_path / "full.jsonl").read_bytes()


def test_max_tokens_total_stops_before_the_next_batch(judge, tmp_path):
    proc = _localize(tmp_path, judge, "--max-tokens-total", "4", "--batch-size", "1")
    assert proc.returncode == 0, proc.stderr.decode()
    assert len(_rows(tmp_path / "out.jsonl")) == 2  # 2 tokens per request: the limit is reached after two
    assert "stopped by --max-tokens-total after 2 judge request(s), 4 token(s)" in proc.stderr.decode()


def test_budget_options_need_the_judge(tmp_path):
    proc = run_cli("localize", "--method", "rollout", "--model", "openai:x", "--max-requests", "3", input="")
    assert proc.returncode == 2 and "--max-requests" in proc.stderr.decode() and "only with --method judge" in \
        proc.stderr.decode()


def test_a_local_judge_counts_prompt_tokens_with_its_tokenizer(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    from stepdpo_cli.localizers.judge import build_judge_prompt, load_judge_prompt, reference_for
    from stepdpo_cli.templates import render_prompt

    record = {"id": "a", "problem": "1+1?", "answer": "2", "steps": [" 1 + 1 = 3.", " \\boxed{3}"]}
    proc = run_cli("localize", "--method", "judge", "--judge", f"hf:{tiny_model}", "--judge-max-tokens", "8",
                   input=json.dumps(record) + "\n")
    assert proc.returncode == 0, proc.stderr.decode()
    usage = json.loads(proc.stdout)["judge_usage"]
    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompt = build_judge_prompt(load_judge_prompt(), record["problem"], reference_for(record), record["steps"])
    if getattr(tok, "chat_template", None):
        prompt = render_prompt(prompt, "chat", tok)
    assert usage["prompt_tokens"] == len(tok(prompt, add_special_tokens=False)["input_ids"]) > 0
    assert 1 <= usage["completion_tokens"] <= 8 and usage["requests"] == 1
