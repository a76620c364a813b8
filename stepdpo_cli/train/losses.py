"""Losses: SFT (token NLL), DPO / Step-DPO (sigmoid or IPO, cDPO label smoothing, NLL on chosen), TDPO
(sequential KL from a live reference), Full-Step-DPO (per-step weighted log-ratios), the PRM's step
classification. Pure tensor functions, testable by hand.

Log-probs are SUMS over continuation tokens (the step for Step-DPO, the solution for DPO), never means.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo", "tdpo1", "tdpo2")
TDPO_LOSSES = ("tdpo1", "tdpo2")


@dataclass(frozen=True)
class LossConfig:
    objective: str = "step-dpo"
    beta: float = 0.4
    loss: str = "sigmoid"
    label_smoothing: float = 0.0
    nll_weight: float = 0.0
    step_temperature: float = 0.5
    tdpo_alpha: float = 0.5
    sft_weight: float = 1.0  # svpo: the SFT term on chosen steps with Q >= 0.5
    value_weight: float = 1.0  # svpo: the value head's squared error

    @property
    def live_reference(self) -> bool:
        """TDPO needs the reference's whole next-token distribution, which cached log-probs cannot give."""
        return self.loss in TDPO_LOSSES


def segment_sums(tok_logps: torch.Tensor, segment: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) summed log-probs of chosen (segment 1) and rejected (segment 2) tokens."""
    return (tok_logps * (segment == 1)).sum(-1), (tok_logps * (segment == 2)).sum(-1)


def step_sums(tok_logps: torch.Tensor, segment: torch.Tensor, step_index: torch.Tensor, which: int,
              num_steps: int) -> torch.Tensor:
    """(B, num_steps) summed log-probs per step of the chosen (which=1) or rejected (which=2) continuation."""
    out = torch.zeros(tok_logps.shape[0], num_steps, dtype=tok_logps.dtype, device=tok_logps.device)
    values = tok_logps * (segment == which)
    return out.scatter_add(1, step_index.clamp(max=num_steps - 1), values)


def step_weights(scores: list[float], temperature: float, *, chosen: bool) -> torch.Tensor:
    """Full-Step-DPO step weights: n * softmax(+-gamma * score) over the n steps (Xu et al. 2025, code's
    `reward_temp`). Chosen: higher-scored steps weigh more; rejected: lower-scored steps weigh more.
    gamma -> 0 gives weight 1 everywhere (plain DPO); large gamma concentrates on one step (Step-DPO-like)."""
    s = torch.tensor(scores, dtype=torch.float32)
    sign = 1.0 if chosen else -1.0
    return torch.softmax(sign * temperature * s, dim=0) * len(scores)


def full_step_logps(total: torch.Tensor, weighted: torch.Tensor) -> torch.Tensor:
    """Full-Step-DPO's policy log-prob term: the value of `total` (sum over steps of log pi(s_k)), the gradient
    of `weighted` (sum_k w_k log pi(s_k)).

    The paper (Xu et al. 2025, sec. 3.2) starts from the DPO gradient
        grad L_DPO = -beta * s(-beta h) * [grad log pi(y_w) - grad log pi(y_l)],
        h = log pi(y_w)/ref(y_w) - log pi(y_l)/ref(y_l),   log pi(y) = sum_k log pi(s_k | x, s_<k),
    splits each grad log pi(y) into its steps and weights every step's gradient by its reward:
        grad L = -beta * s(-beta h) * [sum_k w_k^w grad log pi(s_k^w) - sum_k w_k^l grad log pi(s_k^l)],
    with w = n * softmax(+-gamma * r) (`step_weights`). The coefficient s(-beta h) is the plain DPO one: the
    weights sit OUTSIDE the sigmoid. Putting them inside (h built from weighted sums) would also change that
    coefficient. Feeding `total.detach() + (weighted - weighted.detach())` to the DPO loss does exactly the
    above: forward values (loss, rewards, margins) are plain DPO's, d/dtheta goes through the weighted sum.
    gamma = 0 (all w = 1) is DPO, value and gradient."""
    return total.detach() + (weighted - weighted.detach())


def preference_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                    ref_rejected: torch.Tensor, *, beta: float, loss: str = "sigmoid",
                    label_smoothing: float | torch.Tensor = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and the implicit rewards beta * (log pi - log ref) of chosen and rejected.
    `label_smoothing`: one eps for all pairs, or (B,) one per pair (rows with their own `label_smoothing`).

    sigmoid: -(1-eps) log s(beta h) - eps log s(-beta h)   (eps = label smoothing, cDPO; eps 0 = DPO)
    ipo:     (h - 1/(2 beta))^2                             (Azar et al.; h on summed log-probs)
    with h = (log pi_c - log ref_c) - (log pi_r - log ref_r).
    """
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    if loss == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSS_TYPES)}")
    chosen_rewards = beta * (policy_chosen - ref_chosen).detach()
    rejected_rewards = beta * (policy_rejected - ref_rejected).detach()
    return losses, chosen_rewards, rejected_rewards


def tdpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
              ref_rejected: torch.Tensor, kl_chosen: torch.Tensor, kl_rejected: torch.Tensor, *, beta: float,
              loss: str = "tdpo2", alpha: float = 0.5, label_smoothing: float | torch.Tensor = 0.0
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TDPO (Zeng et al. 2024; the authors' `tdpo_loss`): per-pair losses and implicit rewards.

    With m = sum_t log pi(y_t) - log ref(y_t) and D = the summed per-token KL(ref || pi) over the whole vocabulary
    (`data.token_kl`), each summed over a continuation's tokens:
        tdpo1: z = (m_w - m_l) - (D_l - D_w)
        tdpo2: z = (m_w - m_l) - alpha * (D_l - sg(D_w))        (sg: stop-gradient; alpha 0 is DPO)
        loss = -(1-eps) log s(beta z) - eps log s(-beta z)      (eps: cDPO label smoothing, 0 in the paper)
    TDPO1 has no alpha (as in the authors' code). Rewards are beta * m, as for DPO."""
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    if loss == "tdpo1":
        z = margin - (kl_rejected - kl_chosen)
    elif loss == "tdpo2":
        z = margin - alpha * (kl_rejected - kl_chosen.detach())
    else:
        raise ValueError(f"unknown TDPO loss {loss!r}; choose one of {', '.join(TDPO_LOSSES)}")
    losses = -(1 - label_smoothing) * F.logsigmoid(beta * z) - label_smoothing * F.logsigmoid(-beta * z)
    return losses, beta * (policy_chosen - ref_chosen).detach(), beta * (policy_rejected - ref_rejected).detach()


def sft_loss(tok_logps: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
    """Mean NLL over all completion tokens of the batch."""
    mask = segment > 0
    return -(tok_logps * mask).sum() / mask.sum().clamp(min=1)


def chosen_nll(policy_chosen: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
    """(B,) per-token NLL of each chosen continuation (the RPO-style NLL term)."""
    return -policy_chosen / (segment == 1).sum(-1).clamp(min=1)


def value_loss(values: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """SVPO / AlphaMath: mean squared error of tanh values at step ends against Q targets in [-1, 1]."""
    return ((values.float() - targets.float()) ** 2).mean()


def prm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of step-end logits against step targets in [0, 1] (hard 0/1 or soft rollout
    success rates), averaged over the micro-batch's labelled steps; computed from logits (no log of 0)."""
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
