"""`stepdpo pair`: turn rectified records into Math-Step-DPO-10K rows (or whole-solution DPO rows).

Step format (default), one row per candidate j of a record with first error step k:
  prompt = problem, initial_reason_steps = steps.prefix_text(steps, k), chosen = the candidate's first step,
  rejected = steps[k-1], full_chosen = the candidate's continuation, full_rejected = steps k.. re-joined,
  answer, dataset, id = f"{record id}/c{j}", plus source_id, problem_id, first_error_step, template,
  localizer and provenance.
DPO format: the same material as whole solutions (initial_reason_steps = the CoT prefix), so the DPO baseline
and Step-DPO train on identical problems. SFT format: {prompt, initial_reason_steps = the prefix, completion =
the winner's continuation from step k}, the control that trains on the corrected steps with no preference
term. Whole-solution formats (dpo, sft) need a correct whole solution: they skip candidates whose continuation
does not reach the answer (kept by `rectify --accept step`). `--chosen-source reference-step` uses the record's
`reference_step` (a verifier's correction: the paper's out-of-distribution ablation) instead of the model.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator

from ..records import InputError
from ..steps import STEP_PREFIX, join_steps, prefix_text, split_steps
from .rectify import same_step, validate_rectifiable

FORMATS = ("step", "dpo", "sft")
CHOSEN_SOURCES = ("model", "reference-step")


def validate_pairable(record: dict) -> dict:
    """A localized record; `candidates` (from rectify) must be a list of {text, continuation} when present."""
    validate_rectifiable(record)
    candidates = record.get("candidates", [])
    if not isinstance(candidates, list) or not all(
            isinstance(c, dict) and isinstance(c.get("text"), str) and isinstance(c.get("continuation"), str)
            for c in candidates):
        raise InputError("must be a list of {text, continuation} objects", field="candidates")
    if record.get("reference_step") is not None and not isinstance(record["reference_step"], str):
        raise InputError("must be a string", field="reference_step")
    return record


def _problem_key(record: dict) -> str:
    return str(record.get("problem_id") or record["problem"])


def _choices(record: dict, chosen_source: str, whole: bool) -> list[tuple[str, str, str, dict]]:
    """(id suffix, chosen step, continuation from step k, provenance) for each winner of this record;
    `whole`: only winners whose continuation reaches the answer."""
    if chosen_source == "reference-step":
        ref = record.get("reference_step")
        return [] if ref is None else [("ref", ref, ref, {"chosen_source": "reference-step"})]
    return [(f"c{j}", c["text"], c["continuation"],
             {"chosen_source": "model", "candidate_index": c.get("index", j), "candidate_seed": c.get("seed"),
              "reaches_answer": c.get("reaches_answer", True)})
            for j, c in enumerate(record.get("candidates", []))
            if not whole or c.get("reaches_answer", True)]


def _step_labels(record: dict, k: int, chosen_text: str, rejected_text: str) -> tuple[list, list]:
    """Per-step scores for whole-solution rows (full-step-dpo needs one number per step of each text).

    Rollout success rates where measured; elsewhere the localizer's own labels: 1.0 before the first error
    (the prefix is solvable), 0.0 from it on; the winner's own steps are 1.0 (it reaches the answer)."""
    measured = record.get("step_scores") if isinstance(record.get("step_scores"), list) else []

    def label(i: int, after_error: float) -> float:  # i is 0-based
        value = measured[i] if i < len(measured) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        return 1.0 if i < k - 1 else after_error

    n_rejected = len(split_steps(rejected_text))
    n_chosen = len(split_steps(chosen_text))
    rejected = [label(i, 0.0) for i in range(n_rejected)]
    chosen = [label(i, 1.0) if i < k - 1 else 1.0 for i in range(n_chosen)]
    return chosen, rejected


# Pipeline fields that describe the wrong solution or a stage's work, not the problem: not copied into pairs
# (their content is in the pair's own fields or its provenance). Every other input field is copied.
_NOT_COPIED = frozenset({"problem", "completion", "steps", "prediction", "correct", "candidates", "generation",
                         "sample_index", "judge_raw", "step_verdicts", "step_scores", "rollouts_spent", "rectify",
                         "localize_status", "reference_step", "step_rewards", "prm_score", "prm"})


def check_pair_options(format: str, chosen_source: str) -> None:
    """Usage errors (exit 2), checked before any output file is opened."""
    if format not in FORMATS:
        raise InputError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}", field="--format")
    if chosen_source not in CHOSEN_SOURCES:
        raise InputError(f"choose one of {', '.join(CHOSEN_SOURCES)}", field="--chosen-source")
    if format == "dpo" and chosen_source == "reference-step":
        raise InputError("a reference step is one step, not a whole solution: use --format step",
                         field="--chosen-source")


def pair_records(records: Iterable[dict], *, format: str = "step", chosen_source: str = "model",
                 max_per_problem: int | None = None, counts: dict | None = None,
                 lengths: Any = len) -> Iterator[list[dict]]:
    """Yield each record's pair rows as one group. `counts` collects the summary (see `pair_summary`);
    `lengths(text) -> int` measures prefix and step sizes (a tokenizer's token count, or characters)."""
    check_pair_options(format, chosen_source)
    counts = counts if counts is not None else {}
    seen: set[tuple[str, ...]] = set()
    per_problem: dict[str, int] = {}

    def drop(reason: str) -> None:
        counts["dropped_" + reason] = counts.get("dropped_" + reason, 0) + 1

    for record in records:
        counts["records"] = counts.get("records", 0) + 1
        k = record.get("first_error_step")
        if k is None:
            drop("undecided" if record.get("localize_status") == "undecided" else "no_error_step")
            continue
        choices = _choices(record, chosen_source, whole=format != "step")
        if not choices:
            drop("no_reference_step" if chosen_source == "reference-step" else
                 "no_candidates" if not record.get("candidates") else "no_candidate_reaches_answer")
            continue
        steps = record["steps"]
        prefix = prefix_text(steps, k)
        rejected = steps[k - 1]
        rows = []
        for suffix, chosen, continuation, provenance in choices:
            if not chosen.strip() or not rejected.strip():
                drop("empty")
                continue
            if same_step(chosen, rejected):
                drop("identical")
                continue
            if format == "dpo":
                chosen_text = prefix[len(STEP_PREFIX):] + continuation
                row = {"prompt": record["problem"], "initial_reason_steps": STEP_PREFIX, "chosen": chosen_text,
                       "rejected": join_steps(steps), "full_chosen": chosen_text, "full_rejected": join_steps(steps)}
                row["chosen_step_scores"], row["rejected_step_scores"] = _step_labels(
                    record, k, chosen_text, row["rejected"])
            elif format == "sft":
                row = {"prompt": record["problem"], "initial_reason_steps": prefix, "completion": continuation}
            else:
                row = {"prompt": record["problem"], "initial_reason_steps": prefix, "chosen": chosen,
                       "rejected": rejected, "full_chosen": continuation,
                       "full_rejected": join_steps(list(steps[k - 1:]), start=k)}
            # Step rows: one per (prompt, prefix, chosen) as the official merge; whole-solution rows share
            # one correct solution across many wrong ones, so their key includes the rejected text.
            key = (row["prompt"], row["initial_reason_steps"], row.get("chosen", chosen)) + (
                (row["rejected"],) if format == "dpo" else ())
            if key in seen:
                drop("duplicate")
                continue
            problem = _problem_key(record)
            if max_per_problem is not None and per_problem.get(problem, 0) >= max_per_problem:
                drop("max_per_problem")
                continue
            seen.add(key)
            per_problem[problem] = per_problem.get(problem, 0) + 1
            row = {**{name: value for name, value in record.items() if name not in _NOT_COPIED}, **row}
            row.update({"answer": record["answer"], "dataset": record.get("dataset", ""),
                        "id": f"{record['id']}/{suffix}", "source_id": record["id"],
                        "problem_id": record.get("problem_id"), "first_error_step": k, "format": format,
                        "template": record.get("template"), "localizer": record.get("localizer"),
                        "provenance": {**provenance, "generation": record.get("generation"),
                                       "rectify": (record.get("rectify") or {}).get("settings")}})
            rows.append(row)
            counts["pairs"] = counts.get("pairs", 0) + 1
            counts["step_sum"] = counts.get("step_sum", 0) + k
            counts["prefix_len"] = counts.get("prefix_len", 0) + lengths(row["prompt"] + row["initial_reason_steps"])
            counts["step_len"] = counts.get("step_len", 0) + (lengths(chosen) + lengths(rejected)) / 2
        counts["problems"] = len(per_problem)
        if rows:
            yield rows


def pair_summary(counts: dict, unit: str = "chars") -> dict:
    """pairs, problems, mean step index, prefix/step length ratio, and every drop reason's count."""
    pairs = counts.get("pairs", 0)
    values: dict = {"records": counts.get("records", 0), "pairs": pairs, "problems": counts.get("problems", 0),
                    "mean_step_index": counts.get("step_sum", 0) / pairs if pairs else 0.0,
                    f"prefix_step_ratio_{unit}": (counts.get("prefix_len", 0) / counts["step_len"])
                    if counts.get("step_len") else 0.0}
    values.update({k: v for k, v in sorted(counts.items()) if k.startswith("dropped_")})
    return values
