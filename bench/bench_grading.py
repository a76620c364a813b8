"""Grading throughput: answers/s for a GSM8K-like and a MATH-like mix, measured in one run.

Each mix is a seeded list of (completion, reference) pairs shaped like model samples: about half correct,
written the ways models write answers (separators, currency, units, \\dfrac, \\left, boxed, "The answer is").
Items are distinct (random values) so the result cache does not flatter the numbers; the symbolic worker is
started before timing and its start-up is reported separately. Usage: python bench/bench_grading.py [--n 2000]
"""
from __future__ import annotations

import argparse
import os
import random
import time

from stepdpo_cli import grading_worker
from stepdpo_cli.grading import answers_match, grade


def gsm8k_mix(n: int, rng: random.Random) -> list[tuple[str, str, bool]]:
    items = []
    for _ in range(n):
        value = rng.randint(1, 20000)
        ref = str(value)
        said = value if rng.random() < 0.5 else value + rng.choice([-10, -1, 1, 2, 100])
        shown = rng.choice([f"{said:,}", str(said), f"${said}", f"{said} dollars", f"{said}.00", f"\\${said}"])
        tail = rng.choice([f"#### {shown}", f"The answer is {shown}.", f"So the total is {shown}.",
                           f"The answer is $\\boxed{{{shown}}}$."])
        body = f"Step 1: She has {rng.randint(2, 99)} apples and buys {rng.randint(2, 99)} more.\nStep 2: {tail}"
        items.append((body, ref, said == value))
    return items


def _math_answer(rng: random.Random) -> tuple[str, str, str]:
    """(reference, a correct rendering, a wrong rendering)."""
    a, c = rng.randint(1, 40), rng.randint(2, 12)
    b = rng.choice([k for k in range(2, 41) if k != a])  # a != b, so every "wrong" rendering really differs
    kind = rng.choice(["int", "frac", "neg", "sqrt", "frac_sqrt", "pi", "interval", "tuple", "poly", "text"])
    if kind == "int":
        return str(a * c), str(a * c), str(a * c + 1)
    if kind == "frac":
        return f"\\frac{{{a}}}{{{b}}}", rng.choice([f"\\dfrac{{{a}}}{{{b}}}", f"{a}/{b}", f"\\frac{a}{b}" if a < 10 and b < 10 else f"\\frac{{{a}}}{{{b}}}"]), f"\\frac{{{b}}}{{{a}}}"
    if kind == "neg":
        return f"-{a}", f"-{a}", f"{a}"
    if kind == "sqrt":
        return f"{a}\\sqrt{{{c}}}", rng.choice([f"{a}\\sqrt{{{c}}}", f"{a} \\sqrt{c}" if c < 10 else f"{a} \\sqrt {{{c}}}"]), f"{a + 1}\\sqrt{{{c}}}"
    if kind == "frac_sqrt":
        return f"\\frac{{\\sqrt{{{c}}}}}{{{b}}}", f"\\dfrac{{\\sqrt{{{c}}}}}{{{b}}}", f"\\frac{{\\sqrt{{{c + 1}}}}}{{{b}}}"
    if kind == "pi":
        return f"{a}\\pi", f"{a}\\pi", f"{a + 2}\\pi"
    if kind == "interval":
        return f"(-\\infty, {a}]", f"\\left(-\\infty,{a}\\right]", f"(-\\infty, {a})"
    if kind == "tuple":
        return f"({a}, -{b})", f"\\left( {a}, -{b} \\right)", f"({b}, -{a})"
    if kind == "poly":
        return f"x^2 + {a}x + {b}", f"x^2+{a}x+{b}", f"x^2 + {b}x + {a}"
    word = rng.choice(["Monday", "Tuesday", "odd", "even"])
    return f"\\text{{{word}}}", word, rng.choice(["Friday", "neither"])


def math_mix(n: int, rng: random.Random) -> list[tuple[str, str, bool]]:
    items = []
    for _ in range(n):
        ref, right, wrong = _math_answer(rng)
        is_right = rng.random() < 0.5
        shown = right if is_right else wrong
        items.append((f"Step 1: We simplify.\nStep 2: Therefore the answer is $\\boxed{{{shown}}}$.", ref, is_right))
    return items


def symbolic_mix(n: int, rng: random.Random) -> list[tuple[str, str, bool]]:
    """Answers only sympy can judge (trig identities, relations): the worst case, one worker round trip each."""
    items = []
    for _ in range(n):
        a = rng.randint(2, 90)
        pred, ref, same = rng.choice([(f"\\sin^2 {a}x + \\cos^2 {a}x", "1", True), (f"x > {a}", f"{a} < x", True),
                                      (f"\\log_2 {2 ** (a % 20)}", str(a % 20), True), (f"x \\le {a}", f"x < {a}", False)])
        items.append((f"The answer is $\\boxed{{{pred}}}$.", ref, same))
    return items


def measure(items: list[tuple[str, str, bool]]) -> tuple[float, float, int, int]:
    """(answers/s, seconds, verdicts agreeing with the intended label, comparisons that reached sympy)."""
    before = grading_worker.symbolic_calls
    start = time.perf_counter()
    verdicts = [grade(text, ref)[1] for text, ref, _ in items]
    seconds = time.perf_counter() - start
    agree = sum(v == label for v, (_, _, label) in zip(verdicts, items))
    return len(items) / seconds, seconds, agree, grading_worker.symbolic_calls - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    assert answers_match("\\sin^2 x + \\cos^2 x", "1")  # starts the symbolic worker outside the timed runs
    print(f"symbolic worker start + first comparison: {time.perf_counter() - start:.2f}s")
    rows = []
    for name, build, n in (("gsm8k-like", gsm8k_mix, args.n), ("math-like", math_mix, args.n),
                           ("sympy-only", symbolic_mix, max(20, args.n // 20))):
        items = build(n, random.Random(args.seed))
        rate, seconds, agree, symbolic = measure(items)
        rows.append((name, rate))
        print(f"{name:11s} {len(items)} answers in {seconds:.2f}s: {rate:,.0f} answers/s "
              f"({agree}/{len(items)} verdicts match the intended label, {symbolic} reached the symbolic worker)")
    print(f"math-like / gsm8k-like throughput ratio: {rows[1][1] / rows[0][1]:.3f}; "
          f"sympy-only / math-like: {rows[2][1] / rows[1][1]:.3f}")
    print(f"load average at end: {os.getloadavg()[0]:.2f} (2 cores shared)")


if __name__ == "__main__":
    main()
