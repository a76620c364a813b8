"""Row validation/encoding and the shared-prefix packing that the whole trainer relies on."""
from __future__ import annotations

import json

import pytest
import torch

from stepdpo_cli.records import InputError, iter_jsonl
from stepdpo_cli.steps import STEP_PREFIX
from stepdpo_cli.templates import generation_prompt
from stepdpo_cli.train.data import (EncodeStats, Example, encode_continuation, encode_rows, pack, token_logps,
                                    validator)
from stepdpo_cli.train.losses import preference_loss, segment_sums

# A row shaped exactly like the released Math-Step-DPO-10K (all eight fields, no id).
MATH_STEP_DPO_ROW = {
    "dataset": "MATH_Rephrased",
    "prompt": "What is the sum of 3 and 4 times 2?",
    "initial_reason_steps": "Let's think step by step.\nStep 1: First compute 4 times 2, which is 8.\nStep 2:",
    "chosen": " Then add 3: $3 + 8 = 11$.",
    "rejected": " Then add 3: $3 + 8 = 12$.",
    "full_chosen": " Then add 3: $3 + 8 = 11$.\nStep 3: The answer is $\\boxed{11}$.",
    "full_rejected": " Then add 3: $3 + 8 = 12$.\nStep 3: The answer is $\\boxed{12}$.",
    "answer": "11",
}


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def model(tiny_model):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation="sdpa")


def test_math_step_dpo_rows_read_unchanged(tmp_path, tokenizer):
    path = tmp_path / "msd.jsonl"
    empty = dict(MATH_STEP_DPO_ROW, rejected="")  # ~1.2K released rows have an empty rejected
    path.write_text(json.dumps(MATH_STEP_DPO_ROW) + "\n" + json.dumps(empty) + "\n")
    rows = list(iter_jsonl(str(path), validate=validator("step-dpo")))
    assert rows[0] == MATH_STEP_DPO_ROW  # validation adds and drops nothing
    stats = EncodeStats()
    [ex] = encode_rows(rows, tokenizer, "qwen2-boxed", "step-dpo", 1024, stats)
    assert stats.skipped_empty == 1
    context = generation_prompt(MATH_STEP_DPO_ROW["prompt"], "qwen2-boxed", tokenizer,
                                reason_prefix=MATH_STEP_DPO_ROW["initial_reason_steps"])
    assert tokenizer.decode(ex.prefix) == context
    # Step-DPO continuations are partial steps: the step text and the newline the solution continues with
    # (tokenisers fold it into the step's last token), never EOS.
    assert tokenizer.decode(ex.chosen) == MATH_STEP_DPO_ROW["chosen"] + "\n"
    assert tokenizer.decode(ex.rejected) == MATH_STEP_DPO_ROW["rejected"] + "\n"
    assert tokenizer.eos_token_id not in ex.chosen + ex.rejected


def test_step_ends_with_the_token_the_model_emits(tokenizer):
    # A BPE that merges ".\n" (as Qwen2's does): a step cut before the newline would end in a bare "."
    # the model never writes after a step; the continuing solution decides whether the newline is there.
    final = dict(MATH_STEP_DPO_ROW, chosen=" The answer is 11.", full_chosen=" The answer is 11.",
                 rejected=" The answer is 12.", full_rejected=" The answer is 12.")
    bare = {k: v for k, v in MATH_STEP_DPO_ROW.items() if not k.startswith("full_")}
    middle, last, unknown = encode_rows([MATH_STEP_DPO_ROW, final, bare], tokenizer, "raw", "step-dpo", 1024)
    assert tokenizer.decode(middle.chosen).endswith("$.\n")
    assert tokenizer.decode(last.chosen) == " The answer is 11."  # nothing follows a final step
    assert tokenizer.decode(unknown.chosen) == bare["chosen"]  # without full_* the text is taken as given


def test_dpo_and_sft_append_eos_and_default_prefix(tokenizer):
    row = {"prompt": "2+2?", "chosen": " 2+2=4.\nStep 2: The answer is 4.", "rejected": " 5."}
    [ex] = encode_rows([row], tokenizer, "raw", "dpo", 1024)
    assert ex.chosen[-1] == tokenizer.eos_token_id and ex.rejected[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ex.prefix) == "2+2?\n" + STEP_PREFIX  # rows without initial_reason_steps
    sft = {"problem": "2+2?", "completion": STEP_PREFIX + " 4."}  # a leading CoT prefix is not doubled
    [ex] = encode_rows([sft], tokenizer, "raw", "sft", 1024)
    assert tokenizer.decode(ex.prefix + ex.chosen[:-1]) == "2+2?\n" + STEP_PREFIX + " 4."


def test_sft_on_preference_rows_trains_the_chosen_step_exactly_as_step_dpo_sees_it(tokenizer):
    # The control for a preference term: the same rows, the chosen text alone, no EOS after a middle step.
    final = dict(MATH_STEP_DPO_ROW, chosen=" The answer is 11.", full_chosen=" The answer is 11.")
    step_rows = encode_rows([MATH_STEP_DPO_ROW, final], tokenizer, "raw", "step-dpo", 1024)
    middle, last = encode_rows([MATH_STEP_DPO_ROW, final], tokenizer, "raw", "sft", 1024)
    assert middle.prefix == step_rows[0].prefix and middle.chosen == step_rows[0].chosen and not middle.rejected
    assert tokenizer.eos_token_id not in middle.chosen
    assert last.chosen == step_rows[1].chosen + [tokenizer.eos_token_id]  # a final step ends the solution
    assert validator("sft")(dict(MATH_STEP_DPO_ROW)) == MATH_STEP_DPO_ROW


@pytest.mark.parametrize("objective,row,field", [
    ("step-dpo", {"prompt": "p", "chosen": "a", "rejected": "b"}, "initial_reason_steps"),
    ("dpo", {"prompt": "p", "chosen": "a"}, "rejected"),
    ("dpo", {"prompt": "p", "chosen": 3, "rejected": "b"}, "chosen"),
    ("sft", {"completion": "c"}, "prompt"),
    ("full-step-dpo", {"prompt": "p", "chosen": " a\nStep 2: b", "rejected": " c"}, "chosen_step_scores"),
    ("full-step-dpo", {"prompt": "p", "chosen": " a\nStep 2: b", "rejected": " c", "chosen_step_scores": [1.0],
                       "rejected_step_scores": [0.0]}, "chosen_step_scores"),
])
def test_validation_names_the_field(objective, row, field):
    with pytest.raises(InputError) as info:
        validator(objective)(row)
    assert info.value.field == field


def test_step_token_spans_follow_step_markers(tokenizer):
    text = " 1+1=2.\nStep 2: 2+2=4.\nStep 3: Done."
    ids, steps = encode_continuation(tokenizer, text, eos=True, with_steps=True)
    assert len(ids) == len(steps) and steps == sorted(steps) and steps[-1] == 2
    pieces = {s: tokenizer.decode([i for i, k in zip(ids, steps) if k == s]) for s in range(3)}
    assert pieces[0] == " 1+1=2." and pieces[1] == "\nStep 2: 2+2=4." and pieces[2].startswith("\nStep 3: Done.")


def _examples(tokenizer):
    rows = [MATH_STEP_DPO_ROW,
            dict(MATH_STEP_DPO_ROW, prompt="Short?", chosen=" A much longer chosen step text here.", rejected=" B"),
            dict(MATH_STEP_DPO_ROW, initial_reason_steps=STEP_PREFIX, chosen=" x", rejected=" a rejected step")]
    return encode_rows(rows, tokenizer, "chat", "step-dpo", 1024)


def _two_sequence_logps(model, ex: Example):
    """The straightforward reference: two separate forwards, [prefix|chosen] and [prefix|rejected]."""
    out = []
    for cont in (ex.chosen, ex.rejected):
        ids = torch.tensor([ex.prefix + cont])
        logps = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
        targets = ids[0, 1:]
        tok = logps[torch.arange(len(targets)), targets]
        out.append(tok[len(ex.prefix) - 1:].sum())
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_prefix_matches_two_sequences(model, tokenizer, attn):
    """Loss and gradients of the packed [prefix|chosen|rejected] forward equal two plain forwards (<= 1e-5)."""
    model.config._attn_implementation = attn
    examples = _examples(tokenizer)
    ref_c = torch.tensor([-30.0, -20.0, -10.0])
    ref_r = torch.tensor([-31.0, -19.0, -12.0])

    model.zero_grad()
    batch = pack(examples, tokenizer.pad_token_id)
    logits = model(**batch.model_inputs()).logits
    assert logits.shape[1] == batch.keep < batch.input_ids.shape[1]  # LM head only on the continuation tail
    pc, pr = segment_sums(token_logps(logits, batch), batch.segment)
    loss_packed = preference_loss(pc, pr, ref_c, ref_r, beta=0.4)[0].mean()
    loss_packed.backward()
    grads_packed = [p.grad.clone() for p in model.parameters()]

    model.zero_grad()
    pairs = [_two_sequence_logps(model, ex) for ex in examples]
    sc = torch.stack([c for c, _ in pairs])
    sr = torch.stack([r for _, r in pairs])
    loss_plain = preference_loss(sc, sr, ref_c, ref_r, beta=0.4)[0].mean()
    loss_plain.backward()
    assert torch.allclose(pc, sc, atol=1e-4, rtol=0)  # summed log-probs (tens of nats)
    assert abs(loss_packed.item() - loss_plain.item()) <= 1e-5
    for gp, p in zip(grads_packed, model.parameters()):
        assert torch.allclose(gp, p.grad, atol=1e-5, rtol=0)
    model.config._attn_implementation = "sdpa"


def test_step_text_as_given_scores_chosen_exactly_as_written(tokenizer):
    """--step-text as-given reproduces the official StepDPOTrainer: no newline appended to a continued step."""
    [default] = encode_rows([MATH_STEP_DPO_ROW], tokenizer, "raw", "step-dpo", 1024)
    [given] = encode_rows([MATH_STEP_DPO_ROW], tokenizer, "raw", "step-dpo", 1024, step_text="as-given")
    assert tokenizer.decode(default.chosen) == MATH_STEP_DPO_ROW["chosen"] + "\n"
    assert tokenizer.decode(given.chosen) == MATH_STEP_DPO_ROW["chosen"]
    assert tokenizer.decode(given.rejected) == MATH_STEP_DPO_ROW["rejected"]
    assert given.prefix == default.prefix and given.key != default.key  # different text: its own reference
    with pytest.raises(InputError, match="step-text"):
        encode_rows([MATH_STEP_DPO_ROW], tokenizer, "raw", "step-dpo", 1024, step_text="official")


LOGPS_MEMORY_PROBE = """
import resource, torch
from stepdpo_cli.train.data import target_logps
B, K, V = 4, 300, 16384  # 75 MiB of fp32 logits
logits = torch.randn(B, K, V, requires_grad=True)
positions = torch.randint(0, B * K, (B, K - 1))
targets = torch.randint(0, V, (B, K - 1))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
target_logps(logits, positions, targets).sum().backward()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024 / logits.numel() / 4)
"""


def test_token_logps_memory_is_bounded_by_three_logit_copies():
    """Forward + backward of the per-token log-probs: the log-softmax, its gradient and the logits' gradient
    (3x the logits) and no more; at a 152K vocabulary each copy is GBs. Logit minus logsumexp measured 4x."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", LOGPS_MEMORY_PROBE], capture_output=True, text=True, check=True)
    assert float(out.stdout.split()[-1]) < 3.5, out.stdout
