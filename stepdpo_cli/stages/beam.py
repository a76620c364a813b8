"""Step-level beam search guided by a step scorer (`eval --search beam --prm PATH`).

Per problem, `beam_width` partial solutions (beams) grow one step per round: each beam gets `expand` sampled next
steps (one backend call for every beam of every problem in the chunk, stopped at the next "\\nStep" marker, so
prefix-caching engines reuse the shared prefixes), every candidate is scored by the scorer over all its steps
(`--aggregate`: mean by default), and the `beam_width` best candidates survive. A candidate that ends without a
further step marker (EOS, or `max_tokens` reached) is finished; the search stops when the best `beam_width`
candidates are all finished or after `max_steps` rounds (then unfinished beams count as they are). The answer
is the best finished candidate's (else the best beam's).

The scorer is anything with `score([(problem, step bodies)]) -> [[reward per step]]`: a PRM (rewards/prm.py) or,
later, a value model. Seeds derive from the run seed, the problem id, the round and the beam, so a problem's
search never depends on its batch neighbours or on --resume.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from ..backends.base import Backend, Request, SamplingParams
from ..grading import grade_many
from ..records import batched, derive_seed, normalize_problem
from ..rewards.prm import aggregate
from ..steps import join_steps, prefix_text
from ..templates import generation_prompt

STEP_STOP = "\nStep"


@dataclass
class _Beam:
    steps: list[str]
    score: float = 0.0
    rewards: list[float] = field(default_factory=list)
    finished: bool = False


@dataclass
class BeamStats:
    problems: int = 0
    tokens: int = 0
    generate_seconds: float = 0.0
    score_seconds: float = 0.0
    rounds: int = 0


def _context(problem: str, steps: list[str], template: str, tokenizer: Any) -> str:
    """The prompt that asks for step len(steps)+1: the same context rectify and rollouts use."""
    return generation_prompt(problem, template, tokenizer, reason_prefix=prefix_text(steps, len(steps) + 1))


def beam_search_records(records: Iterable[dict], backend: Backend, scorer: Any, *, template: str,
                        beam_width: int = 4, expand: int = 4, max_steps: int = 16, temperature: float = 0.7,
                        top_p: float = 1.0, max_step_tokens: int = 256, how: str = "mean", seed: int = 0,
                        chunk_size: int = 8, grade_timeout: float = 5.0, stats: BeamStats | None = None,
                        advance: Callable[[int], Any] = lambda n: None) -> Iterator[dict]:
    """Yield each problem record with the beam search's solution: completion, steps, step_rewards, prm_score,
    prediction, correct, and `search` (settings, rounds, tokens generated)."""
    if beam_width < 1 or expand < 1 or max_steps < 1:
        raise ValueError("beam_width, expand and max_steps must be >= 1")
    stats = stats if stats is not None else BeamStats()
    params = SamplingParams(n=expand, temperature=temperature, top_p=top_p, max_tokens=max_step_tokens,
                            stop=(STEP_STOP,))
    for problems in batched(records, max(1, chunk_size)):
        for problem in problems:
            normalize_problem(problem)
        beams = {p["id"]: [_Beam([])] for p in problems}
        tokens = {p["id"]: 0 for p in problems}
        rounds = {p["id"]: 0 for p in problems}
        for depth in range(max_steps):
            live = [(p, b, beam) for p in problems for b, beam in enumerate(beams[p["id"]]) if not beam.finished]
            if not live:
                break
            requests = [Request(_context(p["problem"], beam.steps, template, backend.tokenizer),
                                seed=derive_seed(seed, p["id"], "beam", depth, b)) for p, b, beam in live]
            start = time.perf_counter()
            outputs = backend.generate(requests, params)
            stats.generate_seconds += time.perf_counter() - start
            candidates: dict[str, list[_Beam]] = {p["id"]: [b for b in beams[p["id"]] if b.finished]
                                                  for p in problems}
            fresh: list[tuple[str, _Beam]] = []
            for (p, _, beam), completions in zip(live, outputs):
                rounds[p["id"]] = depth + 1
                for c in completions:
                    tokens[p["id"]] += c.num_tokens
                    done = c.stop_reason is None  # no "\nStep" followed: EOS or max_tokens
                    new = _Beam(beam.steps + [c.text], finished=done or depth + 1 == max_steps)
                    candidates[p["id"]].append(new)
                    fresh.append((p["problem"], new))
            start = time.perf_counter()
            for (_, new), rewards in zip(fresh, scorer.score([(text, new.steps) for text, new in fresh])):
                new.rewards, new.score = rewards, aggregate(rewards, how)
            stats.score_seconds += time.perf_counter() - start
            for pid, pool in candidates.items():
                # Stable sort: ties keep the earlier candidate, so the search is a function of the seeds alone.
                beams[pid] = sorted(pool, key=lambda beam: -beam.score)[:beam_width] if pool else beams[pid]
        stats.rounds += max(rounds.values(), default=0)
        finals = []
        for p in problems:
            pool = beams[p["id"]]
            best = next((b for b in pool if b.finished), pool[0])
            finals.append((p, best))
        graded = grade_many([(join_steps(best.steps), p["answer"]) for p, best in finals], timeout=grade_timeout)
        for (p, best), (prediction, source, correct) in zip(finals, graded):
            stats.problems += 1
            stats.tokens += tokens[p["id"]]
            record = {**p, "template": template, "completion": join_steps(best.steps), "steps": best.steps,
                      "step_rewards": best.rewards, "prm_score": best.score, "prediction": prediction,
                      "prediction_source": source, "correct": correct,
                      "search": {"method": "beam", "beam_width": beam_width, "expand": expand,
                                 "max_steps": max_steps, "aggregate": how, "rounds": rounds[p["id"]],
                                 "finished": best.finished, "num_tokens": tokens[p["id"]],
                                 "scorer": getattr(scorer, "path", None)},
                      "generation": {"model": backend.model, "backend": backend.name, "run_seed": seed,
                                     "temperature": temperature, "top_p": top_p,
                                     "max_step_tokens": max_step_tokens}}
            advance(1)
            yield record
