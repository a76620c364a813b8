"""A step-level Monte-Carlo search tree: nodes are "Step k:" bodies, selection by PUCT, mean-value backup.

Per simulation: `select` walks from the root to a leaf, at each node taking the child with the largest

    PUCT(child) = Q(child) + c_puct * P(child) * sqrt(N(parent)) / (1 + N(child))

(ties: the earlier child), the caller expands the leaf with K candidate next steps (`add_child`, priors from
`priors_from_logprobs`) and evaluates it (rollouts graded against the answer, or a value model), then
`backup(leaf, value)` adds one visit and the value to every node from the leaf to the root. Q is the mean of the
values backed up through a node (AlphaZero's rule); MCTS-DPO's code instead backs up Q = r + V with step rewards
r = value - parent value. Both rank children the same way when values are rollout success rates; the mean is
used here because it needs no per-step value and its visit counts sum exactly (see `check_counts`).

The prior of a candidate step is MCTS-DPO's exp(sum log pi(step) / len^lambda) (lambda = 1.25, the code's
`mcts_length_penalty`), normalised over the siblings so the priors of a node's children sum to 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator, Sequence


@dataclass
class Node:
    id: int
    parent: int | None
    step: str  # the step body ("" at the root)
    prior: float = 1.0
    visits: int = 0
    value_sum: float = 0.0
    terminal: bool = False
    correct: bool | None = None  # terminal nodes: the answer graded against the gold one
    children: list[int] = field(default_factory=list)
    evaluations: int = 0  # simulations whose value was measured at this node

    @property
    def q(self) -> float:
        return self.value_sum / self.visits if self.visits else 0.0

    def as_record(self) -> dict:
        return {"id": self.id, "parent": self.parent, "step": self.step, "visits": self.visits,
                "evaluations": self.evaluations,
                "q": self.q, "prior": self.prior, "terminal": self.terminal, "correct": self.correct}


def priors_from_logprobs(logprobs: Sequence[float], lengths: Sequence[int], length_penalty: float = 1.25) -> list[float]:
    """Sibling priors from each candidate's summed token log-prob and its token count (see module doc)."""
    if not logprobs:
        return []
    scores = [lp / max(n, 1) ** length_penalty for lp, n in zip(logprobs, lengths)]
    top = max(scores)
    weights = [math.exp(s - top) for s in scores]  # shifted: no underflow for long steps
    total = sum(weights)
    return [w / total for w in weights]


class Tree:
    """One problem's search tree; node 0 is the root (the empty solution after the CoT prefix)."""

    def __init__(self) -> None:
        self.nodes: list[Node] = [Node(0, None, "")]

    @property
    def root(self) -> Node:
        return self.nodes[0]

    def add_child(self, parent: int, step: str, prior: float, *, terminal: bool = False,
                  correct: bool | None = None) -> Node:
        node = Node(len(self.nodes), parent, step, prior, terminal=terminal, correct=correct)
        self.nodes.append(node)
        self.nodes[parent].children.append(node.id)
        return node

    def path_up(self, node_id: int) -> Iterator[Node]:
        """`node_id`'s node, then each of its ancestors up to the root."""
        node: Node | None = self.nodes[node_id]
        while node is not None:
            yield node
            node = self.nodes[node.parent] if node.parent is not None else None

    def steps_to(self, node_id: int) -> list[str]:
        """The step bodies from the root to `node_id` (the partial solution the node stands for)."""
        return [node.step for node in self.path_up(node_id) if node.parent is not None][::-1]

    def depth(self, node_id: int) -> int:
        return len(self.steps_to(node_id))

    def puct(self, child_id: int, c_puct: float) -> float:
        child = self.nodes[child_id]
        parent = self.nodes[child.parent] if child.parent is not None else child
        return child.q + c_puct * child.prior * math.sqrt(parent.visits) / (1 + child.visits)

    def select(self, c_puct: float = 1.0) -> int:
        """The leaf a simulation expands: from the root, the largest-PUCT child at every level."""
        node = self.root
        while node.children and not node.terminal:
            best = max(node.children, key=lambda c: (self.puct(c, c_puct), -c))
            node = self.nodes[best]
        return node.id

    def select_many(self, k: int, c_puct: float = 1.0) -> list[int]:
        """Up to `k` distinct leaves for simulations that run together, chosen with a virtual loss.

        After each pick, every node from that leaf to the root carries one pending visit of value 0 (a loss),
        so the next walk sees that path as tried and less promising, as in batched AlphaZero-style MCTS; the
        pending visits are taken back before returning. A walk that lands on a leaf already picked ends the
        picking (on a young tree that is the root alone). `k` = 1 is exactly `select`.
        """
        leaves: list[int] = []
        for _ in range(k):
            leaf = self.select(c_puct)
            if leaf in leaves:
                break
            leaves.append(leaf)
            for node in self.path_up(leaf):
                node.visits += 1
        for leaf in leaves:
            for node in self.path_up(leaf):
                node.visits -= 1
        return leaves

    def backup(self, node_id: int, value: float) -> None:
        """One visit and `value` for `node_id` and each of its ancestors."""
        self.nodes[node_id].evaluations += 1
        for node in self.path_up(node_id):
            node.visits += 1
            node.value_sum += value

    def chosen_path(self) -> list[int]:
        """Node ids from the root along the most visited child (ties: higher Q, then the earlier child)."""
        path = [0]
        node = self.root
        while node.children:
            node = self.nodes[max(node.children, key=lambda c: (self.nodes[c].visits, self.nodes[c].q, -c))]
            path.append(node.id)
        return path

    def check_counts(self) -> None:
        """Every node's visits = the simulations evaluated at it + its children's visits (AssertionError
        otherwise), so the root's visits are the number of simulations."""
        for node in self.nodes:
            below = sum(self.nodes[c].visits for c in node.children)
            assert node.visits == node.evaluations + below, \
                f"node {node.id}: {node.visits} visits, {node.evaluations} own + {below} below"

    def as_records(self) -> list[dict]:
        return [node.as_record() for node in self.nodes]
