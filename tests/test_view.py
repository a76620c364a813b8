"""`stepdpo view` without a browser: kinds recognised from fields, charts drawn, records embedded safely,
the CLI's files and errors. tests/test_view_browser.py loads the same pages in headless Chromium."""
from __future__ import annotations

import json
import re

import orjson
import pytest

from conftest import run_cli
from stepdpo_cli.view import detect_kind, render_html, write_view


def pairs_records(n: int = 120, tail_words: int = 0) -> list[dict]:
    """Step rows as `stepdpo pair` writes them; every tenth has an empty rejected (as some released rows).
    `tail_words` lengthens the whole continuations (Math-Step-DPO-10K rows are ~3.5 KB)."""
    tail = " ".join(f"then we simplify term {j} of the expression" for j in range(tail_words // 7))
    rows = []
    for i in range(n):
        a, b = i % 97, (i * 7) % 89
        rows.append({"id": f"p{i}/s0/c0", "source_id": f"p{i}/s0", "problem_id": f"p{i}",
                     "dataset": "MATH" if i % 2 else "GSM8K", "prompt": f"What is {a} + {b} times 3?",
                     "initial_reason_steps": "Let's think step by step.\nStep 1: First compute the product.\nStep 2:",
                     "chosen": f" {b} times 3 is {3 * b}, so the total is {a} + {3 * b} = {a + 3 * b}.",
                     "rejected": "" if i % 10 == 9 else f" {b} times 3 is {3 * b + 1}, so the total is {a} + "
                                                        f"{3 * b + 1} = {a + 3 * b + 1}.",
                     "full_chosen": f" {b} times 3 is {3 * b}.\nStep 3: {tail} The answer is {a + 3 * b}.",
                     "full_rejected": f" {b} times 3 is {3 * b + 1}.\nStep 3: {tail} The answer is {a + 3 * b + 1}.",
                     "answer": str(a + 3 * b), "first_error_step": 2, "format": "step", "template": "raw",
                     "localizer": {"method": "rollout", "model": "hf:ckpt/sft", "rollouts": 8}})
    return rows


def localized_records() -> list[dict]:
    steps = ["We compute 4*3 = 12.", "Then 12 + 5 = 18.", "The answer is 18."]
    statuses = ["no_error", "error_found", "error_found", "undecided"]
    rows = []
    for i in range(8):
        status = statuses[i % 4]
        rows.append({"id": f"q{i}/s0", "problem": "What is 4*3+5?", "answer": "17", "steps": steps,
                     "completion": " ".join(steps), "prediction": "18", "correct": False,
                     "first_error_step": 2 if status == "error_found" else None, "localize_status": status,
                     "localizer": {"method": "judge", "judge": "openai:gpt-4o"},
                     "step_verdicts": ["correct", "incorrect", None] if status == "error_found" else
                     ["correct", None, None],
                     "judge_raw": "Step 1 is correct. Step 2 is incorrect: 12 + 5 = 17.\n"
                                  "Final Decision: Step 1: correct; Step 2: incorrect"})
    return rows


def eval_records() -> list[dict]:
    rows = []
    for i in range(40):
        right = i % 3 != 0
        rows.append({"id": f"math/test/{i}", "problem": f"Compute {i} + 0.", "answer": str(i),
                     "prediction": str(i if right else i + 1), "correct": right, "dataset": "math",
                     "subject": "Algebra" if i % 2 else "Geometry", "level": 1 + i % 5,
                     "completion": f"Adding zero changes nothing, so the answer is $\\boxed{{{i if right else i + 1}}}$."})
    return rows


def metrics_records(shift: float = 0.0, steps: int = 60) -> list[dict]:
    return [{"step": s, "epoch": round(s / steps, 4), "loss": 0.6931 - 0.3 * s / steps + shift,
             "reward_accuracy": min(1.0, 0.5 + s / (1.5 * steps)), "chosen_reward": 0.01 * s,
             "rejected_reward": -0.02 * s - shift, "margin": 0.03 * s + shift, "chosen_logp": -10.0,
             "rejected_logp": -12.0, "lr": 5e-7 * min(1.0, s / 6), "grad_norm": 1.0, "tokens_per_s": 900.0}
            for s in range(1, steps + 1)]


def tree_records(n: int = 3) -> list[dict]:
    """Search records as `stepdpo search` writes them: root -> a (right, 7 visits), b (wrong, 1); a -> a1, a2."""
    from stepdpo_cli.search.mcts import Tree

    rows = []
    for i in range(n):
        tree = Tree()
        a = tree.add_child(0, f" {i} + 4 = {i + 4}.", 0.6)
        b = tree.add_child(0, f" {i} + 4 = {i + 5}.", 0.4)
        a1 = tree.add_child(a.id, f" The answer is {i + 4}.", 0.5, terminal=True, correct=True)
        a2 = tree.add_child(a.id, f" The answer is {i + 3}.", 0.5, terminal=True, correct=False)
        for node, value, times in ((a1, 1.0, 5), (a2, 0.0, 2), (b, 0.0, 1)):
            for _ in range(times):
                tree.backup(node.id, value)
        rows.append({"id": f"q{i}", "problem": f"Add: {i} + 4", "answer": str(i + 4), "tree": tree.as_records(),
                     "chosen_path": tree.chosen_path(), "chosen_steps": tree.steps_to(tree.chosen_path()[-1]),
                     "search": {"method": "mcts", "status": "timeout" if i == 2 else "done", "simulations": 8}})
    return rows


def test_search_trees_are_their_own_kind_with_the_pairs_taken(tmp_path):
    path = write_jsonl(tmp_path / "trees.jsonl", tree_records())
    result = write_view([path], str(tmp_path / "trees.html"))
    page = (tmp_path / "trees.html").read_text()
    assert result["kind"] == "trees" and "tree pairs" in page and "timeouts" in page
    data = json.loads(page.split('<script id="data" type="application/json">')[1].split("</script>")[0])
    first = data["records"][0]
    assert first["_pairs"] == [{"node": 0, "chosen": 1, "rejected": 2, "label_smoothing": 0.125},
                               {"node": 1, "chosen": 3, "rejected": 4, "label_smoothing": 2 / 7}]
    assert data["filter"]["field"] == "_status" and ["timeout", "timeout"] in data["filter"]["options"]


def write_jsonl(path, rows) -> str:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return str(path)


def embedded(page: str) -> dict:
    match = re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S)
    return json.loads(match.group(1))


@pytest.mark.parametrize("rows,kind", [(pairs_records(3), "pairs"), (localized_records(), "localized"),
                                       (eval_records(), "eval"), (metrics_records(), "metrics"),
                                       ([{"id": "x", "problem": "p", "answer": "1"}], "records")])
def test_kind_is_recognised_from_the_fields(rows, kind):
    assert detect_kind(rows) == kind


def test_records_cannot_close_the_script_tag():
    rows = pairs_records(1)
    rows[0]["chosen"] = "</script><script>alert(1)</script> & <b>"
    page = render_html(rows)
    assert page.count("</script>") == 2  # the data block's and the code's, nothing from the record
    assert embedded(page)["records"][0]["chosen"] == rows[0]["chosen"]


def test_no_network_references():
    page = render_html(pairs_records(5))
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page and "@import" not in page


def test_eval_chart_has_wilson_intervals_per_group():
    page = render_html(eval_records())
    groups = re.findall(r'data-group="([^"]+)"', page)
    assert groups == ["accuracy (95% Wilson interval)", "by dataset", "by level", "by subject"]
    # 26 of 40 right: 65%, Wilson centre (0.65 + 1.96^2/80) / (1 + 1.96^2/40) = 0.6369, half-width 0.1418
    assert "65.0% [50, 78] n=40" in page


def test_metrics_overlay_one_line_per_file(tmp_path):
    a = write_jsonl(tmp_path / "metrics-dpo.jsonl", metrics_records())
    b = write_jsonl(tmp_path / "metrics-stepdpo.jsonl", metrics_records(0.2))
    out = tmp_path / "curves.html"
    assert write_view([a, b], str(out)) == {"kind": "metrics", "records": 120, "bytes": out.stat().st_size}
    page = out.read_text()
    charts = re.findall(r'<svg class="chart line" data-metric="([^"]+)"(.*?)</svg>', page, re.S)
    assert [name for name, _ in charts][:4] == ["reward accuracy", "reward margin (chosen - rejected)", "loss",
                                                 "learning rate"]
    for _, body in charts:
        assert re.findall(r'data-label="([^"]+)"', body) == ["metrics-dpo.jsonl", "metrics-stepdpo.jsonl"]


def test_cli_writes_beside_the_input_and_rejects_mixed_kinds(tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", pairs_records(4))
    proc = run_cli("view", pairs)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b""
    assert (tmp_path / "pairs.html").exists()
    assert "view: kind=pairs records=4" in proc.stderr.decode()
    evals = write_jsonl(tmp_path / "eval.jsonl", eval_records())
    proc = run_cli("view", pairs, evals, "-o", str(tmp_path / "mixed.html"))
    assert proc.returncode == 2
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith("files of different kinds (eval, pairs); view one kind at a time, "
                                                 "or name one with --kind")
    proc = run_cli("view", pairs, "-o", pairs)
    assert proc.returncode == 2 and "same file as an input" in proc.stderr.decode()
    assert (tmp_path / "pairs.jsonl").read_bytes().count(b"\n") == 4  # the input is untouched


def test_bad_line_is_exit_2_naming_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": 1}\n{not json\n')
    proc = run_cli("view", str(path), "-o", str(tmp_path / "bad.html"))
    assert proc.returncode == 2
    assert proc.stderr.decode().startswith(f"stepdpo: error: {path}:2: bad JSON")
    assert not (tmp_path / "bad.html").exists()


def test_pairs_show_the_evidence_of_the_records_they_came_from(tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", pairs_records(3))
    localized = write_jsonl(tmp_path / "localized.jsonl", [
        {"id": "p1/s0", "localize_status": "error_found", "judge_raw": "Step 2 is incorrect.",
         "step_verdicts": ["correct", "incorrect"], "steps": ["a", "b"], "problem": "not carried"}])
    out = tmp_path / "pairs.html"
    write_view([pairs], str(out), evidence=localized)
    rows = embedded(out.read_text())["records"]
    assert "_evidence" not in rows[0] and "_evidence" not in rows[2]
    assert rows[1]["_evidence"] == {"localize_status": "error_found", "judge_raw": "Step 2 is incorrect.",
                                    "step_verdicts": ["correct", "incorrect"]}
