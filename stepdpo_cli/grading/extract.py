"""Final-answer extraction: which part of a completion is its answer, and by which rule it was found.

Rules, in order (the first that finds something wins; its name is the record's `prediction_source`):
  "boxed"        the last \\boxed{} / \\fbox{}; boxes joined by "," / "and" / \\quad in the final statement
                 form one list answer ("\\boxed{(2, 2)} and \\boxed{(6, 2)}" -> "(2, 2), (6, 2)")
  "final_answer" "The final answer is X" / "Final Answer: X"
  "hashes"       "#### X" (GSM8K)
  "answer_is"    "the answer is X" / an "Answer: X" line (weaker: only when none of the above is present)
  "math_span"    the last $..$ / $$..$$ / \\(..\\) / \\[..\\] (spans joined by "and" / "," form one list)
  "bare"         the whole completion, when it is itself a short answer with no prose
  "last_number"  the last number, for GSM8K-style prose with no LaTeX math in it
Of the explicit markers the latest in the text wins. A box longer than MAX_ANSWER_CHARS (or nested deeper
than MAX_BOX_DEPTH) is not an answer, and nothing else is taken instead: source "oversized", prediction None.
Everything here is a bounded regex or brace scan over a size-capped text; nothing is evaluated.
"""
from __future__ import annotations

import re

MAX_ANSWER_CHARS = 1000  # a longer "answer" is not one: no real answer needs this much text
MAX_BOX_DEPTH = 24  # deeper brace nesting inside a box is not an answer either
MAX_TEXT_CHARS = 2_000_000  # completions are cut to their last MAX_TEXT_CHARS before any scan

SOURCES = ("boxed", "final_answer", "hashes", "answer_is", "math_span", "bare", "last_number", "oversized")

_BOXED = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BRACE_TOKEN = re.compile(r"\\.|[{}]", re.S)  # escaped chars are skipped, so \{ \} never count as braces
_FINAL = re.compile(r"final answer(?: is|:)\s*:?\s*(?:the final answer is\s*:?\s*)?([^\n]{1,%d})" % MAX_ANSWER_CHARS,
                    re.I)
_ANSWER_IS = re.compile(r"\banswer is\s*:?\s*([^\n]{1,%d})" % MAX_ANSWER_CHARS, re.I)
_HASHES = re.compile(r"####\s*([^\n]{1,%d})" % MAX_ANSWER_CHARS)
_ANSWER_LINE = re.compile(r"^[ \t>*#_]*answer[*_]*\s*:[*_]*\s*([^\n]{1,%d})" % MAX_ANSWER_CHARS, re.I | re.M)
_NUMBER = re.compile(r"-?\d+/\d+(?!\d|[.,]\d)|-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")
_PROSE_NUMBER = re.compile(r"(?P<comma>(?<![\d(\[,.])-?(?:\d+,\d{1,2}|\d{4,},\d+|0,\d+)(?![\d)\],]))|"
                           + _NUMBER.pattern)  # 2,74 / 1000,99 / 0,111 in prose: a decimal comma
_LEADING_NUMBER = re.compile(r"\s*(?:\\?\$)?\s*(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*\\?%)?)(?=$|[\s,;.!?)])")
_SPAN = re.compile(r"\$\$(.{1,%d}?)\$\$|\\\[(.{1,%d}?)\\\]|(?<![\\$])\$(?!\$)((?:\\\$|[^$\n]){1,%d}?)(?<!\\)\$|\\\(([^\n]{1,%d}?)\\\)"
                   % ((MAX_ANSWER_CHARS,) * 4), re.S)
_WORD_THEN_NUMBER = re.compile(r"(?<![\\A-Za-z0-9])[A-Za-z]{2,}(?![A-Za-z0-9(_{]).*\d")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n\s*\n")
_PROSE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}(?![A-Za-z])")
_TEXT_ARG = re.compile(r"\\(?:text|textbf|textrm|textit|mbox|mathrm|operatorname|begin|end)\s*\{[^{}]*\}")
_LATEX_MATH = re.compile(r"\\[(\[]|\$\$|\\(?:frac|dfrac|sqrt|begin|boxed|cdot|pi|le|ge)(?![A-Za-z])")
_NOT_CURRENCY = re.compile(r"(?<!\\)\$(?!\s*\d)")
_JOIN_WORDS = re.compile(r"^(?:[A-Za-z()]{1,12}\s+){0,4}and$|^and$|^or$")
_NOT_A_LIST = re.compile(r"\b(?:but|not|no|instead|actually|wait|correct(?:ed|ion)?|reflection|rather|than)\b", re.I)
TEXT_CMD = re.compile(r"\\(?:text|textbf|textrm|textit|textnormal|textup|textsf|texttt|mathrm|mathbf|mathit|"
                       r"mathsf|mathtt|mbox|operatorname)\s*\{([^{}]*)\}")
SPACING = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg|displaystyle)(?![A-Za-z])|(?<!\\)\\[!,;: ]|\\q?quad(?![A-Za-z])")
TEX_THOUSANDS = re.compile(r"(?<=\d),\\!\s*(?=\d)|(?<=\d)\{,\}(?=\d)")  # MATH writes 10,\!000 and 14{,}916


def extract(text: str, *, reference: bool = False) -> tuple[str | None, str | None]:
    """(answer, source) for a completion, or (None, None) when it has no answer.

    `reference=True` reads a gold answer: spans joined by "or" also form a list, and a text with no marker
    and no math span is the answer whole (a gold is never reduced to its last number)."""
    if not isinstance(text, str) or not text.strip():
        return None, None
    if len(text) > MAX_TEXT_CHARS:
        text = text[-MAX_TEXT_CHARS:]
    found = _marked(text) or _unmarked(text, reference)
    if found is None:
        return None, None
    answer, source = found
    if answer is None or len(answer) > MAX_ANSWER_CHARS:
        return None, "oversized" if source in ("boxed", "oversized") else None
    if not reference and not balanced(answer):
        return None, None  # cut off inside a group (max_tokens): `2^{` is no answer, not `2`
    answer = _clean(answer)
    return (answer, source) if answer else (None, None)


def extract_answer(text: str) -> str | None:
    """The final answer in a completion, or None (see `extract` for the rules)."""
    return extract(text)[0]


def _clean(answer: str) -> str:
    answer = SPACING.sub(" ", TEX_THOUSANDS.sub("", answer))
    answer = re.sub(r"[ \t]{2,}", " ", answer)
    for _ in range(3):  # \text{(C)} -> (C), \text{ cm} -> cm; nested wrappers peel one level per pass
        answer = TEXT_CMD.sub(r"\1", answer)
    return strip_wrappers(answer)


_WHOLE_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{(.*)\}", re.S)
_FINAL_STOP = re.compile(r"(?<![.\\])[.,;]$")


def strip_wrappers(answer: str) -> str:
    """Remove delimiters a completion puts around its answer ($..$, \\(..\\), \\boxed{}) and a final period."""
    answer = answer.strip()
    for _ in range(4):
        before = answer
        if answer.startswith("$") and answer.endswith("$") and len(answer) > 1:
            answer = answer.strip("$").strip()
        for opener, closer in (("\\(", "\\)"), ("\\[", "\\]")):
            if answer.startswith(opener) and answer.endswith(closer):
                answer = answer[2:-2].strip()
        boxed = _WHOLE_BOX.fullmatch(answer) if answer.startswith("\\") else None
        if boxed and balanced(boxed.group(1)):
            answer = boxed.group(1).strip()
        answer = _FINAL_STOP.sub("", answer).strip()  # a sentence's stop, never an ellipsis
        if answer == before:
            break
    return answer


def balanced(text: str) -> bool:
    depth = 0
    for token in _BRACE_TOKEN.finditer(text):
        depth += 1 if token.group() == "{" else -1 if token.group() == "}" else 0
        if depth < 0:
            return False
    return depth == 0


# ---------------------------------------------------------------------------------------------- markers

def _box_spans(text: str) -> tuple[list[tuple[int, int, str]], int | None]:
    """((start, end, content) of the last few boxes in text order, start of an over-long last box or None).

    Only the last 8 boxes are looked at and each brace scan stops at MAX_ANSWER_CHARS, so text holding 100k
    unbalanced boxes costs one regex pass. A box that closes beyond the bound, or nests deeper than
    MAX_BOX_DEPTH, is over-long; one cut off by the end of the text is truncated and skipped."""
    spans: list[tuple[int, int, str]] = []
    oversized = None
    for box in reversed(list(_BOXED.finditer(text))[-8:]):
        i = box.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            depth, closed = 0, False
            limit = i + MAX_ANSWER_CHARS + 2
            for token in _BRACE_TOKEN.finditer(text, i, limit):
                if token.group() == "{":
                    depth += 1
                    if depth > MAX_BOX_DEPTH:
                        break
                elif token.group() == "}":
                    depth -= 1
                    if depth == 0:
                        spans.append((box.start(), token.end(), text[i + 1:token.start()]))
                        closed = True
                        break
            if not closed and (depth > MAX_BOX_DEPTH or limit < len(text)) and not spans:
                oversized = box.start()  # the latest box is too long to be an answer
        elif i > box.end():  # `\boxed 5`: one token up to whitespace or $
            token = re.match(r"[^\s$]+", text[i:i + MAX_ANSWER_CHARS + 1])
            if token:
                spans.append((box.start(), i + token.end(), token.group()))
    return spans[::-1], oversized


def _glue_joins(glue: str, allow_or: bool) -> bool:
    """True if the text between two answers makes them one list: ",", "and", \\quad, "for part (a) and"."""
    if len(glue) > 60 or _NOT_A_LIST.search(glue):
        return False
    words = TEXT_CMD.sub(r" \1 ", glue)
    words = re.sub(r"\\q?quad|\\[,;! ]|\\[()\[\]]|\$|[,;.]", " ", words)
    words = re.sub(r"[A-Za-z](?:_\{?\w+\}?)?\s*=\s*$", "", words.strip()).strip()  # "and y_2 = \boxed{..}"
    if not re.search(r"[A-Za-z0-9]", words):  # nothing but punctuation between them
        return True
    return bool(_JOIN_WORDS.fullmatch(words)) and (allow_or or words != "or")


def _boxed(text: str) -> tuple[int, str | None] | None:
    """(position, answer) of the last box (with the boxes joined to it), (position, None) if it is over-long."""
    spans, oversized = _box_spans(text)
    if oversized is not None and (not spans or spans[-1][0] < oversized):
        return oversized, None
    if not spans:
        return None
    group = [spans[-1]]
    for span in reversed(spans[:-1]):
        if not _glue_joins(text[span[1]:group[0][0]], allow_or=False):
            break
        group.insert(0, span)
    contents = list(dict.fromkeys(content.strip() for _, _, content in group))  # a repeated box is one answer
    return group[0][0], ", ".join(contents)


def _answer_segment(segment: str) -> str:
    """The answer at the start of 'The answer is ...' text: $math$, else a leading number, else the clause."""
    segment = re.sub(r'^\\?"|\\?"$', "", segment.strip()).strip()
    spans = _spans(segment)
    if spans and spans[0][0] == 0:  # "$12$ and $13$": the spans it starts with, joined
        group = [spans[0]]
        for span in spans[1:]:
            if not _glue_joins(segment[group[-1][1]:span[0]], allow_or=False):
                break
            group.append(span)
        return ", ".join(strip_wrappers(content) for _, _, content in group)
    for opener, closer in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if segment.startswith(opener):
            end = segment.find(closer, len(opener))
            if end > len(opener):
                return segment[len(opener):end]
    number = _LEADING_NUMBER.match(segment)
    if number and not re.match(r"\s*(?:or|and/or)\b", segment[number.end():], re.I):  # "14 or 16" is a hedge
        return number.group(1)
    # drop a trailing explanation ("..., since ...") and the sentence's full stop
    return re.split(r"\.\s|,\s+(?:since|because|which|so)\b|\s+I hope\b", segment, maxsplit=1)[0]


def _last_match(pattern: re.Pattern, text: str, pos: int = 0) -> re.Match | None:
    last = None
    for last in pattern.finditer(text, pos):
        pass
    return last


def _marked(text: str) -> tuple[str | None, str] | None:
    """The answer an explicit marker points at (strong markers first, then the weaker "answer is")."""
    candidates: list[tuple[int, str | None, str]] = []
    boxed = _boxed(text)
    if boxed:
        candidates.append((boxed[0], boxed[1], "boxed" if boxed[1] is not None else "oversized"))
    final = _last_match(_FINAL, text)
    if final:
        segment = _answer_segment(final.group(1))
        if not _is_prose(segment):  # "Final Answer: Jane started growing 3 hours ago" is a sentence
            candidates.append((final.start(), segment, "final_answer"))
        elif _last_number(segment) is not None:
            candidates.append((final.start(), _last_number(segment), "final_answer"))
    hashes = _last_match(_HASHES, text)
    if hashes:
        candidates.append((hashes.start(), _answer_segment(hashes.group(1)), "hashes"))
    if not candidates:  # "the answer is" is weaker: "...so the answer is probably wrong" must not beat a box
        for pattern in (_ANSWER_IS, _ANSWER_LINE):
            match = _last_match(pattern, text)
            if match:
                candidates.append((match.start(), _answer_segment(match.group(1)), "answer_is"))
    if not candidates:
        return None
    _, answer, source = max(candidates, key=lambda c: c[0])
    return answer, source


# ---------------------------------------------------------------------------------------------- unmarked

def _spans(text: str) -> list[tuple[int, int, str]]:
    spans = []
    for match in _SPAN.finditer(text):
        content = next(g for g in match.groups() if g is not None)
        if match.group(3) is not None and _is_prose(content):
            continue  # "$5 and then $7": currency, not a formula
        spans.append((match.start(), match.end(), content))
    return spans


def _unmarked(text: str, reference: bool) -> tuple[str, str] | None:
    """Rules 2-4: the last math span (unless a later sentence states a number in prose), the whole text when it
    is a bare answer, the last number of prose. LaTeX whose math cannot be read has no answer."""
    tail = text[-20 * MAX_ANSWER_CHARS:]
    spans = [s for s in _spans(tail) if s[2].strip()]
    if spans:
        after = tail[spans[-1][1]:]
        stop = _SENTENCE_END.search(after)
        later = after[stop.end():] if stop else ""
        if spans[-1][2] is not None and tail[spans[-1][0]:spans[-1][0] + 2] in ("$$", "\\["):
            later = after  # display math is a sentence of its own
        if not reference and re.search(r"\d", later) and not _has_latex(later):
            number = _last_number(later)  # "... $d = 90/n$ works. So there are 12 sequences."
            if number is not None:
                return number, "last_number"
        group = [spans[-1]]
        for span in reversed(spans[:-1]):
            if not _glue_joins(tail[span[1]:group[0][0]], allow_or=reference):
                break
            group.insert(0, span)
        return ", ".join(strip_wrappers(content) for _, _, content in group), "math_span"
    if _is_bare(text) or (reference and len(text.strip()) <= MAX_ANSWER_CHARS):
        return text.strip(), "bare"
    if not reference and not _has_latex(text):
        number = _last_number(text)
        if number is not None:
            return number, "last_number"
    return None


def _has_latex(text: str) -> bool:
    """LaTeX math delimiters or commands; a lone "$" (or one before a number) is currency."""
    return bool(_LATEX_MATH.search(text)) or (text.count("$") >= 2 and bool(_NOT_CURRENCY.search(text)))


def _is_prose(text: str) -> bool:
    """Two or more words (outside \\text{} and \\commands): a sentence, not a formula."""
    return len(_PROSE.findall(_TEXT_ARG.sub(" ", text))) >= 2


def _is_bare(text: str) -> bool:
    """A completion that is itself an answer: short, one line, at most one word ("10 weeks", "(B)", "x+1")."""
    text = text.strip()
    return (0 < len(text) <= 200 and "\n" not in text and not _is_prose(text)
            and not _WORD_THEN_NUMBER.search(_TEXT_ARG.sub(" ", text)))  # "Soucis : 2,74" is a label and a value


def _last_number(text: str) -> str | None:
    tail = max(0, len(text) - 4096)  # the last number is almost always near the end: look there first
    tail = text.rfind(" ", 0, tail) + 1 if tail else 0  # never start inside a number
    last = _last_match(_PROSE_NUMBER, text, tail) or (_last_match(_PROSE_NUMBER, text[:tail + 64]) if tail else None)
    if last is None:
        return None
    answer = last.group()
    if last.group("comma"):
        answer = answer.replace(",", ".")  # "2,74 $": a decimal comma, as "1,22" cannot be thousands
    if answer.startswith("-") and last.start() > 0 and (text[last.start() - 1].isalnum()
                                                         or text[last.start() - 1] in ")]}"):
        answer = answer[1:]  # "5-3": a minus between operands is not a sign
    return answer
