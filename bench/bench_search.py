"""`stepdpo search`'s generation speed and its pairs per generated token, measured in one run.

On the arith demo's shipped SFT checkpoint (examples/arith/sft-model, CPU, hf backend), the same P problems:

  throughput: tokens generated per second by the search (expansions + rollouts, tree bookkeeping and grading
              included), with each --expansion (step, continuation) and with 4 simulations per problem run together
              (--parallel-simulations 4, step expansion), vs the same backend generating solutions in
              plain batched calls (n per problem) with about as many tokens; the goal is >= 0.7x;
  yield:      pairs per 1,000 generated tokens: tree pairs (pair --strategy tree) from the search vs Step-DPO's
              sample (n) -> localize by rollouts -> rectify -> pair on the same problems.

Tokens are counted by a proxy around the backend. Usage: python bench/bench_search.py [--problems 24]
[--backend hf|vllm] (vllm: run it with a Python that has vLLM, e.g. .venv-vllm/bin/python).
"""
from __future__ import annotations

import argparse
import os
import time

from stepdpo_cli.backends.base import Request, SamplingParams
from stepdpo_cli.backends.hf import HFBackend
from stepdpo_cli.localizers.rollout import rollout_records
from stepdpo_cli.search.pairs import tree_pair_rows
from stepdpo_cli.stages.pair import pair_records
from stepdpo_cli.stages.rectify import rectify_records
from stepdpo_cli.stages.sample import sample_records
from stepdpo_cli.stages.search import SearchSettings, search_records
from stepdpo_cli.tasks.arith import ArithConfig, generate
from stepdpo_cli.templates import generation_prompt

SFT = os.path.join(os.path.dirname(__file__), "..", "examples", "arith", "sft-model")


class Counting:
    """The backend, counting the tokens it generates."""

    def __init__(self, backend):
        self.backend, self.tokens = backend, 0
        self.name, self.model, self.tokenizer = backend.name, backend.model, backend.tokenizer

    def generate(self, requests, params):
        out = self.backend.generate(requests, params)
        self.tokens += sum(c.num_tokens for row in out for c in row)
        return out

    def close(self):
        pass


def flat(groups):
    for item in groups:
        yield from (item if isinstance(item, list) else [item])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=24)
    ap.add_argument("--simulations", type=int, default=8)
    ap.add_argument("--backend", choices=("hf", "vllm"), default="hf",
                    help="vllm (its CPU build: scripts/test-vllm.sh's .venv-vllm) serves repeated prefixes from its "
                         "prefix cache; hf re-prefills every prompt")
    args = ap.parse_args()
    problems = list(generate(args.problems, seed=5, config=ArithConfig(min_steps=4, max_steps=4), split="test"))
    if args.backend == "vllm":
        from stepdpo_cli.backends.vllm import VLLMBackend

        engine = VLLMBackend(SFT)
    else:
        engine = HFBackend(SFT, device="cpu", batch_size=256)
    engine.generate([Request("Add: 1 + 2\n", seed=0)], SamplingParams(max_tokens=4))  # warm-up

    results = {}
    for expansion, parallel in (("step", 1), ("continuation", 1), ("step", 4)):
        counted = Counting(engine)
        settings = SearchSettings(simulations=args.simulations, expand=2, root_expand=3, rollouts=2,
                                  max_step_tokens=64, max_tokens=128, temperature=1.0, expansion=expansion,
                                  parallel_simulations=parallel)
        start = time.perf_counter()
        trees = list(search_records([dict(p) for p in problems], counted, template="raw", settings=settings,
                                    seed=1, chunk_size=len(problems)))
        seconds, tokens = time.perf_counter() - start, counted.tokens
        name = f"--expansion {expansion} --parallel-simulations {parallel}"
        results[name] = (tokens, seconds, sum(len(tree_pair_rows(t)) for t in trees))
    search_tokens = max(t for t, _, _ in results.values())

    n = 8
    requests = [Request(generation_prompt(p["problem"], "raw"), seed=i) for i, p in enumerate(problems)]
    start, plain_tokens = time.perf_counter(), 0
    while plain_tokens < search_tokens:
        out = engine.generate(requests, SamplingParams(n=n, temperature=1.0, max_tokens=128))
        plain_tokens += sum(c.num_tokens for row in out for c in row)
    plain_s = time.perf_counter() - start

    counted = Counting(engine)
    params = SamplingParams(n=4, temperature=1.0, max_tokens=128)
    wrong = list(flat(sample_records([dict(p) for p in problems], counted, params, template="raw", seed=1,
                                     keep="wrong", chunk_size=len(problems))))
    localized = list(flat(rollout_records(wrong, counted, rollouts=4, search="binary", temperature=1.0, top_p=1.0,
                                          max_tokens=128, seed=1, template="raw")))
    rectified = list(flat(rectify_records(localized, counted, n=4, temperature=1.0, top_p=1.0, max_tokens=128,
                                          seed=1, template="raw")))
    step_pairs = sum(len(g) for g in pair_records(rectified))
    classic_tokens = counted.tokens

    plain_rate = plain_tokens / plain_s
    print(f"plain batched sampling: {plain_tokens} tokens in {plain_s:.1f}s = {plain_rate:.0f} tokens/s")
    for name, (tokens, seconds, pairs) in results.items():
        print(f"search {name}: {tokens} tokens in {seconds:.1f}s = {tokens / seconds:.0f} tokens/s, "
              f"ratio {(tokens / seconds) / plain_rate:.2f}x (goal >= 0.7x); tree pairs per 1,000 generated tokens "
              f"{1000 * pairs / tokens:.2f} ({pairs} pairs)")
    stats = getattr(engine, "stats", None)
    if stats and stats.get("prompt_tokens"):
        print(f"{args.backend}: {stats['cached_prompt_tokens'] / stats['prompt_tokens']:.0%} of all prompt tokens "
              f"served from the prefix cache")
    print(f"sample+localize+rectify: pairs per 1,000 generated tokens {1000 * step_pairs / max(classic_tokens, 1):.2f} "
          f"({step_pairs} pairs, {classic_tokens} tokens), {len(problems)} problems")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
