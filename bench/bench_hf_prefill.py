"""hf backend: tokens/s with the shared prompt prefill vs re-encoding the prompt for every sample.

Two shapes, measured in one run on the same tiny model (built locally, no downloads):
  rectify-shaped: 300+-token prompts (problem + earlier steps), n=8 continuations each;
  sample-shaped:  ~60-token prompts, n=8 solutions of up to 150 tokens.
Also transformers' own `generate` (num_return_sequences=n, one global RNG) as the familiar baseline.
Prints tokens/s for each and the ratios. Usage: python bench/bench_hf_prefill.py [--prompts 8] [--repeats 2]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from stepdpo_cli.backends.base import Request, SamplingParams
from stepdpo_cli.backends.hf import HFBackend
from stepdpo_cli.steps import STEP_PREFIX, join_steps
from stepdpo_cli.tiny import build_tiny_model


def problem(i: int) -> str:
    return f"Natalia sold clips to {40 + i} of her friends in April, and then she sold half as many in May. How many?"


def rectify_prompt(i: int, tokenizer, min_tokens: int) -> str:
    """Problem + step-wise prefix with earlier steps, grown until it has at least `min_tokens` tokens."""
    steps = []
    text = ""
    while len(tokenizer(text)["input_ids"]) < min_tokens:
        k = len(steps) + 1
        steps.append(f" In month {k} she sold {40 + i + k} clips, so the running total is {k * (40 + i)} clips.")
        text = problem(i) + "\n" + STEP_PREFIX + join_steps(steps) + f"\nStep {len(steps) + 1}:"
    return text


def run(backend: HFBackend, requests: list[Request], params: SamplingParams, repeats: int) -> tuple[float, int]:
    best, tokens = float("inf"), 0
    for _ in range(repeats):
        start = time.perf_counter()
        out = backend.generate(requests, params)
        best = min(best, time.perf_counter() - start)
        tokens = sum(c.num_tokens for row in out for c in row)
    return tokens / best, tokens


def run_generate(backend: HFBackend, requests: list[Request], params: SamplingParams, repeats: int) -> float:
    """transformers' generate on the same prompts (left-padded batch, num_return_sequences=n)."""
    tok = backend.tokenizer
    tok.padding_side = "left"
    batch = tok([r.prompt for r in requests], return_tensors="pt", padding=True)
    best, tokens = float("inf"), 0
    for _ in range(repeats):
        torch.manual_seed(0)
        start = time.perf_counter()
        with torch.inference_mode():
            out = backend.lm.generate(**batch, do_sample=True, temperature=params.temperature, top_p=params.top_p,
                                      max_new_tokens=params.max_tokens, num_return_sequences=params.n,
                                      pad_token_id=tok.pad_token_id)
        best = min(best, time.perf_counter() - start)
        new = out[:, batch["input_ids"].shape[1]:]
        tokens = int((new != tok.pad_token_id).sum())
    return tokens / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8, help="prompts per shape (x n=8 rows)")
    parser.add_argument("--prefix-tokens", type=int, default=320)
    parser.add_argument("--rectify-tokens", type=int, default=64, help="continuation length for rectify shape")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model", default=None, help="model dir (default: a tiny Qwen2 built in a temp dir)")
    args = parser.parse_args()
    model = args.model or build_tiny_model(os.path.join(tempfile.mkdtemp(), "tiny"), seed=0)
    shared = HFBackend(model, batch_size=args.batch_size)
    unshared = HFBackend(model, batch_size=args.batch_size, shared_prefill=False)
    tok = shared.tokenizer
    shapes = {
        "rectify": ([Request(rectify_prompt(i, tok, args.prefix_tokens), seed=i) for i in range(args.prompts)],
                    SamplingParams(n=8, temperature=0.8, top_p=0.95, max_tokens=args.rectify_tokens)),
        "sample": ([Request(f"What is {i} + {2 * i}?\n" + STEP_PREFIX, seed=i) for i in range(args.prompts)],
                   SamplingParams(n=8, temperature=0.8, top_p=0.95, max_tokens=150)),
    }
    print(f"threads={torch.get_num_threads()} load={os.getloadavg()[0]:.1f} model={model}")
    for name, (requests, params) in shapes.items():
        run(shared, requests[:1], params, 1)  # warm-up
        prompt_tokens = sum(len(shared.encode(r.prompt)) for r in requests) // len(requests)
        fast, tokens = run(shared, requests, params, args.repeats)
        slow, _ = run(unshared, requests, params, args.repeats)
        generate = run_generate(shared, requests, params, args.repeats)
        print(f"{name}: {len(requests)} prompts x n={params.n}, ~{prompt_tokens} prompt tokens, {tokens} generated | "
              f"shared {fast:,.0f} tok/s | per-sample prefill {slow:,.0f} tok/s | transformers generate "
              f"{generate:,.0f} tok/s | shared/per-sample {fast / slow:.2f}x | shared/generate {fast / generate:.2f}x")


if __name__ == "__main__":
    main()
