"""The step-level search tree: PUCT and backup by hand, visit counts that add up, priors from log-probs."""
from __future__ import annotations

import math
import random

import pytest

from stepdpo_cli.search.mcts import Tree, priors_from_logprobs


def _small_tree() -> Tree:
    """root -> a (prior 0.6), b (0.4); a -> a1 (0.5), a2 (0.5)."""
    tree = Tree()
    a = tree.add_child(0, " a", 0.6)
    tree.add_child(0, " b", 0.4)
    tree.add_child(a.id, " a1", 0.5)
    tree.add_child(a.id, " a2", 0.5, terminal=True, correct=True)
    return tree


def test_puct_and_backup_by_hand():
    tree = _small_tree()
    tree.backup(3, 1.0)  # a1: value 1
    tree.backup(2, 0.0)  # b: value 0
    tree.backup(4, 0.5)  # a2: value 0.5
    root, a, b = tree.nodes[0], tree.nodes[1], tree.nodes[2]
    assert (root.visits, a.visits, b.visits) == (3, 2, 1)
    assert a.q == pytest.approx(0.75) and b.q == 0.0 and root.q == pytest.approx(0.5)
    # PUCT(a) = 0.75 + 1.5 * 0.6 * sqrt(3) / (1 + 2); PUCT(b) = 0 + 1.5 * 0.4 * sqrt(3) / 2
    assert tree.puct(1, 1.5) == pytest.approx(0.75 + 1.5 * 0.6 * math.sqrt(3) / 3)
    assert tree.puct(2, 1.5) == pytest.approx(1.5 * 0.4 * math.sqrt(3) / 2)
    assert tree.select(1.5) == 3  # a beats b; a1 (q 1, 1 visit) beats a2 (q 0.5, 1 visit)
    assert tree.chosen_path() == [0, 1, 3] and tree.steps_to(3) == [" a", " a1"]
    tree.backup(3, 1.0)  # a: 3 visits, q 5/6; exploration of a: 0.6 * 2 / 4 = 0.3, of b: 0.4 * 2 / 2 = 0.4
    assert tree.puct(1, 100.0) == pytest.approx(2.5 / 3 + 30.0) and tree.puct(2, 100.0) == pytest.approx(40.0)
    assert tree.select(100.0) == 2 and tree.select(0.1) == 3  # exploration picks b, exploitation a1


def test_unvisited_children_go_by_prior_and_ties_to_the_first():
    tree = Tree()
    tree.backup(0, 0.0)
    for prior in (0.2, 0.5, 0.3):
        tree.add_child(0, f" s{prior}", prior)
    assert tree.select() == 2
    tie = Tree()
    tie.add_child(0, " x", 0.5)
    tie.add_child(0, " y", 0.5)
    assert tie.select() == 1


def test_visit_counts_add_up_over_random_simulations():
    rng = random.Random(0)
    tree = Tree()
    for _ in range(200):
        leaf = tree.select(1.0)
        if tree.depth(leaf) < 4 and not tree.nodes[leaf].terminal:
            for prior in priors_from_logprobs([-rng.random() * 5 for _ in range(3)], [5, 7, 9]):
                tree.add_child(leaf, " step", prior, terminal=tree.depth(leaf) == 3)
        tree.backup(leaf, rng.random())
    tree.check_counts()
    assert tree.root.visits == 200 == sum(n.evaluations for n in tree.nodes)
    for node in tree.nodes:
        if node.children:
            assert sum(tree.nodes[c].prior for c in node.children) == pytest.approx(1.0)


def test_priors_follow_the_length_penalised_log_prob():
    p = priors_from_logprobs([-2.0, -4.0], [2, 4], length_penalty=1.0)  # both -1 per token
    assert p == pytest.approx([0.5, 0.5])
    p = priors_from_logprobs([-10.0, -10.0], [4, 8], length_penalty=1.25)
    assert p[1] > p[0]  # the same log-prob over more tokens is the likelier step per token
    w = [math.exp(-10 / 4 ** 1.25), math.exp(-10 / 8 ** 1.25)]
    assert p == pytest.approx([w[0] / sum(w), w[1] / sum(w)])
    assert priors_from_logprobs([-5000.0, -5001.0], [1, 1]) == pytest.approx([1 / (1 + math.e ** -1), 1 / (1 + math.e)])


def test_tree_pairs_from_a_hand_made_tree_are_exactly_the_expected_rows():
    from stepdpo_cli.search.pairs import tree_pair_rows
    from stepdpo_cli.train.data import validator

    tree = Tree()
    a = tree.add_child(0, " 3 + 4 = 7.", 0.5)
    b = tree.add_child(0, " 3 + 4 = 8.", 0.3)
    c = tree.add_child(0, " 3 + 4 = 6.", 0.2)
    a1 = tree.add_child(a.id, " 7 + 2 = 9.", 0.5)
    a2 = tree.add_child(a.id, " 7 + 2 = 10.", 0.5)
    for node, value, times in ((a1, 1.0, 5), (a2, 0.0, 2), (b, 0.25, 4), (c, 0.0, 1)):
        for _ in range(times):
            tree.backup(node.id, value)
    record = {"id": "q1", "problem": "Add: 3 + 4 + 2", "answer": "9", "tree": tree.as_records(),
              "chosen_path": tree.chosen_path()}
    assert record["chosen_path"] == [0, a.id, a1.id]
    rows = tree_pair_rows(record)
    assert [(r["chosen"], r["rejected"]) for r in rows] == [(" 3 + 4 = 7.", " 3 + 4 = 6."), (" 7 + 2 = 9.", " 7 + 2 = 10.")]
    assert rows[0]["initial_reason_steps"] == "Let's think step by step.\nStep 1:"
    assert rows[1]["initial_reason_steps"] == "Let's think step by step.\nStep 1: 3 + 4 = 7.\nStep 2:"
    # a: 7 visits (q 5/7) vs c: 1 visit -> 1/8; a1: 5 vs a2: 2 -> 2/7
    assert [r["label_smoothing"] for r in rows] == pytest.approx([1 / 8, 2 / 7])
    assert [r["id"] for r in rows] == ["q1/t0", f"q1/t{a.id}"]
    second = tree_pair_rows(record, rejected="second")
    assert second[0]["rejected"] == " 3 + 4 = 8." and second[0]["label_smoothing"] == pytest.approx(4 / 11)
    assert len(tree_pair_rows(record, min_gap=0.8)) == 1  # the root's gap is 5/7 - 0 < 0.8
    check = validator("step-dpo")
    assert all(check(dict(r)) for r in rows)  # train reads them, label_smoothing included


def test_simulations_run_together_pick_distinct_leaves_with_a_virtual_loss():
    tree = _small_tree()
    tree.backup(3, 1.0)
    tree.backup(2, 0.0)
    tree.backup(4, 0.5)
    before = [(n.visits, n.value_sum) for n in tree.nodes]
    assert tree.select_many(1, 1.5) == [tree.select(1.5)] == [3]
    # After a1's pending loss: a = 0.5 + 1.5 * 0.6 * 2 / 4 beats b = 1.5 * 0.4 * 2 / 2; under a, a2
    # (0.5 + 1.5 * 0.5 * sqrt(3) / 2) beats a1 (0.5 + 1.5 * 0.5 * sqrt(3) / 3). After a2's, the walk comes back
    # to a1, already picked: two leaves, not three.
    assert tree.select_many(3, 1.5) == [3, 4]
    assert [(n.visits, n.value_sum) for n in tree.nodes] == before  # the pending visits are taken back
    assert Tree().select_many(4) == [0]  # a young tree: the root alone
