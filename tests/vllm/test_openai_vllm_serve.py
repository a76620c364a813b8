"""The openai backend against the reference OpenAI-compatible server, `vllm serve` (vLLM tier).

Unlike `transformers serve` (tests/test_backend_openai.py), vLLM honours n, logprobs and assistant prefill
(`continue_final_message`), so these paths of the client run against a real server here.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

# Without vllm installed, `import vllm` would find this very folder (tests/ is on sys.path) as a namespace
# package; a real install has a file.
if getattr(pytest.importorskip("vllm"), "__file__", None) is None:
    pytest.skip("vllm is not installed", allow_module_level=True)

from stepdpo_cli.backends.base import Request, SamplingParams  # noqa: E402
from stepdpo_cli.backends.openai import OpenAIBackend  # noqa: E402
from stepdpo_cli.steps import STEP_PREFIX  # noqa: E402

pytestmark = pytest.mark.vllm

PROBLEM = "What is 2+3?"
PROMPT = PROBLEM + "\n" + STEP_PREFIX


@pytest.fixture(scope="module")
def vllm_server(tiny_model, tmp_path_factory):
    """`vllm serve` on the tiny model, 127.0.0.1 and a free port only; stopped at the end."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = tmp_path_factory.mktemp("vllm-serve") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", tiny_model,
               "--host", "127.0.0.1", "--port", str(port), "--enforce-eager", "--dtype", "float32",
               "--max-model-len", "1024", "--seed", "0"]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited: {log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("vllm serve did not start within 300 s")
            try:
                import urllib.request
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_completions_n_logprobs_and_stop_on_vllm_serve(vllm_server, tiny_model):
    b = OpenAIBackend(tiny_model, base_url=vllm_server, concurrency=2)
    params = SamplingParams(n=3, temperature=1.0, max_tokens=10, logprobs=True)
    out = b.generate([Request(PROMPT, seed=1), Request("Hi", seed=2, n=1)], params)
    assert [len(r) for r in out] == [3, 1]
    assert not b._one_per_call  # vLLM returned all n choices from one request
    assert len({c.text for c in out[0]}) == 3
    for c in out[0] + out[1]:
        assert c.logprobs is not None and len(c.logprobs) == c.num_tokens and all(lp <= 0 for lp in c.logprobs)
    assert b.generate([Request(PROMPT, seed=1)], params) == out[:1]  # seeded: reproducible

    greedy = SamplingParams(temperature=0.0, max_tokens=12)
    full = b.generate([Request(PROMPT)], greedy)[0][0].text
    stop = full[2:4] or full[:1]
    if not stop.strip() or "\ufffd" in stop:
        pytest.skip(f"no usable stop string in the greedy text {full!r}")
    cut = b.generate([Request(PROMPT)], SamplingParams(temperature=0.0, max_tokens=12, stop=(stop,)))[0][0]
    assert cut.text == full[: full.index(stop)] and cut.stop_reason == stop and cut.finish_reason == "stop"


def test_chat_prefill_continues_the_step_prefix_exactly(vllm_server, tiny_model):
    """chat with an assistant prefill == completions on the chat-rendered prompt + the prefix."""
    from transformers import AutoTokenizer

    chat = OpenAIBackend(tiny_model, base_url=vllm_server, endpoint="chat")
    text = OpenAIBackend(tiny_model, base_url=vllm_server, endpoint="completions")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": PROBLEM}], tokenize=False,
                                             add_generation_prompt=True) + STEP_PREFIX
    params = SamplingParams(temperature=0.0, max_tokens=8, logprobs=True)
    via_chat = chat.generate([Request(PROMPT)], params)[0][0]
    via_text = text.generate([Request(rendered)], params)[0][0]
    assert chat._prefill  # the server accepted continue_final_message
    assert via_chat.text == via_text.text
    assert via_chat.logprobs == pytest.approx(via_text.logprobs, abs=1e-4)
