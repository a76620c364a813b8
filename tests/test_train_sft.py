"""`stepdpo train --objective sft` end to end on the tiny model: metrics on stdout, a loadable model dir."""
from __future__ import annotations

import json
import os

import orjson
import pytest

from conftest import run_cli

pytestmark = pytest.mark.timeout(300)


def _sft_rows(path, n=16):
    with open(path, "w") as handle:
        for i in range(n):
            a, b = i, i + 3
            handle.write(json.dumps({"problem": f"What is {a}+{b}?", "answer": str(a + b),
                                     "completion": f" {a}+{b}={a + b}.\nStep 2: The answer is {a + b}."}) + "\n")
    return str(path)


def test_sft_lowers_loss_and_writes_loadable_model(tiny_model, tmp_path):
    data = _sft_rows(tmp_path / "sft.jsonl")
    out = tmp_path / "sft"
    proc = run_cli("train", "--model", tiny_model, "--data", data, "--output", str(out), "--objective", "sft",
                   "--lr", "1e-3", "--max-steps", "8", "--batch-size", "4", "--seed", "1",
                   env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    metrics = [orjson.loads(line) for line in proc.stdout.splitlines()]  # stdout is only JSONL
    assert [m["step"] for m in metrics] == list(range(1, 9))
    assert {"loss", "lr", "grad_norm", "tokens_per_s"} <= set(metrics[0])
    assert metrics[-1]["loss"] < metrics[0]["loss"] - 0.5
    meta = json.loads((out / "stepdpo.json").read_text())
    assert meta["objective"] == "sft" and meta["template"] == "chat"

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(out))
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert model.config.model_type == "qwen2" and tokenizer.eos_token_id is not None


def test_sft_reads_stdin_and_aliases(tiny_model, tmp_path):
    rows = "".join(json.dumps({"question": f"q{i}", "solution": f" s{i}"}) + "\n" for i in range(4))
    proc = run_cli("train", "--model", f"hf:{tiny_model}", "--data", "-", "--output", str(tmp_path / "o"),
                   "--objective", "sft", "--max-steps", "1", "--template", "raw", input=rows)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert json.loads((tmp_path / "o" / "stepdpo.json").read_text())["template"] == "raw"


def test_bad_row_names_line_and_field(tiny_model, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n" + json.dumps({"prompt": "p"}) + "\n")
    proc = run_cli("train", "--model", tiny_model, "--data", str(data), "--output", str(tmp_path / "o"),
                   "--objective", "sft")
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert f"{data}:2" in err and "'completion'" in err
    assert not os.path.exists(tmp_path / "o" / "model.safetensors")
