"""Answer extraction and equivalence for math reasoning (simple first version; hardened version follows)."""
from __future__ import annotations

import re

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def _last_boxed(text: str) -> str | None:
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j]
    return None


def _clean(ans: str) -> str:
    ans = ans.strip().strip("$").strip().rstrip(".").strip()
    ans = re.sub(r"\\text\{([^}]*)\}", r"\1", ans)
    return ans.replace("\\left", "").replace("\\right", "").replace("\\!", "").strip()


def extract_answer(text: str) -> str | None:
    """The final answer in a completion, or None if there is none."""
    if not text:
        return None
    boxed = _last_boxed(text)
    if boxed is not None:
        return _clean(boxed)
    m = re.search(r"####\s*(.+)", text)
    if m:
        return _clean(m.group(1))
    m = re.search(r"answer is[:\s]*(.+)", text, flags=re.I)
    if m:
        return _clean(m.group(1))
    nums = _NUMBER.findall(text)
    return _clean(nums[-1]) if nums else None


def _as_number(s: str) -> float | None:
    try:
        return float(s.replace(",", "").replace("$", "").rstrip("%"))
    except ValueError:
        return None


def answers_match(prediction: str | None, reference: str | list[str], timeout: float = 5.0) -> bool:
    """True if `prediction` equals the reference (any of them, if a list)."""
    if prediction is None:
        return False
    refs = reference if isinstance(reference, list) else [reference]
    p = _clean(prediction)
    for ref in refs:
        r = _clean(str(ref))
        if p == r:
            return True
        a, b = _as_number(p), _as_number(r)
        if a is not None and b is not None and abs(a - b) <= 1e-9 * max(1.0, abs(b)):
            return True
    return False


def grade(text: str, reference: str | list[str], timeout: float = 5.0) -> tuple[str | None, bool]:
    """(extracted prediction, correct) for a completion."""
    prediction = extract_answer(text)
    return prediction, answers_match(prediction, reference, timeout=timeout)
