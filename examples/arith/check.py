"""`make check`: every stage of a demo run produced records, and every trained model loads and generates.

Exit 0 when all is well, 1 with one line per problem otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

STAGE_FILES = ["data/test.jsonl", "data/pool.jsonl", "samples.jsonl", "localized.jsonl", "localized_rollout.jsonl",
               "rectified.jsonl"]


def count_records(path: str) -> int:
    with open(path, encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip() and isinstance(json.loads(line), dict))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", required=True)
    parser.add_argument("--models", required=True, help="space-separated model names under WORK/models")
    args = parser.parse_args()
    problems = []
    # The control trains on the Step-DPO rows; every other variant has its own pair file.
    variants = sorted({"stepdpo" if v == "control" else v for v in (m.rsplit("-s", 1)[0] for m in args.models.split())})
    for name in STAGE_FILES + [f"pairs_{v}.jsonl" for v in variants]:
        path = os.path.join(args.work, name)
        count = count_records(path) if os.path.exists(path) else 0
        print(f"{name}: {count} records")
        if not count:
            problems.append(f"{path}: no records")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stepdpo_cli.steps import STEP_PREFIX

    for model in args.models.split():
        path = os.path.join(args.work, "models", model)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            lm = AutoModelForCausalLM.from_pretrained(path)
            ids = tokenizer("What is 12 + 3 - 4?\n" + STEP_PREFIX, return_tensors="pt")
            out = lm.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
            text = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
            print(f"model {model}: loads; greedy continuation {text!r}")
        except Exception as exc:  # noqa: BLE001 - report every broken model, not just the first
            problems.append(f"{path}: does not load/generate: {type(exc).__name__}: {exc}")
        for summary in ("greedy", "sampled"):
            if not os.path.exists(os.path.join(args.work, "eval", f"{model}-{summary}.json")):
                problems.append(f"{model}: no {summary} eval summary")
    for problem in problems:
        print(f"check: {problem}", file=sys.stderr)
    print("check: ok" if not problems else f"check: {len(problems)} problem(s)", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
