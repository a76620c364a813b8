"""PRM step localization: the first step whose process reward falls below a threshold.

The third way to find a first wrong step, beside an LLM judge and Monte-Carlo rollouts: one PRM forward per
solution (rewards/prm.py), no generation. `first_error_step` is the first k with step_rewards[k-1] < threshold
(`localize_status` error_found), else none (no_error); a PRM always decides. Evidence: `step_rewards`.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator

from ..records import batched


def first_below(rewards: list[float], threshold: float) -> int | None:
    """1-based index of the first reward below `threshold`, or None."""
    return next((k for k, value in enumerate(rewards, start=1) if value < threshold), None)


def prm_localize_records(records: Iterable[dict], prm: Any, *, threshold: float = 0.5, batch_size: int = 64,
                         spec: str = "") -> Iterator[dict]:
    for chunk in batched(records, max(1, batch_size)):
        rewards = prm.score([(record["problem"], record["steps"]) for record in chunk])
        for record, mine in zip(chunk, rewards):
            k = first_below(mine, threshold)
            record["first_error_step"] = k
            record["localize_status"] = "error_found" if k is not None else "no_error"
            record["step_rewards"] = mine
            record["localizer"] = {"method": "prm", "prm": spec, "threshold": threshold,
                                   "template": getattr(prm, "template", None)}
            yield record
