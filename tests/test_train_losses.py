"""Loss variants against values computed by hand from the formulas."""
from __future__ import annotations

import math

import pytest
import torch

from stepdpo_cli.train.losses import chosen_nll, preference_loss, sft_loss, step_sums, step_weights, tdpo_loss

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


def test_full_step_weights_act_outside_the_sigmoid():
    """Full-Step-DPO (Xu et al. 2025, sec. 3.2): grad L = -beta s(-beta h) [sum_k w_k grad log pi(s_k^w) - ...]
    with h the plain DPO log-ratio: the loss value is DPO's, each step's gradient is DPO's coefficient times w_k."""
    from stepdpo_cli.train.losses import full_step_logps

    beta = 0.5
    chosen_steps = torch.tensor([-4.0, -6.0], dtype=torch.float64, requires_grad=True)
    rejected_steps = torch.tensor([-5.0, -3.0, -4.0], dtype=torch.float64, requires_grad=True)
    ref_c, ref_r = _t(-11.0), _t(-11.5)
    wc = step_weights([0.9, 0.2], 0.5, chosen=True).double()
    wr = step_weights([0.8, 0.1, 0.3], 0.5, chosen=False).double()
    pc = full_step_logps(chosen_steps.sum()[None], (chosen_steps * wc).sum()[None])
    pr = full_step_logps(rejected_steps.sum()[None], (rejected_steps * wr).sum()[None])
    losses, cr, rr = preference_loss(pc, pr, ref_c, ref_r, beta=beta)
    losses.sum().backward()
    h = (-10.0 + 11.0) - (-12.0 + 11.5)
    assert losses.item() == pytest.approx(-math.log(_sig(beta * h)))  # plain DPO's value
    assert cr.item() == pytest.approx(beta * 1.0) and rr.item() == pytest.approx(beta * -0.5)
    coefficient = beta * _sig(-beta * h)
    assert chosen_steps.grad.tolist() == pytest.approx((-coefficient * wc).tolist())
    assert rejected_steps.grad.tolist() == pytest.approx((coefficient * wr).tolist())
    # the weights inside the sigmoid (the old code) would give another coefficient
    h_inside = ((chosen_steps.detach() * wc).sum() - (-11.0)) - ((rejected_steps.detach() * wr).sum() - (-11.5))
    assert _sig(-beta * h_inside.item()) != pytest.approx(_sig(-beta * h))


def test_a_label_smoothing_per_pair_is_cdpo_with_each_pairs_epsilon():
    from stepdpo_cli.train.losses import preference_loss

    pc, pr = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-1.5, -1.0, -3.0])
    rc, rr = torch.tensor([-1.2, -1.9, -1.0]), torch.tensor([-1.4, -1.2, -2.0])
    eps = torch.tensor([0.0, 0.2, 0.5])
    rowwise, _, _ = preference_loss(pc, pr, rc, rr, beta=0.4, label_smoothing=eps)
    for i in range(3):
        alone, _, _ = preference_loss(pc[i:i + 1], pr[i:i + 1], rc[i:i + 1], rr[i:i + 1], beta=0.4,
                                      label_smoothing=float(eps[i]))
        h = (pc[i] - rc[i]) - (pr[i] - rr[i])
        by_hand = -(1 - eps[i]) * torch.log(torch.sigmoid(0.4 * h)) - eps[i] * torch.log(torch.sigmoid(-0.4 * h))
        assert rowwise[i].item() == pytest.approx(alone.item(), abs=1e-7)
        assert rowwise[i].item() == pytest.approx(by_hand.item(), abs=1e-6)


# ---------------------------------------------------------------------------------------------- TDPO

def _softmax(row):
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def test_tdpo_by_hand_on_two_tokens_of_a_three_word_vocabulary():
    """Chosen and rejected are 2 tokens each over a vocabulary of 3: log-probs, the per-token KL(ref || policy)
    over the whole vocabulary and both TDPO losses, computed here with plain floats."""
    from stepdpo_cli.train.data import token_kl

    policy = [[1.0, 0.0, -1.0], [0.5, 2.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 1.0, 0.5]]  # 4 predicting positions
    ref = [[0.5, 0.5, 0.0], [0.0, 1.0, 1.0], [1.0, -0.5, 0.0], [0.0, 0.0, 0.0]]
    targets = [0, 1, 2, 1]  # chosen = tokens 0, 1 (positions 0, 1); rejected = 2, 1 (positions 2, 3)
    p, q = [_softmax(r) for r in policy], [_softmax(r) for r in ref]
    logp = [math.log(p[i][t]) for i, t in enumerate(targets)]
    logq = [math.log(q[i][t]) for i, t in enumerate(targets)]
    kl = [sum(q[i][v] * (math.log(q[i][v]) - math.log(p[i][v])) for v in range(3)) for i in range(4)]
    got = token_kl(torch.tensor([policy], dtype=torch.float64), torch.tensor([ref], dtype=torch.float64),
                   torch.arange(4))
    assert got.tolist() == pytest.approx(kl, abs=1e-6)  # fp32 inside
    m_w, m_l = logp[0] + logp[1] - logq[0] - logq[1], logp[2] + logp[3] - logq[2] - logq[3]
    d_w, d_l = kl[0] + kl[1], kl[2] + kl[3]
    beta, alpha = 0.1, 0.5
    args = (_t(logp[0] + logp[1]), _t(logp[2] + logp[3]), _t(logq[0] + logq[1]), _t(logq[2] + logq[3]),
            _t(d_w), _t(d_l))
    one, cr, rr = tdpo_loss(*args, beta=beta, loss="tdpo1")
    assert one.item() == pytest.approx(-math.log(_sig(beta * ((m_w - m_l) - (d_l - d_w)))), abs=1e-12)
    two, _, _ = tdpo_loss(*args, beta=beta, loss="tdpo2", alpha=alpha)
    assert two.item() == pytest.approx(-math.log(_sig(beta * ((m_w - m_l) - alpha * (d_l - d_w)))), abs=1e-12)
    assert cr.item() == pytest.approx(beta * (logp[0] + logp[1] - logq[0] - logq[1]))
    assert rr.item() == pytest.approx(beta * m_l)


def test_tdpo2_at_alpha_1_is_tdpo1_in_value_not_in_gradient():
    def run(loss):
        kl_w, kl_l = _t(0.7).requires_grad_(), _t(0.2).requires_grad_()
        value, _, _ = tdpo_loss(_t(PC), _t(PR), _t(RC), _t(RR), kl_w, kl_l, beta=0.1, loss=loss, alpha=1.0)
        value.sum().backward()
        return value.item(), kl_w.grad, kl_l.grad.item()

    one, two = run("tdpo1"), run("tdpo2")
    assert two[0] == pytest.approx(one[0], abs=1e-12) and two[2] == pytest.approx(one[2], abs=1e-12)
    assert one[1].item() != 0 and two[1] is None  # the chosen KL is stop-gradient in TDPO2: no gradient reaches it


def test_tdpo2_at_alpha_0_is_dpo_value_and_gradient():
    def run(fn, **kw):
        pc, pr = _t(PC).requires_grad_(), _t(PR).requires_grad_()
        value, _, _ = fn(pc, pr, _t(RC), _t(RR), *kw.pop("kl", ()), beta=0.1, **kw)
        value.sum().backward()
        return value.item(), pc.grad.item(), pr.grad.item()

    tdpo = run(tdpo_loss, kl=(_t(3.0), _t(0.5)), loss="tdpo2", alpha=0.0)
    assert tdpo == pytest.approx(run(preference_loss), abs=1e-12)
    assert run(tdpo_loss, kl=(_t(3.0), _t(0.5)), loss="tdpo2", alpha=0.5) != pytest.approx(tdpo, abs=1e-6)


def test_token_kl_has_no_nan_where_a_probability_underflows():
    from stepdpo_cli.train.data import token_kl

    policy = torch.tensor([[[0.0, 0.0, -200.0]]])  # p(2) = e^-200: 0 in fp32
    ref = torch.tensor([[[0.0, 0.0, -300.0]]])
    got = token_kl(policy, ref, torch.tensor([0]))
    assert torch.isfinite(got).all() and got.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(token_kl(ref, policy, torch.tensor([0]))).all()
