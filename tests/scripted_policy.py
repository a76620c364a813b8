"""Test-only helpers for the data-pipeline tests: a tiny addition task whose steps a program can check, a
verifier for it, and a deterministic `Backend` whose completions are decided by the prompt.

Problem "Add: 3 + 5 + 7" (answer 15); a solution's steps are " 3 + 5 = 8.", " 8 + 7 = 15.",
" The answer is \\boxed{15}.". The scripted policy continues any prefix the way a model that copies its
context would: from a correct prefix it finishes correctly; from a wrong one it carries the wrong value on.
"""
from __future__ import annotations

import re
from typing import Sequence

from stepdpo_cli.backends.base import Completion, Request, SamplingParams
from stepdpo_cli.records import derive_seed
from stepdpo_cli.steps import STEP_PREFIX, join_steps, split_steps

_ADD = re.compile(r"(-?\d+) \+ (-?\d+) = (-?\d+)")
_BOXED = re.compile(r"\\boxed\{(-?\d+)\}")


def problem_text(numbers: Sequence[int]) -> str:
    return "Add: " + " + ".join(map(str, numbers))


def numbers_of(problem: str) -> list[int]:
    line = next(line for line in problem.splitlines() if line.startswith("Add:"))
    return [int(x) for x in re.findall(r"-?\d+", line)]


def solution_steps(numbers: Sequence[int], wrong_at: int | None = None, start_acc: int | None = None,
                   start: int = 1) -> list[str]:
    """Step bodies from step `start` on; `wrong_at` (1-based) makes that step's sum off by one."""
    acc = numbers[0] if start_acc is None else start_acc
    bodies = []
    for i in range(start, len(numbers)):
        total = acc + numbers[i] + (1 if wrong_at == i else 0)
        bodies.append(f" {acc} + {numbers[i]} = {total}.")
        acc = total
    bodies.append(f" The answer is \\boxed{{{acc}}}.")
    return bodies


def make_record(numbers: Sequence[int], wrong_at: int | None, rid: str = "p0/s0", **extra) -> dict:
    """A record shaped like `stepdpo sample` output (raw template) for a solution wrong at `wrong_at`."""
    steps = solution_steps(numbers, wrong_at)
    completion = join_steps(steps)
    return {"id": rid, "problem_id": rid.split("/")[0], "problem": problem_text(numbers),
            "answer": str(sum(numbers)), "completion": completion, "steps": steps, "template": "raw",
            "correct": wrong_at is None, "prediction": _BOXED.search(steps[-1]).group(1), **extra}


def check_arith(problem: str, steps: list[str], record: dict) -> dict:
    """Verifier: each addition step must add the next operand to the previous result; corrections included."""
    numbers = numbers_of(problem)
    verdicts: list[bool | None] = []
    corrections: dict[int, str] = {}
    acc = numbers[0]
    for index, body in enumerate(steps, start=1):
        add, boxed = _ADD.search(body), _BOXED.search(body)
        if add and index < len(numbers):
            a, b, c = map(int, add.groups())
            ok = a == acc and b == numbers[index] and a + b == c
            if not ok:
                corrections[index] = f" {acc} + {numbers[index]} = {acc + numbers[index]}."
            verdicts.append(ok)
            acc = c  # later steps are judged against what the solution itself carried forward
        elif boxed:
            verdicts.append(int(boxed.group(1)) == acc)
        else:
            verdicts.append(None)
    return {"verdicts": verdicts, "corrections": corrections}


def check_arith_list(problem: str, steps: list[str], record: dict) -> list:
    """The same verifier returning the plain list form."""
    return check_arith(problem, steps, record)["verdicts"]


class ScriptedPolicy:
    """A `Backend` whose completions follow from the prompt: continue the solution after the given prefix.

    `error_percent` of samples (chosen by the request seed and sample index, so it is deterministic) make a
    fresh mistake at a step chosen the same way; 0 means every continuation of a correct prefix is correct.
    `calls` records (number of prompts, completions) per generate call.
    """
    name = "scripted"
    model = "scripted"
    tokenizer = None

    def __init__(self, error_percent: int = 0):
        self.error_percent = error_percent
        self.calls: list[tuple[int, int]] = []
        self.prompts: list[str] = []

    def generate(self, requests: Sequence[Request], params: SamplingParams) -> list[list[Completion]]:
        out = []
        for request in requests:
            n = request.n if request.n is not None else params.n
            self.prompts.append(request.prompt)
            out.append([self.complete(request.prompt, request.seed, j) for j in range(n)])
        self.calls.append((len(requests), sum(len(c) for c in out)))
        return out

    def complete(self, prompt: str, seed: int, j: int) -> Completion:
        numbers = numbers_of(prompt)
        tail = prompt[prompt.index(STEP_PREFIX) + len(STEP_PREFIX):]
        done = split_steps(tail)[:-1] if tail else []  # the prefix ends with "Step k:" and an empty body
        acc = numbers[0]
        for body in done:
            add = _ADD.search(body)
            if add:
                acc = int(add.group(3))
        start = len(done) + 1
        wrong_at = None
        remaining = len(numbers) - start
        if remaining > 0 and derive_seed(seed, j, "err") % 100 < self.error_percent:
            wrong_at = start + derive_seed(seed, j, "pos") % remaining
        if start >= len(numbers):  # only the answer step is left
            bodies = [f" The answer is \\boxed{{{acc}}}."]
        else:
            bodies = solution_steps(numbers, wrong_at, start_acc=acc, start=start)
        text = join_steps(bodies, start=start)
        return Completion(text=text, num_tokens=len(text), finish_reason="stop")

    def close(self) -> None:
        pass


def flag_first_step(problem: str, steps: list[str], record: dict) -> dict:
    """A verifier for free text (the random tiny model): step 1 is wrong, and here is its correction."""
    return {"verdicts": [False] + [None] * (len(steps) - 1), "corrections": {1: " 1 + 1 = 2."}}


def _serve_json(respond):
    """A local OpenAI-compatible server on 127.0.0.1 whose POSTs answer `respond(body) -> (object, choices)`."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            kind, choices = respond(body)
            data = json.dumps({"id": "c", "object": kind, "created": 0, "model": body["model"], "choices": choices,
                               "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


def serve_policy(policy: "ScriptedPolicy"):
    """Serve `policy` as an OpenAI-compatible /v1/completions endpoint on 127.0.0.1; returns (server, base_url)."""

    def respond(body):
        prompt = body["prompt"] if isinstance(body["prompt"], str) else body["prompt"][0]
        n, seed = int(body.get("n") or 1), int(body.get("seed") or 0)
        return "text_completion", [{"index": j, "text": policy.complete(prompt, seed, j).text,
                                    "finish_reason": "stop", "logprobs": None} for j in range(n)]

    return _serve_json(respond)


def serve_chat(reply):
    """An OpenAI-compatible chat/completions server on 127.0.0.1 answering `reply(prompt_text)`; (server, url)."""

    def respond(body):
        text = reply("".join(m["content"] for m in body.get("messages", [])) or str(body.get("prompt")))
        return "chat.completion", [{"index": 0, "message": {"role": "assistant", "content": text},
                                    "finish_reason": "stop"}]

    return _serve_json(respond)
