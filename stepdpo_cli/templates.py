"""Prompt templates. Sample, rectify, train and eval must render a problem identically, so they all call here.

The official Step-DPO code formats `prompt` with one of alpaca / deepseek-math / qwen2-boxed and appends
`initial_reason_steps` directly; the step-wise CoT prefix starts the assistant's turn.
"""
from __future__ import annotations

from typing import Any

from .records import InputError
from .steps import STEP_PREFIX

TEMPLATES: dict[str, str] = {
    "alpaca": (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\n{problem}\n\n### Response:"
    ),
    "deepseek-math": (
        "User: {problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}.\n\nAssistant:"
    ),
    "qwen2-boxed": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{problem}\n"
        "Please reason step by step, and put your final answer within \\boxed{{}}.<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    # For base models and the demo: the problem, then a newline; the CoT prefix follows.
    "raw": "{problem}\n",
}
TEMPLATE_NAMES = ("chat", *TEMPLATES)

# What the official train.py puts between the rendered prompt and `initial_reason_steps`: alpaca "\n",
# deepseek-math " ", qwen2-boxed nothing (its eval prompts "...### Response:\nLet's think step by step." agree).
# Training and generation must both go through `generation_prompt` so the contexts match byte for byte.
REASON_SEPARATORS: dict[str, str] = {"alpaca": "\n", "deepseek-math": " ", "qwen2-boxed": "", "raw": "", "chat": ""}


def resolve_template(name: str | None, tokenizer: Any = None) -> str:
    """`None`/"auto" means the model's chat template when it has one, else raw."""
    if name in (None, "", "auto"):
        return "chat" if getattr(tokenizer, "chat_template", None) else "raw"
    if name not in TEMPLATE_NAMES:
        raise InputError(f"unknown template {name!r}; choose one of {', '.join(TEMPLATE_NAMES)}", field="--template")
    return name


def render_prompt(problem: str, template: str, tokenizer: Any = None) -> str:
    """The prompt for `problem` up to where the assistant's answer starts (no CoT prefix)."""
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise InputError("template 'chat' needs a tokenizer with a chat template", field="--template")
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": problem}], tokenize=False, add_generation_prompt=True
        )
    try:
        return TEMPLATES[template].format(problem=problem)
    except KeyError:
        raise InputError(f"unknown template {template!r}", field="--template") from None


def generation_prompt(problem: str, template: str, tokenizer: Any = None, *, reason_prefix: str = STEP_PREFIX) -> str:
    """Prompt + step-wise prefix: what sample and rectify send to the model.

    `reason_prefix` is the CoT prefix for sampling, or `initial_reason_steps` for rectification, so the
    two stages produce byte-identical contexts for the same steps. Train uses it with the pair's
    `initial_reason_steps` too. The separator follows the official code (see REASON_SEPARATORS).
    """
    separator = REASON_SEPARATORS.get(template, "") if reason_prefix else ""
    return render_prompt(problem, template, tokenizer) + separator + reason_prefix


def encode_context(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a rendered prompt/context: what `train` scores after and what every backend that takes
    token ids (hf, vllm) feeds the model. The tokenizer's special tokens (BOS) are added unless the text
    already starts with BOS (chat templates of Llama-3, Gemma, Mistral write it): never two."""
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and text.startswith(bos))
    return list(tokenizer(text, add_special_tokens=add_special)["input_ids"])


# The official eval_math.py prompts where they differ from the training context (generation_prompt):
# its `alpaca` eval prompt ends "### Response: Let's think step by step." (a space, no "Step 1:"), while
# training and sampling contexts continue "### Response:\nLet's think step by step.\nStep 1:".
OFFICIAL_EVAL_PROMPTS: dict[str, str] = {
    "alpaca": TEMPLATES["alpaca"] + " Let's think step by step.",
}


def eval_prompt(problem: str, template: str, tokenizer: Any = None) -> str:
    """What `eval` sends: the official eval_math.py prompt for `alpaca`, else the training context."""
    if template in OFFICIAL_EVAL_PROMPTS:
        return OFFICIAL_EVAL_PROMPTS[template].format(problem=problem)
    return generation_prompt(problem, template, tokenizer)


# A trained model directory records the template it was trained with, so sample/eval default to it.
MODEL_META_FILE = "stepdpo.json"


def read_model_meta(model_path: str) -> dict:
    """The `stepdpo.json` that `stepdpo train` writes beside a model (empty dict when absent or remote)."""
    import json
    import os

    path = os.path.join(model_path, MODEL_META_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        meta = json.load(handle)
    return meta if isinstance(meta, dict) else {}


def template_for_model(requested: str | None, model_path: str, tokenizer: Any = None) -> str:
    """Explicit --template wins; else the template recorded in the model dir; else chat/raw by tokenizer."""
    if requested not in (None, "", "auto"):
        return resolve_template(requested, tokenizer)
    recorded = read_model_meta(model_path).get("template")
    return resolve_template(recorded, tokenizer) if recorded else resolve_template(None, tokenizer)
