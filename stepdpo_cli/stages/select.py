"""PRM selection over k sampled solutions (`eval --prm PATH --n K`): best-of-n, weighted vote, majority.

Each of the k completions of a problem is scored by the PRM (rewards/prm.py; `--aggregate` turns its step
rewards into one score, mean by default). Then, on the same samples:

- majority: the most frequent answer (self-consistency; what `eval --n K` reports without a PRM);
- best-of-n: the answer of the highest-scoring completion (ties: the earliest);
- weighted-vote: the answer whose completions' scores sum highest (Li et al. 2023; ties: the earliest seen).

Adds `completions_step_rewards`, `completions_prm_score` and `selections` ({selector: {prediction, correct}});
`prediction` / `correct` become the `--select`ed selector's, so the headline accuracy is that selector's and
the summary's `selectors` block reports all three side by side.
"""
from __future__ import annotations

from typing import Any

from ..grading import answers_match
from ..rewards.prm import aggregate
from ..steps import split_steps
from .evaluate import majority_vote

SELECTORS = ("best-of-n", "weighted-vote", "majority")


def _key(prediction: str | None) -> str | None:
    return " ".join(prediction.split()) if prediction is not None and prediction.strip() else None


def best_of_n(predictions: list[str | None], scores: list[float | None]) -> int | None:
    """Index of the highest-scoring completion (None when there is none)."""
    ranked = [(s, -i) for i, s in enumerate(scores) if s is not None]
    return -max(ranked)[1] if ranked else None


def weighted_vote(predictions: list[str | None], scores: list[float | None]) -> str | None:
    """The answer with the largest summed score; completions without an answer do not vote."""
    totals: dict[str, float] = {}
    first: dict[str, str] = {}
    for prediction, score in zip(predictions, scores):
        key = _key(prediction)
        if key is None or score is None:
            continue
        totals[key] = totals.get(key, 0.0) + score
        first.setdefault(key, prediction)
    if not totals:
        return None
    best = max(totals.values())
    return next(first[key] for key in first if totals[key] == best)


def prm_selector(prm: Any, *, select: str = "best-of-n", how: str = "mean", grade_timeout: float = 5.0):
    """A `rescore` hook for `evaluate_records`: scores each chunk's completions in one PRM call, then selects."""
    if select not in SELECTORS:
        raise ValueError(f"select must be one of {SELECTORS}")

    def rescore(records: list[dict]) -> None:
        texts = [(r, r["completions"] if "completions" in r else [r["completion"]]) for r in records]
        flat = [(r["problem"], split_steps(c)) for r, cs in texts for c in cs]
        rewards = iter(prm.score(flat))
        for record, completions in texts:
            mine = [next(rewards) for _ in completions]
            scores = [aggregate(r, how) for r in mine]
            predictions = record.get("predictions", [record.get("prediction")])
            corrects = record.get("completions_correct", [record.get("correct")])
            best = best_of_n(predictions, scores)
            voted = weighted_vote(predictions, scores)
            majority = majority_vote(predictions)
            gold = record["answer"]

            def right(answer: str | None) -> bool:
                return answer is not None and answers_match(answer, gold, timeout=grade_timeout)

            record["completions_step_rewards"] = mine
            record["completions_prm_score"] = scores
            record["selections"] = {
                "best-of-n": {"prediction": predictions[best] if best is not None else None,
                              "correct": bool(corrects[best]) if best is not None else False, "index": best},
                "weighted-vote": {"prediction": voted, "correct": right(voted)},
                "majority": {"prediction": majority, "correct": right(majority)},
            }
            chosen = record["selections"][select]
            record["prediction"], record["correct"] = chosen["prediction"], chosen["correct"]
            record["prm"] = {"model": getattr(prm, "path", None), "aggregate": how, "select": select}

    return rescore
