"""Step splitting, numbering and re-joining on solutions written the way the paper's models write them.

A completion is the text after the prompt's "Step 1:"; pairs are built from its step bodies, so the
splitting must give back exactly the text the model wrote (Math-Step-DPO-10K's shape).
"""
from __future__ import annotations

import re

import pytest

from stepdpo_cli.steps import (
    STEP_PREFIX,
    first_step,
    join_steps,
    numbered,
    prefix_text,
    split_solution,
    split_steps,
    step_count,
)

# (completion after "Step 1:", number of steps). MATH / GSM8K style as in the paper's Figure 5: LaTeX,
# fractions, \boxed{}, display math, multi-line steps, blank lines inside steps, the official data's
# " \n...\n\nStep 2:" layout, and long solutions where "Step 10:" must not be read as "Step 1:".
CANONICAL = [
    (" Natalia sold 48/2 = 24 clips in May.\nStep 2: Natalia sold 48+24 = 72 clips altogether in April "
     "and May.\nStep 3: The answer is 72.", 3),
    (r" The cost of the pens is $3 \times 2 = 6$ dollars." "\n"
     r"Step 2: The total cost is $6 + 4 = 10$ dollars." "\n"
     r"Step 3: So the answer is $\boxed{10}$.", 3),
    (" \nFirst, we need to find the value of $x$ from the equation $2x + 3 = 11$.\n"
     "Subtracting 3 from both sides gives $2x = 8$.\n\n"
     "Step 2: \nDividing both sides by 2 gives $x = 4$.\n\n"
     "Step 3: \nNow we substitute $x = 4$ into $x^2 - 1$: $4^2 - 1 = 15$.\n"
     "The answer is: 15", 3),
    (r" We have $\frac{1}{2} + \frac{1}{3} = \frac{3}{6} + \frac{2}{6} = \frac{5}{6}$." "\n"
     r"Step 2: Then $\frac{5}{6} \cdot \frac{3}{5} = \frac{15}{30} = \frac{1}{2}$." "\n"
     r"Step 3: The answer is $\boxed{\frac{1}{2}}$.", 3),
    (" Let the three consecutive integers be $n-1$, $n$, $n+1$.\n"
     "Step 2: Their sum is $3n = 72$, so $n = 24$.\n"
     "Step 3: The largest is $n+1 = 25$.\n"
     "Step 4: Therefore, the answer is $\\boxed{25}$.", 4),
    (" The area of the circle is\n$$A = \\pi r^2 = \\pi \\cdot 5^2 = 25\\pi.$$\n"
     "Step 2: The area of the square is $10^2 = 100$.\n"
     "Step 3: The shaded region has area\n\n$$100 - 25\\pi.$$\n\n"
     "Step 4: The answer is $\\boxed{100 - 25\\pi}$.", 4),
    ("".join(f" Add {i} to the running total.\nStep {i + 1}:" for i in range(1, 12))
     + " The total is $\\boxed{66}$.", 12),
    (" James writes a 3-page letter to 2 different friends twice a week.\n"
     "Step 2: So he writes 3*2 = 6 pages every time he writes.\n"
     "Step 3: He writes 6*2 = 12 pages a week.\n"
     "Step 4: So he writes 12*52 = 624 pages a year.\n"
     "Step 5: The answer is 624.", 5),
    (" To find the remainder when $2^{100}$ is divided by 7, note that $2^3 = 8 \\equiv 1 \\pmod 7$.\n"
     "Step 2: Then $2^{100} = 2^{99} \\cdot 2 = (2^3)^{33} \\cdot 2 \\equiv 2 \\pmod 7$.\n"
     "Step 3: The remainder is $\\boxed{2}$.", 3),
    (" We solve the system\n\\begin{align*}\nx + y &= 10, \\\\\nx - y &= 2.\n\\end{align*}\n"
     "Step 2: Adding the equations gives $2x = 12$, so $x = 6$ and $y = 4$.\n"
     "Step 3: Hence $xy = \\boxed{24}$.", 3),
    (" The probability of drawing a red ball is $\\dfrac{3}{8}$.\n"
     "Step 2: The probability of two red balls without replacement is "
     "$\\dfrac{3}{8} \\cdot \\dfrac{2}{7} = \\dfrac{6}{56} = \\dfrac{3}{28}$.\n"
     "Step 3: The answer is $\\boxed{\\dfrac{3}{28}}$", 3),
    (" Weng earns 12/60 = $0.2 per minute.\n"
     "Step 2: Working 50 minutes, she earned 0.2 x 50 = $10.\n"
     "Step 3: #### 10", 3),
    (" $f(g(2)) = f(2^2 + 1) = f(5)$.\nStep 2: $f(5) = 3 \\cdot 5 - 2 = 13$.\n"
     "Step 3: So $f(g(2)) = \\boxed{13}$.", 3),
    (" The only step: $7 \\times 8 = 56$, so the answer is $\\boxed{56}$.", 1),
    ("  Trailing spaces after the marker are kept.  \nStep 2:   So is indentation.\t\n"
     "Step 3:The answer is $\\boxed{3}$ (no space after the colon).", 3),
    (" As shown in Step 1: of the hint, the base is 4 (a mid-line 'Step 1:' is not a marker).\n"
     "Step 2: The height is 3, so the area is $\\frac{1}{2} \\cdot 4 \\cdot 3 = 6$.\n"
     "Step 3: The answer is $\\boxed{6}$.", 3),
    (" The roots of $x^2 - 5x + 6 = 0$ are found by factoring:\n  $(x-2)(x-3) = 0$.\n"
     "Step 2: So $x = 2$ or $x = 3$.\nStep 3: Their product is $\\boxed{6}$.\n", 3),
    (" Convert $0.\\overline{3}$ to a fraction: $0.\\overline{3} = \\frac{1}{3}$.\n"
     "Step 2: Then $\\frac{1}{3} + \\frac{2}{3} = 1$.\nStep 3: The answer is $\\boxed{1}$.", 3),
    (" Let $s$ be the side length. The perimeter is $4s = 48$.\n"
     "Step 2: So $s = 12$ and the area is $s^2 = 144$.\n"
     "Step 3: The final answer is $144$. I hope it is correct.", 3),
    (" There are $\\binom{5}{2} = 10$ ways to choose the pair.\n"
     "Step 2: Of these, 4 contain the ace, so the probability is $\\frac{4}{10} = \\frac{2}{5}$.\n"
     "Step 3: The answer is: $\\frac{2}{5}$", 3),
    (" The vector is $\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}$.\n"
     "Step 2: Its length is $\\sqrt{1^2 + 2^2} = \\sqrt{5}$.\nStep 3: The answer is $\\boxed{\\sqrt{5}}$.", 3),
    (" Janet has 16 - 3 - 4 = <<16-3-4=9>>9 eggs left.\n"
     "Step 2: She makes 9 * 2 = $<<9*2=18>>18 every day.\nStep 3: The answer is 18.", 3),
]


@pytest.mark.parametrize("completion, count", CANONICAL)
def test_canonical_solutions_round_trip_exactly(completion, count):
    bodies = split_steps(completion)
    assert len(bodies) == count == step_count(completion)
    assert join_steps(bodies) == completion


@pytest.mark.parametrize("completion, count", CANONICAL)
def test_prefix_plus_step_plus_rest_is_the_whole_solution(completion, count):
    """For every possible first error k: initial_reason_steps + full_chosen == prompt prefix + solution."""
    bodies = split_steps(completion)
    for k in range(1, count + 1):
        initial_reason_steps = prefix_text(bodies, k)
        from_k = join_steps(bodies[k - 1:], start=k)  # full_chosen / full_rejected shape
        assert initial_reason_steps + from_k == STEP_PREFIX + completion
        assert initial_reason_steps + bodies[k - 1] == prefix_text(bodies, k + 1)[: -len(f"\nStep {k + 1}:")]
        assert first_step(from_k) == bodies[k - 1]  # the official continuation.split("\nStep ")[0]
        assert from_k.split("\nStep ")[0] == bodies[k - 1]


@pytest.mark.parametrize("completion, count", CANONICAL)
def test_prefix_text_has_the_math_step_dpo_10k_shape(completion, count):
    bodies = split_steps(completion)
    for k in range(1, count + 1):
        text = prefix_text(bodies, k)
        assert text.startswith("Let's think step by step.\nStep 1:")
        assert text.endswith(f"Step {k}:")
        numbers = [int(n) for n in re.findall(r"\nStep (\d+):", text)]
        assert numbers == list(range(1, k + 1))


def test_prefix_text_reproduces_a_released_row_exactly():
    """A row laid out like Math-Step-DPO-10K: steps open with " \\n" and end with a blank line."""
    row = {
        "initial_reason_steps": "Let's think step by step.\nStep 1: \nJohn buys 3 notebooks at $4 each, "
                                "so he spends $3 \\times 4 = 12$ dollars.\n\nStep 2:",
        "chosen": " \nHe also buys 2 pens at $1.50 each, which is $2 \\times 1.50 = 3$ dollars.\n",
        "rejected": " \nHe also buys 2 pens at $1.50 each, which is $2 + 1.50 = 3.50$ dollars.\n",
        "full_chosen": " \nHe also buys 2 pens at $1.50 each, which is $2 \\times 1.50 = 3$ dollars.\n\n"
                       "Step 3: \nIn total he spends $12 + 3 = 15$ dollars.\nThe answer is: 15",
    }
    whole = row["initial_reason_steps"] + row["full_chosen"]
    bodies = split_solution(whole)
    assert len(bodies) == 3
    assert prefix_text(bodies, 2) == row["initial_reason_steps"]
    assert bodies[1] == row["chosen"]
    assert join_steps(bodies[1:], start=2) == row["full_chosen"]
    rejected_bodies = split_solution(row["initial_reason_steps"] + row["rejected"])
    assert prefix_text(rejected_bodies, 2) == row["initial_reason_steps"] and rejected_bodies[1] == row["rejected"]


def test_first_error_at_step_one_gives_just_the_cot_prefix():
    assert prefix_text([" a", " b"], 1) == "Let's think step by step.\nStep 1:" == STEP_PREFIX


def test_prefix_text_rejects_k_outside_the_solution():
    with pytest.raises(ValueError):
        prefix_text([" a", " b"], 0)
    with pytest.raises(ValueError):
        prefix_text([" a", " b"], 4)
    assert prefix_text([" a", " b"], 3).endswith("\nStep 3:")  # a step after the last one may be proposed


# Loose formats: the steps a user expects, written back in canonical form (and stable from then on).
LOOSE = [
    ("markdown bold markers",
     " Find the slope.\n\n**Step 2:** The slope is $\\frac{4-2}{3-1} = 1$.\n\n**Step 3:** The answer is $\\boxed{1}$.",
     ["Find the slope.", "The slope is $\\frac{4-2}{3-1} = 1$.", "The answer is $\\boxed{1}$."]),
    ("markdown bold repeating Step 1",
     "**Step 1:** Compute $3^2 = 9$.\n**Step 2:** Add 1 to get $\\boxed{10}$.",
     ["Compute $3^2 = 9$.", "Add 1 to get $\\boxed{10}$."]),
    ("markdown headings",
     "### Step 1: Set up\nLet $x$ be the number.\n\n### Step 2: Solve\n$x = 7$, so the answer is $\\boxed{7}$.",
     ["Set up\nLet $x$ be the number.", "Solve\n$x = 7$, so the answer is $\\boxed{7}$."]),
    ("indented markers and stray whitespace",
     " We have $a = 2$.   \n   Step 2:    Then $b = 2a = 4$.  \n\t Step 3:\tSo $a + b = \\boxed{6}$.  ",
     ["We have $a = 2$.", "Then $b = 2a = 4$.", "So $a + b = \\boxed{6}$."]),
    ("period and parenthesis markers (a decimal is not a marker)",
     " Start with 2.5 litres.\nStep 2. 1.5 litres are used.\nStep 3) 2.5 - 1.5 = 1, so $\\boxed{1}$ litre is left.",
     ["Start with 2.5 litres.", "1.5 litres are used.", "2.5 - 1.5 = 1, so $\\boxed{1}$ litre is left."]),
    ("paragraphs without markers",
     "The train covers 60 km in the first hour.\n\nIt covers 80 km in the second hour.\n\n"
     "So the total distance is 60 + 80 = 140 km. The answer is 140.",
     ["The train covers 60 km in the first hour.", "It covers 80 km in the second hour.",
      "So the total distance is 60 + 80 = 140 km. The answer is 140."]),
    ("no markers, one paragraph",
     " The answer is $\\boxed{42}$ because $6 \\times 7 = 42$.",
     ["The answer is $\\boxed{42}$ because $6 \\times 7 = 42$."]),
]


@pytest.mark.parametrize("name, completion, expected", LOOSE, ids=[case[0] for case in LOOSE])
def test_loose_formats_split_into_the_steps_a_reader_sees(name, completion, expected):
    bodies = split_steps(completion)
    assert [body.strip() for body in bodies] == expected
    canonical = join_steps(bodies)
    assert re.findall(r"Step (\d+):", canonical) == [str(i) for i in range(2, len(expected) + 1)]
    assert not re.search(r"Step \d+:\S", canonical)  # "Step 2: text", never "Step 2:text"
    assert split_steps(canonical) == bodies  # stable once canonical


def test_split_solution_accepts_the_intro_and_first_marker():
    assert split_solution("Let's think step by step.\nStep 1: a\nStep 2: b") == [" a", " b"]
    assert split_solution("Step 1: a\nStep 2: b") == [" a", " b"]
    assert split_solution("Let's think step by step.\n**Step 1:** a\n**Step 2:** b") == [" a", " b"]
    assert split_solution("Step 10: is not step one\nStep 11: x")[0].startswith("Step 10:")


def test_degenerate_inputs_never_raise():
    for text in ["", "\n", "Step", "Step 2:", "\nStep 2:", "Step 1:", "**", "\n\n\n", "Step 99999: x"]:
        bodies = split_steps(text)
        assert isinstance(bodies, list) and bodies
        split_steps(join_steps(bodies))
    assert split_steps("") == [""]
    assert join_steps([]) == ""


def test_every_marker_splits_as_in_the_official_code():
    """Numbering restarts or skips are split like the official `split("\\nStep ")`, then renumbered on join."""
    bodies = split_steps(" a\nStep 2: b\nStep 4: c\nStep 1: d")
    assert bodies == [" a", " b", " c", " d"]
    assert join_steps(bodies) == " a\nStep 2: b\nStep 3: c\nStep 4: d"


def test_first_step_of_a_continuation():
    assert first_step(" x = 3.\nStep 4: so y = 6.\nStep 5: done") == " x = 3."
    assert first_step(" the final step, $\\boxed{5}$.") == " the final step, $\\boxed{5}$."
    assert first_step("") == ""


def test_numbered_steps_for_judge_prompts():
    assert numbered([" \nFirst.\n\n", " Second. "]) == "Step 1: First.\nStep 2: Second."


def test_join_steps_renumbers_from_start():
    assert join_steps([" c", " d"], start=3) == " c\nStep 4: d"
