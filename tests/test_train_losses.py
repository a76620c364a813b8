"""Loss variants against values computed by hand from the formulas."""
from __future__ import annotations

import math

import pytest
import torch

from stepdpo_cli.train.losses import chosen_nll, preference_loss, sft_loss, step_sums, step_weights

PC, PR, RC, RR = -10.0, -12.0, -11.0, -11.5  # h = (-10 + 11) - (-12 + 11.5) = 1.5


def _t(*values):
    return torch.tensor(values, dtype=torch.float64)


def _sig(x):
    return 1 / (1 + math.exp(-x))


def test_dpo_sigmoid_by_hand_and_log2_at_start():
    beta = 0.4
    losses, cr, rr = preference_loss(_t(PC), _t(PR), _t(RC), _t(RR), beta=beta)
    assert losses.item() == pytest.approx(-math.log(_sig(beta * 1.5)), abs=1e-12)
    assert cr.item() == pytest.approx(beta * 1.0) and rr.item() == pytest.approx(beta * -0.5)
    start, _, _ = preference_loss(_t(PC), _t(PR), _t(PC), _t(PR), beta=beta)  # policy == reference
    assert start.item() == pytest.approx(math.log(2), abs=1e-12)


def test_label_smoothing_cdpo_by_hand():
    beta, eps = 0.5, 0.1
    losses, _, _ = preference_loss(_t(PC), _t(PR), _t(RC), _t(RR), beta=beta, label_smoothing=eps)
    expected = -(1 - eps) * math.log(_sig(beta * 1.5)) - eps * math.log(_sig(-beta * 1.5))
    assert losses.item() == pytest.approx(expected, abs=1e-12)
    start, _, _ = preference_loss(_t(PC), _t(PR), _t(PC), _t(PR), beta=beta, label_smoothing=eps)
    assert start.item() == pytest.approx(math.log(2), abs=1e-12)


def test_ipo_by_hand():
    beta = 0.1
    losses, _, _ = preference_loss(_t(PC), _t(PR), _t(RC), _t(RR), beta=beta, loss="ipo")
    assert losses.item() == pytest.approx((1.5 - 1 / (2 * beta)) ** 2, abs=1e-12)


def test_nll_and_sft_are_per_token_means():
    tok = _t(-1.0, -2.0, -3.0, -4.0, 0.0)[None]
    segment = torch.tensor([[1, 1, 2, 2, 0]])
    assert chosen_nll(_t(-3.0), segment).item() == pytest.approx(1.5)  # -(-1-2)/2 chosen tokens
    assert sft_loss(tok, segment).item() == pytest.approx(2.5)  # padding excluded


def test_full_step_weights_and_step_sums():
    scores = [1.0, 0.0, 0.5]
    w = step_weights(scores, 0.5, chosen=True)
    e = [math.exp(0.5 * s) for s in scores]
    assert w.tolist() == pytest.approx([3 * x / sum(e) for x in e])  # n * softmax(gamma * s)
    wr = step_weights(scores, 0.5, chosen=False)
    assert wr[1] > wr[2] > wr[0]  # rejected: low-scored steps weigh most
    assert step_weights(scores, 0.0, chosen=True).tolist() == pytest.approx([1, 1, 1])  # gamma 0: plain DPO
    tok = _t(-1.0, -2.0, -3.0, -4.0)[None]
    sums = step_sums(tok, torch.tensor([[1, 1, 1, 2]]), torch.tensor([[0, 1, 1, 0]]), 1, 2)
    assert sums.tolist() == [[-1.0, -5.0]]
