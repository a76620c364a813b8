"""LLM-as-judge step localization (the paper used GPT-4; any backend works).

The judge reads the problem, the reference answer and the numbered steps and names the first wrong step,
ending with a line like the official step-2 script's: "Final Decision: Step 1: correct; Step 2: neutral;
Step 3: incorrect". Judges rarely follow a format exactly, so the parser accepts many styles (markdown,
tables, bullets, prose such as "Step 3 is incorrect", "the first error is in step 3", JSON). Model text is
data: it is only read with bounded regexes over a capped length, never evaluated.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable, Iterable, Iterator, Sequence

from ..backends.base import Backend, Request, SamplingParams
from ..records import InputError
from ..steps import numbered
from ..templates import render_prompt

MAX_PARSE_CHARS = 16_000  # judges put the decision last: parse at most this many trailing characters
WINDOW_CHARS = 200  # how far after "Step k" a verdict word may appear
PLACEHOLDERS = ("{problem}", "{answer}", "{steps}")

CORRECT, INCORRECT, NEUTRAL = "correct", "incorrect", "neutral"

# One alternation, leftmost match wins; at equal positions the earlier branch wins, so "not correct"
# beats "correct" and "no errors" beats "errors".
_VERDICT = re.compile(
    r"(?P<pos0>\bno\s+(?:errors?|mistakes?|issues?)\b)"
    r"|(?P<neg>\bnot\s+(?:correct|right|valid|accurate)\b|n't\s+(?:correct|right|valid)\b|\bincorrect(?:ly)?\b"
    r"|\bwrong\b|\binvalid\b|\berroneous\b|\berrors?\b|\bmistakes?\b|\bmistaken\b|\bfalse\b|\bflawed\b"
    r"|\bfails?\b|[\u2717\u2718\u274c\u00d7])"
    r"|(?P<neu>\bneutral\b|\bunnecessary\b|\birrelevant\b|\bredundant\b)"
    r"|(?P<pos>\bcorrect(?:ly)?\b|\bright\b|\bvalid\b|\btrue\b|\baccurate\b|\bok(?:ay)?\b|[\u2713\u2714\u2705])",
    re.IGNORECASE,
)
# "Step 3", "steps 1-3", "Steps 1, 2 and 3", "**Step 3**", "step #3".
_STEP_REF = re.compile(
    r"\bsteps?\s{0,3}#?\s{0,3}(\d{1,3}(?:\s{0,3}(?:,|-|\u2013|to|through|and|&)\s{0,3}(?:steps?\s{0,3})?\d{1,3}){0,30})",
    re.IGNORECASE,
)
# Table rows whose first cell is a bare step number: "| 3 | Incorrect |".
_TABLE_ROW = re.compile(r"^[ \t]{0,8}\|?[ \t]{0,8}(\d{1,3})[ \t]{0,8}\|([^|\n]{1,120})", re.MULTILINE)
# Numbered verdict lists: "3. incorrect", "3) correct".
_LIST_ROW = re.compile(
    r"^[ \t]{0,8}(\d{1,3})[.)][ \t]{0,8}(?:\*\*)?[ \t]{0,4}(?=(?:in)?correct|wrong|neutral)([^\n]{1,120})",
    re.MULTILINE | re.IGNORECASE,
)
_FINAL = re.compile(r"final\s{0,3}(?:decision|verdict|judge?ment|assessment|answer)|\bsummary\b|\bconclusion\b",
                    re.IGNORECASE)
_EXPLICIT_FIRST = re.compile(
    r"first\s{1,3}(?:incorrect|wrong|erroneous|invalid|bad)\s{1,3}step\s{0,3}(?:is|:|=|was)?\s{0,3}(?:\*\*)?"
    r"\s{0,3}(?:step\s{0,3})?#?(\d{1,3})"
    r"|first\s{1,3}(?:error|mistake)\s{0,3}(?:is|occurs|appears|was|happens|:)?\s{0,3}(?:in|at|on)?\s{0,3}(?:\*\*)?"
    r"\s{0,3}step\s{0,3}#?(\d{1,3})",
    re.IGNORECASE,
)
_JSON_FIRST = re.compile(r"\"?first_error_step\"?\s{0,3}[:=]\s{0,3}\"?(\d{1,3}|null|none)\b", re.IGNORECASE)
_ALL_CORRECT = re.compile(
    r"\b(?:all|every|each)\s{1,3}(?:of\s{1,3}the\s{1,3})?(?:the\s{1,3})?steps?\s{1,3}(?:is|are)\s{1,3}"
    r"(?:\w+\s{1,3})?(?:correct|right|valid)\b"
    r"|\bno\s{1,3}(?:incorrect|wrong|erroneous)\s{1,3}steps?\b"
    r"|\bsolution\s{1,3}is\s{1,3}(?:entirely\s{1,3}|completely\s{1,3}|fully\s{1,3})?correct\b",
    re.IGNORECASE,
)


@dataclass
class JudgeParse:
    """What a judge's text says: verdict per step (index 0 = step 1), the first error, and the status."""
    verdicts: list[str | None]
    first_error: int | None
    status: str  # error_found | no_error | undecided


def _classify(window: str) -> str | None:
    match = _VERDICT.search(window)
    if not match:
        return None
    if match.group("neg"):
        return INCORRECT
    if match.group("neu"):
        return NEUTRAL
    return CORRECT


def _step_numbers(ref: str) -> list[int]:
    """"1-3" -> [1, 2, 3]; "1, 2 and 4" -> [1, 2, 4]."""
    tokens = re.findall(r"\d{1,3}|-|\u2013|to|through", ref, re.IGNORECASE)
    numbers: list[int] = []
    pending_range = False
    for token in tokens:
        if token.isdigit():
            value = int(token)
            if pending_range and numbers and value >= numbers[-1] and value - numbers[-1] <= 200:
                numbers.extend(range(numbers[-1] + 1, value + 1))
            else:
                numbers.append(value)
            pending_range = False
        else:
            pending_range = True
    return numbers


def _verdicts_in(text: str, n_steps: int) -> dict[int, str]:
    """Per-step verdicts in a stretch of text; a later verdict on the same step overrides (judges revise)."""
    found: dict[int, tuple[int, str]] = {}

    def put(step: int, position: int, verdict: str | None) -> None:
        if verdict is not None and 1 <= step <= n_steps and (step not in found or position >= found[step][0]):
            found[step] = (position, verdict)

    refs = list(_STEP_REF.finditer(text))
    for index, ref in enumerate(refs):
        end = refs[index + 1].start() if index + 1 < len(refs) else len(text)
        window = text[ref.end(): min(end, ref.end() + WINDOW_CHARS)]
        verdict = _classify(window)
        for step in _step_numbers(ref.group(1)):
            put(step, ref.start(), verdict)
    for pattern in (_TABLE_ROW, _LIST_ROW):
        for row in pattern.finditer(text):
            put(int(row.group(1)), row.start(), _classify(row.group(2)))
    return {step: verdict for step, (_, verdict) in found.items()}


def parse_verdicts(text: str, n_steps: int, *, neutral_is_error: bool = False) -> JudgeParse:
    """Read a judge's answer for a solution of `n_steps` steps.

    Precedence: an explicit `first_error_step` (JSON) > the verdicts after the last "Final Decision" >
    a sentence naming the first wrong step > verdicts anywhere in the text > "all steps are correct".
    Neutral counts as an error only with `neutral_is_error` (the official script's behaviour).
    """
    text = (text or "")[-MAX_PARSE_CHARS:]
    bad = {INCORRECT, NEUTRAL} if neutral_is_error else {INCORRECT}

    def result(verdicts: dict[int, str], explicit: int | None = None, all_correct: bool = False) -> JudgeParse:
        listed = [verdicts.get(i) for i in range(1, n_steps + 1)]
        errors = [i for i in range(1, n_steps + 1) if verdicts.get(i) in bad]
        first = explicit if explicit is not None else (errors[0] if errors else None)
        if first is not None:
            if listed[first - 1] not in bad:  # named by a sentence or JSON rather than a verdict word
                listed[first - 1] = INCORRECT
            return JudgeParse(listed, first, "error_found")
        covered = n_steps > 0 and all(v is not None for v in listed)
        if all_correct or covered:
            return JudgeParse([v or CORRECT for v in listed], None, "no_error")
        return JudgeParse(listed, None, "undecided")

    json_first = _JSON_FIRST.search(text)
    if json_first:
        value = json_first.group(1).lower()
        if value in ("null", "none"):
            return result({}, all_correct=True)
        if 1 <= int(value) <= n_steps:
            return result(_verdicts_in(text, n_steps), explicit=int(value))

    finals = list(_FINAL.finditer(text))
    if finals:
        tail = text[finals[-1].end():]
        verdicts = _verdicts_in(tail, n_steps)
        if verdicts:
            return result(verdicts, all_correct=bool(_ALL_CORRECT.search(tail)))

    explicit = [int(g) for m in _EXPLICIT_FIRST.finditer(text) for g in m.groups() if g]
    explicit = [k for k in explicit if 1 <= k <= n_steps]
    verdicts = _verdicts_in(text, n_steps)
    if explicit:
        return result(verdicts, explicit=explicit[-1])
    return result(verdicts, all_correct=bool(_ALL_CORRECT.search(text)))


# ---------------------------------------------------------------------------------------------- prompts

def load_judge_prompt(path: str | None = None) -> str:
    """The default judge prompt (stepdpo_cli/prompts/judge.txt) or a user's file with the placeholders."""
    if path is None:
        return resources.files("stepdpo_cli").joinpath("prompts/judge.txt").read_text(encoding="utf-8")
    if not os.path.isfile(path):
        raise InputError("no such file", source=path, field="--judge-prompt")
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if "{steps}" not in text:
        raise InputError("the judge prompt must contain {steps} (and usually {problem}, {answer})",
                         source=path, field="--judge-prompt")
    return text


def build_judge_prompt(template: str, problem: str, answer: Any, steps: Sequence[str]) -> str:
    """Fill the placeholders by plain replacement (no str.format: problems are full of braces)."""
    reference = " or ".join(answer) if isinstance(answer, list) else str(answer if answer is not None else "")
    filled = template.replace("{problem}", problem).replace("{answer}", reference)
    return filled.replace("{steps}", numbered(list(steps)))


def reference_for(record: dict) -> str:
    """The judge's reference: the answer, plus the reference solution when the record has one (MATH has)."""
    answer = record.get("answer")
    text = " or ".join(answer) if isinstance(answer, list) else str(answer if answer is not None else "")
    solution = record.get("solution") or record.get("reference_solution")
    if isinstance(solution, str) and solution.strip():
        text += "\n\nReference solution:\n" + solution.strip()
    return text


@dataclass
class JudgeBudget:
    """Limits on what a localize run may spend on the judge (--max-requests, --max-tokens-total).

    Checked before each batch: a batch is cut to the requests left, and once the tokens spent (prompt +
    completion) reach the limit no further batch is sent. The run then ends cleanly with every judged record
    written, and `--resume` continues where it stopped. The token limit can be passed by at most one batch.
    """
    max_requests: int | None = None
    max_tokens: int | None = None
    requests: int = 0
    tokens: int = 0
    stopped_by: str | None = None  # the option that ended the run early

    def allowed(self, wanted: int) -> int:
        if self.max_tokens is not None and self.tokens >= self.max_tokens:
            self.stopped_by = "--max-tokens-total"
            return 0
        if self.max_requests is not None and self.requests + wanted > self.max_requests:
            left = max(0, self.max_requests - self.requests)
            if left == 0:
                self.stopped_by = "--max-requests"
            return left
        return wanted

    def spend(self, usage: dict) -> None:
        self.requests += usage["requests"]
        self.tokens += usage["prompt_tokens"] + usage["completion_tokens"]


def _usage(completion: Any, prompt: str, tokenizer: Any) -> dict:
    """One judge request's token usage: the server's count, else the local tokenizer's, else 0."""
    prompt_tokens = getattr(completion, "prompt_tokens", None)
    if prompt_tokens is None and tokenizer is not None:
        prompt_tokens = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    return {"requests": 1, "prompt_tokens": int(prompt_tokens or 0),
            "completion_tokens": int(completion.num_tokens) if completion is not None else 0}


def ask_judge(backend: Backend, prompt_template: str, items: Sequence[tuple[str, Any, Sequence[str], int]], *,
              neutral_is_error: bool = False, max_tokens: int = 1024, temperature: float = 0.0,
              usage: list[dict] | None = None) -> list[tuple[str, JudgeParse]]:
    """One batched judge call for (problem, answer, steps, seed) items -> (raw text, parsed verdicts) each.
    `usage`, when given, gets each item's {requests, prompt_tokens, completion_tokens} appended."""
    tokenizer = backend.tokenizer
    prompts = [build_judge_prompt(prompt_template, problem, answer, steps) for problem, answer, steps, _ in items]
    if getattr(tokenizer, "chat_template", None):  # a local chat model needs its markup; servers apply theirs
        prompts = [render_prompt(p, "chat", tokenizer) for p in prompts]
    requests = [Request(p, item[3], 1) for p, item in zip(prompts, items)]
    outputs = backend.generate(requests, SamplingParams(n=1, temperature=temperature, max_tokens=max_tokens))
    answers = []
    for item, prompt, completions in zip(items, prompts, outputs):
        raw = completions[0].text if completions else ""
        answers.append((raw, parse_verdicts(raw, len(item[2]), neutral_is_error=neutral_is_error)))
        if usage is not None:
            usage.append(_usage(completions[0] if completions else None, prompt, tokenizer))
    return answers


def judge_records(records: Iterable[dict], backend: Backend, *, spec: str = "", prompt_template: str,
                  prompt_name: str = "default", neutral_is_error: bool = False, max_tokens: int = 1024,
                  temperature: float = 0.0, batch_size: int = 16, seed: int = 0,
                  budget: JudgeBudget | None = None) -> Iterator[list[dict]]:
    """Ask the judge about each record (batched); yields each batch of localized records as a list.
    Each record gets `judge_usage` {requests, prompt_tokens, completion_tokens}; a `budget` ends the run early
    (its `stopped_by` says which limit) once spent."""
    from ..records import batched, derive_seed

    settings = {"method": "judge", "judge": spec, "neutral_is_error": neutral_is_error, "prompt": prompt_name,
                "temperature": temperature, "max_tokens": max_tokens, "seed": seed}
    for batch in batched(records, batch_size):
        allowed = budget.allowed(len(batch)) if budget is not None else len(batch)
        if allowed == 0:
            return
        cut = allowed < len(batch)
        batch = batch[:allowed]
        items = [(r["problem"], reference_for(r), r["steps"], derive_seed(seed, r["id"], "judge")) for r in batch]
        usage: list[dict] = []
        answers = ask_judge(backend, prompt_template, items, neutral_is_error=neutral_is_error,
                            max_tokens=max_tokens, temperature=temperature, usage=usage)
        for record, (raw, parsed), spent in zip(batch, answers, usage):
            record["first_error_step"] = parsed.first_error
            record["step_verdicts"] = parsed.verdicts
            record["localize_status"] = parsed.status
            record["judge_raw"] = raw
            record["judge_usage"] = spent
            record["localizer"] = dict(settings)
            if budget is not None:
                budget.spend(spent)
        yield batch
        if cut and budget is not None:
            budget.stopped_by = "--max-requests"
            return


def winner_judge(spec: str, prompt_file: str | None = None) -> Callable[[list[tuple]], list[bool]]:
    """A judge that passes rectified winners whose own steps it finds all correct (rectify --verify-judge)."""
    from ..backends.registry import load_backend, parse_model_spec

    prompt = load_judge_prompt(prompt_file)
    options = {"endpoint": "chat"} if parse_model_spec(spec).backend == "openai" else {}
    engine = load_backend(spec, **options)

    def check(items: list[tuple]) -> list[bool]:
        return [parsed.status == "no_error" for _, parsed in ask_judge(engine, prompt, items)]

    return check
