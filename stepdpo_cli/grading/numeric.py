"""A pure-Python numeric verdict for LaTeX answers, so most comparisons never reach sympy.

A small recursive-descent parser (no eval) reads arithmetic LaTeX - numbers, + - * / ^, \\frac, \\sqrt,
\\pi, \\cdot, \\times, \\div, implicit products, single-letter variables - and evaluates it at a few fixed
points. Different values at any point mean different answers; equal values at every point mean equal
answers when both sides are exact forms (no decimals). Tuples, intervals, sets and answer lists are compared
element by element. Anything outside this subset is "undecided" and goes to the symbolic tier.
"""
from __future__ import annotations

import cmath
import math
import re

_TOKEN = re.compile(r"(\d+(?:\.\d*)?|\.\d+)|\\(frac|sqrt|pi|cdot|times|div|infty)(?![A-Za-z])|([A-Za-z](?:_\{[A-Za-z0-9]{1,8}\}|_[A-Za-z0-9])?)|([-+*/^(){}\[\]])")
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
                      ("var", letter.replace("{", "").replace("}", "")) if letter else ("sym", symbol))
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
    """A finite real; a finite complex only arises when `i` is evaluated as the imaginary unit."""
    if not cmath.isfinite(value):
        raise Unevaluable("not finite")
    return value


def _variables(tokens: list[tuple[str, str]]) -> set[str]:
    return {text for kind, text in tokens if kind == "var"}


def _point(names: list[str], index: int) -> dict[str, float]:
    # fixed, irrational-looking values in [0.5, 2.5): no accidental agreement of unequal polynomials
    return {name: 0.5 + 2.0 * (((k + 1) * 0.7548776662 + (index + 1) * 0.5698402910) % 1.0)
            for k, name in enumerate(names)}


def _values(tokens: list[tuple[str, str]], names: list[str], imaginary: bool = False) -> list[float]:
    """Values at the sample points; `imaginary`: `i` is the imaginary unit, not a variable."""
    values = []
    for index in range(_POINTS):
        point = _point(names, index)
        if imaginary:
            point["i"] = 1j  # type: ignore[assignment]
        value = _Parser(list(tokens), point).parse()
        if isinstance(value, complex) and not imaginary:
            raise Unevaluable("not a real")
        values.append(value)
    return values


def _agree(a: float, b: float, tol: float) -> bool | None:
    """Equal / different / cannot tell: floats cannot separate 2^100 from 2^100+1, or 10^-20 from 0."""
    if isinstance(a, complex) or isinstance(b, complex):
        return abs(a - b) <= tol * max(abs(a), abs(b), 1.0)
    if math.isinf(a) or math.isinf(b):
        return a == b
    size = max(abs(a), abs(b))
    if size > 1e12 or (size < 1e-6 and a != b):
        return None
    return abs(a - b) <= tol * size


def _same(a: list[float], b: list[float], tol: float) -> bool | None:
    verdicts = [_agree(x, y, tol) for x, y in zip(a, b)]
    return False if False in verdicts else None if None in verdicts else True


def split_top(text: str, separators: str = ",") -> list[str]:
    """Split at the separators that are outside any brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch in separators and depth == 0:
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
        return "set", split_top(key[2:-2])
    if len(key) > 2 and key[0] in "([" and key[-1] in ")]" and _closes_at_end(key.replace("\\{", "{")):
        inner = split_top(key[1:-1])
        if len(inner) > 1:
            return key[0] + key[-1], inner
    parts = split_top(key)
    return ("list", parts) if len(parts) > 1 else ("scalar", parts)


def _element_values(element: str, names: list[str], imaginary: bool = False) -> list[float]:
    if element in ("\\infty", "+\\infty", "-\\infty"):
        return [-math.inf if element.startswith("-") else math.inf] * _POINTS
    return _values(_tokenize(element), names, imaginary)


_DECIMAL = re.compile(r"[-+]?\d*\.(\d+)(?:\\times10\^\{?(-?\d{1,3})\}?)?")  # 2.31\times10^{-3} too
_SHOWN_PLACES = 3  # a decimal shown to 3+ places equals an exact value it agrees with in every shown place


def _compare(pred: str, ref: str, pred_values: list[float], ref_values: list[float]) -> bool | None:
    """One element pair: exact forms to float precision; a decimal of 3+ places against an exact value by its
    shown places (1.732 = \\sqrt{3}, 125.663 = 40\\pi, 0.333 = 1/3); any other decimal only when clearly apart."""
    for decimal, other, d_values, o_values in ((pred, ref, pred_values, ref_values), (ref, pred, ref_values, pred_values)):
        shown = _DECIMAL.fullmatch(decimal)
        if shown and len(shown.group(1)) >= _SHOWN_PLACES and "." not in other and not _WORD.search(other):
            unit = 10.0 ** (-len(shown.group(1)) + (int(shown.group(2)) if shown.group(2) else 0))
            if any(isinstance(v, complex) or math.isinf(v) for v in o_values):
                return False
            return all(shown_places_agree(d, o, unit) for d, o in zip(d_values, o_values))
    exact = _same(pred_values, ref_values, _REL_TOL)
    if ("." in pred or "." in ref) and not exact:  # 1.41 may be a rounding of \sqrt{2}: a clear difference decides
        return False if _same(pred_values, ref_values, _DECIMAL_TOL) is False else None
    return exact


def shown_places_agree(decimal: float, exact: float, unit: float) -> bool:
    """True if `decimal` is `exact` rounded, or cut off, to the places it shows (`unit` = 10^-places):
    1.414 and 1.4142 for \\sqrt{2}, 125.663 for 40\\pi; never 1.415."""
    slack = 1e-9 * max(1.0, abs(exact))
    rounded = abs(decimal - exact) <= unit / 2 + slack
    truncated = (decimal == 0 or (decimal > 0) == (exact > 0)) and 0 <= abs(exact) - abs(decimal) < unit + slack
    return rounded or truncated


def numeric_verdict(pred_key: str, ref_key: str, ordered: bool = False) -> bool | None:
    """True/False when arithmetic decides it, None when only the symbolic tier can.

    `ordered`: a bare comma list compares element by element in order (else as a multiset)."""
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
    if kind in ("set", "list") and not ordered:  # a set: a repeated element counts once
        pred_parts, ref_parts = list(dict.fromkeys(pred_parts)), list(dict.fromkeys(ref_parts))
    if len(pred_parts) != len(ref_parts):
        return False
    try:
        names = sorted(set().union(*(_variables(_tokenize(p)) for p in pred_parts + ref_parts
                                     if "\\infty" not in p)))
        pred_values = [_element_values(p, names) for p in pred_parts]
        ref_values = [_element_values(r, names) for r in ref_parts]
    except (Unevaluable, OverflowError, ZeroDivisionError, ValueError, RecursionError, TypeError):
        return None

    def same(i: int, j: int) -> bool | None:
        return _compare(pred_parts[i], ref_parts[j], pred_values[i], ref_values[j])

    unordered = kind == "set" or (kind == "list" and not ordered)
    verdict = _decide(unordered, len(pred_parts), same)
    if verdict is False and "i" in names:  # as the imaginary unit: i(2-i) = 1+2i
        try:
            others = [name for name in names if name != "i"]
            pred_values = [_element_values(p, others, imaginary=True) for p in pred_parts]
            ref_values = [_element_values(r, others, imaginary=True) for r in ref_parts]
            verdict = True if _decide(unordered, len(pred_parts), same) else None
        except (Unevaluable, OverflowError, ZeroDivisionError, ValueError, RecursionError, TypeError):
            return None
    if verdict is False and "e" in names:  # a free variable here; as Euler's number it might agree
        return None
    return verdict


def _decide(unordered: bool, count: int, same) -> bool | None:
    if unordered:  # each prediction element pairs with a distinct reference one
        unused = list(range(count))
        for i in range(count):
            verdicts = [same(i, j) for j in unused]
            if True in verdicts:
                unused.pop(verdicts.index(True))
            elif None in verdicts:
                return None
            else:
                return False
        return True
    verdicts = [same(i, i) for i in range(count)]
    if False in verdicts:
        return False
    return None if None in verdicts else True
