"""`stepdpo rectify`: sample continuations from the correct prefix s_1..s_{k-1} and keep the ones that reach
the answer; the first step of each is a candidate s_win (paper, section 3.2, Eq. 3).

`accept="step"` keeps a continuation whose first step passes the step check (a verifier or a judge) whether
or not the rest reaches the answer: on long chains the policy rarely finishes correctly from any prefix, and
most continuations that do reach the answer get there through compensating errors, so answer-checked
rectification finds no winners exactly where the policy fails. Each candidate records `reaches_answer`.

The prompt is byte-identical to what `sample` used for the same steps: the record's own `template` and
`steps.prefix_text(steps, k)` as the reasoning prefix. Records without a first error step pass through
with no candidates, so the stream keeps every record.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Iterator

from ..backends.base import Backend, Request, SamplingParams
from ..grading import grade_many
from ..records import InputError, batched, derive_seed, require_fields
from ..steps import continuation_steps, first_step, prefix_text
from ..templates import generation_prompt, resolve_template
from .localize import validate_localizable

ACCEPT_MODES = ("answer", "step")


def same_step(a: str, b: str) -> bool:
    """Steps equal up to whitespace (the `--drop-same` test, also used by `pair`'s validation)."""
    return re.sub(r"\s+", " ", a).strip() == re.sub(r"\s+", " ", b).strip()


def validate_rectifiable(record: dict) -> dict:
    """A localized record: the localize fields plus `first_error_step` (int within the steps, or null)."""
    validate_localizable(record)
    if "first_error_step" not in record:
        raise InputError("missing (run `stepdpo localize` first)", field="first_error_step")
    k = record["first_error_step"]
    if k is not None:
        require_fields(record, {"first_error_step": int})
        if not 1 <= k <= len(record["steps"]):
            raise InputError(f"{k} is outside 1..{len(record['steps'])}", field="first_error_step")
    return record


def rectify_records(records: Iterable[dict], backend: Backend, *, spec: str = "", n: int = 8,
                    temperature: float = 0.8, top_p: float = 0.95, max_tokens: int = 512, seed: int = 0,
                    drop_same: bool = True, max_candidates: int | None = None,
                    verify_chosen: Callable | None = None, verify_spec: str = "", template: str | None = None,
                    judge_check: Callable[[list[tuple]], list[bool]] | None = None, judge_spec: str = "",
                    batch_size: int = 32, grade_timeout: float = 5.0, accept: str = "answer",
                    stop: tuple[str, ...] = (), counts: dict | None = None) -> Iterator[list[dict]]:
    """Add `candidates` and `rectify` to each record, `batch_size` records per generate call.

    `verify_chosen(problem, steps, record)` is a programmatic check of each winner's own steps;
    `judge_check([(problem, answer, steps, seed), ...]) -> [ok, ...]` asks a judge about all winners of a batch
    at once (the paper's GPT-4 filter of winners whose answer is right but whose step is wrong).
    `accept`: "answer" (the paper: the continuation reaches the answer, then the checks above apply to its
    steps) or "step" (only the continuation's first step must pass the checks; one of them is required)."""
    check_accept(accept, verify_chosen is not None or judge_check is not None)
    counts = counts if counts is not None else {}
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=tuple(stop))
    settings = {"model": spec, "n": n, "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens,
                "seed": seed, "drop_same": drop_same, "max_candidates": max_candidates, "accept": accept,
                "verify_chosen": verify_spec or None, "verify_judge": judge_spec or None}
    for batch in batched(records, batch_size):
        todo = [r for r in batch if r.get("first_error_step") is not None]
        requests = [_request(r, seed, template, backend.tokenizer) for r in todo]
        outputs = backend.generate(requests, params) if requests else []
        graded = iter(grade_many([(c.text, r["answer"]) for r, cs in zip(todo, outputs) for c in cs],
                                 timeout=grade_timeout))  # the batch at once: one slow answer stalls no other
        for record, request, completions in zip(todo, requests, outputs):
            _attach_candidates(record, request.seed, completions, [next(graded) for _ in completions], settings,
                               verify_chosen)
        if judge_check is not None:
            _judge_candidates(todo, judge_check)
        for record in todo:
            if settings["max_candidates"] is not None:
                record["candidates"] = record["candidates"][: settings["max_candidates"]]
            info = record["rectify"]
            info["kept"] = len(record["candidates"])
            for key, value in (("records", 1), ("sampled", info["n"]), ("correct", info["correct"]),
                               ("kept", info["kept"]), ("dropped_same", info["dropped_same"]),
                               ("failed_verify", info["failed_verify"]), ("rectified", 1 if info["kept"] else 0)):
                counts[key] = counts.get(key, 0) + value
        for record in batch:
            if record.get("first_error_step") is None:
                record["candidates"] = []
                record["rectify"] = {"skipped": "no first_error_step", "settings": settings}
                counts["skipped"] = counts.get("skipped", 0) + 1
        yield batch


def check_accept(accept: str, has_step_check: bool) -> None:
    """Usage errors (exit 2), checked before any output file is opened."""
    if accept not in ACCEPT_MODES:
        raise InputError(f"unknown mode {accept!r}; choose one of {', '.join(ACCEPT_MODES)}", field="--accept")
    if accept == "step" and not has_step_check:
        raise InputError("step acceptance needs a step check: --verify-chosen or --verify-judge", field="--accept")


def _request(record: dict, seed: int, template: str | None, tokenizer: Any) -> Request:
    used = record.get("template") or resolve_template(template, tokenizer)  # as `sample` chose it
    prefix = prefix_text(record["steps"], record["first_error_step"])
    return Request(generation_prompt(record["problem"], used, tokenizer, reason_prefix=prefix),
                   derive_seed(seed, record["id"]))


def _checked_steps(record: dict, continuation: str) -> list[str]:
    """The steps a winner's checks judge: the shared correct prefix, then the continuation's steps (all of them,
    or only the first under step acceptance)."""
    steps = continuation_steps(continuation)
    if record["rectify"]["settings"]["accept"] == "step":
        steps = steps[:1]
    return list(record["steps"][: record["first_error_step"] - 1]) + steps


def _attach_candidates(record: dict, record_seed: int, completions: list, graded: list, settings: dict,
                       verify_chosen: Callable | None) -> None:
    k = record["first_error_step"]
    rejected = record["steps"][k - 1]
    record["rectify"] = {"n": len(completions), "correct": 0, "kept": 0, "dropped_same": 0, "failed_verify": 0,
                         "generated_tokens": sum(c.num_tokens for c in completions), "seed": record_seed,
                         "settings": settings}
    info, candidates = record["rectify"], []
    for index, (completion, (prediction, source, ok)) in enumerate(zip(completions, graded)):
        info["correct"] += int(ok)
        if not ok and settings["accept"] == "answer":
            continue
        text = first_step(completion.text)
        if not text.strip():
            continue
        if settings["drop_same"] and same_step(text, rejected):
            info["dropped_same"] += 1
            continue
        if verify_chosen is not None:
            # The winner's own steps must hold up, not only its final answer.
            verdicts = verify_chosen(record["problem"], _checked_steps(record, completion.text), record)
            if isinstance(verdicts, dict):
                verdicts = verdicts.get("verdicts") or []
            if any(v is False for v in verdicts):
                info["failed_verify"] += 1
                continue
        candidates.append({"text": text, "continuation": completion.text, "prediction": prediction,
                           "prediction_source": source, "reaches_answer": ok, "seed": record_seed, "index": index,
                           "finish_reason": completion.finish_reason})
    record["candidates"] = candidates
    info["kept"] = len(candidates)
    if verify_chosen is not None:
        # Before --max-candidates cuts the list: with --accept step, verified / n is the policy's probability
        # mass on a right step at its first-error state.
        info["verified"] = len(candidates)


def _judge_candidates(records: list[dict], judge_check: Callable[[list[tuple]], list[bool]]) -> None:
    """Keep only the winners a judge passes (one batched call for every winner of these records)."""
    from ..records import derive_seed

    owners = [(r, c) for r in records for c in r["candidates"]]
    if not owners:
        return
    items = [(r["problem"], r["answer"], _checked_steps(r, c["continuation"]),
              derive_seed(r["rectify"]["seed"], "judge", c["index"])) for r, c in owners]
    verdicts = judge_check(items)
    for record in records:
        record["candidates"] = [c for (r, c), ok in zip(owners, verdicts) if r is record and ok]
        judged = sum(1 for r, _ in owners if r is record)
        record["rectify"]["failed_verify"] += judged - len(record["candidates"])
