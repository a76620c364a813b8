"""PRM scoring throughput (steps/s) and the cost of best-of-N over plain sampling, measured in one run.

On one tiny model built locally (no downloads): its causal LM samples N solutions per problem with the hf
backend, and a PRM made from the same checkpoint (`train --objective prm`, 1 step: its speed, not its
judgement, is measured here) scores every step of every solution. Prints

  PRM scoring: steps/s and tokens/s at --batch-size B (fixed-shape batches, rewards/prm.py) on six-step
               solutions of the same problems;
  best-of-N:   seconds to sample N solutions, seconds to score them, and (sample + score) / sample: what picking
               with the PRM adds to plain sampling of the same N.

Usage: python bench/bench_prm.py [--problems 32] [--n 8] [--batch-size 16]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from stepdpo_cli.backends.base import Request, SamplingParams
from stepdpo_cli.backends.hf import HFBackend
from stepdpo_cli.rewards import load_prm
from stepdpo_cli.steps import STEP_PREFIX, split_steps
from stepdpo_cli.tiny import build_tiny_model


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=32)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=96)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(os.path.join(tmp, "model"), layers=4, seed=0)
        rows = os.path.join(tmp, "rows.jsonl")
        with open(rows, "w") as handle:
            for i in range(4):
                handle.write(json.dumps({"problem": f"Add: {i} + 2", "steps": [f" {i} + 2 = {i + 2}."],
                                         "correct": True}) + "\n")
        subprocess.run([sys.executable, "-m", "stepdpo_cli", "train", "-q", "--objective", "prm", "-m", model,
                        "--data", rows, "--output", os.path.join(tmp, "prm"), "--max-steps", "1", "--template",
                        "raw"], check=True, stdout=subprocess.DEVNULL)
        backend = HFBackend(model, device="cpu", batch_size=args.problems * args.n)
        prm = load_prm(os.path.join(tmp, "prm"), device="cpu", batch_size=args.batch_size)
        problems = [f"Natalia sold {40 + i} clips in April and half as many in May. How many in all?"
                    for i in range(args.problems)]
        requests = [Request(p + "\n" + STEP_PREFIX, seed=i) for i, p in enumerate(problems)]
        params = SamplingParams(n=args.n, temperature=1.0, max_tokens=args.max_tokens)
        backend.generate(requests[:2], SamplingParams(n=2, max_tokens=8))  # warm-up
        start = time.perf_counter()
        outputs = backend.generate(requests, params)
        sample_s = time.perf_counter() - start
        items = [(p, split_steps(c.text)) for p, cs in zip(problems, outputs) for c in cs]
        prm.score(items[:4])  # warm-up
        prm.stats = type(prm.stats)()
        start = time.perf_counter()
        prm.score(items)
        score_s = time.perf_counter() - start
        generated = sum(c.num_tokens for cs in outputs for c in cs)
        # Throughput on step-wise solutions (a random model writes no step markers): 6 steps each.
        stepwise = [(p, [f" In month {k} she sold {40 + i + k} clips, {k * 3} more than before." for k in range(6)])
                    for i, p in enumerate(problems) for _ in range(args.n)]
        prm.stats = type(prm.stats)()
        start = time.perf_counter()
        prm.score(stepwise)
        step_s = time.perf_counter() - start
        steps, tokens = prm.stats.steps, prm.stats.tokens
    print(f"PRM scoring: {len(stepwise)} six-step solutions, {steps} steps, {tokens} tokens in {step_s:.2f}s: "
          f"{steps / step_s:.0f} steps/s, {tokens / step_s:.0f} tokens/s (batch {args.batch_size})")
    print(f"best-of-{args.n}: sampling {sample_s:.2f}s ({generated} tokens), scoring {score_s:.2f}s; "
          f"(sample + score) / sample = {(sample_s + score_s) / sample_s:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
