"""The openai backend across several servers: spread, failover, a server killed and restarted mid-run, all of
them down; against three real local OpenAI-compatible servers on 127.0.0.1 (tests/openai_server.py)."""
from __future__ import annotations

import json
import threading
import time

import pytest
from conftest import run_cli
from openai_server import ScriptedServer

from stepdpo_cli.backends.base import Request, SamplingParams
from stepdpo_cli.backends.openai import BackendError, OpenAIBackend
from stepdpo_cli.backends.servers import Attempt, Server, ServerPool, Unavailable, parse_server_urls
from stepdpo_cli.records import InputError

PARAMS = SamplingParams(n=1, temperature=1.0, max_tokens=16)
ENV = {"OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""}


@pytest.fixture
def servers():
    made: list[ScriptedServer] = []

    def make(count: int = 3, **kw) -> list[ScriptedServer]:
        made.extend(ScriptedServer(**kw) for _ in range(count))
        return made[-count:]

    yield make
    for s in made:
        s.close()


def urls(servers: list[ScriptedServer]) -> str:
    return ",".join(s.url for s in servers)


def backend(url: str, **kw) -> OpenAIBackend:
    kw.setdefault("retry_base_delay", 0.01)
    return OpenAIBackend("test-model", base_url=url, api_key_env="STEPDPO_TEST_KEY", **kw)


def texts(out: list[list]) -> list[list[str]]:
    return [[c.text for c in r] for r in out]


# ------------------------------------------------------------------------------------------- --base-url

def test_base_url_takes_a_list_or_a_file_of_urls(tmp_path, monkeypatch):
    assert parse_server_urls("http://a:1/v1, http://b:2/v1,") == ["http://a:1/v1", "http://b:2/v1"]
    listed = tmp_path / "servers.txt"
    listed.write_text("# the vLLM fleet\nhttp://node1:8000/v1\n\n  https://node2:8000/v1  # 72B, TP 8\n")
    assert parse_server_urls(str(listed)) == ["http://node1:8000/v1", "https://node2:8000/v1"]
    monkeypatch.setenv("OPENAI_BASE_URL", "http://x:1/v1,http://y:1/v1")
    assert parse_server_urls(None) == ["http://x:1/v1", "http://y:1/v1"]
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert parse_server_urls(None) == [None]  # the OpenAI API itself


@pytest.mark.parametrize("value,message", [
    ("no-such-file.txt", "not a URL (http://HOST:PORT/v1) nor a file of URLs"),
    ("http://a:1/v1,ftp://b/v1", "not an http(s) URL: 'ftp://b/v1'"),
    ("http://a:1/v1,http://a:1/v1/", "server listed twice"),
    (" , ://", "'://': not an http(s) URL"),
    ("http://", "not an http(s) URL: 'http://'"),
])
def test_a_bad_base_url_is_a_usage_error(value, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_server_urls(value)


def test_bad_server_list_on_the_command_line_is_exit_2_one_line(tmp_path):
    empty = tmp_path / "servers.txt"
    empty.write_text("# nobody yet\n")
    proc = run_cli("sample", "-m", "openai:x", "--base-url", str(empty), input='{"id":"a","problem":"1+1","answer":"2"}\n',
                   env=ENV)
    assert proc.returncode == 2 and proc.stdout == b""
    lines = proc.stderr.decode().strip().splitlines()
    assert lines == [f"stepdpo: error: field '--base-url': {empty}: no server URL given"]
    empty.write_text("http://node1:8000/v1\n# next\nnode2:8000\n")
    proc = run_cli("sample", "-m", "openai:x", "--base-url", str(empty), input='{"id":"a","problem":"1+1","answer":"2"}\n',
                   env=ENV)
    assert proc.returncode == 2 and proc.stderr.decode().strip().splitlines() == [
        f"stepdpo: error: field '--base-url': {empty}: line 3: not an http(s) URL: 'node2:8000'"]


# ------------------------------------------------------------------------------------ spread and identity

def test_requests_spread_over_servers_and_outputs_match_one_server(servers):
    fleet = servers(3, delay=0.05)
    requests = [Request(f"p{i}", seed=i, n=2) for i in range(24)]
    params = SamplingParams(n=2, temperature=1.0, max_tokens=16)
    alone = backend(fleet[0].url, concurrency=2).generate(requests, params)
    for s in fleet:
        s.requests.clear()
        s.max_in_flight = 0
    spread = backend(urls(fleet), concurrency=2).generate(requests, params)
    assert texts(spread) == texts(alone)
    shares = [len(s.requests) for s in fleet]
    assert sum(shares) == 24 and min(shares) >= 5, shares  # least outstanding: about even at equal speed
    assert all(s.max_in_flight == 2 for s in fleet)  # --concurrency is per server


def test_a_slow_server_gets_less_work(servers):
    slow, fast1, fast2 = servers(3)
    slow.delay = 0.4
    backend(urls([slow, fast1, fast2]), concurrency=1).generate([Request(str(i), seed=i) for i in range(30)], PARAMS)
    assert len(slow.requests) < len(fast1.requests) / 3 and len(slow.requests) < len(fast2.requests) / 3


def test_a_failing_server_is_taken_out_of_rotation(servers):
    broken, ok1, ok2 = servers(3, delay=0.02)
    broken.script = [("status", 503, "loading model")] * 1000
    b = backend(urls([broken, ok1, ok2]), concurrency=2, retry_base_delay=0.2)
    out = b.generate([Request(str(i), seed=i) for i in range(40)], PARAMS)
    assert [r[0].text.split("seed=")[1].split()[0] for r in out] == [str(i) for i in range(40)]
    assert len(ok1.requests) + len(ok2.requests) == 40
    assert len(broken.requests) <= 8  # probes after doubling backoffs (0.2, 0.4, 0.8 s ...), not a third of the work
    lines = b.pool.summary_lines()
    assert f"server {broken.url}: {len(broken.requests)} request(s), 0 answered, {len(broken.requests)} failed" \
        in lines[0]


def test_a_4xx_is_not_failed_over(servers):
    """A request the server refuses (400) is the request's fault: every server would refuse it."""
    first, second, third = servers(3)
    first.script = [("status", 400, "prompt too long")]
    with pytest.raises(BackendError, match="HTTP 400: prompt too long"):
        backend(urls([first, second, third]), concurrency=1).generate([Request("p")], PARAMS)
    assert (len(first.requests), len(second.requests), len(third.requests)) == (1, 0, 0)


# --------------------------------------------------------------------------------------- the give-up rule

def pool(count: int, **kw) -> ServerPool:
    kw = {"max_retries": 2, "unavailable_timeout": 60.0, "retry_base_delay": 0.0, "retry_max_delay": 0.0, **kw}
    return ServerPool([Server(f"http://s{i}/v1", None) for i in range(count)], 2, **kw)


def test_requests_in_flight_when_a_server_dies_count_as_one_outage():
    p = pool(2, retry_base_delay=10.0, retry_max_delay=10.0)
    cancel = threading.Event()
    first, second = p.acquire(cancel, Attempt()), p.acquire(cancel, Attempt())  # one on each server
    third = p.acquire(cancel, Attempt())
    assert first is third  # least outstanding, then the first listed
    sent = time.monotonic()
    p.failed(first, Attempt(), sent, "down", 0.1)
    down_until = first.down_until
    p.failed(third, Attempt(), sent, "down", 0.1)  # sent before it went down: the same outage
    assert first.failures == 1 and first.down_until == down_until and first.failed == 2
    assert p.acquire(cancel, Attempt()) is second  # out of rotation: work goes elsewhere


def test_one_server_fails_after_max_retries_as_before():
    p = pool(1, unavailable_timeout=None)
    server, attempt = p.servers[0], Attempt()
    assert [p.failed(p.acquire(threading.Event(), attempt), attempt, time.monotonic(), "x", 0) for _ in range(3)] \
        == [False, False, True]
    assert server.failures == 3


def test_several_servers_wait_out_an_outage_until_the_stated_time():
    p = pool(3, unavailable_timeout=60.0)
    attempt = Attempt()
    for _ in range(20):  # every server down: keep probing while within unavailable_timeout
        assert not p.failed(p.acquire(threading.Event(), attempt), attempt, time.monotonic(), "refused", 0)
    probe = p.acquire(threading.Event(), attempt)
    attempt.started -= 61  # ... and give up once no server has answered for 60 s
    assert p.failed(probe, attempt, time.monotonic(), "refused", 0)
    with pytest.raises(Unavailable):  # requests waiting for a server give up too
        p.acquire(threading.Event(), attempt)


def test_a_server_back_within_the_stated_time_costs_nothing():
    p = pool(2, unavailable_timeout=60.0)
    attempt = Attempt()
    for _ in range(10):
        p.failed(p.acquire(threading.Event(), attempt), attempt, time.monotonic(), "refused", 0)
    server = p.acquire(threading.Event(), attempt)
    p.answered(server, 0.01, None)
    assert server.failures == 0 and p.acquire(threading.Event(), Attempt()) is server  # back in rotation


def test_a_request_that_fails_everywhere_while_others_succeed_gives_up():
    p = pool(3)
    attempt, cancel = Attempt(), threading.Event()
    gave_up = []
    for _ in range(9):  # (max_retries + 1) x 3 servers
        server = p.acquire(cancel, Attempt())
        gave_up.append(p.failed(server, attempt, time.monotonic(), "HTTP 500", 0))
        other = p.acquire(cancel, Attempt())
        p.answered(other, 0.01, None)  # other requests are answered meanwhile
    assert gave_up == [False] * 8 + [True]


# ------------------------------------------------------------------------- the CLI, as a user runs it

PROBLEMS = "".join(json.dumps({"id": f"p{i}", "problem": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n"
                   for i in range(30))


def sample(url: str, *extra: str):
    return run_cli("sample", "-m", "openai:test", "--base-url", url, "-n", "2", "--concurrency", "2",
                   "--backend-option", "retry_base_delay=0.05", *extra, input=PROBLEMS, env=ENV)


def test_sample_over_three_servers_is_byte_identical_to_one(servers):
    fleet = servers(3, delay=0.01)
    one = sample(fleet[0].url)
    three = sample(urls(fleet))
    assert one.returncode == three.returncode == 0, three.stderr.decode()
    assert three.stdout == one.stdout and len(one.stdout.splitlines()) == 60
    stderr = three.stderr.decode()
    assert all(f"openai backend: server {s.url}: " in stderr for s in fleet)


def test_a_server_killed_mid_run_and_restarted_loses_nothing(servers):
    fleet = servers(3, delay=0.02)
    reference = sample(fleet[0].url).stdout
    victim = fleet[1]
    victim.requests.clear()
    killed = threading.Event()

    def kill_after_three(server: ScriptedServer) -> None:
        if len(server.requests) >= 3:
            server.after_request = None
            killed.set()

    def kill_then_restart() -> None:  # from outside the server, as a kill is
        if killed.wait(60):
            victim.stop()  # requests in flight on it now get no answer, new ones are refused
            time.sleep(1.0)
            victim.start()  # back a second later, on the same port

    victim.after_request = kill_after_three
    threading.Thread(target=kill_then_restart, daemon=True).start()
    proc = sample(urls(fleet))
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == reference  # every record, once, in input order, the same text
    ids = [json.loads(line)["id"] for line in proc.stdout.splitlines()]
    assert len(ids) == len(set(ids)) == 60
    summary = [line for line in proc.stderr.decode().splitlines() if line.startswith(f"openai backend: server {victim.url}")]
    assert len(summary) == 1 and " 0 failed" not in summary[0]


def test_all_servers_down_exits_1_with_one_line_and_resume_completes(servers, tmp_path):
    fleet = servers(3, delay=0.02)
    reference = sample(fleet[0].url).stdout
    answered = []
    ten_answered = threading.Event()

    def count(server: ScriptedServer) -> None:
        answered.append(1)
        if len(answered) >= 10:
            ten_answered.set()

    def kill_all() -> None:
        if ten_answered.wait(60):
            for s in fleet:
                s.after_request = None
                s.stop()

    for s in fleet:
        s.after_request = count
    threading.Thread(target=kill_all, daemon=True).start()
    out = tmp_path / "samples.jsonl"
    started = time.monotonic()
    # 4 problems per backend call (openai: 4 x batch-size / n), so some calls finish and are written first
    proc = sample(urls(fleet), "-o", str(out), "--batch-size", "2", "--backend-option", "unavailable_timeout=1")
    assert proc.returncode == 1
    assert time.monotonic() - started < 60
    errors = [line for line in proc.stderr.decode().splitlines() if line.startswith("stepdpo: ")]
    assert len(errors) == 1 and "all 3 servers failing" in errors[0] and "connection failed" in errors[0], errors
    assert "Traceback" not in proc.stderr.decode()
    kept = (tmp_path / "samples.jsonl.partial").read_bytes()
    assert kept and reference.startswith(kept)  # finished records are on disk, in order
    for s in fleet:
        s.start()
    again = sample(urls(fleet), "-o", str(out), "--batch-size", "2", "--resume")
    assert again.returncode == 0, again.stderr.decode()
    assert out.read_bytes() == reference


def test_the_judge_spreads_over_servers_too(servers):
    def verdict(body: dict, index: int) -> str:
        prompt = json.dumps(body.get("messages"))
        return "Final Decision: Step 1: correct; Step 2: incorrect" if "= 80" in prompt \
            else "Final Decision: Step 1: correct; Step 2: correct"

    fleet = servers(3, text_for=verdict, delay=0.01)
    records = "".join(json.dumps({"id": f"p{i}/s0", "problem": f"What is 9*9+{i}?", "answer": str(81 + i),
                                  "steps": [" 9 * 9 = 81.", f" 9 * 9 = {80 if i % 2 else 81}."]}) + "\n"
                      for i in range(12))

    def judge(url: str):
        return run_cli("localize", "--method", "judge", "--judge", "openai:judge", "--base-url", url,
                       "--concurrency", "1", input=records, env=ENV)

    one, three = judge(fleet[0].url), judge(urls(fleet))
    assert one.returncode == three.returncode == 0, three.stderr.decode()
    assert three.stdout == one.stdout
    assert [json.loads(line)["first_error_step"] for line in three.stdout.splitlines()] == [None, 2] * 6
    assert all(s.requests for s in fleet[1:])
