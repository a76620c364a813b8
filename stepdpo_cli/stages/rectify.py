"""`stepdpo rectify`: sample continuations from the correct prefix s_1..s_{k-1} and keep the ones that reach
the answer; the first step of each is a candidate s_win (paper, section 3.2, Eq. 3).

The prompt is byte-identical to what `sample` used for the same steps: the record's own `template` and
`steps.prefix_text(steps, k)` as the reasoning prefix. Records without a first error step pass through
with no candidates, so the stream keeps every record.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Iterator

from ..backends.base import Backend, Request, SamplingParams
from ..grading import grade
from ..records import InputError, batched, derive_seed, require_fields
from ..steps import continuation_steps, first_step, prefix_text
from ..templates import generation_prompt, resolve_template
from .localize import validate_localizable


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
                    batch_size: int = 32, grade_timeout: float = 5.0,
                    counts: dict | None = None) -> Iterator[list[dict]]:
    """Add `candidates` and `rectify` to each record, `batch_size` records per generate call.

    `verify_chosen(problem, steps, record)` is a programmatic check of each winner's own steps;
    `judge_check([(problem, answer, steps, seed), ...]) -> [ok, ...]` asks a judge about all winners of a batch
    at once (the paper's GPT-4 filter of winners whose answer is right but whose step is wrong)."""
    counts = counts if counts is not None else {}
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens)
    settings = {"model": spec, "n": n, "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens,
                "seed": seed, "drop_same": drop_same, "max_candidates": max_candidates,
                "verify_chosen": verify_spec or None, "verify_judge": judge_spec or None}
    for batch in batched(records, batch_size):
        todo = [r for r in batch if r.get("first_error_step") is not None]
        requests = [_request(r, seed, template, backend.tokenizer) for r in todo]
        outputs = backend.generate(requests, params) if requests else []
        for record, request, completions in zip(todo, requests, outputs):
            _attach_candidates(record, request.seed, completions, settings, grade_timeout, verify_chosen)
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


def _request(record: dict, seed: int, template: str | None, tokenizer: Any) -> Request:
    used = record.get("template") or resolve_template(template, tokenizer)  # as `sample` chose it
    prefix = prefix_text(record["steps"], record["first_error_step"])
    return Request(generation_prompt(record["problem"], used, tokenizer, reason_prefix=prefix),
                   derive_seed(seed, record["id"]))


def _own_steps(record: dict, continuation: str) -> list[str]:
    """A winner's whole solution as steps: the shared correct prefix, then its continuation's steps."""
    return list(record["steps"][: record["first_error_step"] - 1]) + continuation_steps(continuation)


def _attach_candidates(record: dict, record_seed: int, completions: list, settings: dict, grade_timeout: float,
                       verify_chosen: Callable | None) -> None:
    k = record["first_error_step"]
    rejected = record["steps"][k - 1]
    candidates, correct, dropped_same, failed_verify = [], 0, 0, 0
    for index, completion in enumerate(completions):
        prediction, ok = grade(completion.text, record["answer"], timeout=grade_timeout)
        if not ok:
            continue
        correct += 1
        text = first_step(completion.text)
        if settings["drop_same"] and same_step(text, rejected):
            dropped_same += 1
            continue
        if verify_chosen is not None:
            # The winner's own steps must hold up, not only its final answer.
            verdicts = verify_chosen(record["problem"], _own_steps(record, completion.text), record)
            if isinstance(verdicts, dict):
                verdicts = verdicts.get("verdicts") or []
            if any(v is False for v in verdicts):
                failed_verify += 1
                continue
        candidates.append({"text": text, "continuation": completion.text, "prediction": prediction,
                           "seed": record_seed, "index": index, "finish_reason": completion.finish_reason})
    record["candidates"] = candidates
    record["rectify"] = {"n": len(completions), "correct": correct, "kept": len(candidates),
                         "dropped_same": dropped_same, "failed_verify": failed_verify, "seed": record_seed,
                         "settings": settings}


def _judge_candidates(records: list[dict], judge_check: Callable[[list[tuple]], list[bool]]) -> None:
    """Keep only the winners a judge passes (one batched call for every winner of these records)."""
    from ..records import derive_seed

    owners = [(r, c) for r in records for c in r["candidates"]]
    if not owners:
        return
    items = [(r["problem"], r["answer"], _own_steps(r, c["continuation"]),
              derive_seed(r["rectify"]["seed"], "judge", c["index"])) for r, c in owners]
    verdicts = judge_check(items)
    for record in records:
        record["candidates"] = [c for (r, c), ok in zip(owners, verdicts) if r is record and ok]
        judged = sum(1 for r, _ in owners if r is record)
        record["rectify"]["failed_verify"] += judged - len(record["candidates"])
