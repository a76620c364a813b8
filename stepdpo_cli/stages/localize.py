"""`stepdpo localize`: find the first wrong step of each sampled solution (judge, rollout, verifier or PRM).

Adds `first_error_step` (1-based, or null), `localize_status` (error_found | no_error | undecided),
`localizer` ({method, settings...}) and the method's evidence (`judge_raw`/`step_verdicts`,
`step_scores`/`rollouts_spent`, `step_verdicts`/`reference_step`, `step_rewards`; the judge's token usage `judge_usage`). Every
record is kept: `pair` skips the ones without an error step.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator

from ..records import InputError, normalize_problem
from ..steps import split_steps

METHODS = ("judge", "rollout", "verifier", "prm")


def validate_localizable(record: dict) -> dict:
    """A solved problem: `problem`, `answer`, `id`, and `steps` (list of str) or a `completion` to split."""
    normalize_problem(record)
    steps = record.get("steps")
    if steps is None:
        completion = record.get("completion")
        if not isinstance(completion, str):
            raise InputError("missing (and no `completion` to split into steps)", field="steps")
        record["steps"] = split_steps(completion)
    elif not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
        raise InputError("must be a list of strings", field="steps")
    elif not steps:
        raise InputError("is empty", field="steps")
    if record.get("template") is not None and not isinstance(record["template"], str):
        raise InputError("must be a string", field="template")
    return record


def localize_records(records: Iterable[dict], method: str, *, counts: dict | None = None,
                     **options: Any) -> Iterator[dict | list[dict]]:
    """Dispatch to a localizer; counts records per `localize_status` into `counts` (for the summary).

    Options by method: verifier(fn=, spec=); judge(backend=, spec=, prompt_template=, ...);
    rollout(backend=, spec=, rollouts=, threshold=, search=, ...); prm(prm=, threshold=, spec=). See the localizers' signatures.
    """
    counts = counts if counts is not None else {}
    if method == "verifier":
        from ..localizers.verifier import localize_with_verifier

        stream: Iterator[Any] = localize_with_verifier(records, options["fn"], spec=options.get("spec", ""))
    elif method == "judge":
        from ..localizers.judge import judge_records

        stream = judge_records(records, **options)
    elif method == "rollout":
        from ..localizers.rollout import rollout_records

        stream = rollout_records(records, counts=counts, **options)
    elif method == "prm":
        from ..localizers.prm import prm_localize_records

        stream = prm_localize_records(records, **options)
    else:
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}", field="--method")
    for item in stream:
        for record in item if isinstance(item, list) else [item]:
            status = record.get("localize_status", "undecided")
            counts[status] = counts.get(status, 0) + 1
            counts["records"] = counts.get("records", 0) + 1
            if record.get("first_error_step") is not None:
                counts["step_sum"] = counts.get("step_sum", 0) + record["first_error_step"]
            for key, value in (record.get("judge_usage") or {}).items():
                counts[f"judge_{key}"] = counts.get(f"judge_{key}", 0) + value
        yield item


def localize_summary(counts: dict, invalid: int = 0) -> dict:
    """The summary line's values: records, found, no_error, undecided, mean first error step, rollouts."""
    found = counts.get("error_found", 0)
    values = {"records": counts.get("records", 0), "error_found": found, "no_error": counts.get("no_error", 0),
              "undecided": counts.get("undecided", 0),
              "mean_first_error_step": counts.get("step_sum", 0) / found if found else 0.0}
    if "rollouts" in counts:
        values["rollouts"] = counts["rollouts"]
    for key in ("judge_requests", "judge_prompt_tokens", "judge_completion_tokens"):  # the judge's cost
        if key in counts:
            values[key] = counts[key]
    if invalid:
        values["invalid"] = invalid
    return values
