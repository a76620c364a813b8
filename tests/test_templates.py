"""Prompt templates: every stage renders a problem the same way, matching the official Step-DPO prompts."""
from __future__ import annotations

import json

import pytest

from stepdpo_cli.records import InputError
from stepdpo_cli.steps import STEP_PREFIX, prefix_text, split_steps
from stepdpo_cli.templates import (
    MODEL_META_FILE,
    TEMPLATE_NAMES,
    TEMPLATES,
    eval_prompt,
    generation_prompt,
    read_model_meta,
    render_prompt,
    resolve_template,
    template_for_model,
)
from stepdpo_cli.tiny import build_tokenizer

PROBLEM = "If $f(x) = \\frac{x}{2}$ and $\\{a\\} = 4$, what is $f(8)$?"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """The tiny byte-level tokenizer with its ChatML chat template (what `tiny_model` ships)."""
    return build_tokenizer(str(tmp_path_factory.mktemp("tok")))


@pytest.fixture(scope="module")
def plain_tokenizer(tmp_path_factory):
    tok = build_tokenizer(str(tmp_path_factory.mktemp("plain")))
    tok.chat_template = None
    return tok


# The official Step-DPO prompts (eval_math.py "*-step" variants, and train.py's template + separator +
# initial_reason_steps), up to "Step 1:" -- the official generation adds a space after it, our completions
# start with that space instead.
OFFICIAL_STEP_PROMPTS = {
    "alpaca": "Below is an instruction that describes a task. Write a response that appropriately completes "
              "the request.\n\n### Instruction:\n{p}\n\n### Response:\nLet's think step by step.\nStep 1:",
    "deepseek-math": "User: {p}\nPlease reason step by step, and put your final answer within \\boxed{{}}.\n\n"
                     "Assistant: Let's think step by step.\nStep 1:",
    "qwen2-boxed": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{p}\n"
                   "Please reason step by step, and put your final answer within \\boxed{{}}.<|im_end|>\n"
                   "<|im_start|>assistant\nLet's think step by step.\nStep 1:",
    "raw": "{p}\nLet's think step by step.\nStep 1:",
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_STEP_PROMPTS))
def test_named_templates_match_the_official_prompts(name):
    assert generation_prompt(PROBLEM, name) == OFFICIAL_STEP_PROMPTS[name].format(p=PROBLEM)


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_every_template_renders_the_problem_verbatim(name, tokenizer):
    prompt = render_prompt(PROBLEM, name, tokenizer)
    assert PROBLEM in prompt  # braces and backslashes in LaTeX are not format fields
    assert not prompt.endswith(STEP_PREFIX)
    assert generation_prompt(PROBLEM, name, tokenizer).endswith(STEP_PREFIX)


def test_chat_uses_the_tokenizers_own_template(tokenizer):
    prompt = render_prompt("What is 2+2?", "chat", tokenizer)
    assert prompt == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert prompt == tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}], tokenize=False, add_generation_prompt=True)


def test_chat_without_a_chat_template_is_an_input_error(plain_tokenizer):
    with pytest.raises(InputError) as info:
        render_prompt("p", "chat", plain_tokenizer)
    assert info.value.field == "--template"
    with pytest.raises(InputError):
        render_prompt("p", "chat", None)


def test_auto_picks_chat_when_the_model_has_one_else_raw(tokenizer, plain_tokenizer):
    for auto in (None, "", "auto"):
        assert resolve_template(auto, tokenizer) == "chat"
        assert resolve_template(auto, plain_tokenizer) == "raw"
        assert resolve_template(auto, None) == "raw"
    assert resolve_template("alpaca", tokenizer) == "alpaca"


def test_unknown_template_names_the_choices():
    with pytest.raises(InputError) as info:
        resolve_template("vicuna")
    assert info.value.field == "--template"
    for name in TEMPLATE_NAMES:
        assert name in str(info.value)


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_rectify_context_extends_the_sampling_context_byte_for_byte(name, tokenizer):
    """Rectification continues the model's own text: prompt + initial_reason_steps == prompt + completion start."""
    completion = " $f(8) = 8/2$.\nStep 2: So $f(8) = 4$.\nStep 3: The answer is $\\boxed{4}$."
    bodies = split_steps(completion)
    sampled = generation_prompt(PROBLEM, name, tokenizer) + completion
    for k in range(1, len(bodies) + 1):
        rectify = generation_prompt(PROBLEM, name, tokenizer, reason_prefix=prefix_text(bodies, k))
        assert sampled.startswith(rectify)
        assert sampled.startswith(rectify + bodies[k - 1])


def test_template_for_model_prefers_flag_then_recorded_then_tokenizer(tmp_path, tokenizer, plain_tokenizer):
    model_dir = tmp_path / "ckpt"
    model_dir.mkdir()
    assert read_model_meta(str(model_dir)) == {}
    assert template_for_model(None, str(model_dir), tokenizer) == "chat"
    assert template_for_model("auto", str(model_dir), plain_tokenizer) == "raw"
    (model_dir / MODEL_META_FILE).write_text(json.dumps({"template": "qwen2-boxed", "objective": "step-dpo"}))
    assert read_model_meta(str(model_dir))["template"] == "qwen2-boxed"
    assert template_for_model(None, str(model_dir), tokenizer) == "qwen2-boxed"
    assert template_for_model("alpaca", str(model_dir), tokenizer) == "alpaca"


def test_template_for_a_remote_model_name_falls_back_to_the_tokenizer(tokenizer):
    assert template_for_model(None, "Qwen/Qwen2-7B-Instruct", tokenizer) == "chat"
    assert template_for_model(None, "gpt-4o", None) == "raw"


def test_the_named_templates_are_the_documented_ones():
    assert set(TEMPLATES) == {"alpaca", "deepseek-math", "qwen2-boxed", "raw"}
    assert TEMPLATE_NAMES[0] == "chat"


# eval_math.py in dvlab-research/Step-DPO, `--prompt alpaca`, verbatim.
OFFICIAL_ALPACA_EVAL = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response: Let's think step by step."
)


def test_eval_alpaca_is_the_official_eval_prompt(tokenizer):
    assert eval_prompt(PROBLEM, "alpaca") == OFFICIAL_ALPACA_EVAL.format(instruction=PROBLEM)
    assert eval_prompt(PROBLEM, "alpaca") != generation_prompt(PROBLEM, "alpaca")  # training context differs
    for name in ("qwen2-boxed", "deepseek-math", "raw", "chat"):  # the others: the training context
        assert eval_prompt(PROBLEM, name, tokenizer) == generation_prompt(PROBLEM, name, tokenizer)
