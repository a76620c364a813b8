"""Step-DPO training throughput and memory: `stepdpo train` dense vs packed vs TRL's DPOTrainer, one run, one machine.

Same model (a random Qwen2, hidden 256, 4 layers, BPE tokenizer), same Math-Step-DPO-shaped pairs (a context of
k reasoning steps, then one chosen and one rejected step), same batch size, same epochs. Each contender runs in
its own process, one after another:

- stepdpo-dense:  `stepdpo train` as by default (one left-padded row per pair, shared prefix, 4D mask);
- stepdpo-packed: `--max-tokens-per-batch N` (several pairs per row, no padding, per-pair attention);
- trl-precompute: TRL's DPOTrainer with `precompute_ref_log_probs` (its fastest single-model setup).

Reported per contender: pairs/s and tokens/s over its train() call (reference log-probs included: all of them
compute them inside train), the whole process's wall time (imports, model load, save), its peak RSS, and the
padding share of what it feeds the model. tokens/s counts each pair's unique tokens (context + chosen +
rejected) for everyone, so it is pairs/s in other units; TRL actually computes the context twice.
TRL appends EOS to chosen and rejected (Step-DPO steps must not end in EOS): one more token each.

    python bench/bench_train.py                      # ~350 and ~1500 context, dense / packed / TRL
    python bench/bench_train.py --memory             # peak RSS at context 1024 vs 4096, same pairs
    python bench/bench_train.py --varying            # padding share on contexts that vary 4x (no training)
    python bench/bench_train.py --cases varying      # ... and the contenders trained on it

Measured here on a quiet machine (2 cores, load ~1; 2026-12-01, after glibc's freed-memory setting in train),
whole process vs TRL with precompute, peak RSS vs TRL's, padding share; 1 thread per contender unless said:
  short, 256 pairs, context 280-380 (mean 330), 435 unique tokens/pair (issue 14's fixture: 451):
      dense 1.94x, 0.66x;  packed 2.27x, 0.63x (9.9% -> 0%; TRL 10.9%)   [2 threads: dense 1.83x, packed 2.28x]
      (packed 71.4 s = 62.4 s train + 9 s imports/load/save; TRL 161.8 s = 115.7 s train + 46 s)
  long, 64 pairs, 1583 tokens/pair:         dense 2.01x, 0.51x;  packed 2.70x, 0.28x
  contexts varying 4x, 256 pairs:           dense 2.26x, 0.56x;  packed 3.64x, 0.39x (30.0% -> 0%; TRL 31.9%)
  --memory, 16 pairs: packed peak RSS at context 4141 / at 1021 = 0.98x (dense: 2.34x, 4.1 GB vs 1.8 GB)
The short case is compute-bound: a token costs the packed forward + backward what it costs TRL's (64 pairs of
the 2-step fixture, one forward + backward per 8: packed 0.41 ms, TRL's padded chosen/rejected batch 0.70 ms per
unique token, 1.71x, where TRL computes 1.68x the tokens), so sharing the context bounds the train speed-up at
TRL's tokens / ours (766 / 435 = 1.76x here); the rest of the whole-process ratio is TRL's start-up.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CONTENDERS = ("stepdpo-dense", "stepdpo-packed", "trl-precompute")


def _step(rng: random.Random, j: int) -> str:
    a, b, c = rng.randint(10, 999), rng.randint(10, 999), rng.randint(10, 99)
    return (f" For part {j} we take {a} apples and {b} more, so {a} + {b} = {a + b}; removing {c} bruised ones "
            f"leaves {a + b} - {c} = {a + b - c} apples for this part.")


def make_fixture(root: str, pairs: int, context_steps: tuple[int, int] = (2, 2), seed: int = 0,
                 max_positions: int = 2048) -> tuple[str, str]:
    """`pairs` rows whose context holds a problem and k reasoning steps, k uniform in `context_steps`
    (2: ~210 context tokens with the tokenizer trained on them, each step ~95 more; 3-4: 280-380, mean 330, and
    435 unique tokens per pair, the shape of the issue's fixture: 451), and a tiny Qwen2 with that BPE tokenizer."""
    from stepdpo_cli.tiny import build_tiny_model

    rng = random.Random(seed)
    rows, corpus = [], []
    for i in range(pairs):
        nums = [rng.randint(10, 999) for _ in range(8)]
        problem = (f"A store sells {nums[0]} apples on Monday, {nums[1]} on Tuesday and {nums[2]} on Wednesday. "
                   f"Each crate holds {nums[3]} apples. How many apples are sold in total, and how many full crates "
                   f"is that? Give the total.")
        steps = [f" On Monday the store sells {nums[0]} apples and on Tuesday {nums[1]} apples, so together "
                 f"{nums[0]} + {nums[1]} = {nums[0] + nums[1]} apples.",
                 f" Adding Wednesday's {nums[2]} apples gives {nums[0] + nums[1]} + {nums[2]} = "
                 f"{nums[0] + nums[1] + nums[2]} apples sold over the three days."]
        k = rng.randint(*context_steps)
        steps = (steps + [_step(rng, j) for j in range(3, k + 1)])[:max(k, 1)]
        prefix = "Let's think step by step." + "".join(f"\nStep {j}:{s}" for j, s in enumerate(steps, 1))
        prefix += f"\nStep {len(steps) + 1}:"
        total = nums[0] + nums[1] + nums[2]
        chosen = (f" A crate holds {nums[3]} apples, so dividing the total {total} by {nums[3]} gives "
                  f"{total // nums[3]} full crates with {total % nums[3]} apples left over.")
        rejected = (f" A crate holds {nums[3]} apples, so dividing the total {total} by {nums[3]} gives "
                    f"{total // nums[3] + 1} full crates with {nums[5] % nums[3]} apples left over.")
        rows.append({"dataset": "bench", "prompt": problem, "initial_reason_steps": prefix, "chosen": chosen,
                     "rejected": rejected, "full_chosen": chosen, "full_rejected": rejected, "answer": str(total)})
        corpus += [problem, prefix, chosen, rejected]
    data = os.path.join(root, "pairs.jsonl")
    with open(data, "w") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in rows)
    model = build_tiny_model(os.path.join(root, "model"), hidden=256, layers=4, heads=8, intermediate=688,
                             corpus=corpus, vocab_size=1024, seed=seed, max_positions=max_positions)
    return data, model


def load_examples(data: str, model: str, max_length: int):
    from transformers import AutoTokenizer

    from stepdpo_cli.records import iter_jsonl
    from stepdpo_cli.train.data import encode_rows

    return encode_rows(iter_jsonl(data), AutoTokenizer.from_pretrained(model), "raw", "step-dpo", max_length)


def padding_shares(examples, batch_size: int, max_tokens: int) -> dict[str, float]:
    """Share of the token positions each contender feeds the model that are padding, over the epoch's batches.
    stepdpo: its actual batches; TRL: (2 * batch, longest prompt + completion + EOS) per batch, from lengths."""
    from stepdpo_cli.train import packing
    from stepdpo_cli.train.setup import TrainConfig, epoch_batches

    config = TrainConfig(model="", data="", output="", batch_size=batch_size, seed=0)
    fed = {"stepdpo-dense": [0, 0], "stepdpo-packed": [0, 0], "stepdpo-packed-deepspeed": [0, 0],
           "trl-precompute": [0, 0]}
    plan = packing.Plan("packed", max_tokens)
    for step in epoch_batches(len(examples), 0, config, 1, 0):
        for micro in step:
            batch = [examples[i] for i in micro]
            real = sum(e.num_tokens for e in batch)
            fed["stepdpo-dense"][0] += len(batch) * max(e.num_tokens for e in batch)
            fed["stepdpo-dense"][1] += real
            for name, one_forward in (("stepdpo-packed", False), ("stepdpo-packed-deepspeed", True)):
                plan.one_forward = one_forward  # DeepSpeed: all rows of a micro-step in one right-padded forward
                for group in packing.forward_groups(batch, plan):
                    rows = packing.fill_rows(group, max_tokens)
                    longest = max(sum(group[i].num_tokens for i in r) for r in rows)
                    fed[name][0] += len(rows) * longest
                    fed[name][1] += sum(e.num_tokens for e in group)
            seqs = [len(e.prefix) + len(c) + 1 for e in batch for c in (e.chosen, e.rejected)]
            fed["trl-precompute"][0] += len(seqs) * max(seqs)
            fed["trl-precompute"][1] += sum(seqs)
    return {k: 1 - real / max(total, 1) for k, (total, real) in fed.items()}


# ---------------------------------------------------------------------------------------------- workers

def run_stepdpo(args, packed: bool) -> dict:
    from stepdpo_cli.train.loop import TrainConfig, train

    config = TrainConfig(model=args.model, data=args.data, output=os.path.join(args.root, f"stepdpo_{packed}"),
                         objective="step-dpo", lr=5e-6, epochs=args.epochs, batch_size=args.batch_size,
                         template="raw", max_length=args.max_length, seed=0,
                         max_tokens_per_batch=args.max_tokens if packed else 0)
    cpu = time.process_time()
    summary = train(config)
    return {"seconds": summary["seconds"], "loss": summary.get("loss"),  # reference pass + steps, like TRL's
            "train_cpu_s": time.process_time() - cpu}


def run_trl(args, precompute: bool) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from stepdpo_cli.templates import generation_prompt

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    rows = [json.loads(line) for line in open(args.data)]
    dataset = Dataset.from_list([{"prompt": generation_prompt(r["prompt"], "raw", tokenizer,
                                                              reason_prefix=r["initial_reason_steps"]),
                                  "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows])
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    config = DPOConfig(output_dir=os.path.join(args.root, f"trl_{precompute}"), per_device_train_batch_size=args.batch_size,
                       num_train_epochs=args.epochs, learning_rate=5e-6, beta=0.4, max_length=args.max_length,
                       precompute_ref_log_probs=precompute, use_cpu=True, bf16=False, gradient_checkpointing=False,
                       report_to="none", save_strategy="no", logging_steps=1000, lr_scheduler_type="cosine",
                       warmup_steps=0.1, seed=0, dataloader_num_workers=0, disable_tqdm=True)
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    t0, cpu = time.perf_counter(), time.process_time()
    out = trainer.train()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu
    trainer.save_model(os.path.join(args.root, f"trl_{precompute}", "final"))  # stepdpo saves too
    return {"seconds": seconds, "loss": out.training_loss, "train_cpu_s": cpu}


def worker(args) -> None:
    if args.worker.startswith("stepdpo"):
        result = run_stepdpo(args, packed=args.worker == "stepdpo-packed")
    else:
        result = run_trl(args, args.worker == "trl-precompute")
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def run_contender(name: str, args, root: str, data: str, model: str) -> dict | None:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu"}
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--root", root, "--data", data,
           "--model", model, "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
           "--max-tokens", str(args.max_tokens), "--max-length", str(args.max_length)]
    t0, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not line:
        print(f"{name}: FAILED\n{proc.stderr[-3000:]}", flush=True)
        return None
    result = json.loads(line[-1][7:])
    result["process_s"] = wall
    result["process_cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return result


# ---------------------------------------------------------------------------------------------- reports

def throughput(args, steps: tuple[int, int], pairs: int, label: str) -> dict:
    root = tempfile.mkdtemp(prefix="bench_train_")
    try:
        data, model = make_fixture(root, pairs, steps, max_positions=args.max_length + 64)
        examples = load_examples(data, model, args.max_length)
        ctx = sum(len(e.prefix) for e in examples) / len(examples)
        cont = sum(len(e.chosen) + len(e.rejected) for e in examples) / (2 * len(examples))
        unique = sum(e.num_tokens for e in examples)
        shares = padding_shares(examples, args.batch_size, args.max_tokens)
        print(f"\n== {label}: {len(examples)} pairs, context {ctx:.0f} tokens, step {cont:.0f} tokens, "
              f"{unique / len(examples):.0f} unique tokens/pair; Qwen2 hidden 256 x 4 layers; batch "
              f"{args.batch_size}; epochs {args.epochs}; --max-tokens-per-batch {args.max_tokens}; "
              f"load {os.getloadavg()[0]:.2f}", flush=True)
        results = {}
        for name in [n for n in args.contenders.split(",")]:
            result = run_contender(name, args, root, data, model)
            if result is None:
                continue
            result["pairs_per_s"] = len(examples) * args.epochs / result["seconds"]
            result["tokens_per_s"] = unique * args.epochs / result["seconds"]
            result["padding"] = shares.get(name, float("nan"))
            results[name] = result
            print(f"  {name:15s} {result['pairs_per_s']:7.2f} pairs/s {result['tokens_per_s']:8.0f} tok/s  "
                  f"train {result['seconds']:6.1f} s ({result['train_cpu_s']:6.1f} CPU s)  process "
                  f"{result['process_s']:6.1f} s ({result['process_cpu_s']:6.1f} CPU s)  "
                  f"peak RSS {result['peak_rss_mb']:6.0f} MB  padding {100 * result['padding']:5.1f}%  "
                  f"loss {result['loss']:.4f}", flush=True)
        base = results.get("trl-precompute")
        for name in ("stepdpo-dense", "stepdpo-packed"):
            if base and name in results:
                ours = results[name]
                print(f"  {name} / trl-precompute: {ours['pairs_per_s'] / base['pairs_per_s']:.2f}x pairs/s (train), "
                      f"{base['process_s'] / ours['process_s']:.2f}x whole process; in CPU seconds (steadier on a "
                      f"shared machine): {base['train_cpu_s'] / ours['train_cpu_s']:.2f}x train, "
                      f"{base['process_cpu_s'] / ours['process_cpu_s']:.2f}x whole process; "
                      f"{ours['peak_rss_mb'] / base['peak_rss_mb']:.2f}x peak RSS", flush=True)
        print(f"  (loss: stepdpo = last step's, TRL = mean over training; load after {os.getloadavg()[0]:.2f})")
        return results
    finally:
        shutil.rmtree(root, ignore_errors=True)


def memory_scaling(args) -> None:
    """Peak RSS at context ~1024 vs ~4096 for the same number of pairs (one epoch)."""
    saved = args.max_length, args.contenders
    args.max_length = 8192
    peaks: dict = {}
    for target, steps in ((1024, 11), (4096, 44)):
        root = tempfile.mkdtemp(prefix="bench_mem_")
        try:
            data, model = make_fixture(root, args.memory_pairs, (steps, steps), max_positions=8192)
            examples = load_examples(data, model, args.max_length)
            ctx = sum(len(e.prefix) for e in examples) / len(examples)
            for name in args.memory_contenders.split(","):
                result = run_contender(name, args, root, data, model)
                if result:
                    peaks[(name, target)] = result["peak_rss_mb"]
                    print(f"  memory {name:15s} context {ctx:5.0f}: peak RSS {result['peak_rss_mb']:6.0f} MB, "
                          f"train {result['seconds']:6.1f} s ({len(examples)} pairs, batch {args.batch_size}, "
                          f"load {os.getloadavg()[0]:.2f})", flush=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    for name in args.memory_contenders.split(","):
        if (name, 1024) in peaks and (name, 4096) in peaks:
            print(f"  {name}: peak RSS at 4096 / at 1024 = {peaks[(name, 4096)] / peaks[(name, 1024)]:.2f}x")
    args.max_length, args.contenders = saved


def varying(args) -> None:
    """Padding share on a fixture whose contexts vary 4x across pairs (computed from the batches, no training)."""
    root = tempfile.mkdtemp(prefix="bench_var_")
    try:
        data, model = make_fixture(root, args.pairs, (2, 9), max_positions=4096)
        examples = load_examples(data, model, 4096)
        ctx = sorted(len(e.prefix) for e in examples)
        shares = padding_shares(examples, args.batch_size, args.max_tokens)
        print(f"\n== varying contexts: {len(examples)} pairs, context {ctx[0]}..{ctx[-1]} tokens "
              f"({ctx[-1] / ctx[0]:.1f}x); batch {args.batch_size}; --max-tokens-per-batch {args.max_tokens}")
        for name, share in shares.items():
            print(f"  padding share {name:15s} {100 * share:5.1f}%")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=256, help="pairs at the short context")
    parser.add_argument("--long-pairs", type=int, default=64, help="pairs at the long context (0: skip)")
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=4096, help="stepdpo-packed's --max-tokens-per-batch")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--cases", default="short,long", help="short (~350 context), long (~1500), varying (4x)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per contender (runs are sequential)")
    parser.add_argument("--memory", action="store_true", help="only: peak RSS at context 1024 vs 4096")
    parser.add_argument("--memory-pairs", type=int, default=16)
    parser.add_argument("--memory-contenders", default="stepdpo-packed,stepdpo-dense")
    parser.add_argument("--varying", action="store_true", help="only: padding share on 4x-varying contexts")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--root", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    print(f"bench_train: load {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs, {args.threads} thread(s) per contender",
          flush=True)
    if args.varying:
        varying(args)
        return
    if args.memory:
        memory_scaling(args)
        return
    cases = {"short": ((3, 4), args.pairs, "short context"),
             "long": ((16, 16), args.long_pairs, "long context"),
             "varying": ((2, 9), args.pairs, "contexts varying ~4x across pairs")}
    for case in args.cases.split(","):
        steps, pairs, label = cases[case]
        if pairs:
            throughput(args, steps, pairs, label)


if __name__ == "__main__":
    main()
