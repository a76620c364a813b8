"""Grading throughput: answers/s on one core for typical answers, a GSM8K-like and a MATH-like mix.

Each mix is a seeded list of (completion, reference) pairs shaped like model samples: about half correct,
written the ways models write answers (separators, currency, units, \\dfrac, \\left, boxed, "The answer is").
Items are distinct (random values) so the result cache does not flatter the numbers; the symbolic worker is
started before timing and its start-up is reported separately. Every answer is graded in the calling thread,
so the rates are per core (the symbolic worker is a second process, reached only by the sympy-only mix);
`--parallel` adds the rate of `grade_many` across records. The slowest single answer is reported against
the per-comparison timeout. Usage: python bench/bench_grading.py [--n 2000] [--parallel]
"""
from __future__ import annotations

import argparse
import os
import random
import time

from stepdpo_cli import grading
from stepdpo_cli.grading import worker as grading_worker
from stepdpo_cli.grading import answers_match, grade

TIMEOUT = 5.0


def boxed_mix(n: int, rng: random.Random) -> list[tuple[str, str, bool]]:
    """The typical case: a boxed integer or fraction, half of them right."""
    items = []
    for _ in range(n):
        a, b = rng.randint(1, 999), rng.randint(2, 99)
        ref, right, wrong = rng.choice([(str(a), str(a), str(a + 1)),
                                        (f"\\frac{{{a}}}{{{b}}}", f"\\dfrac{{{a}}}{{{b}}}", f"\\frac{{{a + 1}}}{{{b}}}")])
        is_right = rng.random() < 0.5
        items.append((f"Step 1: We simplify.\nStep 2: So the answer is $\\boxed{{{right if is_right else wrong}}}$.",
                      ref, is_right))
    return items


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


def measure(items: list[tuple[str, str, bool]]) -> tuple[float, float, int, int, float]:
    """(answers/s, seconds, verdicts agreeing with the intended label, comparisons that reached sympy,
    slowest single answer in seconds)."""
    before = grading_worker.symbolic_calls
    verdicts, slowest = [], 0.0
    start = time.perf_counter()
    for text, ref, _ in items:
        began = time.perf_counter()
        verdicts.append(grade(text, ref, timeout=TIMEOUT)[1])
        slowest = max(slowest, time.perf_counter() - began)
    seconds = time.perf_counter() - start
    agree = sum(v == label for v, (_, _, label) in zip(verdicts, items))
    return len(items) / seconds, seconds, agree, grading_worker.symbolic_calls - before, slowest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parallel", action="store_true", help="also time grade_many across records")
    args = parser.parse_args()
    start = time.perf_counter()
    assert answers_match("\\sin^2 x + \\cos^2 x", "1")  # starts the symbolic worker outside the timed runs
    print(f"symbolic worker start + first comparison: {time.perf_counter() - start:.2f}s")
    rows = []
    for name, build, n in (("boxed-typical", boxed_mix, args.n), ("gsm8k-like", gsm8k_mix, args.n),
                           ("math-like", math_mix, args.n), ("sympy-only", symbolic_mix, max(20, args.n // 20))):
        items = build(n, random.Random(args.seed))
        rate, seconds, agree, symbolic, slowest = measure(items)
        rows.append((name, rate))
        print(f"{name:13s} {len(items)} answers in {seconds:.2f}s: {rate:,.0f} answers/s per core "
              f"({agree}/{len(items)} verdicts match the intended label, {symbolic} reached the symbolic worker; "
              f"slowest answer {slowest * 1000:.0f} ms, timeout {TIMEOUT:.0f} s)")
        if args.parallel and hasattr(grading, "grade_many"):
            fresh = build(n, random.Random(args.seed + 1))  # new values: no cache hits from the run above
            start = time.perf_counter()
            grading.grade_many([(text, ref) for text, ref, _ in fresh], timeout=TIMEOUT)
            print(f"{'':13s} grade_many across records: {len(fresh) / (time.perf_counter() - start):,.0f} answers/s "
                  f"({grading.grade_threads()} threads)")
    print(f"math-like / gsm8k-like throughput ratio: {rows[2][1] / rows[1][1]:.3f}; "
          f"sympy-only / math-like: {rows[3][1] / rows[2][1]:.3f}")
    print(f"load average at end: {os.getloadavg()[0]:.2f} (2 cores shared)")


if __name__ == "__main__":
    main()
