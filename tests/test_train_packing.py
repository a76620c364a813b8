"""Padding-free packing (train/packing.py): packed rows give the log-probs of separate forwards for each model
family, sliding windows included; Step-DPO losses and gradients equal the unpacked trainer's; models that cannot
take the packed mask (sliding window in the dense path, ALiBi) run chosen and rejected separately."""
from __future__ import annotations

import pytest
import torch

from stepdpo_cli.train import loop, packing
from stepdpo_cli.train.data import Example
from stepdpo_cli.train.losses import LossConfig

pytestmark = pytest.mark.timeout(300)
VOCAB = 300


def _model(family: str, window: int | None = None):
    """A random 2-layer model of `family` (GQA: 4 query heads, 2 key/value heads), eval mode, fp32."""
    from transformers import (BloomConfig, BloomForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig,
                              MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

    torch.manual_seed(0)
    shape = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=128, attn_implementation="sdpa")
    if family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**shape))
    elif family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**shape))
    elif family == "mistral":
        model = MistralForCausalLM(MistralConfig(**shape, sliding_window=window))
    elif family == "qwen2-sliding":
        model = Qwen2ForCausalLM(Qwen2Config(**shape, use_sliding_window=True, sliding_window=window,
                                             max_window_layers=1))  # layer 0 full, layer 1 sliding
    else:
        model = BloomForCausalLM(BloomConfig(vocab_size=VOCAB, hidden_size=64, n_layer=2, n_head=4))
    return model.float().eval()


def _examples(n: int, seed: int = 1) -> list[Example]:
    gen = torch.Generator().manual_seed(seed)
    ids = lambda k: torch.randint(1, VOCAB, (k,), generator=gen).tolist()  # noqa: E731
    return [Example(key=f"e{i}", prefix=ids(20 + 3 * (i % 4)), chosen=ids(3 + 2 * (i % 3)),
                    rejected=ids(4 + (i % 5)), chosen_steps=[], rejected_steps=[]) for i in range(n)]


def _separate_logps(model, example: Example) -> torch.Tensor:
    """Chosen then rejected token log-probs, each from its own unpacked forward with the model's own mask."""
    out = []
    for cont in (example.chosen, example.rejected):
        ids = torch.tensor([example.prefix + cont])
        logps = model(input_ids=ids).logits[0].float().log_softmax(-1)
        P = len(example.prefix)
        out.append(logps[P - 1:P - 1 + len(cont)].gather(-1, torch.tensor(cont)[:, None]).squeeze(-1))
    return torch.cat(out)


def _assert_matches_separate(model, examples, tok):
    for i, e in enumerate(examples):
        n = len(e.chosen) + len(e.rejected)
        torch.testing.assert_close(tok[i, :n], _separate_logps(model, e), atol=1e-5, rtol=0)
        assert not tok[i, n:].any()


@pytest.mark.parametrize("family,window", [("qwen2", None), ("llama", None), ("mistral", None), ("mistral", 16),
                                           ("qwen2-sliding", 16)])
@pytest.mark.parametrize("pairs_per_row", [1, 2, 5])
def test_packed_logps_equal_separate_forwards(family, window, pairs_per_row):
    model = _model(family, window)
    examples = _examples(10)
    # the smallest budget whose fullest row holds exactly `pairs_per_row` pairs
    budget = next(b for b in range(max(e.num_tokens for e in examples), 1000)
                  if max(len(r) for r in packing.fill_rows(examples, b)) == pairs_per_row)
    plan = packing.plan_for(model, budget, "cpu")
    assert plan.mode == "packed" and plan.window == window
    rows = packing.fill_rows(examples, budget)
    assert all(sum(examples[i].num_tokens for i in r) <= budget for r in rows)
    with torch.no_grad():
        batch, tok = packing.forward(model, examples, plan, 0, "cpu")
        assert batch.padded_tokens - batch.num_tokens == sum(  # right padding only up to the longest row
            max(sum(examples[i].num_tokens for i in r) for r in rows) - sum(examples[i].num_tokens for i in r)
            for r in rows)
        for group in packing.forward_groups(examples, plan):  # the training path: one row per forward
            one, _ = packing.build_rows(group, plan, 0), None
            assert one.input_ids.shape[0] == 1 and one.padded_tokens == one.num_tokens  # no padding at all
        _assert_matches_separate(model, examples, tok)


def test_sliding_window_is_applied_not_ignored():
    """The window-16 model's packed log-probs differ from the same weights without a window (sequences > 16)."""
    windowed, full = _model("mistral", 16), _model("mistral", None)
    full.load_state_dict(windowed.state_dict())
    examples = _examples(3)
    with torch.no_grad():
        _, a = packing.forward(windowed, examples, packing.plan_for(windowed, 200, "cpu"), 0, "cpu")
        _, b = packing.forward(full, examples, packing.plan_for(full, 200, "cpu"), 0, "cpu")
    assert (a - b).abs().max() > 1e-3


def test_flex_block_mask_matches_segment_attention():
    """The CUDA path's BlockMask (run here with eager FlexAttention, forward only) gives the same log-probs."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    model = _model("mistral", 16)
    examples = _examples(5)
    plan = packing.plan_for(model, 120, "cpu")
    with torch.no_grad():
        _, segments = packing.forward(model, examples, plan, 0, "cpu")
        plan.attention = "flex"
        _, flex = packing.forward(model, examples, plan, 0, "cpu")
    torch.testing.assert_close(flex, segments, atol=1e-5, rtol=0)


def test_dense_path_with_sliding_window_runs_separate_forwards(capfd):
    """#12: the dense shared-prefix mask would switch the window off; such batches run chosen and rejected
    separately (said once) and give the windowed model's log-probs."""
    model = _model("mistral", 16)
    examples = _examples(4)
    plan = packing.plan_for(model, 0, "cpu")
    assert plan.mode == "dense" and plan.window == 16
    with torch.no_grad():
        _, dense_only = loop.forward(model, examples, 0, "cpu", torch.float32)  # no plan: window switched off
        for _ in range(2):
            _, tok = loop.forward(model, examples, 0, "cpu", torch.float32, plan)
    _assert_matches_separate(model, examples, tok)
    assert (dense_only - tok).abs().max() > 1e-3
    err = capfd.readouterr().err
    assert err.count("sliding window 16 is shorter") == 1


def test_alibi_model_runs_separate_forwards(capfd):
    model = _model("bloom")
    examples = _examples(3)
    for budget in (0, 200):
        plan = packing.plan_for(model, budget, "cpu")
        assert plan.mode == "separate"
        with torch.no_grad():
            _, tok = loop.forward(model, examples, 0, "cpu", torch.float32, plan)
        _assert_matches_separate(model, examples, tok)
    assert "bloom uses ALiBi" in capfd.readouterr().err


@pytest.mark.parametrize("objective", ["step-dpo", "sft", "tdpo2", "tdpo1"])
def test_losses_and_gradients_equal_unpacked(objective):
    """One micro-batch of 6 pairs: dense (one forward) vs packed into 4 rows (4 forward/backward passes, each
    weighted by its share): same loss, metrics and gradients. TDPO: with its live reference (a copy of the
    initial model, packed attention like the policy's), the KL metrics too."""
    import copy

    from accelerate import Accelerator

    model = _model("qwen2")
    model.train()
    examples = _examples(6)
    if objective == "sft":
        for e in examples:
            e.rejected = []
    accelerator = Accelerator(cpu=True)
    config = loop.TrainConfig(model="", data="", output="", batch_size=3)
    tdpo = objective.startswith("tdpo")
    lc = LossConfig("step-dpo" if tdpo else objective, beta=0.4, nll_weight=0.3, loss=objective if tdpo else "sigmoid")
    ref = {}
    reference = None
    if tdpo:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
        packing.use_packed_attention(reference)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
    elif objective != "sft":
        with torch.no_grad():
            ref = loop.compute_reference(model, examples, accelerator, config, 0, {})
            packed_ref = loop.compute_reference(model, examples, accelerator, config, 0, {},
                                                packing.plan_for(model, 80, "cpu"))
        for key, (c, r) in ref.items():
            torch.testing.assert_close(packed_ref[key][0], c, atol=1e-5, rtol=0)
            torch.testing.assert_close(packed_ref[key][1], r, atol=1e-5, rtol=0)
        with torch.no_grad():  # move the policy off the reference so the loss and its gradient are not trivial
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)

    def micro(plan):
        model.zero_grad()
        metrics = loop._micro_backward(accelerator, model, examples, ref, lc, 0, torch.float32, plan, reference)
        return metrics, {n: p.grad.clone() for n, p in model.named_parameters()}

    dense_metrics, dense_grads = micro(None)
    plan = packing.plan_for(model, 80, "cpu")
    assert len(packing.forward_groups(examples, plan)) >= 3
    packed_metrics, packed_grads = micro(plan)
    assert packed_metrics.keys() == dense_metrics.keys()
    for k, v in dense_metrics.items():
        assert packed_metrics[k] == pytest.approx(v, abs=1e-5), k
    if objective != "sft":
        assert abs(dense_metrics["loss"] - 0.6931) > 1e-3
    if tdpo:
        assert dense_metrics["chosen_kl"] > 1e-4 and dense_metrics["rejected_kl"] > 1e-4
    for name, grad in dense_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("extra", [{}, {"gradient_checkpointing": True}, {"lora": True},
                                   {"objective": "full-step-dpo"}, {"objective": "sft"}])
def test_train_with_max_tokens_per_batch(tiny_model, tmp_path, extra):
    """End to end: the packed trainer's per-step metrics equal the unpacked trainer's (also with gradient
    checkpointing, whose backward re-runs the packed attention; LoRA; Full-Step-DPO's per-step sums; SFT)."""
    from test_train_loop import _config, _pairs, _run

    data = _pairs(tmp_path / "p.jsonl", n=8, scores=extra.get("objective") == "full-step-dpo")
    dense = _run(_config(tiny_model, data, tmp_path / "dense", max_steps=3, **extra))
    packed = _run(_config(tiny_model, data, tmp_path / "packed", max_steps=3, max_tokens_per_batch=100, **extra))
    assert len(packed) == len(dense) == 3
    for d, p in zip(dense, packed):
        for key in ("loss", "reward_accuracy", "chosen_logp", "rejected_logp", "grad_norm"):
            if key in d and not (key == "reward_accuracy" and d["step"] == 1):  # step 1: rewards are float noise
                assert p[key] == pytest.approx(d[key], abs=1e-4, rel=1e-4), key


@pytest.mark.distributed
@pytest.mark.slow
def test_two_process_packed_trains_like_unpacked(tiny_model, tmp_path):
    """Two processes: each rank packs its micro-batch into one forward (equal forward counts across ranks)."""
    from test_train_loop import _multi_process

    dense = _multi_process(tiny_model, tmp_path / "dense")
    packed = _multi_process(tiny_model, tmp_path / "packed", "--max-tokens-per-batch", "64")
    for a, b in zip(dense, packed):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-5)
