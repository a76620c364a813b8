"""The arithmetic tier: decides what it can, and says "undecided" (None) wherever floats could mislead."""
from __future__ import annotations

import pytest

from stepdpo_cli.grading.numeric import numeric_verdict


@pytest.mark.parametrize("pred,ref,verdict", [
    ("x^2+2x+1", "(x+1)^2", True), ("x^2+3x+2", "x^2+2x+3", False), ("2\\sqrt{3}", "\\sqrt{12}", True),
    ("3\\sqrt{2}", "2\\sqrt{3}", False), ("\\frac{x^2-1}{x-1}", "x+1", True), ("\\sqrt[3]{8}", "2", True),
    ("x^23", "3x^2", True),  # LaTeX reads x^23 as x^2 3
    ("1.41421", "\\sqrt{2}", True), ("1.41422", "\\sqrt{2}", False),  # 3+ shown places: rounded or cut off
    ("i(2-i)", "1+2i", True), ("\\frac{v_0}{r_0}", "v_0/r_0", True),  # i as the imaginary unit; subscripts
    ("10,4,-2", "4,10,-2", True), ("(1,2)", "(2,1)", False), ("(-\\infty,3]", "(-\\infty,3)", False), ("2,3", "3,2", True), ("1,2", "1,3", False),
    ("\\{1,2\\}", "\\{2,1\\}", True), ("(1,2,3)", "(1,2)", False), ("\\pi", "3.14", False), ("2\\pi", "2", False),
    # undecided: floats cannot tell, or the text is outside the arithmetic subset
    ("2^{100}", "2^{100}+1", None), ("10^{-20}", "0", None), ("\\sin(x)", "1", None), ("x>3", "3<x", None),
    ("e^{i\\pi}", "-1", None), ("2\\frac{1}{4}", "\\frac{9}{4}", None), ("1.41", "\\sqrt{2}", False),
    ("(1,2)", "\\{1,2\\}", None), ("\\frac{1}{0}", "1", None), ("(-8)^{1/3}", "-2", None),
    ("3/4cup", "0.75", None),  # a word is not a product of variables
])
def test_numeric_verdict(pred, ref, verdict):
    assert numeric_verdict(pred, ref) is verdict
