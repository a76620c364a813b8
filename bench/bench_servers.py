"""`stepdpo sample` records/s over 1, 2 and 3 OpenAI-compatible servers, measured in one run.

Each server is the scripted test server (tests/openai_server.py) on 127.0.0.1 and adds a fixed delay per
request, standing in for a GPU engine whose throughput per server is bounded (`--concurrency` requests in
flight, each taking `--delay` seconds). The stage runs in this process as `stepdpo sample` would run it
(`sample_records`: generation, grading, records), over the same problems and seed for every fleet size; the
outputs are checked to be identical, so only the spread is measured. Fleet sizes alternate round after round
so a slow drift of the machine hits all alike; reported: median records/s per size and the ratio to one server.

  .venv/bin/python bench/bench_servers.py [--problems 96] [--delay 0.2] [--concurrency 4] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from openai_server import ScriptedServer  # noqa: E402

from stepdpo_cli.backends.base import SamplingParams  # noqa: E402
from stepdpo_cli.backends.openai import OpenAIBackend  # noqa: E402
from stepdpo_cli.stages.sample import sample_records  # noqa: E402


def run(urls: list[str], problems: list[dict], concurrency: int, n: int) -> tuple[float, list[dict]]:
    backend = OpenAIBackend("bench", base_url=",".join(urls), concurrency=concurrency, api_key_env="")
    params = SamplingParams(n=n, temperature=1.0, max_tokens=32)
    started = time.perf_counter()
    # chunk_size as `sample` uses for openai (4 x batch-size / n, batch-size 64): many requests per call
    records = [r for group in sample_records([dict(p) for p in problems], backend, params, template="raw",
                                             seed=0, chunk_size=4 * 64 // n) for r in group]
    seconds = time.perf_counter() - started
    backend.close()
    return seconds, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=96)
    parser.add_argument("-n", type=int, default=2, help="samples per problem (one request: the server honours n)")
    parser.add_argument("--delay", type=float, default=0.2, help="seconds each server adds per request")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight per server")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    problems = [{"id": f"p{i}", "problem": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1)}
                for i in range(args.problems)]
    fleet = [ScriptedServer(delay=args.delay) for _ in range(3)]
    sizes = (1, 2, 3)
    seconds: dict[int, list[float]] = {k: [] for k in sizes}
    reference = None
    try:
        for _ in range(args.rounds):
            for k in sizes:
                took, records = run([s.url for s in fleet[:k]], problems, args.concurrency, args.n)
                if reference is None:
                    reference = records
                assert records == reference, f"{k} server(s) gave other records than 1"
                seconds[k].append(took)
    finally:
        for s in fleet:
            s.close()
    records = len(reference or [])
    bound = args.concurrency / args.delay * args.n  # records/s one server allows
    print(f"{args.problems} problems x n={args.n} = {records} records; each server: {args.concurrency} in flight, "
          f"{args.delay * 1000:.0f} ms per request (at most {bound:.0f} records/s); median of {args.rounds} rounds")
    base = records / statistics.median(seconds[1])
    for k in sizes:
        rate = records / statistics.median(seconds[k])
        print(f"  {k} server(s): {rate:7.1f} records/s  {rate / base:4.2f}x one server  "
              f"({rate / (k * bound):.0%} of {k} x the per-server bound)")


if __name__ == "__main__":
    main()
