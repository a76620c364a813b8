"""`stepdpo sample`: n step-wise solutions per problem, graded, one record per kept solution.

The prompt ends with the step-wise CoT prefix, so every completion is the text after "Step 1:" and
`steps.split_steps` gives its step bodies. Each problem's samples are drawn with a seed derived from the
run seed and the problem id, so outputs do not depend on batching, on --resume, or on the backend's
internal batch order.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from ..backends.base import Backend, Request, SamplingParams
from ..grading import grade_many
from ..records import batched, derive_seed, normalize_problem
from ..steps import split_steps
from ..templates import generation_prompt

KEEP_CHOICES = ("all", "wrong", "right")


@dataclass
class SampleStats:
    problems: int = 0
    samples: int = 0
    kept: int = 0
    correct: int = 0
    tokens: int = 0
    generate_seconds: float = 0.0
    by_finish: dict[str, int] = field(default_factory=dict)

    def as_summary(self) -> dict:
        return {"problems": self.problems, "samples": self.samples, "kept": self.kept,
                "accuracy": self.correct / self.samples if self.samples else 0.0,
                "tokens_per_s": self.tokens / self.generate_seconds if self.generate_seconds else 0.0}


def validate_problem(record: dict) -> dict:
    """Input check for sample/eval: a problem (or an alias) and an answer; adds a stable `id`."""
    return normalize_problem(record)


def sample_id(problem_id: str, index: int) -> str:
    return f"{problem_id}/s{index}"


def is_problem_done(n: int) -> Callable[[dict, set[str]], bool]:
    """--resume filter: a problem is done when any of its `{id}/s{j}` samples is already in the output."""
    def done(record: dict, ids: set[str]) -> bool:
        problem_id = str(record.get("id"))
        return any(sample_id(problem_id, j) in ids for j in range(n))
    return done


def generate_for_problems(problems: list[dict], backend: Backend, params: SamplingParams, *, template: str,
                          seed: int, render: Callable[..., str] = generation_prompt,
                          ) -> tuple[list[list[Any]], list[int], float]:
    """Completions for each problem (per-problem derived seeds), the seeds used, and the seconds spent.

    Problems are normalised here too (idempotent), so Python callers may pass raw records with aliases.
    `render(problem, template, tokenizer)` builds the prompt (eval: `templates.eval_prompt`).
    """
    for problem in problems:
        normalize_problem(problem)
    seeds = [derive_seed(seed, p["id"]) for p in problems]
    requests = [Request(render(p["problem"], template, backend.tokenizer), seed=s)
                for p, s in zip(problems, seeds)]
    start = time.perf_counter()
    outputs = backend.generate(requests, params)
    return outputs, seeds, time.perf_counter() - start


def sample_records(records: Iterable[dict], backend: Backend, params: SamplingParams, *, template: str, seed: int = 0,
                   keep: str = "all", chunk_size: int = 8, grade_timeout: float = 5.0,
                   stats: SampleStats | None = None, advance: Callable[[int], Any] = lambda n: None,
                   ) -> Iterator[list[dict]]:
    """Yield, per problem, the list of its kept sample records (written as one group)."""
    if keep not in KEEP_CHOICES:
        raise ValueError(f"keep must be one of {KEEP_CHOICES}")
    stats = stats if stats is not None else SampleStats()
    for problems in batched(records, max(1, chunk_size)):
        outputs, seeds, seconds = generate_for_problems(problems, backend, params, template=template, seed=seed)
        stats.generate_seconds += seconds
        graded = iter(grade_many([(c.text, p["answer"]) for p, cs in zip(problems, outputs) for c in cs],
                                 timeout=grade_timeout))  # the chunk at once: one slow answer stalls no other
        for problem, completions, problem_seed in zip(problems, outputs, seeds):
            group = []
            for j, completion in enumerate(completions):
                prediction, source, correct = next(graded)
                stats.samples += 1
                stats.correct += int(correct)
                stats.tokens += completion.num_tokens
                stats.by_finish[completion.finish_reason] = stats.by_finish.get(completion.finish_reason, 0) + 1
                if keep == "wrong" and correct or keep == "right" and not correct:
                    continue
                group.append({
                    **problem,
                    "id": sample_id(problem["id"], j),
                    "problem_id": problem["id"],
                    "sample_index": j,
                    "completion": completion.text,
                    "steps": split_steps(completion.text),
                    "prediction": prediction,
                    "prediction_source": source,
                    "correct": correct,
                    "template": template,
                    "generation": {
                        "model": backend.model, "backend": backend.name, "seed": problem_seed, "run_seed": seed,
                        "temperature": params.temperature, "top_p": params.top_p, "max_tokens": params.max_tokens,
                        "n": params.n, "stop": list(params.stop), "num_tokens": completion.num_tokens,
                        "finish_reason": completion.finish_reason,
                    },
                })
            stats.problems += 1
            stats.kept += len(group)
            advance(1)
            yield group
