"""One micro-batch's forward and loss for each objective: the shared-prefix forward (dense or packed), TDPO's
forward beside its live reference, the PRM's step-end logits, and the losses of sft, dpo / step-dpo (sigmoid,
IPO, cDPO with per-row epsilon), full-step-dpo, tdpo1/2 and svpo (+ value head and SFT term) with their metrics.
The loop (loop.py) owns batching, accumulation, checkpoints and saving.
"""
from __future__ import annotations

import torch

from ..records import InputError
from ..rewards.value import q_to_value
from . import packing
from .data import Example, pack, target_logps, token_kl
from .losses import (LossConfig, chosen_nll, full_step_logps, preference_loss, prm_loss, segment_sums, sft_loss,
                     step_sums, step_weights, tdpo_loss, value_loss)


def model_batch(examples: list[Example], pad_id: int, device, dtype: torch.dtype,
                packing_plan: packing.Plan | None = None):
    """The shared-prefix batch of `examples` on `device` (row b is examples[b]): data.pack's dense one, or with
    a packing plan padding-free rows / chosen and rejected in separate rows (packing.py)."""
    if packing.uses_rows(packing_plan, examples):
        return packing.build_rows(examples, packing_plan, pad_id).to(device)
    batch = pack(examples, pad_id, dtype)
    for name in ("input_ids", "position_ids", "attention_mask", "target_ids", "source_index", "segment",
                 "step_index"):
        setattr(batch, name, getattr(batch, name).to(device))
    return batch


def forward(model, examples: list[Example], pad_id: int, device, dtype: torch.dtype,
            packing_plan: packing.Plan | None = None):
    """One shared-prefix forward: returns (batch on device, (B, T) token log-probs); row b of both is
    examples[b] (see model_batch)."""
    batch = model_batch(examples, pad_id, device, dtype, packing_plan)
    logits = model(**batch.model_inputs()).logits
    return batch, target_logps(logits, batch.positions(logits), batch.target_ids) * (batch.segment > 0)


def forward_with_reference(model, reference, examples: list[Example], pad_id: int, device, dtype: torch.dtype,
                           packing_plan: packing.Plan | None = None):
    """TDPO's forward: the policy and the live reference on the same batch. Returns (batch, policy token
    log-probs, reference token log-probs, per-token KL(ref || policy) over the whole vocabulary), each (B, T)
    and 0 off the continuations: the KL is taken only where a chosen or rejected token is predicted."""
    batch = model_batch(examples, pad_id, device, dtype, packing_plan)
    inputs = batch.model_inputs()
    logits = model(**inputs).logits
    with torch.no_grad():
        ref_logits = reference(**inputs).logits
    positions, mask = batch.positions(logits), batch.segment > 0
    return (batch, target_logps(logits, positions, batch.target_ids) * mask,
            target_logps(ref_logits, positions, batch.target_ids) * mask,
            token_kl(logits, ref_logits, positions) * mask)


def prm_forward(model, examples: list[Example], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """PRM forward: (step-end logits, step targets), flattened over the micro-batch. One right-padded row
    per solution [context | solution]; the head's logit is read at each step's last token (rewards/prm.py)."""
    width = max(e.num_tokens for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    rows, cols, labels = [], [], []
    for b, e in enumerate(examples):
        seq = e.prefix + e.chosen
        ids[b, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[b, :len(seq)] = 1
        rows += [b] * len(e.label_positions)
        cols += [len(e.prefix) + p for p in e.label_positions]
        labels += e.labels
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[..., 0]
    return logits[torch.tensor(rows, device=device), torch.tensor(cols, device=device)], \
        torch.tensor(labels, dtype=torch.float32, device=device)


def _num_steps(example: Example, which: int) -> int:
    scores = example.chosen_scores if which == 1 else example.rejected_scores
    return max(len(scores), 1)


def per_step_logps(tok: torch.Tensor, batch, examples: list[Example]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-row tensors of per-step summed log-probs (one entry = the whole continuation unless full-step)."""
    S = max(max(_num_steps(e, 1), _num_steps(e, 2)) for e in examples)
    c = step_sums(tok, batch.segment, batch.step_index, 1, S)
    r = step_sums(tok, batch.segment, batch.step_index, 2, S)
    return ([c[b, : _num_steps(e, 1)] for b, e in enumerate(examples)],
            [r[b, : _num_steps(e, 2)] for b, e in enumerate(examples)])



def micro_step(model, examples: list[Example], ref: dict, lc: LossConfig, pad_id: int, device, dtype,
                packing_plan: packing.Plan | None = None, reference=None):
    if lc.objective == "prm":
        logits, labels = prm_forward(model, examples, pad_id, device)
        loss = prm_loss(logits, labels)
        predicted = (logits.detach() > 0).float()
        return loss, {"loss": loss.item(), "step_accuracy": (predicted == (labels > 0.5).float()).float().mean().item(),
                      "mean_reward": torch.sigmoid(logits.detach().float()).mean().item()}
    if lc.live_reference:
        return _tdpo_step(model, reference, examples, lc, pad_id, device, dtype, packing_plan)
    values = None
    if lc.objective == "svpo":  # the same forward, also reading the value head
        if packing.uses_rows(packing_plan, examples):
            raise InputError("svpo reads its value head in the dense shared-prefix batch; this model or batch "
                             "needs separate forwards (sliding window shorter than the pair, or ALiBi)",
                             field="--objective")
        batch = model_batch(examples, pad_id, device, dtype, packing_plan)
        out = model(**batch.model_inputs())
        tok = target_logps(out.logits, batch.positions(out.logits), batch.target_ids) * (batch.segment > 0)
        values = out.values
    else:
        batch, tok = forward(model, examples, pad_id, device, dtype, packing_plan)
    if lc.objective == "sft":
        loss = sft_loss(tok, batch.segment)
        return loss, {"loss": loss.item()}
    pol_c, pol_r = per_step_logps(tok, batch, examples)
    ref_c = [ref[e.key][0].to(device) for e in examples]
    ref_r = [ref[e.key][1].to(device) for e in examples]
    pc, pr = torch.stack([v.sum() for v in pol_c]), torch.stack([v.sum() for v in pol_r])
    rc, rr = torch.stack([v.sum() for v in ref_c]), torch.stack([v.sum() for v in ref_r])
    if lc.objective == "full-step-dpo":
        # The step weights act on the gradient, outside the sigmoid (see losses.full_step_logps).
        wc = [step_weights(e.chosen_scores, lc.step_temperature, chosen=True) for e in examples]
        wr = [step_weights(e.rejected_scores, lc.step_temperature, chosen=False) for e in examples]
        pc, pr = full_step_logps(pc, _weighted(pol_c, wc)), full_step_logps(pr, _weighted(pol_r, wr))
    losses, chosen_rewards, rejected_rewards = preference_loss(pc, pr, rc, rr, beta=lc.beta, loss=lc.loss,
                                                               label_smoothing=_smoothing(examples, lc, pc))
    loss, metrics = _preference_metrics(losses, chosen_rewards, rejected_rewards, tok, batch, lc)
    if values is not None:
        loss, extra = _svpo_terms(loss, values, tok, batch, examples, lc)
        metrics.update(extra, loss=loss.item())
    return loss, metrics


def value_positions(examples: list[Example], width: int) -> tuple[list[int], list[int]]:
    """Positions of each pair's chosen and rejected last token in data.pack's left-padded [context | chosen |
    rejected] rows of `width`: where the value head reads a step's value."""
    chosen = [width - e.num_tokens + len(e.prefix) + len(e.chosen) - 1 for e in examples]
    return chosen, [width - 1] * len(examples)


def _svpo_terms(loss, values, tok, batch, examples: list[Example], lc: LossConfig):
    """SVPO's two extra terms (formula in docs/records.md): value regression at both steps' ends on 2Q - 1,
    and the per-token NLL of chosen steps whose Q >= 0.5 (AlphaMath trains SFT on correct solutions only)."""
    rows = torch.arange(len(examples), device=values.device)
    chosen_at, rejected_at = value_positions(examples, batch.input_ids.shape[1])
    predicted = torch.cat([values[rows, torch.tensor(chosen_at, device=values.device)],
                           values[rows, torch.tensor(rejected_at, device=values.device)]])
    targets = torch.tensor([q_to_value(e.chosen_q) for e in examples] + [q_to_value(e.rejected_q) for e in examples],
                           device=values.device)
    v_loss = value_loss(predicted, targets)
    good = torch.tensor([e.chosen_q >= 0.5 for e in examples], device=values.device)
    chosen_sum, _ = segment_sums(tok, batch.segment)
    nll = chosen_nll(chosen_sum, batch.segment)
    sft = (nll * good).sum() / good.sum().clamp(min=1)
    total = loss + lc.value_weight * v_loss + lc.sft_weight * sft
    return total, {"value_loss": v_loss.item(), "sft_loss": sft.item(),
                   "value_accuracy": ((predicted.detach() > 0) == (targets > 0)).float().mean().item()}


def _smoothing(examples: list[Example], lc: LossConfig, like: torch.Tensor) -> float | torch.Tensor:
    """A row's own `label_smoothing` (tree pairs' visit-count confidence) replaces --label-smoothing for that row."""
    if not any(e.label_smoothing is not None for e in examples):
        return lc.label_smoothing
    return torch.tensor([lc.label_smoothing if e.label_smoothing is None else e.label_smoothing for e in examples],
                        dtype=like.dtype, device=like.device)


def _tdpo_step(model, reference, examples: list[Example], lc: LossConfig, pad_id: int, device, dtype,
               packing_plan: packing.Plan | None):
    batch, tok, ref_tok, kl = forward_with_reference(model, reference, examples, pad_id, device, dtype, packing_plan)
    (pc, pr), (rc, rr), (kc, kr) = (segment_sums(t, batch.segment) for t in (tok, ref_tok, kl))
    losses, chosen_rewards, rejected_rewards = tdpo_loss(pc, pr, rc, rr, kc, kr, beta=lc.beta, loss=lc.loss,
                                                         alpha=lc.tdpo_alpha,
                                                         label_smoothing=_smoothing(examples, lc, pc))
    loss, metrics = _preference_metrics(losses, chosen_rewards, rejected_rewards, tok, batch, lc)
    metrics.update(chosen_kl=kc.detach().mean().item(), rejected_kl=kr.detach().mean().item())
    return loss, metrics


def _preference_metrics(losses, chosen_rewards, rejected_rewards, tok, batch, lc: LossConfig):
    """The micro-batch loss (+ the NLL term on chosen) and the preference metrics."""
    loss = losses.mean()
    chosen_sum, rejected_sum = segment_sums(tok, batch.segment)
    if lc.nll_weight:
        loss = loss + lc.nll_weight * chosen_nll(chosen_sum, batch.segment).mean()
    metrics = {
        "loss": loss.item(),
        "reward_accuracy": (chosen_rewards > rejected_rewards).float().mean().item(),
        "chosen_reward": chosen_rewards.mean().item(),
        "rejected_reward": rejected_rewards.mean().item(),
        "margin": (chosen_rewards - rejected_rewards).mean().item(),
        "chosen_logp": chosen_sum.detach().mean().item(),
        "rejected_logp": rejected_sum.detach().mean().item(),
    }
    return loss, metrics


def _weighted(per_step: list[torch.Tensor], weights: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([(v * w.to(v)).sum() for v, w in zip(per_step, weights)])
