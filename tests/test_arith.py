"""The demo's arithmetic task: generator, step convention, verifier (also through `stepdpo localize`), data files."""
from __future__ import annotations

import json
import random

import pytest

from conftest import run_cli
from stepdpo_cli.grading import extract_answer, grade
from stepdpo_cli.records import iter_jsonl
from stepdpo_cli.steps import join_steps, split_steps
from stepdpo_cli.tasks.arith import (
    CORRECTION_TEMPLATES, STEP_TEMPLATES, ArithConfig, ArithProblem, first_error, generate, parse_problem,
    solution_steps, verify_steps, write_data,
)


def _problem() -> ArithProblem:
    return ArithProblem(63, [("+", 5), ("-", 7), ("+", 8), ("-", 4)])  # 68, 61, 69, 65


def _steps(*bodies: str) -> list[str]:
    return list(bodies)


GOOD = [" 63 + 5 = 68.", " Subtracting 7 from 68 gives 61.", " 61 plus 8 is 69.", " 69 - 4 = 65.\nThe answer is: 65"]


def test_generator_is_seeded_and_distinct():
    a = list(generate(200, 3, with_solution=True))
    assert a == list(generate(200, 3, with_solution=True))
    assert a != list(generate(200, 4, with_solution=True))
    assert len({r["problem"] for r in a}) == 200
    assert len({r["id"] for r in a}) == 200


def test_problems_respect_the_difficulty_knobs():
    config = ArithConfig(min_steps=3, max_steps=8, max_operand=9, max_value=99)
    lengths = set()
    for record in generate(300, 0, config):
        problem = parse_problem(record["problem"])
        assert problem is not None
        lengths.add(len(problem.ops))
        assert all(1 <= b <= 9 for _, b in problem.ops)
        assert all(0 <= v <= 99 for v in problem.values())
        assert record["answer"] == str(problem.answer)
        assert record["num_steps"] == len(problem.ops)
    assert lengths == set(range(3, 9))


def test_solutions_follow_the_step_convention_and_grade_correct():
    for record in generate(100, 1, with_solution=True):
        steps = split_steps(record["completion"])
        assert len(steps) == record["num_steps"]
        assert join_steps(steps) == record["completion"]
        assert record["completion"].startswith(" ")  # continues right after "Step 1:"
        assert extract_answer(record["completion"]) == record["answer"]
        assert grade(record["completion"], record["answer"])[1] is True
        assert verify_steps(record["problem"], steps)["verdicts"] == [True] * len(steps)


def test_phrasings_vary_within_and_across_solutions():
    problem = ArithProblem(40, [("+", 1)] * 6)
    texts = {join_steps(solution_steps(problem, random.Random(seed))) for seed in range(20)}
    assert len(texts) > 10  # two correct solutions rarely share their text
    first_steps = {solution_steps(problem, random.Random(seed))[0] for seed in range(50)}
    assert len(first_steps) == len(STEP_TEMPLATES["+"])


def test_verifier_accepts_every_phrasing_and_the_correction_style():
    problem = _problem()
    for template in (*STEP_TEMPLATES["+"], CORRECTION_TEMPLATES["+"]):
        steps = [template.format(a=63, b=5, c=68), *GOOD[1:]]
        assert verify_steps(problem.text, steps) == {"verdicts": [True] * 4, "corrections": {}}


@pytest.mark.parametrize("k, wrong", [
    (1, " 63 + 5 = 67."),                       # arithmetic slip
    (2, " Subtracting 8 from 68 gives 60."),    # misread operand
    (2, " 68 + 7 = 75."),                       # wrong operation
    (3, " 62 plus 8 is 70."),                   # wrong running value carried in
    (3, " 61 plus 8 is 69.\nThe answer is: 69"),  # answer stated before the last operation
    (4, " 69 - 4 = 65."),                       # last step without the answer line
    (4, " 69 - 4 = 65.\nThe answer is: 66"),     # answer line disagrees
    (2, " I think the result is 61."),          # unparseable step
])
def test_verifier_finds_the_first_wrong_step_and_corrects_it(k, wrong):
    problem = _problem()
    steps = list(GOOD)
    steps[k - 1] = wrong
    result = verify_steps(problem.text, steps, {})
    assert result["verdicts"][: k - 1] == [True] * (k - 1)
    assert result["verdicts"][k - 1] is False
    assert first_error(problem.text, join_steps(steps)) == k
    correction = result["corrections"][k]
    fixed = steps[: k - 1] + [correction] + GOOD[k:]
    assert verify_steps(problem.text, fixed)["verdicts"] == [True] * 4
    assert correction.strip().startswith("We compute")  # a phrasing SFT never showed (OOD ablation)


def test_verifier_handles_length_mismatch_garbage_and_foreign_problems():
    problem = _problem()
    assert verify_steps(problem.text, GOOD + [" 65 + 1 = 66."])["verdicts"][-1] is False
    short = GOOD[:2] + [" 61 plus 8 is 69.\nThe answer is: 69"]
    assert verify_steps(problem.text, short)["verdicts"] == [True, True, False]
    assert verify_steps(problem.text, ["x" * 1_000_000])["verdicts"] == [False]
    assert verify_steps(problem.text, [""])["verdicts"] == [False]
    assert verify_steps("What is the capital of France?", ["Paris"]) == {"verdicts": [None], "corrections": {}}
    assert first_error(problem.text, join_steps(GOOD)) is None


def test_write_data_keeps_test_problems_out_of_training(tmp_path):
    paths = write_data(str(tmp_path), 0, ArithConfig(), sft=3000, pool=500, test=300)
    test = {r["problem"] for r in iter_jsonl(paths["test"])}
    pool = {r["problem"] for r in iter_jsonl(paths["pool"])}
    sft = list(iter_jsonl(paths["sft"]))
    assert len(test) == 300 and len(pool) == 500 and len(sft) == 3000
    assert not test & pool and not test & {r["problem"] for r in sft}
    assert all("completion" in r for r in sft)


def test_data_cli_holds_out_val_and_excluded_problems(tmp_path):
    """The study's data: a val split off the test set, and no problem the shipped model was trained on."""
    from stepdpo_cli.tasks.arith import main

    shipped = write_data(str(tmp_path / "shipped"), 0, ArithConfig(min_steps=3, max_steps=3), sft=4000, pool=0,
                         test=0)
    trained = {r["problem"] for r in iter_jsonl(shipped["sft"])}
    assert main(["data", "--out-dir", str(tmp_path / "study"), "--seed", "0", "--sft", "0", "--pool", "300",
                 "--test", "400", "--val", "200", "--min-steps", "3", "--max-steps", "3",
                 "--exclude", shipped["sft"]]) == 0
    splits = {name: {r["problem"] for r in iter_jsonl(str(tmp_path / "study" / f"{name}.jsonl"))}
              for name in ("test", "val", "pool")}
    assert [len(v) for v in splits.values()] == [400, 200, 300]
    assert not splits["test"] & splits["val"] and not splits["val"] & splits["pool"]
    assert not trained & (splits["test"] | splits["val"] | splits["pool"])
    # Without --exclude the same seed draws some of those trained problems (so the test above can fail).
    plain = write_data(str(tmp_path / "plain"), 0, ArithConfig(min_steps=3, max_steps=3), sft=0, pool=300, test=400,
                       val=200)
    assert trained & {r["problem"] for path in plain.values() for r in iter_jsonl(path)}


def test_data_cli_bad_exclude_file_is_one_line_exit_2(tmp_path, capsys):
    from stepdpo_cli.tasks.arith import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "1 + 1"}\n{"problem": \n')
    assert main(["data", "--out-dir", str(tmp_path / "out"), "--sft", "0", "--pool", "1", "--test", "1",
                 "--exclude", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{bad}:2" in err, err
    bad.write_text('{"question": "1 + 1"}\n')
    assert main(["data", "--out-dir", str(tmp_path / "out"), "--exclude", str(bad)]) == 2
    assert f"{bad}:1: field 'problem'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_build_model_keeps_digits_as_single_tokens(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stepdpo_cli.tasks.arith import build_model

    paths = write_data(str(tmp_path / "data"), 0, ArithConfig(), sft=300, pool=1, test=1)
    build_model(str(tmp_path / "model"), paths["sft"], layers=1)
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "model"))
    row = next(iter_jsonl(paths["sft"]))
    pieces = tokenizer.convert_ids_to_tokens(tokenizer(row["completion"], add_special_tokens=False)["input_ids"])
    assert all(not any(ch.isdigit() for ch in p) or len(p) == 1 for p in pieces)
    assert "Ġplus" in tokenizer.get_vocab() and "Step" in tokenizer.get_vocab()  # words merged: short sequences
    assert len(pieces) < len(row["completion"]) * 0.7
    assert tokenizer.decode(tokenizer(row["completion"], add_special_tokens=False)["input_ids"]) == row["completion"]
    assert AutoModelForCausalLM.from_pretrained(str(tmp_path / "model")).config.num_hidden_layers == 1


def test_localize_loads_the_verifier_by_name(tmp_path):
    problem = _problem()
    wrong = GOOD[:2] + [" 61 plus 9 is 70.", " 70 - 4 = 66.\nThe answer is: 66"]
    record = {"id": "p1/s0", "problem_id": "p1", "problem": problem.text, "answer": "65",
              "completion": join_steps(wrong), "steps": wrong, "prediction": "66", "correct": False,
              "template": "raw"}
    source = tmp_path / "samples.jsonl"
    source.write_text(json.dumps(record) + "\n")
    done = run_cli("localize", "--method", "verifier", "--verifier", "stepdpo_cli.tasks.arith:verify_steps",
                   "-i", str(source), "-q")
    assert done.returncode == 0, done.stderr.decode()
    out = json.loads(done.stdout.decode().splitlines()[0])
    assert out["first_error_step"] == 3
    assert out["reference_step"] == " We compute 61 + 8, which equals 69."
    assert out["answer"] == "65" and out["completion"] == record["completion"]  # records flow through
