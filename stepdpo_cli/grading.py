"""Final-answer extraction and equivalence for math reasoning, time-bounded and safe on hostile text.

Tiers, cheapest first: normalised strings; exact numbers with the GSM8K conventions; arithmetic LaTeX
evaluated at sample points (grading_numeric.py); and only then math-verify in a worker process that is
killed and restarted when a comparison overruns its timeout (grading_worker.py). Model text is never
evaluated as code; inputs are size-capped and screened before any parser sees them.
"""
from __future__ import annotations

import re
from fractions import Fraction
from functools import lru_cache

from .grading_numeric import numeric_verdict
from .grading_worker import MAX_SYMBOLIC_CHARS, symbolic_match

MAX_ANSWER_CHARS = 1000  # a longer "answer" is not one: no real answer needs this much text

# ---------------------------------------------------------------------------------------------- extraction

_BOXED = re.compile(r"\\(?:boxed|fbox)")
_BRACE_TOKEN = re.compile(r"\\.|[{}]", re.S)  # escaped chars are skipped, so \{ \} never count as braces
_FINAL_DOLLAR = re.compile(r"final answer is\s*:?\s*\$([^$]{1,%d})\$" % MAX_ANSWER_CHARS, re.I)
_ANSWER_IS = re.compile(r"\banswer is\s*:?\s*([^\n]{1,%d})" % MAX_ANSWER_CHARS, re.I)
_HASHES = re.compile(r"####\s*([^\n]{1,%d})" % MAX_ANSWER_CHARS)
_ANSWER_LINE = re.compile(r"^[ \t>*#_]*answer[*_]*\s*:[*_]*\s*([^\n]{1,%d})" % MAX_ANSWER_CHARS, re.I | re.M)
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")
_LEADING_NUMBER = re.compile(r"\s*(?:\\?\$)?\s*(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*\\?%)?)(?=$|[\s,;.!?)])")


_BOX_GLUE = re.compile(r"[\s$,;.]*(?:,|and|or|\\quad|\\text\{\s*(?:and|or)\s*\})?[\s$,;.]*")


def _box_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of the last few \\boxed{...} / \\fbox{...} / `\\boxed 5`, in text order.

    Only the last 8 are looked at, and each brace scan is bounded (a box longer than MAX_ANSWER_CHARS is
    not an answer), so text holding 100k unbalanced boxes costs one regex pass."""
    spans = []
    for box in reversed(list(_BOXED.finditer(text))[-8:]):
        i = box.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            depth = 0
            for token in _BRACE_TOKEN.finditer(text, i, i + MAX_ANSWER_CHARS + 2):
                if token.group() == "{":
                    depth += 1
                elif token.group() == "}":
                    depth -= 1
                    if depth == 0:
                        spans.append((box.start(), token.end(), text[i + 1:token.start()]))
                        break
        elif i > box.end():  # `\boxed 5`: one token up to whitespace or $
            token = re.match(r"[^\s$]+", text[i:i + MAX_ANSWER_CHARS + 1])
            if token:
                spans.append((box.start(), i + token.end(), token.group()))
    return spans[::-1]


def _boxed_answer(text: str) -> tuple[int, str] | None:
    """(position, answer) of the last box; boxes joined only by "and" / "," / \\quad are one list answer
    ("\\boxed{-2} and \\boxed{1}" -> "-2, 1"). An unbalanced (truncated) last box falls back to the one before."""
    spans = _box_spans(text)
    if not spans:
        return None
    group = [spans[-1]]
    for span in reversed(spans[:-1]):
        if not _BOX_GLUE.fullmatch(text[span[1]:group[0][0]]):
            break
        group.insert(0, span)
    contents = list(dict.fromkeys(content.strip() for _, _, content in group))  # a repeated box is one answer
    return group[0][0], ", ".join(contents)


def _answer_segment(segment: str) -> str:
    """The answer at the start of 'The answer is ...' text: $math$, else a leading number, else the clause."""
    segment = segment.strip()
    for opener, closer in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if segment.startswith(opener):
            end = segment.find(closer, len(opener))
            if end > len(opener):
                return segment[len(opener):end]
    number = _LEADING_NUMBER.match(segment)
    if number:
        return number.group(1)
    # drop a trailing explanation ("..., since ...") and the sentence's full stop
    return re.split(r"\.\s|,\s+(?:since|because|which|so)\b", segment, maxsplit=1)[0]


def _last_match(pattern: re.Pattern, text: str, pos: int = 0) -> re.Match | None:
    last = None
    for last in pattern.finditer(text, pos):
        pass
    return last


def extract_answer(text: str) -> str | None:
    r"""The final answer in a completion, or None.

    Order: the latest of the last \boxed{} (or \fbox{}; adjacent boxes joined by "and" form a list), "final
    answer is $X$" and "#### X"; else the latest of "the answer is X" and an "Answer: X" line; else the whole
    text when it is one $...$ formula; else the last number. $...$, \text{}, \left/\right, \! and a final
    period or comma are stripped. An answer longer than MAX_ANSWER_CHARS counts as none.
    """
    if not isinstance(text, str) or not text:
        return None
    answer = _latest_marked(text)
    if answer is None:
        whole = _strip_wrappers(text) if text.count("$") in (2, 4) else None  # "$x \in [-2,7]$"
        if whole is not None and "$" not in whole:
            answer = whole
    if answer is None:
        answer = _last_number(text)
        if answer is None:
            return None
    if len(answer) > MAX_ANSWER_CHARS:
        return None
    answer = _SPACING.sub("", _TEX_THOUSANDS.sub(",", answer))
    for _ in range(3):  # \text{(C)} -> (C), \text{ cm} -> cm; nested wrappers peel one level per pass
        answer = _TEXT_CMD.sub(r"\1", answer)
    return _strip_wrappers(answer) or None


def _latest_marked(text: str) -> str | None:
    """The answer an explicit marker points at (strong markers first, then the weaker "answer is")."""
    boxed = _boxed_answer(text)
    candidates: list[tuple[int, str]] = [boxed] if boxed else []
    final = _last_match(_FINAL_DOLLAR, text)
    if final:
        candidates.append((final.start(), final.group(1)))
    hashes = _last_match(_HASHES, text)
    if hashes:
        candidates.append((hashes.start(), _answer_segment(hashes.group(1))))
    if not candidates:  # "the answer is" is weaker: "...so the answer is probably wrong" must not beat a box
        for pattern in (_ANSWER_IS, _ANSWER_LINE):
            match = _last_match(pattern, text)
            if match:
                candidates.append((match.start(), _answer_segment(match.group(1))))
    return max(candidates, key=lambda c: c[0])[1] if candidates else None


def _last_number(text: str) -> str | None:
    tail = max(0, len(text) - 4096)  # the last number is almost always near the end: look there first
    tail = text.rfind(" ", 0, tail) + 1 if tail else 0  # never start inside a number
    last = _last_match(_NUMBER, text, tail) or (_last_match(_NUMBER, text[:tail + 64]) if tail else None)
    if last is None:
        return None
    answer = last.group()
    if answer.startswith("-") and last.start() > 0 and (text[last.start() - 1].isalnum()
                                                         or text[last.start() - 1] in ")]}"):
        answer = answer[1:]  # "5-3": a minus between operands is not a sign
    return answer


# ---------------------------------------------------------------------------------------------- normalisation

_TEXT_CMD = re.compile(r"\\(?:text|textbf|textrm|textit|textnormal|textup|textsf|texttt|mathrm|mathbf|mathit|"
                       r"mathsf|mathtt|mbox|operatorname)\s*\{([^{}]*)\}")
_TRAILING_TEXT = re.compile(r"^(.*?\S)\s*\\(?:text|textrm|textnormal|textup|mbox|mathrm)\s*\{\s*[A-Za-z][A-Za-z .]*\}(?:\^\{?[23]\}?)?$")
_UNIT_WORDS = re.compile(r"^(-?[\d.,]+%?|-?\d+/\d+|-?\\frac\{[^{}]*\}\{[^{}]*\})\s+[A-Za-z]{2,}[A-Za-z.]*(?:\s+[A-Za-z][A-Za-z.]*){0,3}"
                         r"(?:\^\{?[23]\}?)?$")
_TEX_THOUSANDS = re.compile(r",\\!\s*")  # MATH writes 10,\!000; "11,\! 111" is still one number
_SPACING = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg|displaystyle)(?![A-Za-z])|(?<!\\)\\[!,;: ]|\\q?quad(?![A-Za-z])")
_PERCENT_WORD = re.compile(r"(?<=\d)\s*(?:percent(?:age)?|pct)\.?$", re.I)
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ(?![A-Za-z])|°|\\degree(?![A-Za-z])|\s*degrees?$")
_SIMPLE_LHS = re.compile(r"^[A-Za-z](?:_\{?\w+\}?)?\s*(?:=(?!=)|\\in(?![A-Za-z]))\s*(.+)$", re.S)
_CHOICE = re.compile(r"^\(\s*([A-Ea-e])\s*\)$")


def _strip_wrappers(answer: str) -> str:
    """Remove delimiters a completion puts around its answer ($..$, \\(..\\), \\boxed{}) and a final period."""
    answer = answer.strip()
    for _ in range(3):
        before = answer
        if len(answer) > 1 and answer.startswith("$") and answer.endswith("$"):
            answer = answer.strip("$").strip()
        for opener, closer in (("\\(", "\\)"), ("\\[", "\\]")):
            if answer.startswith(opener) and answer.endswith(closer):
                answer = answer[2:-2].strip()
        boxed = re.fullmatch(r"\\(?:boxed|fbox)\s*\{(.*)\}", answer, re.S)
        if boxed:
            answer = boxed.group(1).strip()
        answer = re.sub(r"(?<![.\\])[.,;]$", "", answer).strip()  # a sentence's stop, never an ellipsis
        if answer == before:
            break
    return answer


@lru_cache(maxsize=8192)
def _normalize(answer: str) -> str:
    """A canonical form that keeps spacing (it is what the symbolic check reads)."""
    s = answer.replace("\u2212", "-").replace("\u00a0", " ").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _strip_wrappers(s)
    s = _SPACING.sub("", _TEX_THOUSANDS.sub(",", s))
    s = _DEGREES.sub("", s)
    trailing = _TRAILING_TEXT.match(s)  # "5\text{ cm}^2" -> "5": units after a value
    if trailing:
        s = trailing.group(1)
    for _ in range(3):
        s = _TEXT_CMD.sub(r"\1", s)
    s = s.replace("\\%", "%").replace("\\$", "").strip()
    if s.startswith("$") and not s.endswith("$"):
        s = s[1:].strip()  # currency
    s = re.sub(r"^(-?)\$", r"\1", s)
    s = _PERCENT_WORD.sub("%", s)  # "28 percent" is "28%"
    units = _UNIT_WORDS.match(s)  # "5 dollars", "3.5 hours", "12 square feet"
    if units and not re.search(r"\b(?:pi|sqrt|i|e|or|and)\b", s[units.end(1):]):
        s = units.group(1)
    lhs = _SIMPLE_LHS.match(s)  # "x = 3" -> "3"
    if lhs and "=" not in lhs.group(1):
        s = lhs.group(1)
    choice = _CHOICE.match(s)
    if choice:
        s = choice.group(1).upper()
    return _strip_wrappers(s)


@lru_cache(maxsize=8192)
def _key(answer: str) -> str:
    """String-comparison key: normalised, no spaces, \\frac12 -> \\frac{1}{2}, \\sqrt3 -> \\sqrt{3}."""
    s = re.sub(r"\s+", "", _normalize(answer))
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)
    if re.fullmatch(r"[A-Za-z ]+", s):
        s = s.lower()
    return s


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
    """Exact, except that a decimal of 6+ places equals a fraction it rounds or truncates (1/3 = 0.333333)."""
    if a[0] == b[0]:
        return True
    places = max(p for p in (a[2], b[2], -1) if p is not None)
    exact_side = a if a[2] is None else b if b[2] is None else None
    return exact_side is not None and places >= 6 and abs(a[0] - b[0]) <= Fraction(1, 10 ** places)


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
    return bool(_NUMERIC_TOWER.search(text) or _HUGE_EXPONENT.search(text) or _HUGE_FACTORIAL.search(text))


# ---------------------------------------------------------------------------------------------- public API

def answers_match(prediction: str | None, reference: str | list[str], timeout: float = 5.0) -> bool:
    """True if `prediction` equals the reference (any of them, if a list). Never raises on odd input.

    `timeout` bounds each symbolic (math-verify) comparison in seconds; an overrun counts as not equal, and
    `timeout <= 0` skips the symbolic tier altogether (pure-Python tiers only)."""
    if prediction is None:
        return False
    prediction = str(prediction)
    if len(prediction) > MAX_ANSWER_CHARS:
        return False
    references = reference if isinstance(reference, list) else [reference]
    references = [_reference_answer(str(r)) for r in references if r is not None]
    pred_key = _key(prediction)
    if not pred_key:
        return False
    pending = []
    for ref in references:
        ref_key = _key(ref)
        if not ref_key:
            continue
        if pred_key == ref_key:
            return True
        pred_num, ref_num = _number_of(prediction, pred_key), _number_of(ref, ref_key)
        if pred_num is not None and ref_num is not None:
            if _numeric_match(pred_num, ref_num):
                return True
            continue  # two plain numbers: decided, no symbolic second opinion
        if _WORDS.fullmatch(pred_key) and _WORDS.fullmatch(ref_key):
            continue  # two different words ("monday" vs "friday")
        if not _too_costly(pred_key) and not _too_costly(ref_key):
            verdict = numeric_verdict(pred_key, ref_key)  # arithmetic at sample points, no sympy
            if verdict is not None:
                if verdict:
                    return True
                continue
        pending.append(ref)
    pred_sym = _normalize(prediction)
    if not pending or timeout <= 0 or _too_costly(pred_sym):  # timeout 0: the cheap tiers only
        return False
    for ref in pending:
        ref_sym = _normalize(ref)
        if not _too_costly(ref_sym) and symbolic_match(pred_sym, ref_sym, float(timeout)):
            return True
    return False


def grade(text: str, reference: str | list[str], timeout: float = 5.0) -> tuple[str | None, bool]:
    """(extracted prediction, correct) for a completion."""
    prediction = extract_answer(text)
    return prediction, answers_match(prediction, reference, timeout=timeout)


def _reference_answer(reference: str) -> str:
    """A reference may be a whole solution (GSM8K "... #### 72", MATH "... \\boxed{x}"): take its answer."""
    if len(reference) > MAX_ANSWER_CHARS or "####" in reference or "\\boxed" in reference:
        return extract_answer(reference) or reference[:MAX_ANSWER_CHARS]
    return reference
