"""A pure-Python numeric verdict for LaTeX answers, so most comparisons never reach sympy.

A small recursive-descent parser (no eval) reads arithmetic LaTeX - numbers, + - * / ^, \\frac, \\sqrt,
\\pi, \\cdot, \\times, \\div, implicit products, single-letter variables - and evaluates it at a few fixed
points. Different values at any point mean different answers; equal values at every point mean equal
answers when both sides are exact forms (no decimals). Tuples, intervals, sets and answer lists are compared
element by element. Anything outside this subset is "undecided" and goes to the symbolic tier.
"""
from __future__ import annotations

import math
import re

_TOKEN = re.compile(r"(\d+(?:\.\d*)?|\.\d+)|\\(frac|sqrt|pi|cdot|times|div|infty)(?![A-Za-z])|([A-Za-z])|([-+*/^(){}\[\]])")
_MAX_EXPONENT = 400.0
_POINTS = 3
_REL_TOL = 1e-9
_DECIMAL_TOL = 1e-5
_MIXED_NUMBER = re.compile(r"\d\\frac")
_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")  # three letters in a row that are not a \command


class Unevaluable(Exception):
    """The text is outside the arithmetic subset (or its value is not a finite real)."""


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match:
            raise Unevaluable(text[pos:pos + 10])
        number, command, letter, symbol = match.groups()
        tokens.append(("num", number) if number else ("cmd", command) if command else
                      ("var", letter) if letter else ("sym", symbol))
        pos = match.end()
    return tokens


class _Parser:
    """expr := term (+|- term)*; term := unary ((*|/|implicit) unary)*; unary := -unary | power;
    power := atom (^ unary-atom)?; atom := number | var | \\pi | \\frac{}{} | \\sqrt[n]{} | (expr) | {expr}."""

    def __init__(self, tokens: list[tuple[str, str]], values: dict[str, float]):
        self.tokens, self.values, self.i = tokens, values, 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, kind: str, value: str | None = None) -> str:
        token = self.peek()
        if token is None or token[0] != kind or (value is not None and token[1] != value):
            raise Unevaluable(f"expected {value or kind}")
        self.i += 1
        return token[1]

    def parse(self) -> float:
        value = self.expr()
        if self.peek() is not None:
            raise Unevaluable("trailing tokens")
        return _finite(value)

    def expr(self) -> float:
        value = self.term()
        while self.peek() in (("sym", "+"), ("sym", "-")):
            op = self.take("sym")
            value = value + self.term() if op == "+" else value - self.term()
        return value

    def term(self) -> float:
        value = self.unary()
        while True:
            token = self.peek()
            if token in (("sym", "*"), ("cmd", "cdot"), ("cmd", "times")):
                self.i += 1
                value *= self.unary()
            elif token in (("sym", "/"), ("cmd", "div")):
                self.i += 1
                value = _divide(value, self.unary())
            elif token is not None and (token[0] in ("num", "var") or token in (
                    ("cmd", "frac"), ("cmd", "sqrt"), ("cmd", "pi"), ("sym", "("), ("sym", "{"))):
                value *= self.power()  # implicit product: 2\sqrt{3}, 3\pi, 2x, x(y+1)
            else:
                return value

    def unary(self) -> float:
        if self.peek() == ("sym", "-"):
            self.i += 1
            return -self.unary()
        if self.peek() == ("sym", "+"):
            self.i += 1
            return self.unary()
        return self.power()

    def power(self) -> float:
        base = self.atom()
        if self.peek() == ("sym", "^"):
            self.i += 1
            exponent = self.unary() if self.peek() == ("sym", "-") else self.atom(single_digit=True)
            if abs(exponent) > _MAX_EXPONENT or (base < 0 and not float(exponent).is_integer()):
                raise Unevaluable("exponent")
            if base == 0 and exponent < 0:
                raise Unevaluable("division by zero")
            return _finite(base ** exponent)
        return base

    def group(self) -> float:
        """A {braced} argument, or a single digit / letter as in \\frac12 or \\sqrt2."""
        if self.peek() == ("sym", "{"):
            self.i += 1
            value = self.expr()
            self.take("sym", "}")
            return value
        return self.atom(single_digit=True)

    def atom(self, single_digit: bool = False) -> float:
        token = self.peek()
        if token is None:
            raise Unevaluable("unexpected end")
        kind, text = token
        self.i += 1
        if kind == "num":
            if single_digit and len(text) > 1 and "." not in text:  # x^23 is x^2 * 3 in LaTeX
                self.tokens[self.i - 1] = ("num", text[1:])
                self.i -= 1
                return float(text[0])
            return float(text)
        if kind == "var":
            if text not in self.values:
                raise Unevaluable("unknown variable")
            return self.values[text]
        if token == ("cmd", "pi"):
            return math.pi
        if token == ("cmd", "frac"):
            return _divide(self.group(), self.group())
        if token == ("cmd", "sqrt"):
            root = 2.0
            if self.peek() == ("sym", "["):
                self.i += 1
                root = self.expr()
                self.take("sym", "]")
            radicand = self.group()
            if radicand < 0 or root < 1 or not root.is_integer():
                raise Unevaluable("root")
            return radicand ** (1.0 / root)
        if token in (("sym", "("), ("sym", "{")):
            value = self.expr()
            self.take("sym", ")" if text == "(" else "}")
            return value
        raise Unevaluable(text)


def _divide(a: float, b: float) -> float:
    if b == 0:
        raise Unevaluable("division by zero")
    return a / b


def _finite(value: float) -> float:
    if isinstance(value, complex) or not math.isfinite(value):
        raise Unevaluable("not a finite real")
    return value


def _variables(tokens: list[tuple[str, str]]) -> set[str]:
    return {text for kind, text in tokens if kind == "var"}


def _point(names: list[str], index: int) -> dict[str, float]:
    # fixed, irrational-looking values in [0.5, 2.5): no accidental agreement of unequal polynomials
    return {name: 0.5 + 2.0 * (((k + 1) * 0.7548776662 + (index + 1) * 0.5698402910) % 1.0)
            for k, name in enumerate(names)}


def _values(tokens: list[tuple[str, str]], names: list[str]) -> list[float]:
    return [_Parser(list(tokens), _point(names, i)).parse() for i in range(_POINTS)]


def _agree(a: float, b: float, tol: float) -> bool | None:
    """Equal / different / cannot tell: floats cannot separate 2^100 from 2^100+1, or 10^-20 from 0."""
    if math.isinf(a) or math.isinf(b):
        return a == b
    size = max(abs(a), abs(b))
    if size > 1e12 or (size < 1e-6 and a != b):
        return None
    return abs(a - b) <= tol * size


def _same(a: list[float], b: list[float], tol: float) -> bool | None:
    verdicts = [_agree(x, y, tol) for x, y in zip(a, b)]
    return False if False in verdicts else None if None in verdicts else True


def _split_top(text: str) -> list[str]:
    """Split at commas outside any brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _closes_at_end(text: str) -> bool:
    """True if the bracket opened at text[0] closes at the last character."""
    depth = 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                return i == len(text) - 1
    return False


def _structure(key: str) -> tuple[str, list[str]]:
    """("set"|"(]"-style brackets|"list"|"scalar", elements) of a spaceless answer key."""
    if key.startswith("\\{") and key.endswith("\\}"):
        return "set", _split_top(key[2:-2])
    if len(key) > 2 and key[0] in "([" and key[-1] in ")]" and _closes_at_end(key.replace("\\{", "{")):
        inner = _split_top(key[1:-1])
        if len(inner) > 1:
            return key[0] + key[-1], inner
    parts = _split_top(key)
    return ("list", parts) if len(parts) > 1 else ("scalar", parts)


def _element_values(element: str, names: list[str]) -> list[float]:
    if element in ("\\infty", "+\\infty", "-\\infty"):
        return [-math.inf if element.startswith("-") else math.inf] * _POINTS
    return _values(_tokenize(element), names)


def numeric_verdict(pred_key: str, ref_key: str) -> bool | None:
    """True/False when arithmetic decides it, None when only the symbolic tier can."""
    if _MIXED_NUMBER.search(pred_key) or _MIXED_NUMBER.search(ref_key):
        return None  # 2\\frac{1}{4} is 9/4 to a reader (and to math-verify), not 2 * 1/4
    if _WORD.search(pred_key) or _WORD.search(ref_key):
        return None  # "3/4cup", "2\\sqrt{3}units": a word is not a product of variables
    kind, pred_parts = _structure(pred_key)
    ref_kind, ref_parts = _structure(ref_key)
    if kind != ref_kind:
        if len(kind) == 2 and len(ref_kind) == 2:  # (a,b] vs (a,b): different brackets, different answers
            return False
        return None
    if len(pred_parts) != len(ref_parts):
        return False
    try:
        names = sorted(set().union(*(_variables(_tokenize(p)) for p in pred_parts + ref_parts
                                     if "\\infty" not in p)))
        pred_values = [_element_values(p, names) for p in pred_parts]
        ref_values = [_element_values(r, names) for r in ref_parts]
    except (Unevaluable, OverflowError, ZeroDivisionError, ValueError, RecursionError):
        return None
    # A decimal may be a rounding of an exact value (1.41421 for \\sqrt{2}): only a clear difference is
    # decisive, and agreement is left to the symbolic tier.
    decimals = "." in pred_key or "." in ref_key
    verdict = _decide(kind, pred_values, ref_values, _DECIMAL_TOL if decimals else _REL_TOL)
    if verdict is False and {"e", "i"} & set(names):  # free variables here; as constants they might agree
        return None
    return None if verdict and decimals else verdict


def _decide(kind: str, pred_values: list[list[float]], ref_values: list[list[float]], tol: float) -> bool | None:
    if kind in ("set", "list"):  # unordered: each prediction element pairs with a distinct reference one
        unused = list(ref_values)
        for values in pred_values:
            verdicts = [_same(values, r, tol) for r in unused]
            if None in verdicts:
                return None
            if True not in verdicts:
                return False
            unused.pop(verdicts.index(True))
    else:
        verdicts = [_same(a, b, tol) for a, b in zip(pred_values, ref_values)]
        if False in verdicts:
            return False
        if None in verdicts:
            return None
    return True
