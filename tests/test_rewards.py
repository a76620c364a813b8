"""Process reward models: labels land on each step's end token, a PRM trains and loads again, localizes a
detectable error better than rollouts of a policy that cannot finish, scores resumably, guides selection and beam
search; bad input is one line and exit 2."""
from __future__ import annotations

import json
import random

import orjson
import pytest

from conftest import run_cli
from stepdpo_cli.records import InputError
from stepdpo_cli.rewards.labels import prm_validator, step_labels, trl_steps
from stepdpo_cli.rewards.prm import aggregate, encode_steps, solution_text, step_end_chars
from stepdpo_cli.steps import join_steps
from stepdpo_cli.train.losses import prm_loss
from stepdpo_cli.train.prm_data import encode_prm_rows

ENV = {"OMP_NUM_THREADS": "1"}
STEPS = [" 2 + 5 = 7.", " 7 + 1 = 8.", " The answer is \\boxed{8}."]


def _negated(rng: random.Random, i: int) -> dict:
    """An addition whose wrong step is detectable: the sum of positive numbers written negative (and carried)."""
    nums = [rng.randint(1, 9) for _ in range(rng.randint(2, 4))]
    wrong = rng.choice([None, *range(1, len(nums))])
    acc, steps = nums[0], []
    for j in range(1, len(nums)):
        total = acc + nums[j]
        total = -total if j == wrong else total
        steps.append(f" {acc} + {nums[j]} = {total}.")
        acc = total
    steps.append(f" The answer is \\boxed{{{acc}}}.")
    return {"id": f"p{i}/s0", "problem_id": f"p{i}", "problem": "Add: " + " + ".join(map(str, nums)),
            "answer": str(sum(nums)), "steps": steps, "completion": join_steps(steps), "correct": wrong is None,
            "first_error_step": wrong, "localize_status": "error_found" if wrong else "no_error"}


def _write(path, records) -> None:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))


# ---------------------------------------------------------------------------------------------- labels, positions

def test_each_step_is_read_at_the_token_that_ends_its_newline(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)  # one token per byte
    prefix, ids, positions = encode_steps(tok, "Q: ctx\nStep 1:", STEPS)
    text = solution_text(STEPS)
    assert tok.decode(ids) == text and text.endswith("\n")
    for k, (pos, end) in enumerate(zip(positions, step_end_chars(STEPS)), start=1):
        assert tok.decode(ids[:pos + 1]) == join_steps(STEPS[:k]) + "\n"  # body k and its newline, nothing after
        assert tok.decode(ids[pos]) == "\n" and len(tok.decode(ids[:pos + 1])) == end


def test_a_merged_newline_token_is_the_steps_last_token(tmp_path):
    from stepdpo_cli.tiny import build_tokenizer

    corpus = [solution_text(STEPS) * 3, "7.\n8.\n"] * 50
    tok = build_tokenizer(str(tmp_path / "tok"), corpus, vocab_size=320)
    _, ids, positions = encode_steps(tok, "ctx", STEPS)
    for k, pos in enumerate(positions, start=1):
        through, before = tok.decode(ids[:pos + 1]), tok.decode(ids[:pos])
        end = len(join_steps(STEPS[:k])) + 1
        assert len(through) >= end and len(before) < end  # the token holding the newline, whatever it merged


def test_a_partial_solution_is_read_as_the_same_steps_of_the_whole(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    _, whole_ids, whole = encode_steps(tok, "ctx", STEPS)
    _, part_ids, part = encode_steps(tok, "ctx", STEPS[:2])
    assert part == whole[:2] and part_ids == whole_ids[:len(part_ids)]


def test_labels_from_every_source():
    record = {"problem": "p", "steps": STEPS, "correct": False, "first_error_step": 2,
              "localize_status": "error_found", "step_scores": [0.75, None, 0.0]}
    assert step_labels(record, "final-answer") == [0.0, 0.0, 0.0]
    assert step_labels({**record, "correct": True}, "final-answer") == [1.0, 1.0, 1.0]
    assert step_labels(record, "first-error") == [1.0, 0.0, 0.0]
    assert step_labels({**record, "first_error_step": None, "localize_status": "no_error"}, "first-error") == [1.0] * 3
    assert step_labels({**record, "first_error_step": None, "localize_status": "undecided"}, "first-error") is None
    assert step_labels(record, "step-scores") == [0.75, 0.0, 0.0]  # unmeasured after the first error: 0
    trl = {"prompt": "p", "completions": ["Step 1: a = 1", "b = 2"], "labels": [True, False]}
    assert step_labels(trl, "final-answer") == [1.0, 0.0] and trl_steps(trl["completions"]) == [" a = 1", " b = 2"]


def test_encoded_rows_carry_one_target_per_step_at_its_end(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    row = {"problem": "Add: 2 + 5 + 1", "steps": STEPS, "correct": True, "first_error_step": 3,
           "localize_status": "error_found"}
    (example,) = encode_prm_rows([row], tok, "raw", "first-error", 1024)
    _, ids, positions = encode_steps(tok, "Add: 2 + 5 + 1\nLet's think step by step.\nStep 1:", STEPS)
    assert example.chosen == ids and example.label_positions == positions and example.labels == [1.0, 1.0, 0.0]
    (short,) = encode_prm_rows([row], tok, "raw", "first-error", len(example.prefix) + positions[1] + 1)
    assert short.labels == [1.0, 1.0]  # truncation drops the targets it cuts off, never shifts them


def test_prm_rows_are_checked_field_by_field():
    validate = prm_validator("final-answer")
    with pytest.raises(InputError, match="2 labels for 3 steps") as bad:
        validate({"prompt": "p", "completions": ["a", "b", "c"], "labels": [True, False]})
    assert bad.value.field == "labels"
    with pytest.raises(InputError) as bad:
        validate({"problem": "p", "steps": STEPS})
    assert bad.value.field == "correct"
    with pytest.raises(InputError) as bad:
        prm_validator("step-scores")({"problem": "p", "steps": STEPS, "step_scores": [1.0]})
    assert bad.value.field == "step_scores"


def test_prm_loss_is_binary_cross_entropy_by_hand():
    import math

    import torch

    logits, labels = torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.25])
    expected = (math.log(2) + (0.25 * math.log(1 + math.exp(-2)) + 0.75 * math.log(1 + math.exp(2)))) / 2
    assert prm_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_aggregates():
    assert aggregate([0.5, 1.0], "mean") == 0.75 and aggregate([0.5, 1.0], "min") == 0.5
    assert aggregate([0.5, 1.0], "last") == 1.0 and aggregate([0.5, 0.5], "prod") == 0.25


# ---------------------------------------------------------------------------------------------- a trained PRM

@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory) -> dict:
    """A PRM trained through the CLI on the negated-sum task with first-error labels, and held-out solutions."""
    root = tmp_path_factory.mktemp("prm")
    rng = random.Random(0)
    _write(root / "train.jsonl", [_negated(rng, i) for i in range(400)])
    held = random.Random(1)
    _write(root / "held.jsonl", [_negated(held, i) for i in range(40)])
    proc = run_cli("train", "--objective", "prm", "--prm-labels", "first-error", "-m", tiny_model, "--data",
                   str(root / "train.jsonl"), "--output", str(root / "prm"), "--lr", "2e-3", "--epochs", "3",
                   "--batch-size", "8", "--template", "raw", "--logging-steps", "50", env=ENV)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    metrics = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert metrics and all("step_accuracy" in m for m in metrics)
    return {"root": root, "prm": str(root / "prm"), "held": root / "held.jsonl", "model": tiny_model}


def test_a_saved_prm_loads_with_one_call_and_with_transformers_alone(trained):
    import torch
    from transformers import AutoModelForTokenClassification

    from stepdpo_cli.rewards import load_prm

    meta = json.loads(open(f"{trained['prm']}/stepdpo.json").read())
    assert meta["objective"] == "prm" and meta["template"] == "raw" and meta["prm"]["labels"] == "first-error"
    prm = load_prm(trained["prm"])
    (rewards,) = prm.score([("Add: 2 + 5 + 1", STEPS)])
    ids, positions = prm.encode("Add: 2 + 5 + 1", STEPS)
    plain = AutoModelForTokenClassification.from_pretrained(trained["prm"]).eval()
    with torch.no_grad():
        logits = plain(input_ids=torch.tensor([ids])).logits[0, :, 0]
    assert rewards == pytest.approx(torch.sigmoid(logits[positions]).tolist(), abs=1e-5)


def test_prm_localizes_better_than_rollouts_of_a_policy_that_cannot_finish(trained, tmp_path):
    """ProcessBench F1 against the known first errors on held-out solutions: the PRM reads the negated sum;
    the rollout localizer with the (untrained) tiny policy sees every prefix as a dead end."""
    held = str(trained["held"])
    prm = run_cli("localize", "--method", "prm", "--prm", trained["prm"], "-i", held, "-o", str(tmp_path / "p.jsonl"),
                  env=ENV)
    assert prm.returncode == 0, prm.stderr.decode()[-3000:]
    rollout = run_cli("localize", "--method", "rollout", "-m", trained["model"], "--rollouts", "2", "--max-tokens",
                      "8", "--template", "raw", "-i", held, "-o", str(tmp_path / "r.jsonl"), env=ENV)
    assert rollout.returncode == 0, rollout.stderr.decode()[-3000:]
    f1 = {}
    for name in ("p", "r"):
        report = run_cli("score-localizer", "-i", str(tmp_path / f"{name}.jsonl"), "--gold", held, "-q")
        f1[name] = json.loads(report.stdout)["f1"]
    assert f1["p"] >= 0.9 and f1["p"] > f1["r"], f1


def test_score_adds_step_rewards_and_resumes_byte_identical(trained, tmp_path):
    held, out = str(trained["held"]), tmp_path / "scored.jsonl"
    full = run_cli("score", "--prm", trained["prm"], "-i", held, "-o", str(out), "--batch-size", "4", env=ENV)
    assert full.returncode == 0, full.stderr.decode()[-3000:]
    expected = out.read_bytes()
    records = [json.loads(line) for line in expected.splitlines()]
    assert len(records) == 40 and all(len(r["step_rewards"]) == len(r["steps"]) for r in records)
    assert all(r["prm_score"] == pytest.approx(sum(r["step_rewards"]) / len(r["steps"])) for r in records)
    wrong = [r for r in records if r["first_error_step"]]
    assert all(r["step_rewards"][r["first_error_step"] - 1] < 0.5 for r in wrong)
    lines = expected.splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:13]) + lines[13][:20])  # a run killed mid-line after 13 records
    resumed = run_cli("score", "--prm", trained["prm"], "-i", held, "-o", str(out), "--batch-size", "4",
                      "--resume", env=ENV)
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    assert out.read_bytes() == expected


def test_a_path_that_is_not_a_prm_is_one_line_and_exit_2(trained):
    for args in (["score", "--prm", trained["model"]], ["localize", "--method", "prm", "--prm", trained["model"]],
                 ["eval", "-m", trained["model"], "--prm", "/nonexistent/prm"]):
        proc = run_cli(*args, "-i", str(trained["held"]), env=ENV)
        lines = [ln for ln in proc.stderr.decode().splitlines() if ln.strip() and "WARNING" not in ln]
        assert proc.returncode == 2 and len(lines) == 1 and "--prm" in lines[0], proc.stderr.decode()[-2000:]


def test_records_without_steps_are_one_line_and_exit_2(trained, tmp_path):
    bad = tmp_path / "bad.jsonl"
    _write(bad, [{"id": "a", "problem": "Add: 1 + 2", "steps": [" 1 + 2 = 3."]}, {"id": "b", "problem": "Add: 1"}])
    proc = run_cli("score", "--prm", trained["prm"], "-i", str(bad), "-q", env=ENV)
    assert proc.returncode == 2 and proc.stderr.decode().strip().count("\n") == 0
    assert f"{bad}:2: field 'steps'" in proc.stderr.decode()


class _TwoWay:
    """A policy whose candidates for each next step are, in turn, the right sum and its negation (the error the
    PRM learned to see); the answer step closes the solution."""
    name, model, tokenizer = "two-way", "two-way", None

    def generate(self, requests, params):
        from stepdpo_cli.backends.base import Completion
        from stepdpo_cli.steps import STEP_PREFIX, split_steps

        out = []
        for request in requests:
            problem, tail = request.prompt.split("\n")[0], request.prompt.split(STEP_PREFIX, 1)[1]
            nums = [int(x) for x in problem.split(":")[1].split("+")]
            done = split_steps(tail)[:-1] if tail else []
            acc = int(done[-1].split("=")[1].strip(" .")) if done else nums[0]
            k = len(done) + 1
            completions = []
            for j in range(params.n):
                if k >= len(nums):
                    completions.append(Completion(f" The answer is \\boxed{{{acc}}}.", 8, "stop"))
                    continue
                total = acc + nums[k] if j % 2 == 0 else -(acc + nums[k])
                text = f" {acc} + {nums[k]} = {total}."
                completions.append(Completion(text, 8, "stop", stop_reason="\nStep"))
            out.append(completions[::-1])  # the wrong candidate first: beam search must not just keep the first
        return out

    def close(self):
        pass


def test_beam_search_keeps_the_step_the_prm_prefers(trained):
    from stepdpo_cli.rewards import load_prm
    from stepdpo_cli.stages.beam import beam_search_records

    prm = load_prm(trained["prm"])
    problems = [{"id": f"q{i}", "problem": p, "answer": str(sum(n))}
                for i, (p, n) in enumerate([("Add: 3 + 4 + 2", (3, 4, 2)), ("Add: 5 + 1 + 1 + 6", (5, 1, 1, 6))])]
    results = list(beam_search_records(problems, _TwoWay(), prm, template="raw", beam_width=1, expand=2))
    assert [r["correct"] for r in results] == [True, True]
    assert all("-" not in r["completion"] for r in results)
    assert results[0]["steps"] == [" 3 + 4 = 7.", " 7 + 2 = 9.", " The answer is \\boxed{9}."]
    assert results[0]["search"]["rounds"] == 3 and results[0]["search"]["finished"]


def test_selectors_on_the_same_samples(trained):
    """Two wrong samples agree on one answer, one right sample stands alone: majority picks the wrong answer,
    best-of-n and the PRM-weighted vote pick the right one."""
    from stepdpo_cli.backends.base import Completion, SamplingParams
    from stepdpo_cli.rewards import load_prm
    from stepdpo_cli.stages.evaluate import EvalStats, evaluate_records
    from stepdpo_cli.stages.select import prm_selector

    class ThreeSamples:
        name, model, tokenizer = "fixed", "fixed", None

        def generate(self, requests, params):
            wrong = join_steps([" 3 + 4 = -7.", " -7 + 2 = -5.", " The answer is \\boxed{-5}."])
            right = join_steps([" 3 + 4 = 7.", " 7 + 2 = 9.", " The answer is \\boxed{9}."])
            return [[Completion(t, 10, "stop") for t in (wrong, right, wrong)] for _ in requests]

        def close(self):
            pass

    stats = EvalStats()
    (record,) = evaluate_records([{"id": "q", "problem": "Add: 3 + 4 + 2", "answer": "9"}], ThreeSamples(),
                                 SamplingParams(n=3), template="raw", stats=stats,
                                 rescore=prm_selector(load_prm(trained["prm"]), select="best-of-n"))
    picks = {name: (s["prediction"], s["correct"]) for name, s in record["selections"].items()}
    assert picks == {"majority": ("-5", False), "best-of-n": ("9", True), "weighted-vote": ("9", True)}
    assert record["correct"] and record["prediction"] == "9" and len(record["completions_prm_score"]) == 3
    summary = stats.summary(3)
    assert {k: v["accuracy"] for k, v in summary["selectors"].items()} == {
        "best-of-n": 1.0, "weighted-vote": 1.0, "majority": 0.0}


@pytest.mark.slow
def test_score_over_two_workers_equals_one_process(trained, tmp_path):
    held = str(trained["held"])
    outs = {}
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}.jsonl"
        proc = run_cli("score", "--prm", trained["prm"], "-i", held, "-o", str(out), "--data-parallel", workers,
                       "-q", env=ENV)
        assert proc.returncode == 0, proc.stderr.decode()[-3000:]
        outs[workers] = out.read_bytes()
    assert outs["1"] == outs["2"] and outs["1"].count(b"\n") == 40
