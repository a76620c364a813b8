"""The demo's synthetic multi-step arithmetic task: a seeded problem generator and a programmatic step verifier.

A problem is a chain of additions and subtractions ("What is 63 + 5 - 7 + 8 - 4?"); its solution applies one
operation per step, written in the pipeline's step convention (steps.py): the completion continues after
"Step 1:", each step body is one operation in one of several phrasings, and the last step ends with
"The answer is: N", which grading.extract_answer reads. Phrasings vary per step so that two solutions of the
same problem rarely share their text token for token (whole-solution DPO then differs from Step-DPO before
the first error, as in the paper, where solutions are free text).

`verify_steps` is the checker `stepdpo localize --method verifier --verifier stepdpo_cli.tasks.arith:verify_steps`
loads: one verdict per step plus, for each wrong step, a correct rewrite (the OOD chosen step for
`pair --chosen-source reference-step`). It parses model text with bounded regexes only; nothing is evaluated.

Run `python -m stepdpo_cli.tasks.arith --help` to write problem / SFT files.
"""
from __future__ import annotations

import argparse
import random
import re
import sys
from dataclasses import dataclass, field
from typing import Iterator

from ..records import InputError, dumps, iter_jsonl
from ..steps import join_steps, split_steps

DATASET = "arith"
ANSWER_LINE = "\nThe answer is: {value}"

# Phrasings the SFT data uses, chosen at random per step. {a} running value, {b} operand, {c} result.
STEP_TEMPLATES: dict[str, tuple[str, ...]] = {
    "+": (" {a} + {b} = {c}.", " Adding {b} to {a} gives {c}.", " {a} plus {b} is {c}."),
    "-": (" {a} - {b} = {c}.", " Subtracting {b} from {a} gives {c}.", " {a} minus {b} is {c}."),
}
# The verifier's corrections use a phrasing the SFT data never shows: the "out-of-distribution" chosen step
# of the paper's ablation (there GPT-4 rewrote the step; here a program does).
CORRECTION_TEMPLATES: dict[str, str] = {"+": " We compute {a} + {b}, which equals {c}.",
                                        "-": " We compute {a} - {b}, which equals {c}."}
PROBLEM_TEMPLATE = "What is {expression}?"

_MAX_PARSE_CHARS = 2000  # model output is data: cap what the regexes see


@dataclass(frozen=True)
class ArithConfig:
    """Difficulty knobs. Values stay in [0, max_value] so every step has a single well-defined result."""
    min_steps: int = 3
    max_steps: int = 8
    max_operand: int = 9
    min_start: int = 10
    max_value: int = 99


@dataclass
class ArithProblem:
    start: int
    ops: list[tuple[str, int]] = field(default_factory=list)

    @property
    def expression(self) -> str:
        return f"{self.start}" + "".join(f" {op} {b}" for op, b in self.ops)

    @property
    def text(self) -> str:
        return PROBLEM_TEMPLATE.format(expression=self.expression)

    def values(self) -> list[int]:
        """Running values after each operation (values[i] is the result of step i+1)."""
        out, value = [], self.start
        for op, b in self.ops:
            value = value + b if op == "+" else value - b
            out.append(value)
        return out

    @property
    def answer(self) -> int:
        return self.values()[-1] if self.ops else self.start


def make_problem(rng: random.Random, config: ArithConfig = ArithConfig()) -> ArithProblem:
    start = rng.randint(config.min_start, config.max_value)
    problem = ArithProblem(start)
    value = start
    for _ in range(rng.randint(config.min_steps, config.max_steps)):
        b = rng.randint(1, config.max_operand)
        choices = [op for op, ok in (("+", value + b <= config.max_value), ("-", value - b >= 0)) if ok]
        op = rng.choice(choices)
        value = value + b if op == "+" else value - b
        problem.ops.append((op, b))
    return problem


def solution_steps(problem: ArithProblem, rng: random.Random) -> list[str]:
    """Step bodies of a correct solution, each phrasing drawn at random; the last carries the answer line."""
    bodies, a = [], problem.start
    for (op, b), c in zip(problem.ops, problem.values()):
        bodies.append(rng.choice(STEP_TEMPLATES[op]).format(a=a, b=b, c=c))
        a = c
    bodies[-1] += ANSWER_LINE.format(value=problem.answer)
    return bodies


def generate(n: int, seed: int, config: ArithConfig = ArithConfig(), *, split: str = "train",
             exclude: set[str] | frozenset[str] = frozenset(), with_solution: bool = False) -> Iterator[dict]:
    """`n` distinct problem records {id, problem, answer, dataset, split} (+ `completion` for SFT rows).

    Problems whose text is in `exclude` (e.g. the test set) are skipped so held-out problems stay unseen.
    Same (n, seed, config, exclude) => same records.
    """
    rng = random.Random(f"arith:{seed}:{split}")
    seen: set[str] = set(exclude)
    made = attempts = 0
    while made < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"could not make {n} distinct problems with {config}")
        problem = make_problem(rng, config)
        if problem.text in seen:
            continue
        seen.add(problem.text)
        record = {"id": f"{DATASET}-{split}-{seed}-{made}", "problem": problem.text, "answer": str(problem.answer),
                  "dataset": DATASET, "split": split, "num_steps": len(problem.ops),
                  "level": len(problem.ops)}  # eval reports accuracy by `level`: here the chain length
        if with_solution:
            record["completion"] = join_steps(solution_steps(problem, rng))
        made += 1
        yield record


# ---------------------------------------------------------------------------------------------- verifier

_PROBLEM_RE = re.compile(r"What is (\d{1,6}(?: [+-] \d{1,6}){0,64})\?")
_TERM_RE = re.compile(r" ([+-]) (\d{1,6})")
_ANSWER_RE = re.compile(r"\s*The answer is:?\s*(-?\d{1,7})\s*\.?\s*$")
_NUM = r"(-?\d{1,7})"
# Every phrasing the verifier accepts (SFT and correction templates) -> (op, a, b, c) by group name.
_STEP_PATTERNS: list[tuple[str, re.Pattern[str]]] = []


def _compile_step_patterns() -> None:
    for op, templates in STEP_TEMPLATES.items():
        for template in (*templates, CORRECTION_TEMPLATES[op]):
            pattern = re.escape(template.strip())
            for name in ("a", "b", "c"):
                pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>-?\\d{{1,7}})")
            _STEP_PATTERNS.append((op, re.compile(r"\s*" + pattern + r"\s*")))


_compile_step_patterns()


def parse_problem(problem: str) -> ArithProblem | None:
    """The start value and operations of a problem text, or None if it is not an arith problem."""
    match = _PROBLEM_RE.search(problem[:_MAX_PARSE_CHARS])
    if not match:
        return None
    expression = match.group(1)
    start = int(expression.split(" ", 1)[0])
    ops = [(op, int(b)) for op, b in _TERM_RE.findall(expression)]
    return ArithProblem(start, ops)


def parse_step(body: str) -> tuple[tuple[str, int, int, int] | None, int | None, bool]:
    """(op, a, b, c) of a step body (None if no accepted phrasing), the stated answer, whether one was stated."""
    text = body[:_MAX_PARSE_CHARS]
    answer: int | None = None
    has_answer = False
    cut = text.find("The answer is")
    if cut >= 0:
        has_answer = True
        match = _ANSWER_RE.fullmatch(text[cut - (1 if cut and text[cut - 1] == "\n" else 0):])
        answer = int(match.group(1)) if match else None
        text = text[:cut]
    for op, pattern in _STEP_PATTERNS:
        match = pattern.fullmatch(text)
        if match:
            return (op, int(match.group("a")), int(match.group("b")), int(match.group("c"))), answer, has_answer
    return None, answer, has_answer


def correct_step(problem: ArithProblem, index: int) -> str:
    """A correct body for step `index` (0-based) in the correction phrasing, with the answer line if last."""
    values = [problem.start, *problem.values()]
    op, b = problem.ops[index]
    body = CORRECTION_TEMPLATES[op].format(a=values[index], b=b, c=values[index + 1])
    if index == len(problem.ops) - 1:
        body += ANSWER_LINE.format(value=problem.answer)
    return body


def verify_solution(problem: ArithProblem, steps: list[str]) -> list[bool]:
    """One verdict per step: step i is right iff it applies operation i to the true running value, states
    the true result, and states "The answer is: <true answer>" exactly when it is the last operation."""
    values = [problem.start, *problem.values()]
    verdicts = []
    for i, body in enumerate(steps):
        if i >= len(problem.ops):
            verdicts.append(False)  # a step past the last operation
            continue
        parsed, answer, has_answer = parse_step(body)
        last = i == len(problem.ops) - 1
        ok = (parsed is not None and parsed == (problem.ops[i][0], values[i], problem.ops[i][1], values[i + 1])
              and has_answer == last and (not last or answer == problem.answer))
        verdicts.append(ok)
    return verdicts


def verify_steps(problem: str, steps: list[str], record: dict | None = None) -> dict:
    """Verifier for `stepdpo localize --method verifier`: {"verdicts": [...], "corrections": {k: text}}.

    Verdicts are per step (True right, False wrong, None when the problem is not an arith problem);
    corrections (1-based keys) give a correct rewrite of each wrong step that has an operation to redo.
    """
    parsed = parse_problem(problem)
    if parsed is None or not parsed.ops:
        return {"verdicts": [None] * len(steps), "corrections": {}}
    verdicts = verify_solution(parsed, steps)
    corrections = {i + 1: correct_step(parsed, i) for i, ok in enumerate(verdicts) if not ok and i < len(parsed.ops)}
    return {"verdicts": verdicts, "corrections": corrections}


def first_error(problem: str, completion: str) -> int | None:
    """1-based index of the first wrong step of a completion (None if every step is right)."""
    verdicts = verify_steps(problem, split_steps(completion))["verdicts"]
    return next((i + 1 for i, ok in enumerate(verdicts) if ok is False), None)


# ---------------------------------------------------------------------------------------------- files

def _config_from(args: argparse.Namespace) -> ArithConfig:
    return ArithConfig(min_steps=args.min_steps, max_steps=args.max_steps, max_operand=args.max_operand,
                       min_start=args.min_start, max_value=args.max_value)


def write_data(out_dir: str, seed: int, config: ArithConfig, *, sft: int, pool: int, test: int, val: int = 0,
               exclude: set[str] | frozenset[str] = frozenset()) -> dict[str, str]:
    """Write test.jsonl, pool.jsonl, sft.jsonl (and val.jsonl when `val`); test first so no other split ever
    holds a test problem. Problems in `exclude` (e.g. the shipped model's SFT rows) appear in no split."""
    import os

    os.makedirs(out_dir, exist_ok=True)
    taken: set[str] = set(exclude)
    paths = {}
    splits = (("test", test, False), ("val", val, False), ("pool", pool, False), ("sft", sft, True))
    for name, count, with_solution in splits:
        if name == "val" and not val:
            continue
        path = paths[name] = os.path.join(out_dir, f"{name}.jsonl")
        with open(path, "wb") as handle:
            for record in generate(count, seed, config, split=name, exclude=frozenset(taken),
                                   with_solution=with_solution):
                taken.add(record["problem"])
                handle.write(dumps(record))
    return paths


# The pre-tokenizer transformers applies when it loads a Qwen2 model dir (Qwen2Tokenizer ignores the saved
# one): digits one by one, words with their leading space. Merges must be learnt inside these pieces, or
# the loaded tokenizer silently cannot use them.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def tokenizer_corpus(records: list[dict]) -> list[str]:
    """Pre-tokenized pieces to learn BPE merges from, split as Qwen2Tokenizer splits at load time: words
    merge into single tokens (short sequences, fast training) while every digit stays its own token, so the
    model does arithmetic digit by digit instead of memorising a token per number."""
    from tokenizers import Regex, pre_tokenizers

    from ..steps import STEP_PREFIX

    split = pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated")
    pieces: list[str] = []
    for record in records:
        text = record["problem"] + "\n" + STEP_PREFIX + record.get("completion", "")
        pieces.extend(piece for piece, _ in split.pre_tokenize_str(text))
    return pieces


def build_model(path: str, sft_path: str, *, layers: int = 4, hidden: int = 128, seed: int = 0,
                vocab_size: int = 400) -> str:
    """A randomly initialised Qwen2 (head size 32) with a byte-level BPE tokenizer learnt from the SFT rows."""
    from ..records import iter_jsonl
    from ..tiny import build_tiny_model, build_tokenizer

    rows = [r for _, r in zip(range(5000), iter_jsonl(sft_path))]
    build_tokenizer(path, tokenizer_corpus(rows), vocab_size)
    return build_tiny_model(path, tokenizer_path=path, hidden=hidden, layers=layers, heads=hidden // 32,
                            intermediate=4 * hidden, max_positions=512, seed=seed)


def _problem_text(record: dict) -> dict:
    if not isinstance(record.get("problem"), str):
        raise InputError("missing or not a string", field="problem")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stepdpo_cli.tasks.arith",
                                     description="The demo's arithmetic task: write data files, build the model.")
    commands = parser.add_subparsers(dest="command", required=True)
    data = commands.add_parser("data", help="Write test/pool problems and SFT rows (splits never overlap).")
    data.add_argument("--out-dir", required=True)
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--sft", type=int, default=20000, help="SFT rows (problem + completion).")
    data.add_argument("--pool", type=int, default=2000, help="Problems to sample preference data from.")
    data.add_argument("--test", type=int, default=1000, help="Held-out evaluation problems.")
    data.add_argument("--val", type=int, default=0,
                      help="Validation problems (val.jsonl), for choosing hyper-parameters off the test set.")
    data.add_argument("--exclude", action="append", default=[], metavar="JSONL",
                      help="Problems in this file (its `problem` fields) appear in no split; repeatable.")
    data.add_argument("--min-steps", type=int, default=ArithConfig.min_steps)
    data.add_argument("--max-steps", type=int, default=ArithConfig.max_steps)
    data.add_argument("--max-operand", type=int, default=ArithConfig.max_operand)
    data.add_argument("--min-start", type=int, default=ArithConfig.min_start)
    data.add_argument("--max-value", type=int, default=ArithConfig.max_value)
    model = commands.add_parser("init-model", help="A random tiny Qwen2 + BPE tokenizer learnt from SFT rows.")
    model.add_argument("--output", required=True)
    model.add_argument("--sft", required=True, help="SFT JSONL the tokenizer's merges are learnt from.")
    model.add_argument("--layers", type=int, default=4)
    model.add_argument("--hidden", type=int, default=128)
    model.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "data":
        try:
            exclude = {record["problem"] for path in args.exclude
                       for record in iter_jsonl(path, validate=_problem_text, unique_ids=False)}
        except (InputError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        paths = write_data(args.out_dir, args.seed, _config_from(args), sft=args.sft, pool=args.pool, test=args.test,
                           val=args.val, exclude=exclude)
        print("wrote " + ", ".join(paths.values()), file=sys.stderr)
    else:
        build_model(args.output, args.sft, layers=args.layers, hidden=args.hidden, seed=args.seed)
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
