"""The judge localizer: verdict parsing in many styles, and a real local OpenAI-compatible server as judge."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stepdpo_cli.localizers.judge import build_judge_prompt, load_judge_prompt, parse_verdicts
from conftest import run_cli

# (judge text, number of steps, neutral_is_error, expected first error, expected status)
STYLES = [
    ("Reasoning...\nFinal Decision: Step 1: correct; Step 2: neutral; Step 3: incorrect", 4, False, 3, "error_found"),
    ("Final Decision: Step 1: correct; Step 2: neutral; Step 3: incorrect", 4, True, 2, "error_found"),
    ("**Final Decision:** **Step 1:** Correct; **Step 2:** Incorrect", 3, False, 2, "error_found"),
    ("final decision: step 1: correct; step 2: correct; step 3: incorrect", 5, False, 3, "error_found"),
    ("Step 1 is fine. Step 2 is correct. Step 3 is incorrect because 4*5 is 20, not 25.", 4, False, 3, "error_found"),
    ("- Step 1: correct\n- Step 2: correct\n- Step 3: wrong\n", 3, False, 3, "error_found"),
    ("| Step | Verdict |\n|---|---|\n| 1 | Correct |\n| 2 | Incorrect |\n", 3, False, 2, "error_found"),
    ("| Step 1 | correct |\n| Step 2 | correct |\n| Step 3 | incorrect |", 4, False, 3, "error_found"),
    ("Step 1: The student adds 2 and 3 to get 5. This is correct.\nStep 2: They multiply 5 by 4 and get 24, "
     "which is wrong.", 3, False, 2, "error_found"),
    ("Final Decision: Step 1: correct; Step 2: correct; Step 3: correct", 3, False, None, "no_error"),
    ("I checked the whole thing carefully. All steps are correct.", 5, False, None, "no_error"),
    ("The first incorrect step is Step 4.", 6, False, 4, "error_found"),
    ('{"first_error_step": 2, "reason": "sign error"}', 3, False, 2, "error_found"),
    ("Steps 1-3 are correct, but step 4 contains an error.", 5, False, 4, "error_found"),
    ("Step 1: correct\nStep 2: not correct (the student drops a sign)", 3, False, 2, "error_found"),
    ("Step 1: \u2713\nStep 2: \u2713\nStep 3: \u2717", 3, False, 3, "error_found"),
    ("### Step 1\nCorrect.\n### Step 2\nIncorrect: 7 - 9 is -2, not 2.", 3, False, 2, "error_found"),
    ("1. correct\n2. correct\n3. incorrect", 3, False, 3, "error_found"),
    ("The first error occurs in step 2, where the student misreads the problem.", 4, False, 2, "error_found"),
    ("Step 2 has no errors. Step 3 is wrong.", 3, False, 3, "error_found"),
    ("Step 2 looks wrong at first. Step 2 is actually correct after rechecking. Step 3: incorrect.", 3, False, 3,
     "error_found"),
    ("I am not able to decide.", 3, False, None, "undecided"),
    ("", 3, False, None, "undecided"),
    ("Step 1: correct; Step 2: correct", 4, False, None, "undecided"),  # stopped early, no error named
    ('{"first_error_step": null}', 3, False, None, "no_error"),
    ("Final Decision: Step 1: correct; Step 9: incorrect", 3, False, None, "undecided"),  # out of range ignored
]


@pytest.mark.parametrize("text,n,neutral,first,status", STYLES)
def test_parses_verdict_styles(text, n, neutral, first, status):
    parsed = parse_verdicts(text, n, neutral_is_error=neutral)
    assert (parsed.first_error, parsed.status) == (first, status)
    assert len(parsed.verdicts) == n


def test_at_least_fifteen_styles_that_name_an_error():
    assert sum(1 for s in STYLES if s[4] == "error_found") >= 15


def test_verdict_list_records_each_step():
    parsed = parse_verdicts("Final Decision: Step 1: correct; Step 2: neutral; Step 3: incorrect", 4)
    assert parsed.verdicts == ["correct", "neutral", "incorrect", None]


def test_parsing_is_bounded_on_huge_adversarial_text():
    text = ("Step " * 200_000) + "Step 1: correct; Step 2: incorrect"
    parsed = parse_verdicts(text, 2)  # only the tail is read; must return promptly
    assert parsed.first_error == 2


def test_default_prompt_has_placeholders_and_braces_in_problems_survive():
    prompt = load_judge_prompt()
    filled = build_judge_prompt(prompt, "Find x if {x} = \\frac{1}{2}", ["1/2", "0.5"], [" a", " b"])
    assert "{x} = \\frac{1}{2}" in filled and "1/2 or 0.5" in filled
    assert "Step 1: a\nStep 2: b" in filled and "Final Decision" in filled


def test_reference_includes_a_reference_solution_when_present():
    from stepdpo_cli.localizers.judge import reference_for

    assert reference_for({"answer": ["1", "2"]}) == "1 or 2"
    text = reference_for({"answer": "5", "solution": "Add 2 and 3 to get $\\boxed{5}$."})
    assert text.startswith("5\n\nReference solution:\nAdd 2 and 3")


def test_custom_prompt_without_steps_is_a_usage_error(tmp_path):
    bad = tmp_path / "p.txt"
    bad.write_text("Judge {problem}")
    from stepdpo_cli.records import InputError

    with pytest.raises(InputError, match="--judge-prompt"):
        load_judge_prompt(str(bad))


# ------------------------------------------------------------------ a real local server acting as judge

class _ScriptedJudge(BaseHTTPRequestHandler):
    """OpenAI-compatible /v1/chat/completions and /v1/completions returning a verdict chosen by the prompt."""
    seen: list = []

    def log_message(self, *args):  # keep test output clean
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body.get("prompt") or "".join(m["content"] for m in body.get("messages", []))
        if isinstance(prompt, list):
            prompt = prompt[0]
        type(self).seen.append(self.headers.get("Authorization"))
        if "9 * 9 = 80" in prompt:
            verdict = "Step 1 is right.\n**Final Decision:** Step 1: correct; Step 2: incorrect"
        elif "cannot judge" in prompt:
            verdict = "Hmm, hard to say."
        else:
            verdict = "Final Decision: Step 1: correct; Step 2: correct"
        if "messages" in body:
            choice = {"index": 0, "message": {"role": "assistant", "content": verdict}, "finish_reason": "stop"}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": verdict, "finish_reason": "stop", "logprobs": None}
            obj = "text_completion"
        payload = {"id": "x", "object": obj, "created": 0, "model": body.get("model", "judge"), "choices": [choice],
                   "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}}
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def judge_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ScriptedJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_judge_through_real_openai_backend_and_local_server(judge_server, tmp_path):
    pytest.importorskip("stepdpo_cli.backends.openai")
    records = [
        {"id": "p1/s0", "problem": "What is 9*9+1?", "answer": "82", "steps": [" 9 * 9 = 81.", " 81 + 1 = 82."]},
        {"id": "p2/s0", "problem": "What is 9*9+2?", "answer": "83", "steps": [" 9 * 9 = 81.", " 9 * 9 = 80."]},
        {"id": "p3/s0", "problem": "cannot judge this", "answer": "1", "steps": [" x", " y"]},
    ]
    lines = "".join(json.dumps(r) + "\n" for r in records)
    env = {"OPENAI_BASE_URL": judge_server, "OPENAI_API_KEY": "sk-test-secret-123"}
    out = run_cli("localize", "--method", "judge", "--judge", "openai:judge-model", input=lines, env=env)
    assert out.returncode == 0, out.stderr.decode()
    rows = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert [r["id"] for r in rows] == ["p1/s0", "p2/s0", "p3/s0"]
    assert [r["first_error_step"] for r in rows] == [None, 2, None]
    assert [r["localize_status"] for r in rows] == ["no_error", "error_found", "undecided"]
    assert "Final Decision" in rows[1]["judge_raw"] and rows[1]["step_verdicts"] == ["correct", "incorrect"]
    assert rows[1]["localizer"]["method"] == "judge" and rows[1]["localizer"]["judge"] == "openai:judge-model"
    stderr = out.stderr.decode()
    assert "undecided=1" in stderr and "sk-test-secret-123" not in stderr + out.stdout.decode()


def test_a_local_hf_model_can_be_the_judge(tiny_model):
    record = {"id": "a", "problem": "1+1?", "answer": "2", "steps": [" 1 + 1 = 3.", " \\boxed{3}"]}
    out = run_cli("localize", "--method", "judge", "--judge", f"hf:{tiny_model}", "--judge-max-tokens", "8",
                  input=json.dumps(record) + "\n")
    assert out.returncode == 0, out.stderr.decode()
    [row] = [json.loads(line) for line in out.stdout.decode().splitlines()]
    # A random model says nothing a parser can use: the record is kept, undecided, with the raw text.
    assert row["localize_status"] == "undecided" and row["first_error_step"] is None
    assert isinstance(row["judge_raw"], str) and row["localizer"]["judge"] == f"hf:{tiny_model}"
