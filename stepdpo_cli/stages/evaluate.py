"""`stepdpo eval`: accuracy of a model on problems, greedy or by k samples (majority vote, pass@k, mean).

Per record: `prediction` and `correct` (for k > 1 these are the majority vote's), plus `predictions`,
`majority`, `pass_at_k` and `mean_correct` when k > 1. The summary carries accuracy with a 95% Wilson
interval overall and by dataset / subject / level, so two runs can be compared honestly.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from ..backends.base import Backend, SamplingParams
from ..grading import answers_match, grade_many
from ..records import batched
from ..templates import eval_prompt
from .sample import generate_for_problems

GROUP_FIELDS = ("dataset", "subject", "level")


def wilson_interval(successes: int, total: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (sane at 0 and 1, unlike the normal approximation)."""
    if total <= 0:
        return (0.0, 0.0)
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def majority_vote(predictions: list[str | None]) -> str | None:
    """The most frequent extracted answer (whitespace-insensitive); ties go to the earliest sample."""
    keyed = [(" ".join(p.split()), p) for p in predictions if p is not None and p.strip()]
    if not keyed:
        return None
    counts = Counter(key for key, _ in keyed)
    best = max(counts.values())
    return next(original for key, original in keyed if counts[key] == best)


@dataclass
class _Tally:
    total: int = 0
    correct: int = 0
    pass_at_k: int = 0
    mean_correct: float = 0.0

    def add(self, record: dict) -> None:
        self.total += 1
        self.correct += int(record["correct"])
        self.pass_at_k += int(record.get("pass_at_k", record["correct"]))
        self.mean_correct += float(record.get("mean_correct", record["correct"]))

    def as_dict(self, n: int) -> dict:
        low, high = wilson_interval(self.correct, self.total)
        out = {"count": self.total, "correct": self.correct,
               "accuracy": self.correct / self.total if self.total else 0.0, "ci95": [low, high]}
        if n > 1:
            out["pass_at_k"] = self.pass_at_k / self.total if self.total else 0.0
            out["mean_accuracy"] = self.mean_correct / self.total if self.total else 0.0
        return out


@dataclass
class EvalStats:
    overall: _Tally = field(default_factory=_Tally)
    groups: dict[tuple[str, str], _Tally] = field(default_factory=dict)
    selectors: dict[str, _Tally] = field(default_factory=dict)  # PRM selection: each selector on the same samples
    tokens: int = 0
    generate_seconds: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def add(self, record: dict) -> None:
        self.overall.add(record)
        for name, chosen in (record.get("selections") or {}).items():
            self.selectors.setdefault(name, _Tally()).add({"correct": bool(chosen.get("correct"))})
        for name in GROUP_FIELDS:
            if record.get(name) is not None:
                self.groups.setdefault((name, str(record[name])), _Tally()).add(record)

    def summary(self, n: int, **context: Any) -> dict:
        by: dict[str, dict[str, dict]] = {}
        for (name, value), tally in sorted(self.groups.items(), key=lambda kv: (kv[0][0], natural_key(kv[0][1]))):
            by.setdefault(name, {})[value] = tally.as_dict(n)
        selectors = {name: tally.as_dict(1) for name, tally in self.selectors.items()}
        return {**self.overall.as_dict(n), "by": by, **({"selectors": selectors} if selectors else {}),
                **context, "tokens": self.tokens,
                "tokens_per_s": self.tokens / self.generate_seconds if self.generate_seconds else 0.0,
                "wall_seconds": time.perf_counter() - self.started}

    def table_rows(self, n: int) -> list[dict]:
        rows = [{"group": "all", **_row(self.overall.as_dict(n))}]
        for (name, value), tally in sorted(self.groups.items(), key=lambda kv: (kv[0][0], natural_key(kv[0][1]))):
            rows.append({"group": f"{name}={value}", **_row(tally.as_dict(n))})
        for name, tally in self.selectors.items():
            rows.append({"group": f"select={name}", **_row(tally.as_dict(1))})
        return rows


def natural_key(value: str) -> tuple:
    """Sort key: integers ("Level" 2 before 10, -1 before 3) by value, then other strings."""
    return (0, int(value), "") if value.lstrip("-").isdigit() else (1, 0, value)


def _row(stats: dict) -> dict:
    row = {"n": stats["count"], "accuracy": round(100 * stats["accuracy"], 1),
           "95% CI": f"[{100 * stats['ci95'][0]:.1f}, {100 * stats['ci95'][1]:.1f}]"}
    if "pass_at_k" in stats:
        row["pass@k"] = round(100 * stats["pass_at_k"], 1)
        row["mean@k"] = round(100 * stats["mean_accuracy"], 1)
    return row


def evaluate_records(records: Iterable[dict], backend: Backend, params: SamplingParams, *, template: str,
                     seed: int = 0, chunk_size: int = 16, grade_timeout: float = 5.0, stats: EvalStats | None = None,
                     advance: Callable[[int], Any] = lambda n: None,
                     rescore: Callable[[list[dict]], Any] | None = None) -> Iterator[dict]:
    """Yield each problem record with its evaluation fields; accumulate accuracy in `stats`.

    `rescore(chunk)`: runs on each chunk's finished records before they are counted, e.g. PRM selection
    (stages/select.py), which may set another `prediction`/`correct` and adds `selections`."""
    stats = stats if stats is not None else EvalStats()
    for problems in batched(records, max(1, chunk_size)):
        outputs, seeds, seconds = generate_for_problems(problems, backend, params, template=template, seed=seed,
                                                        render=eval_prompt)
        stats.generate_seconds += seconds
        chunk_graded = iter(grade_many([(c.text, p["answer"]) for p, cs in zip(problems, outputs) for c in cs],
                                       timeout=grade_timeout))  # the chunk at once: one slow answer stalls no other
        finished = []
        for problem, completions, problem_seed in zip(problems, outputs, seeds):
            graded = [next(chunk_graded) for _ in completions]
            record = {**problem, "template": template,
                      "generation": {"model": backend.model, "backend": backend.name, "seed": problem_seed,
                                     "run_seed": seed, **params.as_record(),
                                     "num_tokens": [c.num_tokens for c in completions],
                                     "finish_reason": [c.finish_reason for c in completions]}}
            stats.tokens += sum(c.num_tokens for c in completions)
            if len(completions) == 1:
                prediction, source, correct = graded[0]
                record.update(completion=completions[0].text, prediction=prediction, prediction_source=source,
                              correct=correct)
            else:
                predictions = [p for p, _, _ in graded]
                majority = majority_vote(predictions)
                record.update(
                    completions=[c.text for c in completions], predictions=predictions,
                    prediction_sources=[source for _, source, _ in graded], majority=majority,
                    prediction=majority,
                    correct=majority is not None and answers_match(majority, problem["answer"], timeout=grade_timeout),
                    pass_at_k=any(ok for _, _, ok in graded),
                    mean_correct=sum(ok for _, _, ok in graded) / len(graded),
                    completions_correct=[ok for _, _, ok in graded],
                )
            finished.append(record)
        if rescore is not None:
            rescore(finished)
        for record in finished:
            stats.add(record)
            advance(1)
            yield record
