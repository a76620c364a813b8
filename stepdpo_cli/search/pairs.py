"""Step-DPO rows from a search tree (MCTS-DPO): at each node of the chosen path, its best and worst child.

Input: a `stepdpo search` record with `tree` (node records: id, parent, step, visits, q, ...; as `mcts.Tree.as_records`) and
`chosen_path` (node ids from the root). At every node of the path with two or more children, chosen = the
child with the highest Q and rejected = the lowest (`rejected="second"`: the second best instead; `min_gap`:
skip the node when Q(chosen) - Q(rejected) is smaller); ties keep the earlier child. Each pair is a Step-DPO row
whose prefix is the path so far, with its own `label_smoothing` = min(N_l / (N_w + N_l), 0.5) from the two
children's visit counts (MCTS-DPO's confidence: a rejected step visited about as often as the chosen one is a
less certain preference; 0 when neither was visited), which `train` uses as that row's cDPO epsilon.

MCTS-DPO pairs a candidate with its chain of single-child descendants; here a candidate is one step, so rows
have the shape of every other Step-DPO row (`chosen`/`rejected` one body each, `full_*` the step itself).
"""
from __future__ import annotations

from typing import Iterable

from ..records import InputError
from ..steps import prefix_text


def label_smoothing(chosen_visits: int, rejected_visits: int) -> float:
    total = chosen_visits + rejected_visits
    return min(rejected_visits / total, 0.5) if total else 0.0


def _nodes(record: dict) -> dict[int, dict]:
    tree = record.get("tree")
    if not isinstance(tree, list) or not all(isinstance(n, dict) and isinstance(n.get("id"), int) for n in tree):
        raise InputError("must be a list of nodes with integer ids (stepdpo search output)", field="tree")
    return {n["id"]: n for n in tree}


def tree_pair_rows(record: dict, *, rejected: str = "worst", min_gap: float = 0.0) -> list[dict]:
    """The rows of one searched problem (see the module doc)."""
    if rejected not in ("worst", "second"):
        raise InputError("choose worst or second", field="--rejected")
    nodes = _nodes(record)
    path = record.get("chosen_path")
    if not isinstance(path, list) or not path or any(i not in nodes for i in path):
        raise InputError("must be a list of node ids of `tree`, from the root", field="chosen_path")
    children: dict[int, list[dict]] = {}
    for node in nodes.values():
        if node.get("parent") is not None:
            children.setdefault(node["parent"], []).append(node)
    rows, steps = [], []
    for depth, node_id in enumerate(path):
        if depth:
            steps.append(nodes[node_id]["step"])
        kids = sorted(children.get(node_id, []), key=lambda n: n["id"])
        if len(kids) < 2:
            continue
        ranked = sorted(kids, key=lambda n: -n["q"])  # stable: ties keep the earlier child
        win, lose = ranked[0], ranked[1] if rejected == "second" else ranked[-1]
        if win["q"] - lose["q"] < min_gap or win["q"] == lose["q"]:
            continue
        k = len(steps) + 1
        rows.append({"prompt": record["problem"], "initial_reason_steps": prefix_text(steps, k),
                     "chosen": win["step"], "rejected": lose["step"], "full_chosen": win["step"],
                     "full_rejected": lose["step"], "answer": record.get("answer"),
                     "dataset": record.get("dataset", ""), "id": f"{record['id']}/t{node_id}",
                     "source_id": record["id"], "problem_id": record.get("problem_id", record["id"]),
                     "first_error_step": k, "format": "tree",
                     "label_smoothing": label_smoothing(win["visits"], lose["visits"]),
                     "chosen_q": win["q"], "rejected_q": lose["q"], "chosen_visits": win["visits"],
                     "rejected_visits": lose["visits"], "chosen_node": win["id"], "rejected_node": lose["id"]})
    return rows


def validate_tree(record: dict) -> dict:
    """A `stepdpo search` record: problem, id, `tree` and `chosen_path` that name its nodes."""
    if not isinstance(record.get("problem"), str):
        raise InputError("missing", field="problem")
    nodes = _nodes(record)
    path = record.get("chosen_path")
    if not isinstance(path, list) or not path or any(i not in nodes for i in path):
        raise InputError("must be a list of node ids of `tree`, from the root", field="chosen_path")
    for node in nodes.values():
        if not isinstance(node.get("step"), str) or not isinstance(node.get("visits"), int) \
                or not isinstance(node.get("q"), (int, float)):
            raise InputError(f"node {node['id']} needs step (str), visits (int) and q (number)", field="tree")
    return record


def tree_pair_records(records: Iterable[dict], *, counts: dict | None = None, **options) -> Iterable[list[dict]]:
    """Yield each searched record's rows as one group; `counts`: records, pairs."""
    counts = counts if counts is not None else {}
    for record in records:
        counts["records"] = counts.get("records", 0) + 1
        rows = tree_pair_rows(record, **options)
        counts["pairs"] = counts.get("pairs", 0) + len(rows)
        if rows:
            yield rows
