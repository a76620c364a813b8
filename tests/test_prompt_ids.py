"""One BOS everywhere: the token ids train scores after, and the ids the hf and vllm backends feed, all come
from `templates.encode_context`, for a Llama-style tokenizer whose chat template writes BOS itself."""
from __future__ import annotations

import pytest

from stepdpo_cli.backends.vllm import token_prompt
from stepdpo_cli.steps import COT_INTRO, STEP_PREFIX
from stepdpo_cli.templates import encode_context, generation_prompt
from stepdpo_cli.train.data import encode_rows

# Llama-3 style: the chat template starts with the BOS token, and the tokenizer also adds BOS by default.
LLAMA_STYLE_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
SPECIALS = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> str:
    """A byte-level tokenizer that adds BOS (TemplateProcessing, as Llama's does) + a tiny model using it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from stepdpo_cli.tiny import build_tiny_model

    path = str(tmp_path_factory.mktemp("llama") / "model")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["a"], trainer=trainer)
    bos_id = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                       special_tokens=[("<|begin_of_text|>", bos_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   pad_token="<|eot_id|>", additional_special_tokens=SPECIALS[2:])
    fast.chat_template = LLAMA_STYLE_TEMPLATE
    fast.save_pretrained(path)
    return build_tiny_model(path, tokenizer_path=path)


@pytest.fixture(scope="module")
def tokenizer(llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(llama_dir)


def test_every_path_feeds_one_bos(llama_dir, tokenizer):
    from stepdpo_cli.backends.hf import HFBackend

    context = generation_prompt("What is 2+3?", "chat", tokenizer)
    assert context.startswith(tokenizer.bos_token)
    ids = encode_context(tokenizer, context)
    bos = tokenizer.bos_token_id
    assert ids[0] == bos and ids.count(bos) == 1
    # what vLLM's generate() does with a prompt string (special tokens added): the bug this guards against
    assert tokenizer(context)["input_ids"][:2] == [bos, bos]

    assert token_prompt(tokenizer, context) == {"prompt_token_ids": ids}  # vllm backend
    assert HFBackend(llama_dir, device="cpu").encode(context) == ids  # hf backend
    row = {"prompt": "What is 2+3?", "initial_reason_steps": STEP_PREFIX, "chosen": " 2+3=5.", "rejected": " 2+3=6."}
    [example] = encode_rows([row], tokenizer, "chat", "step-dpo", 1024)
    assert example.prefix == encode_context(tokenizer, generation_prompt("What is 2+3?", "chat", tokenizer,
                                                                         reason_prefix=STEP_PREFIX))


def test_left_truncation_keeps_bos_and_max_prompt_length(tokenizer):
    row = {"prompt": "x" * 400, "initial_reason_steps": STEP_PREFIX, "chosen": " y" * 60, "rejected": " z" * 60}
    full = encode_rows([row], tokenizer, "chat", "step-dpo", 4096)[0]
    [cut] = encode_rows([row], tokenizer, "chat", "step-dpo", 128, max_prompt_length=64)
    assert cut.prefix[0] == tokenizer.bos_token_id and cut.prefix.count(tokenizer.bos_token_id) == 1
    # the context keeps max_prompt_length tokens (the continuations leave less room): BOS + the newest ones
    assert len(cut.prefix) == 64 and cut.prefix[1:] == full.prefix[-63:]
    assert len(cut.prefix) + max(len(cut.chosen), len(cut.rejected)) <= 128


def test_empty_initial_reason_steps_does_not_repeat_the_cot_prefix(tokenizer):
    """Math-Step-DPO-10K rows whose first step is wrong have initial_reason_steps "" and whole solutions."""
    row = {"prompt": "What is 2+3?", "initial_reason_steps": "", "chosen": STEP_PREFIX + " 2+3=5.",
           "rejected": STEP_PREFIX + " 2+3=6."}
    for objective in ("step-dpo", "dpo"):
        [example] = encode_rows([row], tokenizer, "chat", objective, 1024)
        text = tokenizer.decode(example.prefix + example.chosen)
        assert text.count(COT_INTRO) == 1 and text.count("Step 1:") == 1
