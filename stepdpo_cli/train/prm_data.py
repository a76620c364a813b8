"""PRM rows -> train `Example`s: the solution's tokens, each step's end position and its target.

The targets come from rewards/labels.py (`--prm-labels`), the positions from rewards/prm.py's `encode_steps`,
the one function that also builds what `score` reads, so training and scoring read the same tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from ..records import content_id
from ..rewards.labels import is_trl_row, problem_text, record_steps, step_labels, trl_steps
from ..rewards.prm import encode_steps, prm_context
from .data import Example, _truncate


@dataclass
class PrmEncodeStats:
    rows: int = 0
    unlabelled: int = 0
    truncated: int = 0


def encode_prm_rows(rows: Iterable[dict], tokenizer: Any, template: str, source: str, max_length: int,
                    stats: PrmEncodeStats | None = None, *, max_prompt_length: int = 512) -> list[Example]:
    """Validated rows -> train `Example`s: context ids, solution ids, step-end positions and targets."""
    stats = stats if stats is not None else PrmEncodeStats()
    examples = []
    for row in rows:
        stats.rows += 1
        labels = step_labels(row, source)
        if labels is None:
            stats.unlabelled += 1
            continue
        bodies = trl_steps(row["completions"]) if is_trl_row(row) else record_steps(row)
        context = prm_context(problem_text(row), template, tokenizer)
        prefix, ids, positions = encode_steps(tokenizer, context, bodies)
        cut = _truncate(prefix, [ids], max_length, max_prompt_length, tokenizer.bos_token_id)
        if cut:
            stats.truncated += 1
            prefix, (ids,) = cut
            kept = [(p, y) for p, y in zip(positions, labels) if p < len(ids)]
            if not kept:
                continue
            positions, labels = [p for p, _ in kept], [y for _, y in kept]
        examples.append(Example(key=content_id("prm", context, *bodies, *map(str, labels)), prefix=prefix,
                                chosen=ids, label_positions=positions, labels=labels))
    return examples
