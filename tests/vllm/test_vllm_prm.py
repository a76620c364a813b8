"""A stepdpo PRM on vLLM's pooling runner (the vLLM tier): the same step rewards as the hf scorer, and
`stepdpo score --backend vllm` writes the same records."""
from __future__ import annotations

import json

import pytest

if getattr(pytest.importorskip("vllm"), "__file__", None) is None:
    pytest.skip("vllm is not installed", allow_module_level=True)

from conftest import run_cli  # noqa: E402

pytestmark = pytest.mark.vllm

STEPS = [[" 2 + 5 = 7.", " 7 + 1 = 8.", " The answer is \\boxed{8}."], [" 3 + 3 = -6.", " The answer is -6."]]


@pytest.fixture(scope="module")
def prm(tiny_model, tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("vllm-prm")
    rows = root / "rows.jsonl"
    rows.write_text("".join(json.dumps({"problem": f"Add: {i} + 2", "steps": s, "correct": i % 2 == 0}) + "\n"
                            for i, s in enumerate(STEPS * 4)))
    proc = run_cli("train", "-q", "--objective", "prm", "-m", tiny_model, "--data", str(rows), "--output",
                   str(root / "prm"), "--max-steps", "3", "--lr", "1e-3", "--template", "raw")
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return str(root / "prm")


def test_vllm_rewards_equal_hf_rewards(prm):
    from stepdpo_cli.rewards import load_prm

    items = [("Add: 2 + 5 + 1", STEPS[0]), ("Add: 3 + 3", STEPS[1])]
    hf = load_prm(prm, device="cpu", dtype="float32").score(items)
    engine = load_prm(prm, "vllm", dtype="float32")
    try:
        vllm = engine.score(items)
    finally:
        engine.close()
    assert [len(r) for r in vllm] == [3, 2]
    for a, b in zip(hf, vllm):
        assert a == pytest.approx(b, abs=1e-4)


def test_score_cli_with_the_vllm_backend(prm, tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": f"r{i}", "problem": "Add: 2 + 5 + 1", "steps": s}) + "\n"
                           for i, s in enumerate(STEPS)))
    out = {}
    for backend in ("hf", "vllm"):
        proc = run_cli("score", "--prm", prm, "--backend", backend, "--dtype", "float32", "-i", str(inp), "-q")
        assert proc.returncode == 0, proc.stderr.decode()[-3000:]
        out[backend] = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    for a, b in zip(out["hf"], out["vllm"]):
        assert a["step_rewards"] == pytest.approx(b["step_rewards"], abs=1e-4)
