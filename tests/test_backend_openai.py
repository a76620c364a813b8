"""The openai backend against real servers on 127.0.0.1: a scripted http.server (retries, errors, n, stop,
chat prefill, the API key) and `transformers serve` on the tiny model (completions and chat)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from openai_server import ScriptedServer

from stepdpo_cli.backends.base import Request, SamplingParams
from stepdpo_cli.backends.openai import BackendError, OpenAIBackend, sample_seed, split_prefill
from stepdpo_cli.backends.registry import load_backend
from stepdpo_cli.records import InputError
from stepdpo_cli.steps import STEP_PREFIX

SECRET = "sk-test-7f3a9c0e5b1d4e2f8a6c"


@pytest.fixture
def server():
    servers: list[ScriptedServer] = []

    def make(**kw) -> ScriptedServer:
        servers.append(ScriptedServer(**kw))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def backend(url: str, **kw) -> OpenAIBackend:
    kw.setdefault("retry_base_delay", 0.01)
    return OpenAIBackend("test-model", base_url=url, api_key_env="STEPDPO_TEST_KEY", **kw)


PARAMS = SamplingParams(n=1, temperature=1.0, max_tokens=16)


# ---------------------------------------------------------------------------- retries and clear errors

def test_429_then_ok_is_retried(server):
    srv = server()
    srv.script = [("status", 429, "rate limited")]
    out = backend(srv.url).generate([Request("p", seed=3)], PARAMS)
    assert len(out) == 1 and len(out[0]) == 1
    assert len(srv.requests) == 2


def test_500_then_ok_is_retried(server):
    srv = server()
    srv.script = [("status", 500, "boom"), ("status", 503, "busy")]
    out = backend(srv.url).generate([Request("p", seed=3)], PARAMS)
    assert out[0][0].text.startswith(" sample seed=3")
    assert len(srv.requests) == 3


def test_retries_are_bounded_and_the_error_names_endpoint_and_status(server):
    srv = server()
    srv.script = [("status", 500, "still broken")] * 5
    with pytest.raises(BackendError) as info:
        backend(srv.url, max_retries=2).generate([Request("p")], PARAMS)
    message = str(info.value)
    assert "\n" not in message
    assert "/completions" in message and "HTTP 500" in message and "still broken" in message
    assert len(srv.requests) == 3


def test_4xx_fails_at_once_with_the_server_message(server):
    srv = server()
    srv.script = [("status", 400, "prompt too long")]
    with pytest.raises(BackendError, match="HTTP 400: prompt too long"):
        backend(srv.url).generate([Request("p")], PARAMS)
    assert len(srv.requests) == 1


GARBAGE = [("application/json", b"{'choices': [oops"), ("application/json", b""), ("text/html", b"<html>502</html>"),
           ("application/json", b"[1, 2]"), ("application/json", b'{"choices": "x"}'),
           ("application/json", b'{"choices": [{"index": 0, "finish_reason": "stop", "text": 5}]}'),
           ("application/json", b'{"choices": [{"index": 0, "finish_reason": "stop"}]}')]


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
@pytest.mark.parametrize("garbage", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_responses_are_clear_one_line_errors(server, garbage, endpoint):
    srv = server()
    srv.script = [("garbage", garbage)]
    with pytest.raises(BackendError) as info:
        backend(srv.url, endpoint=endpoint).generate([Request("p")], PARAMS)
    message = str(info.value)
    assert "malformed response" in message and "\n" not in message and "/completions" in message
    assert len(srv.requests) == 1  # not retried: the same server would say the same again


def test_a_hanging_server_times_out_then_retries(server):
    srv = server()
    srv.script = [("hang", 30), ("hang", 30)]
    with pytest.raises(BackendError, match="timed out after 0.5 s after 2 attempts"):
        backend(srv.url, timeout=0.5, max_retries=1).generate([Request("p")], PARAMS)
    assert len(srv.requests) == 2


def test_a_hang_then_ok_succeeds(server):
    srv = server()
    srv.script = [("hang", 30)]
    out = backend(srv.url, timeout=0.5, max_retries=2).generate([Request("p", seed=5)], PARAMS)
    assert out[0][0].text.startswith(" sample seed=5")


def test_connection_refused_is_a_clear_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BackendError, match="connection failed after 2 attempts"):
        backend(f"http://127.0.0.1:{port}/v1", max_retries=1).generate([Request("p")], PARAMS)


# ------------------------------------------------------------------------------------------ API key

def test_api_key_is_sent_but_never_shown(server, monkeypatch, capfd):
    monkeypatch.setenv("STEPDPO_TEST_KEY", SECRET)
    srv = server()
    srv.script = [("status", 401, f"Incorrect API key provided: {SECRET}")]
    b = backend(srv.url)
    with pytest.raises(BackendError) as info:
        b.generate([Request("p")], PARAMS)
    assert srv.headers[0].get("authorization") == f"Bearer {SECRET}"
    assert "HTTP 401" in str(info.value) and "***" in str(info.value)
    out = b.generate([Request("p")], PARAMS)  # a record's contents come from completions only
    captured = capfd.readouterr()
    for text in (str(info.value), repr(b), captured.out, captured.err, repr(out)):
        assert SECRET not in text


def test_remote_openai_without_a_key_is_a_usage_error(monkeypatch):
    monkeypatch.delenv("STEPDPO_TEST_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(InputError, match=r"\$STEPDPO_TEST_KEY"):
        OpenAIBackend("gpt-4o", api_key_env="STEPDPO_TEST_KEY")


def test_load_backend_builds_the_openai_backend(server):
    srv = server()
    b = load_backend("openai:my-model", base_url=srv.url, api_key_env="STEPDPO_TEST_KEY", concurrency=2)
    assert isinstance(b, OpenAIBackend) and b.model == "my-model" and b.tokenizer is None
    b.generate([Request("p")], PARAMS)
    assert srv.requests[0]["model"] == "my-model"


# ------------------------------------------------------------------------- n, seeds, stop, concurrency

def test_n_from_a_server_that_honours_it_comes_back_in_index_order(server):
    srv = server(honour_n=True)
    out = backend(srv.url).generate([Request("p", seed=11)], SamplingParams(n=4, max_tokens=8))
    assert [c.text.split("k=")[1][0] for c in out[0]] == ["0", "1", "2", "3"]
    assert len(srv.requests) == 1 and srv.requests[0]["n"] == 4 and srv.requests[0]["seed"] == 11
    assert sum(c.num_tokens for c in out[0]) == 28  # usage shared out over the choices


def test_a_server_that_ignores_n_is_asked_once_per_sample_with_its_own_seed(server):
    srv = server(honour_n=False)
    requests = [Request("a", seed=1, n=3), Request("b", seed=2), Request("c", seed=3, n=0)]
    out = backend(srv.url).generate(requests, SamplingParams(n=2, max_tokens=8))
    assert [len(r) for r in out] == [3, 2, 0]
    seeds = [[int(c.text.split("seed=")[1].split()[0]) for c in r] for r in out]
    assert seeds == [[sample_seed(1, k) for k in range(3)], [sample_seed(2, k) for k in range(2)], []]
    assert len(set(seeds[0])) == 3
    # Same inputs, same samples: a second run (now knowing the server ignores n) sends the same seeds.
    again = backend(srv.url)
    assert again.generate(requests, SamplingParams(n=2, max_tokens=8)) == out


def test_stop_string_kept_by_the_server_is_cut(server):
    srv = server(keep_stop=True)
    out = backend(srv.url).generate([Request("p", seed=4)], SamplingParams(max_tokens=8, stop=("Step 2:",)))
    c = out[0][0]
    assert c.text == " sample seed=4 k=0. " and c.stop_reason == "Step 2:" and c.finish_reason == "stop"
    assert srv.requests[0]["stop"] == ["Step 2:"]


def test_concurrency_is_bounded(server):
    srv = server(delay=0.5)  # long enough that both workers are in flight together
    out = backend(srv.url, concurrency=2).generate([Request(str(i), seed=i) for i in range(6)], PARAMS)
    assert [r[0].text.split("seed=")[1].split()[0] for r in out] == [str(i) for i in range(6)]
    assert srv.max_in_flight == 2


# -------------------------------------------------------------------------------------------- chat

def test_split_prefill_puts_the_step_prefix_in_the_assistant_turn():
    prompt = "What is 2+3?\n" + STEP_PREFIX + " 2+3=5.\nStep 2:"
    assert split_prefill(prompt) == ("What is 2+3?", STEP_PREFIX + " 2+3=5.\nStep 2:")
    assert split_prefill("no prefix here") == ("no prefix here", "")


def test_chat_continues_an_assistant_prefill_where_the_server_can(server):
    srv = server(accept_prefill=True)
    prompt = "What is 2+3?\n" + STEP_PREFIX
    out = backend(srv.url, endpoint="chat").generate([Request(prompt, seed=9)], PARAMS)
    sent = srv.requests[0]
    assert sent["messages"] == [{"role": "user", "content": "What is 2+3?"},
                                {"role": "assistant", "content": STEP_PREFIX}]
    assert sent["continue_final_message"] is True and sent["add_generation_prompt"] is False
    assert out[0][0].text.startswith(" sample seed=9")


def test_chat_falls_back_to_a_user_message_and_strips_a_restated_prefix(server):
    srv = server(accept_prefill=False)
    prompt = "What is 2+3?\n" + STEP_PREFIX
    b = backend(srv.url, endpoint="chat")
    out = b.generate([Request(prompt, seed=9), Request(prompt, seed=10)], PARAMS)
    assert [r[0].text.split("seed=")[1].split()[0] for r in out] == ["9", "10"]
    assert out[0][0].text.startswith(" sample")  # the restated "Let's think step by step..." is gone
    assert srv.requests[-1]["messages"] == [{"role": "user", "content": prompt}]
    assert "continue_final_message" not in srv.requests[-1]


# ------------------------------------------------------------- a real server: transformers serve

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def transformers_server(tiny_model, tmp_path_factory):
    """`transformers serve` on the tiny model, 127.0.0.1 only, offline; stopped at the end."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    port = _free_port()
    cache = tmp_path_factory.mktemp("hf-cache")
    log_path = cache / "serve.log"
    # `python -c` rather than the `transformers` script: the CLI's `chat` command needs `requests`.
    code = ("import sys\nfrom transformers.cli.serve import Serve\n"
            "Serve(force_model=sys.argv[1], host='127.0.0.1', port=int(sys.argv[2]), device='cpu')")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-c", code, tiny_model, str(port)], stdout=log_file,
                                stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited: {log_path.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("transformers serve did not start within 180 s")
        yield url + "/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# transformers serve samples only when asked through its own generation_config field.
SAMPLING = {"generation_config": json.dumps({"do_sample": True, "temperature": 1.0, "top_p": 1.0})}


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_transformers_serve_gives_n_samples_although_it_ignores_n(transformers_server, tiny_model, endpoint):
    b = OpenAIBackend(tiny_model, base_url=transformers_server, endpoint=endpoint, concurrency=2,
                      extra_body=SAMPLING)
    requests = [Request("What is 2+3?\n" + STEP_PREFIX, seed=1, n=3), Request("Hi", seed=2)]
    out = b.generate(requests, SamplingParams(n=2, temperature=1.0, max_tokens=12))
    assert [len(r) for r in out] == [3, 2]
    for c in out[0] + out[1]:
        assert isinstance(c.text, str) and 0 < c.num_tokens <= 12 and c.finish_reason in ("stop", "length")
    assert len({c.text for c in out[0]}) > 1  # distinct seeds, distinct samples
    b.close()


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_transformers_serve_stop_strings_are_cut(transformers_server, tiny_model, endpoint):
    # Seeded sampling, one request at a time (the server seeds torch globally): the same text twice. Greedy
    # text of the random model is often empty in chat (it ends the turn at once).
    b = OpenAIBackend(tiny_model, base_url=transformers_server, endpoint=endpoint, concurrency=1,
                      extra_body=SAMPLING)
    # The model is random: find a prompt whose text has a printable character to stop at.
    for prompt in ["What is 2+3?\n" + STEP_PREFIX, "Hi", "Q: 7*8=?", "abc def", "Step 1: 4+4=8."]:
        request = [Request(prompt, seed=0)]
        full = b.generate(request, SamplingParams(temperature=1.0, max_tokens=16))[0][0].text
        candidates = [ch for ch in full[1:] if ch.isprintable() and ch != "\ufffd" and not ch.isspace()]
        if candidates:
            break
    else:
        pytest.skip(f"texts of the random model have no usable stop character: {full!r}")
    stop = candidates[0]
    cut = b.generate(request, SamplingParams(temperature=1.0, max_tokens=16, stop=(stop,)))[0][0]
    assert cut.text == full[: full.index(stop)]
    assert cut.stop_reason == stop and cut.finish_reason == "stop"
    b.close()


def test_reasoning_model_parameters_follow_what_the_server_accepts(server):
    """Chat sends max_completion_tokens (OpenAI's reasoning models reject max_tokens); a 400 saying temperature is
    unsupported drops it, once and for every later request; /completions keeps max_tokens."""
    srv = server()
    srv.script = [("status", 400, "Unsupported value: 'temperature' does not support 0.0 with this model. "
                                  "Only the default (1) value is supported.")]
    b = backend(srv.url, endpoint="chat", concurrency=1)  # one at a time: "later" is well defined
    out = b.generate([Request("Q\n" + STEP_PREFIX, seed=1), Request("R\n" + STEP_PREFIX, seed=2)],
                     SamplingParams(max_tokens=8))
    assert [len(r) for r in out] == [1, 1]
    first, *later = srv.requests
    assert first["max_completion_tokens"] == 8 and "max_tokens" not in first and first["temperature"] == 0.0
    assert len(later) == 2 and all("temperature" not in r and r["max_completion_tokens"] == 8 for r in later)

    srv2 = server()
    srv2.script = [("status", 400, "Unsupported parameter: 'max_completion_tokens' is not supported.")]
    b2 = backend(srv2.url, endpoint="chat")
    b2.generate([Request("Q\n" + STEP_PREFIX, seed=1)], SamplingParams(max_tokens=8))
    assert srv2.requests[-1]["max_tokens"] == 8 and "max_completion_tokens" not in srv2.requests[-1]

    srv3 = server()
    backend(srv3.url).generate([Request("p", seed=1)], SamplingParams(max_tokens=8))
    assert srv3.requests[0]["max_tokens"] == 8 and "max_completion_tokens" not in srv3.requests[0]

    srv4 = server()  # a 400 about something else is still an error, not a silent retry
    srv4.script = [("status", 400, "This model's maximum context length is 4096 tokens.")]
    with pytest.raises(BackendError, match="HTTP 400"):
        backend(srv4.url).generate([Request("p", seed=1)], SamplingParams(max_tokens=8))
    assert len(srv4.requests) == 1
