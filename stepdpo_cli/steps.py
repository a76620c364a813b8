"""The one place that knows how step-wise solutions are written, split, numbered and re-joined.

Generation prompts end with the step-wise CoT prefix ``"Let's think step by step.\\nStep 1:"``, so a
completion starts with the body of step 1 and later steps begin with ``"\\nStep i:"``. A step's text is
its *body*: everything after ``"Step i:"`` up to the newline that precedes ``"Step i+1:"``. With that
convention the released Math-Step-DPO-10K rows are reproduced exactly:

    initial_reason_steps = "Let's think step by step.\\nStep 1:" + body_1 + "\\nStep 2:" + ... + "\\nStep k:"
    chosen / rejected    = body_k                       (no EOS: the step is partial text)
    full_chosen          = body_k + "\\nStep k+1:" + ...  (the rest of the solution from step k)
"""
from __future__ import annotations

import re

COT_INTRO = "Let's think step by step."
STEP_PREFIX = COT_INTRO + "\nStep 1:"

# "Step 3:", "**Step 3:**", "### Step 3.", "Step 3 -" at the start of a line. The number is captured.
_MARKER = re.compile(
    r"(?:^|\n)[ \t]*(?:#{1,6}[ \t]*)?(?:\*\*|__)?[ \t]*Step[ \t]+(\d{1,4})[ \t]*(?::|\.(?!\d)|\)|[ \t]-)[ \t]*(?:\*\*|__)?",
    re.IGNORECASE,
)
# The canonical separator this package writes; matched first so canonical text round-trips exactly.
_CANONICAL = re.compile(r"\nStep (\d{1,4}):")


def header(index: int) -> str:
    """The marker that opens step `index` (1-based) when it is not the first: ``"\\nStep i:"``."""
    return f"\nStep {index}:"


def split_steps(completion: str) -> list[str]:
    """Split a completion (text after ``"Step 1:"``) into step bodies.

    Canonical ``"\\nStep i:"`` separators split exactly (so `join_steps(split_steps(c)) == c`). Otherwise
    markdown or loose markers (``**Step 2:**``, ``Step 2.``) are accepted. Text without any marker is one
    step, unless it has blank-line paragraphs, which then become steps. Never raises.
    """
    if not completion:
        return [""]
    if _CANONICAL.search(completion):
        return _CANONICAL.split(completion)[::2]
    pieces = _MARKER.split(completion)
    if len(pieces) > 1:
        bodies = pieces[::2]
        # Text before the first loose marker belongs to step 1 (the prompt already said "Step 1:").
        if not bodies[0].strip() and len(bodies) > 1 and pieces[1] == "1":
            return _canonical_bodies(["", *bodies[1:]])[1:]
        return _canonical_bodies(bodies)
    paragraphs = [p for p in re.split(r"\n[ \t]*\n", completion) if p.strip()]
    if len(paragraphs) > 1:
        return _canonical_bodies(paragraphs)
    return [completion]


def _canonical_bodies(bodies: list[str]) -> list[str]:
    """Loose or missing markers are re-written canonically by `join_steps`, so give bodies the canonical
    shape: " text" after "Step i:" (never "Step 2:text") and no whitespace left over from a dropped marker.
    """
    first = bodies[0].rstrip()
    return [first, *((" " + body.strip()) if body.strip() else "" for body in bodies[1:])]


def split_solution(text: str) -> list[str]:
    """Split a whole solution that may still carry the CoT intro and its ``"Step 1:"`` marker."""
    stripped = text.lstrip()
    if stripped.startswith(COT_INTRO):
        stripped = stripped[len(COT_INTRO):]
    match = re.match(r"\s*(?:\*\*)?Step[ \t]+1[ \t]*[:.](?:\*\*)?", stripped, re.IGNORECASE)
    if match:
        stripped = stripped[match.end():]
        return split_steps(stripped)
    return split_steps(text)


def join_steps(bodies: list[str], start: int = 1) -> str:
    """Re-join step bodies into completion text, renumbering from `start` (inverse of `split_steps`)."""
    if not bodies:
        return ""
    return bodies[0] + "".join(header(start + i) + body for i, body in enumerate(bodies[1:], start=1))


def prefix_text(bodies: list[str], k: int) -> str:
    """`initial_reason_steps` for first error step `k` (1-based): the intro, steps 1..k-1, and ``"Step k:"``.

    k == 1 gives exactly the CoT prefix ``"Let's think step by step.\\nStep 1:"``.
    """
    if k < 1:
        raise ValueError("k is 1-based")
    if k - 1 > len(bodies):
        raise ValueError(f"k={k} but the solution has only {len(bodies)} steps")
    return STEP_PREFIX + join_steps(list(bodies[: k - 1])) + (header(k) if k > 1 else "")


def continuation_steps(continuation: str) -> list[str]:
    """Bodies of a continuation generated after ``"Step k:"`` (its first body is the new step k)."""
    return split_steps(continuation)


def first_step(continuation: str) -> str:
    """The first step of a continuation: the text up to the next step marker (the official `split("\\nStep ")[0]`)."""
    return split_steps(continuation)[0]


def step_count(completion: str) -> int:
    return len(split_steps(completion))


def numbered(bodies: list[str]) -> str:
    """Human-readable numbered steps for judge prompts: ``"Step 1: ...\\nStep 2: ..."`` (stripped bodies)."""
    return "\n".join(f"Step {i}: {body.strip()}" for i, body in enumerate(bodies, start=1))
