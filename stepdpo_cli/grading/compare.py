"""Answer equivalence (`answers_match`), time-bounded and safe on hostile text.

Tiers, cheapest first: normalised strings; exact numbers with the GSM8K conventions; arithmetic LaTeX
evaluated at sample points (numeric.py); and only then math-verify in a worker process that is killed and
restarted when a comparison overruns its timeout (worker.py). Model text is never evaluated as code; inputs
are size-capped and screened before any parser sees them.
"""
from __future__ import annotations

import re
from fractions import Fraction
from functools import lru_cache

from .extract import MAX_ANSWER_CHARS, SPACING, TEX_THOUSANDS, TEXT_CMD, balanced, extract, strip_wrappers
from .numeric import numeric_verdict, shown_places_agree, split_top
from .worker import MAX_SYMBOLIC_CHARS, symbolic_match

__all__ = ["answers_match", "reference_answer"]

# ---------------------------------------------------------------------------------------------- normalisation

_TRAILING_TEXT = re.compile(r"^(.*?\S)\s*\\(?:text|textrm|textnormal|textup|textbf|mbox|mathrm)\s*\{\s*[A-Za-z][A-Za-z .]*\}"
                            r"(?:\^\{?[23]\}?)?$")
_NOT_UNITS = r"(?!(?:sin|cos|tan|sec|csc|cot|log|ln|exp|sqrt|pi|or|and)\b)"
_UNIT_WORDS = re.compile(r"^(-?[\d.,]+%?|-?\d+/\d+|-?\\frac\{[^{}]*\}\{[^{}]*\})(?:\s+" + _NOT_UNITS + r"[A-Za-z]{2,}|"
                         + _NOT_UNITS + r"[A-Za-z]{3,})[A-Za-z.]*(?:\s+[A-Za-z][A-Za-z.]*){0,3}(?:\^\{?[23]\}?|²|³)?$")
_SPACE_THOUSANDS = re.compile(r"-?\d{1,3}(?: \d{3})+(?:\.\d+)?")  # "1 000"
_PERCENT_WORD = re.compile(r"(?<=\d)\s*(?:percent(?:age)?|pct)\.?$", re.I)
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ(?![A-Za-z])|°|\\degree(?![A-Za-z])|\s*degrees?$")
_CHOICE = re.compile(r"^\(\s*([A-Ea-e])\s*\)$")
_TRIG = re.compile(r"\\(?:sin|cos|tan|cot|sec|csc)(?![A-Za-z])")
_DEGREE_ANGLE = re.compile(r"(\d+(?:\.\d+)?)\s*\^\s*\{?\s*\\circ\s*\}?")
_VECTOR = re.compile(r"\\begin\{[pb]matrix\}(.*)\\end\{[pb]matrix\}", re.S)
_AND_LIST = re.compile(r"\s*,?\s*\band\b\s*,?\s*")
_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?\s*(?:([AaPp])\.?\s*[Mm]\.?)?$")
_SUBSCRIPT_BRACES = re.compile(r"_\{(\w+)\}")
_REPEATING = re.compile(r"(?<![\d.])(\d*)\.(\d*)\\(?:overline|bar|dot)\s*\{?(\d{1,12})\}?")
_BASE_N = re.compile(r"([0-9A-Za-z]+)_(\d{1,2})")
_DOUBLE_ESCAPE = re.compile(r"(?<!\\)\\\\(?:[dt]?frac|sqrt|begin|end|boxed|text|left|right|cdot|times|pi|le|ge)(?![A-Za-z])")


def _repeating_fraction(match: re.Match) -> str:
    """a.b(c repeating) as an exact fraction: 0.\\overline{3} -> \\frac{1}{3}."""
    whole, fixed, cycle = match.group(1) or "0", match.group(2), match.group(3)
    value = int(whole) + Fraction(int(fixed + cycle) - int(fixed or "0"), 10 ** len(fixed) * (10 ** len(cycle) - 1))
    return f"\\frac{{{value.numerator}}}{{{value.denominator}}}"


def _clock(s: str) -> str | None:
    """"08:34 P.M." -> "20:34", "20:34:00" -> "20:34"; None when `s` is not a clock time."""
    match = _CLOCK.match(s)
    if not match:
        return None
    hours, minutes, seconds, half = int(match.group(1)), int(match.group(2)), match.group(3), match.group(4)
    if half:
        hours = hours % 12 + (12 if half in "Pp" else 0)
    if hours > 24 or minutes > 59 or (seconds and seconds != "00"):
        return None
    return f"{hours}:{minutes:02d}"


@lru_cache(maxsize=8192)
def _normalize(answer: str) -> str:
    """A canonical form that keeps spacing (it is what the symbolic check reads)."""
    s = answer.replace("\u2212", "-").replace("\u00a0", " ")
    if _DOUBLE_ESCAPE.search(s):  # a string escaped twice: \\frac -> \frac, \\\\ -> \\
        s = s.replace("\\\\", "\\")
    s = re.sub(r"\\[dtc]frac(?![A-Za-z])", r"\\frac", s)
    s = s.replace("\\begin{matrix}", "\\begin{pmatrix}").replace("\\end{matrix}", "\\end{pmatrix}")
    s = strip_wrappers(s)
    s = SPACING.sub(" ", TEX_THOUSANDS.sub("", s)).strip()
    if _TRIG.search(s):  # \sin(90^\circ - x): degrees inside a trigonometric function are radians * pi/180
        s = _DEGREE_ANGLE.sub(r"(\1\\pi/180)", s)
    s = _DEGREES.sub("", s)
    trailing = _TRAILING_TEXT.match(s)  # "5\text{ cm}^2" -> "5": units after a value
    if trailing:
        s = trailing.group(1)
    for _ in range(3):
        s = TEXT_CMD.sub(r"\1", s)
    s = s.replace("\\%", "%").replace("\\$", "").replace("€", "").strip()
    s = re.sub(r"\s*%$", "%", s)
    if s.startswith("$") and not s.endswith("$"):
        s = s[1:].strip()  # currency
    s = re.sub(r"^(-?)\$", r"\1", s).rstrip("$").strip()
    s = _PERCENT_WORD.sub("%", s)  # "28 percent" is "28%"
    units = _UNIT_WORDS.match(s)  # "5 dollars", "3.5 hours", "12 square feet", "10weeks"
    if units and not re.search(r"\b(?:pi|sqrt|i|e|or|and)\b", s[units.end(1):]):
        s = units.group(1)
    if _SPACE_THOUSANDS.fullmatch(s):
        s = s.replace(" ", "")
    if re.search(r"\band\b", s) and ("," in s or re.search(r"\d", s)):
        s = _AND_LIST.sub(", ", s)  # "7, -2, and -5" / "6 and 8": one list
    if "\\approx" in s:  # "x = 1/3 \approx 0.33": the exact value; "x \approx 11": the approximation
        before, _, after = s.partition("\\approx")
        s = before.strip() if "=" in before else after.split("\\approx")[-1].strip()
    s = _REPEATING.sub(_repeating_fraction, s)  # 0.1\overline{6} = 1/6
    mixed = re.fullmatch(r"(-?)(\d+)\s+(\d+)/(\d+)", s)  # "1 1/2"
    if mixed:
        s = f"{mixed.group(1)}{mixed.group(2)}\\frac{{{mixed.group(3)}}}{{{mixed.group(4)}}}"
    s = _SUBSCRIPT_BRACES.sub(r"_\1", s)  # 4210_{7} = 4210_7
    clock = _clock(s)
    if clock:
        s = clock
    if s.startswith("{") and s.endswith("}") and "," in s and balanced(s[1:-1]):
        s = s[1:-1]  # "{1, 2, 3}": a set written with bare braces
    choice = _CHOICE.match(s)
    if choice:
        s = choice.group(1).upper()
    return strip_wrappers(s)


@lru_cache(maxsize=8192)
def _key(answer: str) -> str:
    """String-comparison key: normalised, no spaces, \\frac12 -> \\frac{1}{2}, \\sqrt3 -> \\sqrt{3}."""
    s = re.sub(r"\s+", "", _normalize(answer))
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)
    s = re.sub(r"(?<![\d.])\.(\d)", r"0.\1", s)  # .1 = 0.1
    if re.fullmatch(r"[A-Za-z ]+", s):
        s = s.lower()
    return s


# ---------------------------------------------------------------------------------------------- equation labels

_RELATION = re.compile(r"\\(?:le|ge|leq|geq|neq|ne|lt|gt|in|approx)(?![A-Za-z])|[<>]|!=")


_FUNCTION = re.compile(r"\\(?:sin|cos|tan|cot|sec|csc|arc\w+|sinh|cosh|tanh|log|ln|exp|sqrt|sum|prod|int|lim)(?![A-Za-z])")


def _is_label(text: str) -> bool:
    """A name being defined, not an expression: x, y_1, f(x), (p,q), |AB|, \\frac{NO}{BO}, V_1:V_2."""
    core = re.sub(r"_\{[^{}]*\}|_\w", "", text.strip())
    core = re.sub(r"\\frac\{([A-Za-z ]+)\}\{([A-Za-z ]+)\}", r"\1", core)
    return (bool(core) and not re.search(r"[\d+\-*/^]", core) and not _RELATION.search(core) and len(core) <= 24
            and not _FUNCTION.search(core))


def _without_labels(answer: str) -> str | None:
    """ "x = 1, y = 2" -> "1, 2"; "f(x) = 2x + 3" -> "2x + 3"; None when some '=' is not a label's."""
    if "=" not in answer or _RELATION.search(answer.replace("\\approx", "")):
        return None
    groups = []
    for group in split_top(answer, ";"):
        values = []
        for part in split_top(group, ","):
            chain = part.split("=")
            if len(chain) > 1:
                if not _is_label(chain[-2]) or not chain[-1].strip():
                    return None
                part = chain[-1]
            values.append(part.strip())
        groups.append(values)
    if len(groups) > 1:  # "p=5,q=2;p=7,q=2": one tuple per group
        return ", ".join(f"({', '.join(values)})" if len(values) > 1 else values[0] for values in groups)
    return ", ".join(groups[0])


_WORDS = re.compile(r"[a-z][a-z ]+")
_PLAIN_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")
_FRACTION = re.compile(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}|(-?\d+)/(-?\d+)")
_MIXED = re.compile(r"(-?)(\d+)\\frac\{(\d+)\}\{(\d+)\}")  # 2\frac{1}{4} = 9/4, as MATH writes it


@lru_cache(maxsize=8192)
def _number(key: str) -> tuple[Fraction, bool, int | None] | None:
    """(value, is_percent, decimal places or None if exact) for a plain number, fraction or percent."""
    percent = key.endswith("%")
    body = key[:-1] if percent else key
    if len(body) > 60:
        return None
    if _PLAIN_NUMBER.fullmatch(body):
        body = body.replace(",", "")
        places = len(body.split(".")[1]) if "." in body else None
        return Fraction(body), percent, places
    frac = _FRACTION.fullmatch(body)
    if frac:
        sign, num, den = (frac.group(1), frac.group(2), frac.group(3)) if frac.group(2) else ("", frac.group(4),
                                                                                            frac.group(5))
        if int(den) == 0:
            return None
        value = Fraction(int(num), int(den))
        return (-value if sign else value), percent, None
    mixed = _MIXED.fullmatch(body)
    if mixed and int(mixed.group(4)) != 0:
        value = int(mixed.group(2)) + Fraction(int(mixed.group(3)), int(mixed.group(4)))
        return (-value if mixed.group(1) else value), percent, None
    return None


def _number_of(answer: str, key: str) -> tuple[Fraction, bool, int | None] | None:
    """`_number(key)`, except that "32, 349" (comma then space) is a list of two numbers, not 32349."""
    if "," in key and re.search(r"\d,\s+\d", _normalize(answer)):
        return None
    return _number(key)


def _numbers_equal(a: tuple[Fraction, bool, int | None], b: tuple[Fraction, bool, int | None]) -> bool:
    """Exact, except that a decimal of 3+ places equals a fraction it rounds or cuts off (1/3 = 0.333)."""
    if a[0] == b[0]:
        return True
    places = max(p for p in (a[2], b[2], -1) if p is not None)
    exact_side = a if a[2] is None else b if b[2] is None else None
    if exact_side is None or places < 3:
        return False
    decimal_side = b if exact_side is a else a
    return shown_places_agree(float(decimal_side[0]), float(exact_side[0]), 10.0 ** -places)


def _numeric_match(pred: tuple[Fraction, bool, int | None], ref: tuple[Fraction, bool, int | None]) -> bool:
    """GSM8K/MATH percent convention: the reference decides. Ref "50" accepts 50 and 50%; ref "0.5" accepts
    0.5 and 50%; ref "50%" accepts 50, 50% and 0.5. A bare 0.5 never equals a bare 50."""
    value, pct, places = pred
    if _numbers_equal((value, False, places), (ref[0], False, ref[2])):
        return True
    if pct and not ref[1]:
        return _numbers_equal((value / 100, False, None if places is None else places + 2), (ref[0], False, ref[2]))
    if ref[1] and not pct:
        return _numbers_equal((value * 100, False, None if places is None else max(places - 2, 0)),
                              (ref[0], False, ref[2]))
    return False


# ---------------------------------------------------------------------------------------------- screening

_NUMERIC_TOWER = re.compile(r"\d\s*(?:\^|\*\*)\s*[{(]?\s*-?\d+\s*[})]?\s*(?:\^|\*\*)|"
                            r"\d\s*(?:\^|\*\*)\s*\{[^{}]*(?:\^|\*\*)")
_HUGE_EXPONENT = re.compile(r"(?:\^|\*\*)\s*[{(]?\s*-?\d{5,}")
_HUGE_FACTORIAL = re.compile(r"\d{4,}\s*!|\\(?:Gamma|binom)\s*\{?\s*\d{5,}")


_EXPONENT_GROUP = re.compile(r"(?:\^|\*\*)\s*\{")
_BIG_EXPONENT = re.compile(r"(?:\^|\*\*)\s*[{(]?\s*-?\d{3,}")


def _too_costly(text: str) -> bool:
    """Inputs no real answer has that make sympy hang or eat memory: power towers, giant exponents, deep nesting."""
    if len(text) > MAX_SYMBOLIC_CHARS or text.count("^") + text.count("**") > 12:
        return True
    depth = deepest = 0
    for ch in text:
        if ch in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "})]":
            depth -= 1
    if deepest > 12:
        return True
    return bool(_NUMERIC_TOWER.search(text) or _HUGE_EXPONENT.search(text) or _HUGE_FACTORIAL.search(text)
                or _big_power_in_exponent(text))


def _big_power_in_exponent(text: str) -> bool:
    """An exponent holding a power of 100 or more, at any brace depth: 2^{\frac{1}{2^{1000}}}."""
    for start in (m.end() for m in _EXPONENT_GROUP.finditer(text)):
        depth, end = 1, len(text)  # an unclosed group (a cut-off completion) runs to the end
        for end in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            if depth == 0:
                break
        if _BIG_EXPONENT.search(text, start, end):
            return True
    return False


# ---------------------------------------------------------------------------------------------- comparison

_ENVIRONMENT = re.compile(r"\\(?:begin|end)\s*\{[^{}]*\}(?:\{[^{}]*\})?")
_CALL = re.compile(r"(?<![\\A-Za-z0-9])([A-Za-z_]{3,})\s*\(")
_MATH_CALLS = {"sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "log",
               "exp", "sqrt", "abs", "max", "min", "gcd", "lcm", "floor", "ceil", "det", "mod"}
_NOT_MATH = re.compile(r"['\"`]|__|\bimport\b|\blambda\b|\bor\b|\?")


def _is_math(answer: str) -> bool:
    """False for code and prose: quotes, dunders, "or" (a hedge: "14 or 16"), two or more words outside \\text{}."""
    text = _ENVIRONMENT.sub(" ", TEXT_CMD.sub(" ", answer))
    if any(name.lower() not in _MATH_CALLS for name in _CALL.findall(text)):
        return False  # print(5), system(...): a call of a name that is no math function
    return not _NOT_MATH.search(text) and len(re.findall(r"(?<![\\A-Za-z])[A-Za-z]{2,}(?![A-Za-z])", text)) < 2


def _is_ordered(ref_key: str) -> bool:
    """A bare list of numbers written out of numeric order is a sequence (order matters); a sorted one may be
    the set of solutions ("-2, 1"), so any order of it is accepted."""
    parts = split_top(ref_key, ",")
    if len(parts) < 2 or ref_key[:1] in "([{\\":
        return False
    values = [_number(part) for part in parts]
    if any(v is None for v in values):
        return False
    numbers = [v[0] for v in values]  # type: ignore[index]
    return numbers != sorted(numbers) and numbers != sorted(numbers, reverse=True)


def _decimal_comma(key: str, other: str) -> str:
    """ "1,22" against "1.22": a decimal comma (a group of other than 3 digits cannot be thousands)."""
    if re.fullmatch(r"-?(?:\d+,\d{1,2}|\d{4,},\d+|0,\d+)", key) and re.fullmatch(r"-?\d*\.\d+", other):
        return key.replace(",", ".")
    return key


def _base_n_verdict(pred_key: str, ref_key: str) -> bool | None:
    """Base-n answers compare by digits and base; "1010" for "1010_2" is right (the question states the base),
    a digit the base does not have is wrong. None when neither side is written in base n."""
    pred_base, ref_base = _BASE_N.fullmatch(pred_key), _BASE_N.fullmatch(ref_key)
    if not pred_base and not ref_base:
        return None
    if pred_base and ref_base:
        return pred_key == ref_key
    based, plain = (ref_base, pred_key) if ref_base else (pred_base, ref_key)
    base = int(based.group(2))  # type: ignore[union-attr]
    if not 2 <= base <= 36 or not re.fullmatch(r"[0-9A-Za-z]+", plain) or plain != based.group(1):  # type: ignore[union-attr]
        return False
    return all(int(digit, 36) < base for digit in plain)


def _cheap_verdict(prediction: str, reference: str) -> bool | None:
    """True/False from the pure-Python tiers, or None when only the symbolic tier can decide."""
    pred_key, ref_key = _key(prediction), _key(reference)
    if not pred_key or not ref_key:
        return False
    if pred_key == ref_key:
        return True
    base_n = _base_n_verdict(pred_key, ref_key)
    if base_n is not None:
        return base_n
    if not _is_math(_normalize(prediction)):
        return False  # code or prose never equals a number, whatever a parser could fish out of it
    pred_key, ref_key = _decimal_comma(pred_key, ref_key), _decimal_comma(ref_key, pred_key)
    pred_num, ref_num = _number_of(prediction, pred_key), _number_of(reference, ref_key)
    if pred_num is not None and ref_num is not None:
        return _numeric_match(pred_num, ref_num)  # two plain numbers: decided, no symbolic second opinion
    if _WORDS.fullmatch(pred_key) and _WORDS.fullmatch(ref_key):
        return False  # two different words ("monday" vs "friday")
    if _too_costly(pred_key) or _too_costly(ref_key):
        return None
    return numeric_verdict(pred_key, ref_key, ordered=_is_ordered(ref_key))  # arithmetic at sample points


def _pairs(prediction: str, reference: str) -> list[tuple[str, str]]:
    """The forms to compare: with equation labels dropped when only one side has them ("f(x) = 2x+3" vs
    "2x+3"; "x = 1, y = 2" vs "1, 2"), then as written."""
    pred_norm, ref_norm = _normalize(prediction), _normalize(reference)
    pairs = []
    if "=" in pred_norm or "=" in ref_norm:
        pred_bare = _without_labels(pred_norm) if "=" in pred_norm else pred_norm
        ref_bare = _without_labels(ref_norm) if "=" in ref_norm else ref_norm
        if pred_bare is not None and ref_bare is not None:
            pairs.append((pred_bare, ref_bare))
    pred_eqs, ref_eqs = (_equations(pred_norm), _equations(ref_norm)) if "=" in pred_norm and "=" in ref_norm \
        else (None, None)
    if pred_eqs and ref_eqs and [lhs for lhs, _ in pred_eqs] == [lhs for lhs, _ in ref_eqs]:
        # same left sides: the right sides decide ("a+b = 0.5" vs "a+b = \frac12"), row by row in a system
        pairs.append((f"({', '.join(rhs for _, rhs in pred_eqs)})", f"({', '.join(rhs for _, rhs in ref_eqs)})"))
    pairs.append((pred_norm, ref_norm))
    if "matrix}" not in pred_norm and "matrix}" not in ref_norm:
        return pairs
    pred_vector, ref_vector = _vector(pred_norm), _vector(ref_norm)
    if (pred_vector is None) != (ref_vector is None):  # a column or row vector written as a tuple
        pred_list, ref_list = pred_vector or _bracket_list(pred_norm), ref_vector or _bracket_list(ref_norm)
        if pred_list and ref_list:
            pairs.insert(0, (f"({', '.join(pred_list)})", f"({', '.join(ref_list)})"))
    return pairs


def _equations(answer: str) -> list[tuple[str, str]] | None:
    """(left-side key, right side) of each equation in "L = R" or a \begin{cases} system, else None."""
    system = re.fullmatch(r"\\begin\{(?:cases|aligned|array)\}(?:\{[^{}]*\})?(.*)\\end\{(?:cases|aligned|array)\}",
                          answer.strip(), re.S)
    rows = [row for row in (system.group(1).split("\\\\") if system else [answer]) if row.strip()]
    equations = []
    for row in rows:
        sides = row.replace("&", "").split("=")
        if len(sides) != 2 or _RELATION.search(row) or not sides[0].strip() or not sides[1].strip():
            return None
        equations.append((_key(sides[0]), sides[1].strip()))
    return equations or None


def _vector(answer: str) -> list[str] | None:
    """The entries of a one-column or one-row matrix, else None."""
    match = _VECTOR.fullmatch(answer.strip())
    if not match:
        return None
    rows = [row.strip() for row in match.group(1).split("\\\\") if row.strip()]
    cells = [[cell.strip() for cell in row.split("&")] for row in rows]
    if len(cells) == 1:
        return cells[0]
    return [row[0] for row in cells] if all(len(row) == 1 for row in cells) else None


def _bracket_list(answer: str) -> list[str] | None:
    if len(answer) > 2 and answer[0] in "([" and answer[-1] in ")]":
        parts = split_top(answer[1:-1], ",")
        return [p.strip() for p in parts] if len(parts) > 1 else None
    return None


# ---------------------------------------------------------------------------------------------- public API

def answers_match(prediction: str | None, reference: str | list[str], timeout: float = 5.0) -> bool:
    """True if `prediction` equals the reference (any of them, if a list). Never raises on odd input.

    `timeout` bounds each symbolic (math-verify) comparison in seconds; an overrun counts as not equal, and
    `timeout <= 0` skips the symbolic tier altogether (pure-Python tiers only)."""
    if prediction is None:
        return False
    prediction = str(prediction)
    if len(prediction) > MAX_ANSWER_CHARS or not prediction.strip():
        return False
    references = reference if isinstance(reference, list) else [reference]
    pending = []
    for ref in (reference_answer(str(r)) for r in references if r is not None):
        if not ref:
            continue
        for pred_form, ref_form in _pairs(prediction, ref):
            verdict = _cheap_verdict(pred_form, ref_form)
            if verdict:
                return True
            if verdict is None:
                pending.append((pred_form, ref_form))
                break
    if timeout <= 0:  # the cheap tiers only
        return False
    for pred_form, ref_form in pending:
        if not _too_costly(pred_form) and not _too_costly(ref_form) and \
                symbolic_match(pred_form, ref_form, float(timeout)):
            return True
    return False


@lru_cache(maxsize=4096)
def reference_answer(reference: str) -> str:
    """The answer in a reference: as given, or the marked answer of a whole solution (GSM8K "... #### 72",
    MATH "... \\boxed{x}"), or its last math span ("$21,16$ or $11$" is one list)."""
    answer, _ = extract(reference, reference=True)
    return answer or ""
