"""The hf backend driven for real on the tiny model: greedy = transformers' generate, seeds independent of
batching, one shared prefill per prompt = re-encoding per sample, stop strings, EOS, lengths, log-probs."""
from __future__ import annotations

import os

import pytest
import torch

from stepdpo_cli.backends.base import Request, SamplingParams
from stepdpo_cli.backends.registry import load_backend
from stepdpo_cli.backends.hf import HFBackend

os.environ.setdefault("OMP_NUM_THREADS", "1")

PROMPTS = [
    "What is 2 + 3?\nLet's think step by step.\nStep 1:",
    "A train leaves at 3pm and travels 60 km/h for two hours. How far does it go?\nLet's think step by step.\nStep 1:",
    "x\nStep 1:",
]


@pytest.fixture(scope="module")
def backend(tiny_model) -> HFBackend:
    return HFBackend(tiny_model, batch_size=64)


def texts(outputs):
    return [[c.text for c in row] for row in outputs]


def test_greedy_matches_transformers_generate(backend, tiny_model):
    out = backend.generate([Request(p) for p in PROMPTS], SamplingParams(n=1, temperature=0, max_tokens=24))
    for prompt, (completion,) in zip(PROMPTS, out):
        ids = torch.tensor([backend.encode(prompt)])
        ref = backend.lm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
        assert completion.text == backend.tokenizer.decode(ref[0, ids.shape[1]:], skip_special_tokens=True)
        assert completion.finish_reason in ("stop", "length")
        assert 1 <= completion.num_tokens <= 24


def test_n_completions_in_request_order_with_lengths(backend):
    out = backend.generate([Request(PROMPTS[1], seed=1, n=2), Request(PROMPTS[0], seed=2)],
                           SamplingParams(n=3, temperature=1.0, max_tokens=7))
    assert [len(row) for row in out] == [2, 3]
    for c in [c for row in out for c in row]:
        if c.finish_reason == "length":
            assert c.num_tokens == 7
        assert c.logprobs is None


def test_same_seed_same_samples_whatever_the_batch(backend, tiny_model):
    params = SamplingParams(n=4, temperature=0.9, top_p=0.95, max_tokens=20)
    alone = backend.generate([Request(PROMPTS[0], seed=7)], params)[0]
    mixed = backend.generate([Request(PROMPTS[2], seed=1), Request(PROMPTS[1], seed=3), Request(PROMPTS[0], seed=7)],
                             params)[2]
    small = HFBackend(tiny_model, batch_size=3)  # other packing: this request's rows split off alone
    packed = small.generate([Request(PROMPTS[1], seed=3), Request(PROMPTS[0], seed=7)], params)[1]
    assert [c.text for c in alone] == [c.text for c in mixed] == [c.text for c in packed]
    assert len({c.text for c in alone}) > 1  # the n samples differ from each other
    other_seed = backend.generate([Request(PROMPTS[0], seed=8)], params)[0]
    assert [c.text for c in other_seed] != [c.text for c in alone]


def test_shared_prefill_equals_reencoding_each_sample(tiny_model, backend):
    unshared = HFBackend(tiny_model, batch_size=64, shared_prefill=False)
    requests = [Request(p, seed=i) for i, p in enumerate(PROMPTS)]
    for params in (SamplingParams(n=3, temperature=0, max_tokens=24),
                   SamplingParams(n=3, temperature=0.8, top_p=0.9, max_tokens=24)):
        assert texts(backend.generate(requests, params)) == texts(unshared.generate(requests, params))


def test_copied_prefix_path_equals_shared_attention(tiny_model, backend):
    """Models outside the shared-attention list decode on per-sample copies of the prefix: same output."""
    copied = HFBackend(tiny_model, batch_size=64)
    copied.shared_attention = False
    requests = [Request(p, seed=i, n=2 + i) for i, p in enumerate(PROMPTS)]  # unequal n: padded grid slots
    for params in (SamplingParams(temperature=0, max_tokens=24), SamplingParams(temperature=0.8, max_tokens=24)):
        assert texts(copied.generate(requests, params)) == texts(backend.generate(requests, params))


def test_stop_string_cuts_text_and_is_reported(backend):
    greedy = SamplingParams(n=1, temperature=0, max_tokens=40)
    full = backend.generate([Request(PROMPTS[1])], greedy)[0][0].text
    start = next(i for i in range(3, len(full) - 2) if full[i:i + 2].isascii() and full[i:i + 2].isprintable())
    stop = full[start:start + 2]
    cut = backend.generate([Request(PROMPTS[1])], SamplingParams(n=1, temperature=0, max_tokens=40,
                                                                stop=("never-there", stop)))[0][0]
    assert cut.text == full[:full.index(stop)]
    assert (cut.finish_reason, cut.stop_reason) == ("stop", stop)


def test_eos_ends_a_sample_and_is_not_in_the_text(tiny_model):
    backend = HFBackend(tiny_model)
    first = backend.generate([Request(PROMPTS[0])], SamplingParams(n=1, temperature=0, max_tokens=1,
                                                                   logprobs=True))[0][0]
    token = backend.tokenizer.convert_tokens_to_ids(backend.tokenizer.tokenize(first.text)[0]) if first.text else None
    if token is None:
        pytest.skip("first greedy token decodes to nothing")
    backend.eos_ids.add(token)  # as if the model's EOS were that token
    done = backend.generate([Request(PROMPTS[0])], SamplingParams(n=1, temperature=0, max_tokens=10))[0][0]
    assert (done.text, done.num_tokens, done.finish_reason, done.stop_reason) == ("", 1, "stop", None)


def test_logprobs_are_the_models_own(backend):
    out = backend.generate([Request(PROMPTS[0])], SamplingParams(n=1, temperature=0, max_tokens=5, logprobs=True))
    completion = out[0][0]
    assert len(completion.logprobs) == completion.num_tokens
    ids = torch.tensor([backend.encode(PROMPTS[0])])
    with torch.no_grad():
        first = torch.log_softmax(backend.lm(ids).logits[0, -1].float(), -1).max().item()
    assert completion.logprobs[0] == pytest.approx(first, abs=1e-4)


def test_tiny_top_p_is_greedy(backend):
    requests = [Request(p, seed=5) for p in PROMPTS]
    greedy = backend.generate(requests, SamplingParams(n=1, temperature=0, max_tokens=16))
    nucleus = backend.generate(requests, SamplingParams(n=2, temperature=1.0, top_p=1e-6, max_tokens=16))
    assert [[row[0].text] * 2 for row in greedy] == texts(nucleus)


def test_load_backend_spec(tiny_model):
    engine = load_backend(f"hf:{tiny_model}", batch_size=8)
    assert engine.name == "hf" and engine.batch_size == 8
    assert engine.tokenizer.chat_template


def test_prompt_plus_max_tokens_is_capped_at_the_models_context(tmp_path, tiny_model):
    """Generation stops where the model's context ends (finish_reason length); a prompt that does not fit is
    a one-line input error, never an index error deep in the model."""
    from stepdpo_cli.records import InputError
    from stepdpo_cli.tiny import build_tiny_model

    short = build_tiny_model(str(tmp_path / "short"), tokenizer_path=tiny_model, max_positions=40)
    b = HFBackend(short, device="cpu")
    prompt = "x" * 30  # one token per byte
    [[c]] = b.generate([Request(prompt, seed=0)], SamplingParams(max_tokens=100, temperature=1.0))
    assert c.finish_reason == "length" and len(b.encode(prompt)) + c.num_tokens == 40
    with pytest.raises(InputError, match="does not fit the model's context of 40 tokens"):
        b.generate([Request("y" * 45, seed=0)], SamplingParams(max_tokens=4))
