"""Grading: labelled extraction and equivalence cases (MATH- and GSM8K-style), hostile inputs, time bounds
from the main thread, from threads and from multiprocessing workers."""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ThreadPoolExecutor

import pytest

from stepdpo_cli.grading import answers_match, extract, extract_answer, grade, grade_answer

# (completion, expected extracted answer)
EXTRACTION = [
    ("Step 1: 2+3=5.\nStep 2: So the answer is $\\boxed{5}$.", "5"),
    ("Thus $\\cos 30^\\circ = \\boxed{\\frac{\\sqrt{3}}{2}}$.", "\\frac{\\sqrt{3}}{2}"),
    ("First \\boxed{3}, but on reflection \\boxed{4}.", "4"),
    ("The result is \\fbox{7}.", "7"),
    ("So it is $\\boxed 5$.", "5"),
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
    ("\\boxed{\\left( 1, 2 \\right)}", "( 1, 2 )"),
    ("\\boxed{\\text{(C)}}", "(C)"),
    ("$\\boxed{10\\%}$", "10\\%"),
    ("The total is \\boxed{1,\\!000}.", "1000"),
    ("Final Answer: The final answer is $\\frac{3}{4}$. I hope it is correct.", "\\frac{3}{4}"),
    ("Final Answer: The final answer is $-\\frac{1}{2}$. I hope it is correct.", "-\\frac{1}{2}"),
    ("The answer is 18 dollars.", "18"),
    ("The answer is: $x = 3$.", "x = 3"),
    ("The answer is 5, since 2+3=5", "5"),
    ("The answer is \\$5.00.", "5.00"),
    ("So the answer is \\(\\sqrt{2}\\).", "\\sqrt{2}"),
    ("The answer is 3.5 hours", "3.5"),
    ("Natalia sold 48/2 = 24 clips in May.\nShe sold 48+24 = 72 clips.\n#### 72", "72"),
    ("#### 1,000", "1,000"),
    ("Work shown above.\nAnswer: 42\n", "42"),
    ("**Answer:** 17", "17"),
    ("She has 3 apples and buys 4 more, so 7 in total.", "7"),
    ("I got 5-3 so 2.", "2"),
    ("The temperature fell to -5 overnight", "-5"),
    ("It costs 1,234.50 in all", "1,234.50"),
    ("I don't know.", None),
    ("", None),
]


@pytest.mark.parametrize("completion,expected", EXTRACTION)
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


GSM8K_PROSE = ("Natalia sold 48 clips in April and half as many in May, 24 clips.\n"
               "Altogether she sold 48 + 24 = 72 clips.\nThe answer is 72.\nShe started with 3 boxes of 16.")

# (completion, answer, prediction_source): one or more cases for every rule, in the order they are tried
SOURCES = [
    # 1. explicit markers; the latest wins among the strong ones
    ("So the answer is $\\boxed{\\frac{3}{4}}$.", "\\frac{3}{4}", "boxed"),
    ("The result is \\fbox{7}.", "7", "boxed"),
    ("$$\\boxed{(2, 2)} \\quad \\text{and} \\quad \\boxed{(6, 2)}$$", "(2, 2), (6, 2)", "boxed"),
    ("\\boxed{1} and \\boxed{2} and \\boxed{3}", "1, 2, 3", "boxed"),
    ("First \\boxed{3}, but on reflection \\boxed{4}.", "4", "boxed"),  # a correction is not a list
    ("Final Answer: The final answer is $(0, 1)$. I hope it is correct.", "(0, 1)", "final_answer"),
    ("Final Answer: The largest $n$ is 34.", "34", "final_answer"),
    ("48/2 = 24 clips.\n#### 72", "72", "hashes"),
    (GSM8K_PROSE, "72", "answer_is"),  # the last number (16) is not the answer; the "answer is" line is
    ("Work shown above.\nAnswer: 42\n", "42", "answer_is"),
    # 2. the last math span of the final statement (no marker at all)
    ("Therefore $x \\geq 5$ is the solution.", "x \\geq 5", "math_span"),
    ("The identity matrix is $ \\begin{pmatrix}1 & 0 \\\\ 0 & 1\\end{pmatrix} $.",
     "\\begin{pmatrix}1 & 0 \\\\ 0 & 1\\end{pmatrix}", "math_span"),
    ("We find that \\( x \\neq 3 \\).", "x \\neq 3", "math_span"),
    ("Hence \\[ \\frac{10}{9} \\]", "\\frac{10}{9}", "math_span"),
    ("The roots are $1$ and $-2$.", "1, -2", "math_span"),
    ("We get $d = 90/n$ for each divisor. So there are 12 sequences.", "12", "last_number"),  # prose after it
    # 3. a completion that is itself a bare answer, taken whole
    ("\\frac{10}{9}", "\\frac{10}{9}", "bare"),
    ("(2x - 1)(2x + 1)(2x + 3)", "(2x - 1)(2x + 1)(2x + 3)", "bare"),
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "bare"),
    ("08:34 \\text{P.M.}", "08:34 P.M", "bare"),  # a final stop is dropped; the clock reads it the same
    ("AZYUK2A", "AZYUK2A", "bare"),  # not a number, so never the number 2
    # 4. the last number of GSM8K-style prose
    ("She has 3 apples and buys 4 more, so 7 in total.", "7", "last_number"),
    ("Soucis : 2,74 $ a..", "2.74", "last_number"),  # a decimal comma
    ("The probability is 2/3. <|im_start|>user", "2/3", "last_number"),
    # none: LaTeX whose math cannot be read, prose without numbers, an over-long box
    ("Answer $ \n 9 \n $", None, None),
    ("I don't know.", None, None),
    ("\\boxed{" + "{" * 50_000 + "1" + "}" * 50_000 + "}", None, "oversized"),
    ("\\boxed{\\begin{pmatrix}" + "1&" * 2999 + "1\\end{pmatrix}}", None, "oversized"),
]


@pytest.mark.parametrize("completion,answer,source", SOURCES)
def test_extraction_rules_and_their_source(completion, answer, source):
    assert extract(completion) == (answer, source)


def test_every_rule_is_exercised():
    assert {source for *_, source in SOURCES} - {None} == {"boxed", "final_answer", "hashes", "answer_is", "math_span",
                                                            "bare", "last_number", "oversized"}


def test_grade_answer_reports_the_source():
    assert grade_answer(GSM8K_PROSE, "72") == ("72", "answer_is", True)
    assert grade_answer("Therefore $x \\geq 5$ is the solution.", "x >= 5") == ("x \\geq 5", "math_span", True)


# (prediction, reference, correct): fast-path and symbolic cases, both outcomes
MATCHES = [
    # GSM8K numbers, separators, currency, units
    ("1,000", "1000", True), ("1000", "1,000", True), ("1,234,567", "1234567", True), ("$1,200", "1200", True),
    ("$5.00", "5", True), ("\\$5", "5", True), ("5 dollars", "5", True), ("18 dollars", "18.00", True),
    ("12 apples", "12", True), ("3.5 hours", "3.5", True), ("2 \\text{ cm}", "2", True), ("5\\text{ inches}^2", "5", True),
    ("7 cm^2", "7", True), ("3/4 cup", "0.75", True), ("50 percent", "0.5", True), ("28 pct", "28\\%", True),
    ("5x", "5", False), ("5 x", "5", False), ("5.0", "5", True), ("3.5", "3.50", True), ("0.1", "0.10", True), ("05", "5", True),
    ("1,000", "1.000", False), ("100", "1000", False), ("3.5", "35", False), ("10", "10.5", False), ("5", "6", False),
    # percent: the reference's convention decides
    ("50%", "50", True), ("50\\%", "50", True), ("50%", "0.5", True), ("0.5", "50\\%", True), ("50", "50\\%", True),
    ("12.5%", "0.125", True), ("0.125", "12.5\\%", True), ("0.5", "50", False), ("50", "0.5", False),
    ("25", "0.25", False),
    # negative numbers
    ("-5", "-5", True), ("\u22125", "-5", True), ("-5", "5", False), ("5", "-5", False), ("-0.5", "-\\frac{1}{2}", True),
    # fractions and decimals
    ("\\frac{1}{2}", "0.5", True), ("0.5", "\\frac{1}{2}", True), ("\\dfrac{1}{2}", "\\frac12", True),
    ("\\tfrac{3}{4}", "0.75", True), ("1/2", "\\frac{1}{2}", True), ("\\frac{-1}{2}", "-\\frac{1}{2}", True),
    ("\\frac{2}{4}", "\\frac{1}{2}", True), ("\\frac{10}{4}", "2.5", True), ("0.25", "\\frac{1}{4}", True),
    ("\\frac{1}{3}", "0.3333333", True), ("\\frac{1}{3}", "0.333", True), ("\\frac{1}{3}", "0.334", False),
    ("\\frac{2}{3}", "0.667", True), ("\\frac{2}{3}", "0.666", True), ("\\frac{2}{3}", "0.665", False),
    ("\\frac{1}{3}", "0.33", False), ("\\frac{1}{2}", "\\frac{1}{3}", False),
    ("\\frac{3}{2}", "\\frac{2}{3}", False), ("0.2", "\\frac14", False),
    ("2\\frac{1}{4}", "\\frac{9}{4}", True), ("-2\\frac{1}{4}", "-2.25", True), ("2\\frac{1}{4}", "\\frac{1}{2}", False),
    # a decimal showing 3+ places equals an exact value it rounds or cuts off to; fewer places never do
    ("1.41421356", "\\sqrt{2}", True), ("1.414", "\\sqrt{2}", True), ("1.415", "\\sqrt{2}", False),
    ("1.41", "\\sqrt{2}", False), ("0.7071", "\\frac{\\sqrt{2}}{2}", True), ("125.663", "40\\pi", True),
    ("125.662", "40\\pi", False),
    # radicals
    ("\\frac{\\sqrt3}{2}", "\\frac{\\sqrt{3}}{2}", True), ("\\dfrac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}", True),
    ("\\sqrt{4}", "2", True), ("2\\sqrt{2}", "\\sqrt{8}", True), ("\\sqrt{3}/2", "\\frac{\\sqrt{3}}{2}", True),
    ("\\sqrt{2}", "2", False), ("3\\sqrt{2}", "2\\sqrt{3}", False), ("0.866", "\\frac{\\sqrt{3}}{2}", True),
    ("0.87", "\\frac{\\sqrt{3}}{2}", False),
    # intervals
    ("(-\\infty, 3]", "(-\\infty,3]", True), ("\\left[ 1, 2 \\right)", "[1,2)", True), ("(2, \\infty)", "(2,\\infty)", True),
    ("(-\\infty,3)", "(-\\infty,3]", False), ("[1,2)", "[1,2]", False), ("(-2,5)", "(-5,2)", False),
    # sets and tuples
    ("2, 3", "3, 2", True), ("\\{1,2\\}", "\\{2,1\\}", True), ("(1, 2)", "(1,2)", True),
    ("\\left( 1, 2 \\right)", "(1,2)", True), ("(1,2)", "(2,1)", False), ("1, 2", "1, 3", False),
    ("(3,-4)", "(3,4)", False),
    # degrees, equations
    ("30^\\circ", "30", True), ("30^{\\circ}", "30", True), ("30\u00b0", "30", True), ("30 degrees", "30", True),
    ("60^\\circ", "30", False), ("x = 3", "3", True), ("3", "x=3", True), ("x=3", "x = 3", True), ("x = -3", "3", False),
    ("y = 2x + 3", "2x+3", True), ("x \\in [1,2]", "[1,2]", True), ("x > 3", "3 < x", True), ("x \\le 3", "x < 3", False),
    ("\\sin^2 x+\\cos^2 x", "1", True),
    # expressions and constants
    ("x^2+2x+1", "(x+1)^2", True), ("2x+3", "3+2x", True), ("2^3", "8", True), ("\\dfrac{\\pi}{2}", "\\frac{\\pi}{2}", True),
    ("2^3", "9", False), ("x+1", "x-1", False), ("2\\pi", "2", False), ("\\pi", "3.14", False),
    # words and choices
    ("\\text{(C)}", "C", True), ("(A)", "\\text{(A)}", True), ("\\text{Monday}", "monday", True), ("(B)", "C", False),
    ("Tuesday", "Monday", False),
    # matrices
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", True),
    # repeating decimals, base-n, clock times, relations, matrices, labels, ordered vs unordered lists
    ("0.\\overline{3}", "\\frac{1}{3}", True), ("0.1\\overline{6}", "\\frac16", True), ("0.\\overline{3}", "0.3", False),
    ("1010", "1010_2", True), ("4210_{7}", "4210_7", True), ("1012", "1012_2", False), ("1010_2", "1010_3", False),
    ("08:34 P.M.", "20:34", True), ("12:00", "1:00", False), ("x \\geq 5", "x >= 5", True), ("x \\neq 3", "x != 3", True),
    ("\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", True),
    ("(1, 2)", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", True), ("f(x) = 2x + 3", "2x+3", True),
    ("x = 1, y = 2", "1, 2", True), ("0", "a + 3z = 0", False), ("y = 2x + 3", "f(x) = 2x + 3", True),
    ("-2, 1", "1, -2", True), ("10, 4, -2", "4, 10, -2", False), ("4, 10, -2", "10, 4, -2", True), ("7, -2, \\text{ and } -5", "-5, -2, 7", True),
    ("10 weeks", "10", True), ("10cm", "10", False), ("1 000", "1000", True), ("\\frac34i", "\\frac{3}{4}i", True),
    ("14 or 16", "16", False), ("__import__('os').getpid() or 16", "16", False),
    # list references: any of them
    ("4", ["3", "4"], True), ("\\frac{1}{2}", ["0.5", "1/2"], True), ("5", ["3", "4"], False),
    # no answer
    (None, "5", False), ("", "5", False),
]


@pytest.mark.parametrize("prediction,reference,correct", MATCHES)
def test_answers_match(prediction, reference, correct):
    assert answers_match(prediction, reference) is correct


# (completion, reference, correct): grade() end to end, references in the shapes datasets ship them
GRADES = [
    ("Step 1: 48/2 = 24.\nStep 2: 48 + 24 = 72.\n#### 72", "Natalia sold 48/2 = 24 clips.\n#### 72", True),
    ("Step 1: 48/2 = 24.\nStep 2: 48 + 24 = 70.\nThe answer is 70.", "72", False),
    ("So the answer is $\\boxed{\\dfrac{1}{2}}$.", "\\frac{1}{2}", True),
    ("So the answer is $\\boxed{\\dfrac{1}{3}}$.", "\\frac{1}{2}", False),
    ("We get $x = \\boxed{-2}$.", ["-2", "2"], True),
    ("The final answer is $\\boxed{(-\\infty, 3]}$.", "Solving gives $\\boxed{(-\\infty,3]}$.", True),
    ("The answer is 50%.", "50", True),
    ("The answer is 0.5.", "50", False),
    ("No final answer here.", "5", False),
    # thousands separators vs lists, several boxes, the Minerva "final answer" line after stray boxes
    ("is $\\boxed{11,\\! 111,\\! 111,\\! 100}$", "11111111100", True),
    ("is $\\boxed{32, 349}$", "32349", False),
    ("The integers are \\boxed{-2} and \\boxed{1}.", "1,-2", True),
    ("$\\boxed{1}\\boxed{2}$", "1,2", True),
    ("So $\\boxed{5}$.\n\n$\\boxed{5}$", "5", True),
    ("Interest is \\boxed{200}, then \\boxed{255}.\nFinal Answer: The final answer is $10,455$. I hope it is correct.",
     "10455", True),
    ("so the answer is \\boxed{7}. The answer is probably right", "7", True),
    # a completion that is only a formula; sentence punctuation inside the math; an ellipsis is not a stop
    ("$x \\in [-2,7]$", "[-2, 7]", True), ("$\\frac{1}{3},$", "\\frac13", True), ("$2^{10}.$", "2", False),
    ("$1, 2, 3, ...$", "1, 2, 3", False), ("The answer is $1/3.$", "1", False),
    ("The distance is $\\boxed{125\\textnormal{ miles}}.$", "125", True),
    ("Final Answer: The final answer is 12,000,023. I hope it is correct.", "12000023", True),
    ("Final Answer: The final answer is $(0, 1)$. I hope it is correct.", "[0,1)", False),
    ("\\boxed{x \\geq 5}", "x >= 5", True), ("\\boxed{x < 5}", "x > 5", False), ("\\boxed{4\\sqrt{2}}", "4", False),
]


@pytest.mark.parametrize("completion,reference,correct", GRADES)
def test_grade(completion, reference, correct):
    prediction, ok = grade(completion, reference)
    assert ok is correct
    assert prediction == extract_answer(completion)


def test_case_count():
    assert len(EXTRACTION) + len(MATCHES) + len(GRADES) >= 100


# ---------------------------------------------------------------------------------------------- hostile input

def hostile_strings(marker_dir: str) -> list[str]:
    code = f"__import__('os').system('touch {marker_dir}/pwned')"
    return [
        code, "\\boxed{" + code + "}", f"The answer is {code}",
        "10^10^10^10", "\\boxed{10^{10^{10^{10}}}}", "(10^10)^(10^10)", "9^9^9", "2^{99999999}", "99999!",
        "{" * 10000 + "1" + "}" * 10000, "\\boxed{" + "{" * 10000 + "1" + "}" * 10000 + "}",
        "(" * 400 + "x" + ")" * 400, "7" * 1_000_000, "x " * 500_000, "\\boxed{" * 100_000, "The answer is " * 80_000,
        f"#### {code} or 5", f"The answer is {code} or 5", f"\\boxed{{{code} or 5}}", f"$ {code} or 5 $",
        "print(5)", "`5`", "'5'", "5 or 6", "#### 5 or 6", "The answer is 5 or 6.", "\\boxed{5 \\text{ or } 6}",
        # over-long or over-deep boxes around the right answer are not answers (no "last number inside")
        "\\boxed{" + "{" * 50_000 + "5" + "}" * 50_000 + "}",
        "\\boxed{\\begin{pmatrix}" + "5&" * 2999 + "5\\end{pmatrix}}",
        "The answer is \\boxed{" + "{" * 30 + "5" + "}" * 30 + "}",
    ]


def _check_hostile(marker_dir: str) -> list[bool]:
    results = []
    for text in hostile_strings(marker_dir):
        results.append(answers_match(text, "5", timeout=3.0))
        results.append(grade(text, "5", timeout=3.0)[1])
    return results


def test_code_is_never_an_answer(tmp_path):
    """The issue's probe: nothing runs, and the verdict is wrong too (a parser could fish out the 18)."""
    assert grade("#### __import__('os').system('touch pwned') or 18", "18") == (
        "__import__('os').system('touch pwned') or 18", False)
    assert grade("#### 18", "18")[1] and grade("#### 14 or 16", "16")[1] is False
    from stepdpo_cli.grading import worker as grading_worker

    before = grading_worker.symbolic_calls
    for code in ("print(5)", "__import__('os').getpid()", "system(5)", "'5'", "lambda: 5 or 6"):
        assert answers_match(code, "5") is False
    assert grading_worker.symbolic_calls == before  # code is refused before any parser sees it


def test_hostile_main_thread(tmp_path):
    assert not any(_check_hostile(str(tmp_path)))
    assert not (tmp_path / "pwned").exists()
    assert answers_match("x^2+2x+1", "(x+1)^2")  # the symbolic tier still works afterwards


def test_hostile_and_symbolic_from_threads(tmp_path):
    jobs = [("x^2+2x+1", "(x+1)^2", True), ("(1,2)", "(2,1)", False), ("\\sqrt{8}", "2\\sqrt{2}", True),
            ("2, 3", "3, 2", True), ("1,000", "1000", True), ("2\\pi", "2", False)] * 3
    with ThreadPoolExecutor(8) as pool:
        hostile = list(pool.map(lambda _: _check_hostile(str(tmp_path)), range(4)))
        results = list(pool.map(lambda job: answers_match(job[0], job[1]), jobs))
    assert not any(any(r) for r in hostile)
    assert results == [job[2] for job in jobs]
    assert not (tmp_path / "pwned").exists()


def _in_worker(marker_dir: str) -> tuple[bool, list[bool]]:
    return answers_match("\\sqrt{8}", "2\\sqrt{2}"), _check_hostile(marker_dir)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_hostile_and_symbolic_from_multiprocessing_workers(tmp_path, method):
    assert answers_match("3\\sqrt{3}", "\\sqrt{27}")  # the parent has live workers before it forks
    with multiprocessing.get_context(method).Pool(2) as pool:  # daemonic workers: no multiprocessing children
        results = pool.map(_in_worker, [str(tmp_path)] * 2)
    for symbolic, hostile in results:
        assert symbolic is True
        assert not any(hostile)
    assert not (tmp_path / "pwned").exists()
    assert answers_match("2x+3", "3+2x")  # the parent's workers survived the children


def test_overrun_comparison_is_false_then_worker_is_replaced():
    # a timeout far below any real comparison: the worker is killed, the answer is "not shown equal"
    assert answers_match("\\sin^2 x + \\cos^2 x", "1", timeout=1e-6) is False
    # timeouts are not cached, and the replacement worker decides the same comparison
    assert answers_match("\\sin^2 x + \\cos^2 x", "1", timeout=30.0) is True


def test_zero_timeout_uses_only_the_pure_python_tiers():
    assert answers_match("x^2+2x+1", "(x+1)^2", timeout=0) is True  # decided by arithmetic
    assert answers_match("\\tan^2 x+1", "\\sec^2 x", timeout=0) is False  # would need sympy


def test_non_string_and_odd_inputs_never_raise():
    assert answers_match(5, "5") is True  # type: ignore[arg-type]
    assert answers_match("5", [None, "5"]) is True  # type: ignore[list-item]
    assert answers_match("\\frac{1}{0}", "1") is False
    assert extract_answer(None) is None  # type: ignore[arg-type]


def test_a_completion_cut_off_inside_an_exponent_is_graded_not_crashed():
    """max_tokens can end a completion at `^{`: grading returns a verdict instead of raising."""
    for completion in ("The answer is 2^{", "x^{2} + 2^{", "\\boxed{2^{"):
        prediction, source, correct = grade_answer(completion, "5")
        assert correct is False
    assert grade_answer("The answer is 2^{", "2")[2] is False  # an unclosed group is no answer, not its base
