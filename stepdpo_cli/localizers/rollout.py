"""Monte-Carlo step localization with the policy itself (Math-Shepherd / Self-Explore / OmegaPRM).

From the prefix that ends after step i (the same prompt text rectify would use for step i+1) we sample m
continuations and grade them. The success rate after step i is `step_scores[i-1]`; a prefix whose rate is at
most `threshold` is a dead end, and the first error is the first step after which the prefix is a dead end.
The empty prefix (before step 1) is assumed solvable and the full solution's rate is its own grade, so both
ends cost no rollouts.

`linear` tries prefixes 1, 2, ... and stops at the first dead end; `binary` (OmegaPRM) bisects between the
last good and first bad prefix, O(log n) prefixes, assuming success only falls as steps accumulate. Every
round batches all records' pending prefixes into one `generate` call so prefix-sharing backends can help.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from ..backends.base import Backend, Request, SamplingParams
from ..grading import grade
from ..records import batched, derive_seed
from ..steps import prefix_text
from ..templates import generation_prompt, resolve_template

SEARCHES = ("linear", "binary")


@dataclass
class _Search:
    """Search state for one record: prefixes known good (`lo`) and bad (`hi`), scores found so far."""
    record: dict
    n: int
    lo: int = 0  # prefix after step lo is known (or assumed) solvable
    hi: int | None = None  # prefix after step hi is known to be a dead end
    next_linear: int = 1
    scores: list = field(default_factory=list)
    spent: int = 0
    root_score: float | None = None  # success rate from the bare CoT prefix (only with check_root)
    unsolvable: bool = False  # check_root found the problem itself a dead end: nothing to localize

    def next_prefix(self, search: str, check_root: bool = False) -> int | None:
        """The step count of the next prefix to roll out from, or None when the search is over."""
        if self.unsolvable:
            return None
        if check_root and self.root_score is None and self.hi is not None:
            return 0
        if search == "linear":
            limit = self.hi if self.hi is not None else self.n  # the full solution is graded, not rolled
            return self.next_linear if self.next_linear < limit else None
        if self.hi is None:  # a correct final answer: under monotonicity every prefix is solvable
            return None
        return (self.lo + self.hi) // 2 if self.hi - self.lo > 1 else None

    def record_score(self, i: int, rate: float, dead: bool) -> None:
        if i == 0:
            self.root_score, self.unsolvable = rate, dead
            return
        self.scores[i - 1] = rate
        if dead:
            self.hi = i if self.hi is None else min(self.hi, i)
        else:
            self.lo = max(self.lo, i)
        self.next_linear = i + 1


def _final_correct(record: dict, timeout: float) -> bool:
    if isinstance(record.get("correct"), bool):
        return record["correct"]
    return grade(record.get("completion", ""), record["answer"], timeout=timeout)[1]


def rollout_records(records: Iterable[dict], backend: Backend, *, spec: str = "", rollouts: int = 8,
                    threshold: float = 0.0, search: str = "linear", temperature: float = 0.8, top_p: float = 0.95,
                    max_tokens: int = 512, seed: int = 0, batch_size: int = 64, template: str | None = None,
                    grade_timeout: float = 5.0, check_root: bool = False, stop: tuple[str, ...] = (),
                    counts: dict | None = None) -> Iterator[list[dict]]:
    """Localize records by rollouts, `batch_size` records at a time; yields each finished batch as a list.

    `check_root` first rolls out from the bare CoT prefix: a problem the policy never solves has no first
    error to find (every prefix is a dead end), so such records become `undecided` instead of step 1."""
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {SEARCHES}")
    counts = counts if counts is not None else {}
    params = SamplingParams(n=rollouts, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                            stop=tuple(stop))
    settings = {"method": "rollout", "model": spec, "rollouts": rollouts, "threshold": threshold, "search": search,
                "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens, "seed": seed,
                "check_root": check_root}
    for batch in batched(records, batch_size):
        yield _localize_batch(batch, backend, params, settings, template, grade_timeout, counts)


def _localize_batch(batch: list[dict], backend: Backend, params: SamplingParams, settings: dict,
                    template: str | None, grade_timeout: float, counts: dict) -> list[dict]:
    search, threshold, seed = settings["search"], settings["threshold"], settings["seed"]
    states = []
    for record in batch:
        state = _Search(record, len(record["steps"]), scores=[None] * len(record["steps"]))
        final_ok = _final_correct(record, grade_timeout)
        state.scores[-1] = 1.0 if final_ok else 0.0
        state.hi = None if final_ok else state.n
        states.append(state)
    while True:
        pending = [(s, s.next_prefix(search, settings["check_root"])) for s in states]
        pending = [(s, i) for s, i in pending if i is not None]
        if not pending:
            break
        requests = [_request(s.record, i, seed, template, backend.tokenizer) for s, i in pending]
        outputs = backend.generate(requests, params)
        for (state, i), completions in zip(pending, outputs):
            answer = state.record["answer"]
            wins = sum(1 for c in completions if grade(c.text, answer, timeout=grade_timeout)[1])
            rate = wins / len(completions) if completions else 0.0
            state.spent += len(completions)
            state.record_score(i, rate, rate <= threshold)
    for state in states:
        record = state.record
        first = None if state.unsolvable else state.hi  # linear: the first dead end; binary: bisection's end
        record["first_error_step"] = first
        record["localize_status"] = ("undecided" if state.unsolvable else
                                     "error_found" if first is not None else "no_error")
        record["step_scores"] = state.scores
        if settings["check_root"]:
            record["root_score"] = state.root_score
        record["rollouts_spent"] = state.spent
        record["localizer"] = dict(settings)
        counts["rollouts"] = counts.get("rollouts", 0) + state.spent
    return batch


def _request(record: dict, after_step: int, seed: int, template: str | None, tokenizer: Any) -> Request:
    """The rollout prompt after `after_step` steps: byte-identical to rectify's prompt for step after_step+1."""
    used = record.get("template") or resolve_template(template, tokenizer)  # as `sample` chose it
    prompt = generation_prompt(record["problem"], used, tokenizer,
                               reason_prefix=prefix_text(record["steps"], after_step + 1))
    return Request(prompt, derive_seed(seed, record["id"], "rollout", after_step))
