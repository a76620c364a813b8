"""Step-DPO training throughput: `stepdpo train --objective step-dpo` vs TRL's DPOTrainer, one run, one machine.

Same model (a random Qwen2, hidden 256, 4 layers, BPE tokenizer), same Math-Step-DPO-shaped pairs (context
~4x the step), same batch size, same epochs. Each contender runs in its own process; we report pairs/s over
its train() call (reference log-probs included: both precompute them inside train) and the process's peak
RSS. Ratios are within this one run. TRL appends EOS to every completion (Step-DPO steps must not end in
EOS), so TRL trains on one more token per continuation; noted in the output.

    python bench/bench_train.py [--pairs 64] [--epochs 2] [--batch-size 4]
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


def make_fixture(root: str, pairs: int, seed: int = 0) -> tuple[str, str]:
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
                 f"{nums[0] + nums[1] + nums[2]} apples sold over the three days.",
                 f" A crate holds {nums[3]} apples, so we divide the total by {nums[3]} to count full crates."]
        prefix = "Let's think step by step.\nStep 1:" + steps[0] + "\nStep 2:" + steps[1] + "\nStep 3:"
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
                             corpus=corpus, vocab_size=1024, seed=seed)
    return data, model


def run_stepdpo(args) -> dict:
    from stepdpo_cli.train.loop import TrainConfig, train

    config = TrainConfig(model=args.model, data=args.data, output=os.path.join(args.root, "stepdpo_out"),
                         objective="step-dpo", lr=5e-6, epochs=args.epochs, batch_size=args.batch_size,
                         template="raw", max_length=1024, seed=0)
    summary = train(config)
    return {"seconds": summary["seconds"], "loss": summary.get("loss")}  # reference pass + steps, like TRL's


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
                       num_train_epochs=args.epochs, learning_rate=5e-6, beta=0.4, max_length=1024,
                       precompute_ref_log_probs=precompute, use_cpu=True, bf16=False, gradient_checkpointing=False,
                       report_to="none", save_strategy="no", logging_steps=1000, lr_scheduler_type="cosine",
                       warmup_steps=0.1, seed=0, dataloader_num_workers=0, disable_tqdm=True)
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    t0 = time.perf_counter()
    out = trainer.train()
    return {"seconds": time.perf_counter() - t0, "loss": out.training_loss}


def worker(args) -> None:
    result = run_stepdpo(args) if args.worker == "stepdpo" else run_trl(args, args.worker == "trl-precompute")
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; best round per contender")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per contender (runs are sequential)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--root", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    root = tempfile.mkdtemp(prefix="bench_train_")
    data, model = make_fixture(root, args.pairs)
    from transformers import AutoTokenizer

    from stepdpo_cli.train.data import encode_rows
    from stepdpo_cli.records import iter_jsonl

    examples = encode_rows(iter_jsonl(data), AutoTokenizer.from_pretrained(model), "raw", "step-dpo", 1024)
    ctx = sum(len(e.prefix) for e in examples) / len(examples)
    step = sum(len(e.chosen) + len(e.rejected) for e in examples) / (2 * len(examples))
    print(f"fixture: {len(examples)} pairs, context {ctx:.0f} tokens, step {step:.0f} tokens "
          f"(ratio {ctx / step:.1f}); Qwen2 hidden 256 x 4 layers; batch {args.batch_size}; epochs {args.epochs}; "
          f"load {os.getloadavg()[0]:.2f}")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu"}
    results: dict = {}
    # Contenders alternate for --rounds rounds and keep their best round: the machine is shared, so
    # interleaving spreads load swings over all of them.
    for name in [n for _ in range(args.rounds) for n in ("stepdpo", "trl-precompute", "trl")]:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--root", root, "--data", data,
               "--model", model, "--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode or not line:
            print(f"{name}: FAILED\n{proc.stderr[-2000:]}")
            continue
        result = json.loads(line[-1][7:])
        result["pairs_per_s"] = len(examples) * args.epochs / result["seconds"]
        if name in results and results[name]["pairs_per_s"] >= result["pairs_per_s"]:
            continue
        results[name] = result
    for name, result in results.items():
        print(f"{name:15s} {result['pairs_per_s']:8.2f} pairs/s  train {result['seconds']:7.1f} s  "
              f"peak RSS {result['peak_rss_mb']:7.0f} MB  loss {result['loss']:.4f}")
    base = results.get("trl-precompute")
    if base and "stepdpo" in results:
        ours = results["stepdpo"]
        print(f"stepdpo / trl-precompute: {ours['pairs_per_s'] / base['pairs_per_s']:.2f}x pairs/s, "
              f"{ours['peak_rss_mb'] / base['peak_rss_mb']:.2f}x peak RSS")
    if "trl" in results and "stepdpo" in results:
        print(f"stepdpo / trl (no precompute): {results['stepdpo']['pairs_per_s'] / results['trl']['pairs_per_s']:.2f}x pairs/s")
    print("loss: stepdpo = last step's, TRL = mean over training (not comparable)")
    shutil.rmtree(root, ignore_errors=True)
    print(f"note: TRL appends EOS to chosen/rejected (one extra token each); stepdpo does not (partial steps). "
          f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
