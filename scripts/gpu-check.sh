#!/usr/bin/env bash
# The prepared GPU check (issue 12): bf16 Step-DPO on a ~0.5B random Qwen2 (plain, ZeRO-2, ZeRO-3), packed
# shared-prefix vs separate forwards on CUDA, stepdpo train vs TRL's DPOTrainer (pairs/s, tokens/s, MFU), and
# the hf backend's generation tokens/s. Writes docs/gpu.md. Sized for < 8 minutes on one H200.
#
#   scripts/gpu-check.sh                 # on the GPU machine: writes docs/gpu.md
#   scripts/gpu-check.sh --dry-run       # CPU: tiny model, 2 steps, same code paths (the test suite runs this)
#   options: --out FILE (default docs/gpu.md), --wheels DIR (default $STEPDPO_WHEELS or shared/wheels)
#   GPU_CHECK_DEEPSPEED=1 with --dry-run also runs the ZeRO-2/ZeRO-3 variants on CPU (slow: minutes).
#
# The GPU machine has torch, transformers, accelerate and peft; the other packages travel as wheels in
# --wheels DIR and are installed from there only (no network). A missing deepspeed skips the ZeRO runs, a
# missing trl/datasets skips the TRL comparison: each says so in the report.
set -euo pipefail
cd "$(dirname "$0")/.."

DRY=0
OUT=docs/gpu.md
WHEELS=${STEPDPO_WHEELS:-shared/wheels}
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT=$2; shift ;;
    --out=*) OUT=${1#--out=} ;;
    --wheels) WHEELS=$2; shift ;;
    --wheels=*) WHEELS=${1#--wheels=} ;;
    -h|--help) sed -n 2,14p "$0"; exit 0 ;;
    *) echo "gpu-check: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
if [ -d "$WHEELS" ]; then
  for pkg in orjson typer rich math-verify openai datasets deepspeed trl; do
    module=${pkg//-/_}
    if ! "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$module') is None)"; then
      "$PY" -m pip install -q --no-index --find-links "$WHEELS" "$pkg" >&2 \
        || echo "gpu-check: $pkg not installed (no wheel in $WHEELS)" >&2
    fi
  done
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
ARGS=(--out "$OUT")
[ "$DRY" = 1 ] && ARGS+=(--dry-run)

exec timeout 480 "$PY" - "${ARGS[@]}" <<'PY'
import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
parser.add_argument("--dry-run", action="store_true")
args = parser.parse_args()
DRY = args.dry_run
CUDA = torch.cuda.is_available()
if not CUDA and not DRY:
    sys.exit("gpu-check: no CUDA device here; use --dry-run on CPU")
DEVICE = "cuda" if CUDA else "cpu"
PEAK_FLOPS = 989e12  # H200 (= H100 SXM) dense bf16 tensor-core peak, for MFU
STEPS, BATCH, PAIRS = (2, 2, 4) if DRY else (20, 8, 256)
LR = 1e-4 if DRY else 5e-7  # the paper's lr on the GPU; a dry run's 2 steps need a larger one to show learning
ROOT = tempfile.mkdtemp(prefix="gpu-check-")
STARTED = time.time()
report: list[str] = []
failures: list[str] = []


def say(message: str) -> None:
    print(f"gpu-check: {message}", file=sys.stderr, flush=True)


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def section(title: str, lines: list[str]) -> None:
    report.extend([f"## {title}", "", *lines, ""])
    write_report(done=False)  # each section lands at once: a run cut short by the time limit keeps them


def write_report(done: bool) -> None:
    device = torch.cuda.get_device_name(0) if CUDA else f"CPU ({platform.processor() or platform.machine()})"
    result = ("all checks passed" if not failures else "FAILED: " + "; ".join(failures)) if done else \
        "INCOMPLETE (the run stopped before its last section)" + ("; FAILED: " + "; ".join(failures) if failures else "")
    head = ["# GPU check" + (" (DRY RUN on CPU: tiny model, 2 steps; not GPU figures)" if DRY else ""), "",
            f"Written by `scripts/gpu-check.sh{' --dry-run' if DRY else ''}` on "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} in {time.time() - STARTED:.0f} s. Device: {device}. "
            f"{versions()}.", "",
            f"Model: random Qwen2, {N_PARAMS / 1e6:.1f}M parameters; data: bench/bench_train.py's fixture, "
            f"{len(examples)} pairs, {TOKENS_PER_PAIR:.0f} tokens per pair (context + chosen + rejected).", "",
            "Result: " + result, ""]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".tmp", "w") as handle:
        handle.write("\n".join(head + report))
    os.replace(args.out + ".tmp", args.out)


def check(ok: bool, what: str) -> str:
    if not ok:
        failures.append(what)
    return "yes" if ok else "**NO**"


# ------------------------------------------------------------------------------------------ fixture + model
sys.path.insert(0, "bench")
from bench_train import make_fixture  # noqa: E402 - the fixture of bench/bench_train.py, scaled here

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from stepdpo_cli.tiny import build_tiny_model  # noqa: E402

data, small = make_fixture(ROOT, PAIRS, context_steps=(2, 4), max_positions=4096)
if DRY:
    model_dir = small
else:  # ~0.5B parameters, randomly initialised, the fixture's BPE tokenizer
    model_dir = build_tiny_model(os.path.join(ROOT, "qwen2-0.5b"), tokenizer_path=small, hidden=1024, layers=24,
                                 heads=16, intermediate=5504, max_positions=4096)
with torch.device("meta"):
    N_PARAMS = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir)).parameters())
tokenizer = AutoTokenizer.from_pretrained(model_dir)
from stepdpo_cli.records import iter_jsonl  # noqa: E402
from stepdpo_cli.train.data import encode_rows  # noqa: E402

examples = encode_rows(iter_jsonl(data), tokenizer, "raw", "step-dpo", 1024)
TOKENS_PER_PAIR = sum(e.num_tokens for e in examples) / len(examples)
say(f"fixture: {len(examples)} pairs, {TOKENS_PER_PAIR:.0f} tokens/pair, model {N_PARAMS / 1e6:.1f}M params")


def versions() -> str:
    names = ["torch", "transformers", "accelerate", "peft", "deepspeed", "trl"]
    found = []
    for name in names:
        try:
            found.append(f"{name} {__import__(name).__version__}")
        except Exception:  # noqa: BLE001 - not installed
            found.append(f"{name} -")
    return ", ".join(found)


# ------------------------------------------------------------------------------------------ 1. Step-DPO training
def changed_fraction(before_dir: str, after_dir: str) -> float:
    from safetensors.torch import load_file

    before = load_file(os.path.join(before_dir, "model.safetensors"))
    after = load_file(os.path.join(after_dir, "model.safetensors"))
    changed = sum(int((before[k].to(after[k].dtype) != after[k]).sum()) for k in before if k in after)
    return changed / sum(before[k].numel() for k in before if k in after)


INITIAL_LOGPS: dict = {}


def packed_sums(model, chunk: list, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) summed log-probs of `chunk` from one shared-prefix forward (train's own packing)."""
    from stepdpo_cli.train.data import pack, token_logps
    from stepdpo_cli.train.losses import segment_sums

    batch = pack(chunk, tokenizer.pad_token_id, dtype)
    inputs = {k: (v.to(DEVICE) if torch.is_tensor(v) else v) for k, v in batch.model_inputs().items()}
    for name in ("source_index", "target_ids", "segment"):
        setattr(batch, name, getattr(batch, name).to(DEVICE))
    return segment_sums(token_logps(model(**inputs).logits, batch), batch.segment)


def pair_logps(path: str, rounded_to: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of chosen and rejected for every pair, computed in fp32 from weights stored in
    `rounded_to` (a bf16 checkpoint's values are exact in fp32)."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=rounded_to).float().to(DEVICE).eval()
    chosen, rejected = [], []
    with torch.no_grad():
        for i in range(0, len(examples), 8):
            pc, pr = packed_sums(model, examples[i:i + 8])
            chosen.append(pc.cpu())
            rejected.append(pr.cpu())
    del model
    return torch.cat(chosen), torch.cat(rejected)


def pair_loss(out: str) -> float:
    """Mean DPO loss of the saved model over all pairs against the initial weights (rounded to the saved
    dtype, as ZeRO rounds them at start), both in fp32: log 2 before any update, below it once the model
    has learned to prefer chosen. A per-step training loss compares different batches."""
    from safetensors import safe_open

    from stepdpo_cli.train.losses import preference_loss

    with safe_open(os.path.join(out, "model.safetensors"), "pt") as handle:
        saved = handle.get_slice(next(iter(handle.keys()))).get_dtype()
    rounded_to = torch.bfloat16 if saved in ("BF16", "bfloat16") else torch.float16 if saved in ("F16",) else torch.float32
    if rounded_to not in INITIAL_LOGPS:
        INITIAL_LOGPS[rounded_to] = pair_logps(model_dir, rounded_to)
    rc, rr = INITIAL_LOGPS[rounded_to]
    pc, pr = pair_logps(out, rounded_to)
    return float(preference_loss(pc.double(), pr.double(), rc.double(), rr.double(), beta=0.4)[0].mean())


def train_variant(name: str, deepspeed: str | None) -> dict:
    out = os.path.join(ROOT, f"train-{name}")
    cmd = [sys.executable, "-m", "stepdpo_cli", "train", "--model", model_dir, "--data", data, "--output", out,
           "--objective", "step-dpo", "--template", "raw", "--max-steps", str(STEPS), "--batch-size", str(BATCH),
           "--lr", str(LR), "--scheduler", "constant", "--warmup-ratio", "0", "--seed", "0", "--quiet"]
    if CUDA:
        cmd.append("--bf16")
    if deepspeed:
        cmd += ["--deepspeed", deepspeed]
    if name == "packed":
        cmd += ["--max-tokens-per-batch", "8192"]
    t0 = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, timeout=300)
    wall = time.perf_counter() - t0
    if run.returncode != 0:
        failures.append(f"train {name}")
        say(f"train {name} failed: {run.stderr.decode(errors='replace')[-1500:]}")
        return {"name": name, "error": f"exit {run.returncode}"}
    metrics = [json.loads(line) for line in run.stdout.decode().splitlines() if line.startswith("{")]
    summary = json.load(open(os.path.join(out, "stepdpo.json")))["summary"]
    steady = [m["tokens_per_s"] for m in metrics[1:]] or [metrics[0]["tokens_per_s"]]
    tokens_per_s = sum(steady) / len(steady)
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16 if CUDA else torch.float32).to(DEVICE)
    with torch.no_grad():
        logits = reloaded(torch.tensor([examples[0].prefix[:32]], device=DEVICE)).logits
    loads = bool(torch.isfinite(logits).all())
    del reloaded
    return {"name": name, "loss_first": metrics[0]["loss"], "loss_last": metrics[-1]["loss"],
            "pair_loss": pair_loss(out),
            "changed": changed_fraction(model_dir, out), "loads": loads, "wall": wall,
            "seconds": summary["seconds"], "pairs_per_s": STEPS * BATCH / summary["seconds"],
            "tokens_per_s": tokens_per_s, "mfu": 6 * N_PARAMS * tokens_per_s / PEAK_FLOPS if CUDA else None}


variants = [("plain", None), ("packed", None)]  # packed: --max-tokens-per-batch (train/packing.py)
if not DRY or os.environ.get("GPU_CHECK_DEEPSPEED"):
    variants += [("zero2", "zero2"), ("zero3", "zero3")]
rows, skipped = [], []
for name, ds in variants:
    if ds and not has("deepspeed"):
        skipped.append(f"{name}: deepspeed is not installed")
        continue
    say(f"train {name} ({STEPS} steps)")
    rows.append(train_variant(name, ds))
table = ["| run | loss step 1 | loss step %d | loss on all pairs after | falls below log 2 | weights changed | "
         "saved model loads | pairs/s (ref + steps) | tokens/s (steps) | MFU |" % STEPS,
         "|---|---|---|---|---|---|---|---|---|---|"]
for r in rows:
    if "error" in r:
        table.append(f"| {r['name']} | {r['error']} | | | | | | | | |")
        continue
    table.append(f"| {r['name']} | {r['loss_first']:.5f} | {r['loss_last']:.5f} | {r['pair_loss']:.6f} | "
                 f"{check(r['pair_loss'] < 0.6931471805599453, r['name'] + ': loss falls')} | {r['changed']:.3f} | "
                 f"{check(r['loads'], r['name'] + ': saved model loads')} | {r['pairs_per_s']:.2f} | "
                 f"{r['tokens_per_s']:.0f} | " + (f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-") + " |")
    if r["name"] == "plain":  # fp32 master weights: at lr 5e-7 nearly every weight moves
        check(r["changed"] > 0.9, "plain: fp32 master weights move")
section(f"1. {'bf16' if CUDA else 'fp32'} Step-DPO, {STEPS} steps, batch {BATCH}, lr {LR:g} (constant)", [
    *table, "", "weights changed: share of the saved weights that differ from the initial ones, compared in the "
    "saved dtype (plain: fp32 master weights; ZeRO-3 saves gathered 16-bit weights, where an lr 5e-7 update "
    "often rounds away).", *[f"- skipped {s}" for s in skipped]])
TRAIN = {r["name"]: r for r in rows if "error" not in r}

# ------------------------------------------------------------------------------------------ 2. packed vs separate
dtype = torch.bfloat16 if CUDA else torch.float32
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa").to(DEVICE).eval()
sample = examples[:8]
with torch.no_grad():
    packed_c, packed_r = packed_sums(model, sample, dtype)
    separate = []
    for e in sample:
        sums = []
        for cont in (e.chosen, e.rejected):
            ids = torch.tensor([e.prefix + cont], device=DEVICE)
            logps = model(ids).logits[0, len(e.prefix) - 1:-1].float().log_softmax(-1)
            sums.append(logps.gather(-1, ids[0, len(e.prefix):, None]).sum())
        separate.append(sums)
sep = torch.tensor([[float(c), float(r)] for c, r in separate])
pk = torch.stack([packed_c.float().cpu(), packed_r.float().cpu()], dim=1)
diff = (pk - sep).abs()
per_token = diff / torch.tensor([[len(e.chosen), len(e.rejected)] for e in sample])
tolerance = 0.02 if CUDA else 1e-4  # nats per token: bf16 logits differ by ~1e-2 between kernels/shapes


def packed_rows_check() -> list[str]:
    """Padding-free rows (--max-tokens-per-batch, train/packing.py) vs the separate forwards above: each
    attention kernel the device offers (FlexAttention BlockMask on CUDA, per-pair SDPA), then one timed
    forward + backward of a packed row (the training path)."""
    from stepdpo_cli.train import packing

    lines = []
    plan = packing.plan_for(model, 8192, DEVICE)
    kernels = ["flex", "sdpa-segments"] if plan.attention == "flex" else [plan.attention]
    for kernel in kernels:
        plan.attention = kernel
        try:
            with torch.no_grad():
                t0 = time.perf_counter()
                rows, tok = packing.forward(model, sample, plan, tokenizer.pad_token_id, DEVICE)
                seconds = time.perf_counter() - t0
            sums = torch.stack([(tok * (rows.segment == s)).sum(-1).float().cpu() for s in (1, 2)], dim=1)
            gap = float(((sums - sep).abs() / torch.tensor([[len(e.chosen), len(e.rejected)] for e in sample])).max())
            model.train()
            t0 = time.perf_counter()
            _, tok = packing.forward(model, sample, plan, tokenizer.pad_token_id, DEVICE)
            tok.sum().backward()
            if CUDA:
                torch.cuda.synchronize()
            backward_s = time.perf_counter() - t0
            model.zero_grad(set_to_none=True)
            model.eval()
            lines.append(f"packed rows ({kernel}), {rows.input_ids.shape[0]} row(s) of {rows.input_ids.shape[1]} "
                         f"tokens, no padding: max {gap:.5f} nats per token from separate forwards; within "
                         f"tolerance: {check(gap < tolerance, 'packed rows ' + kernel)}; forward {seconds:.2f} s "
                         f"(first call: includes compilation), forward + backward {backward_s:.2f} s")
        except Exception as error:  # noqa: BLE001 - reported, not fatal to the other checks
            failures.append(f"packed rows {kernel}")
            lines.append(f"packed rows ({kernel}): **failed**: {type(error).__name__}: {str(error)[:300]}")
    packing.restore_attention(model)
    return lines


PACKED_LINES = packed_rows_check()
section("2. Packed shared-prefix forward vs separate forwards (SDPA)", [
    f"{len(sample)} pairs, {DEVICE}, {dtype}: max |difference| of summed log-probs {diff.max():.4f} nats "
    f"(sums of {float(sep.abs().mean()):.0f} nats on average), max {per_token.max():.5f} nats per token; "
    f"within tolerance ({tolerance} per token): {check(float(per_token.max()) < tolerance, 'packed vs separate')}",
    "",
    *PACKED_LINES,
])
del model
if CUDA:
    torch.cuda.empty_cache()

# ------------------------------------------------------------------------------------------ 3. TRL comparison
if not (has("trl") and has("datasets")):
    section("3. stepdpo train vs TRL DPOTrainer", ["skipped: trl and/or datasets are not installed"])
else:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from stepdpo_cli.templates import generation_prompt

    raw = [json.loads(line) for line in open(data)]
    dataset = Dataset.from_list([{"prompt": generation_prompt(r["prompt"], "raw", tokenizer,
                                                              reason_prefix=r["initial_reason_steps"]),
                                  "chosen": r["chosen"], "rejected": r["rejected"]} for r in raw])
    trl_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    config = DPOConfig(output_dir=os.path.join(ROOT, "trl"), per_device_train_batch_size=BATCH, max_steps=STEPS,
                       learning_rate=LR, beta=0.4, max_length=1024, precompute_ref_log_probs=True,
                       bf16=CUDA, use_cpu=not CUDA, report_to="none", save_strategy="no", logging_steps=STEPS,
                       lr_scheduler_type="constant", seed=0, disable_tqdm=True, dataloader_num_workers=0)
    trainer = DPOTrainer(model=trl_model, args=config, train_dataset=dataset, processing_class=tokenizer)
    say(f"trl DPOTrainer ({STEPS} steps)")
    t0 = time.perf_counter()
    trainer.train()
    trl_seconds = time.perf_counter() - t0
    # tokens/s in the same units for both: each pair's unique tokens (context + chosen + rejected), over
    # reference pass + steps (TRL precomputes the reference over the whole dataset, as stepdpo does).
    ours = TRAIN.get("plain")
    lines = ["| trainer | seconds (ref + steps) | pairs/s | tokens/s | MFU (training tokens) |", "|---|---|---|---|---|"]
    packed = TRAIN.get("packed")
    for label, seconds in (("stepdpo train", ours["seconds"] if ours else None),
                           ("stepdpo train --max-tokens-per-batch 8192", packed["seconds"] if packed else None),
                           ("TRL DPOTrainer", trl_seconds)):
        if seconds is None:
            lines.append(f"| {label} | failed | | | |")
            continue
        pairs_per_s = STEPS * BATCH / seconds
        tps = pairs_per_s * TOKENS_PER_PAIR
        mfu = f"{100 * 6 * N_PARAMS * tps / PEAK_FLOPS:.1f}%" if CUDA else "-"
        lines.append(f"| {label} | {seconds:.1f} | {pairs_per_s:.2f} | {tps:.0f} | {mfu} |")
    section(f"3. stepdpo train vs TRL DPOTrainer ({len(raw)} pairs, {STEPS} steps, batch {BATCH})", [
        *lines, "", "Both include the reference pass over all pairs; TRL computes each context twice "
        "(chosen and rejected rows) and appends EOS."])
    del trainer, trl_model
    if CUDA:
        torch.cuda.empty_cache()

# ------------------------------------------------------------------------------------------ 4. hf generation
from stepdpo_cli.backends.base import Request, SamplingParams  # noqa: E402
from stepdpo_cli.backends.hf import HFBackend  # noqa: E402
from stepdpo_cli.templates import generation_prompt  # noqa: E402

prompts, n, max_tokens = (4, 2, 8) if DRY else (32, 4, 128)
engine = HFBackend(model_dir, device=DEVICE, dtype="bfloat16" if CUDA else "float32", batch_size=128)
raw = [json.loads(line) for line in open(data)][:prompts]
requests = [Request(generation_prompt(r["prompt"], "raw", engine.tokenizer), seed=i) for i, r in enumerate(raw)]
params = SamplingParams(n=n, temperature=0.8, top_p=0.95, max_tokens=max_tokens)
engine.generate(requests[:1], SamplingParams(n=1, max_tokens=4))  # warm-up (CUDA kernels, allocator)
t0 = time.perf_counter()
outputs = engine.generate(requests, params)
seconds = time.perf_counter() - t0
generated = sum(c.num_tokens for row in outputs for c in row)
section("4. hf backend generation", [
    f"{prompts} prompts x n={n}, max_tokens {max_tokens}, {DEVICE} {'bf16' if CUDA else 'fp32'}: "
    f"{generated} tokens in {seconds:.2f} s = **{generated / seconds:.0f} tokens/s**"])

# ------------------------------------------------------------------------------------------ report
write_report(done=True)
shutil.rmtree(ROOT, ignore_errors=True)
say(f"wrote {args.out} in {time.time() - STARTED:.0f} s" + (f"; FAILED: {'; '.join(failures)}" if failures else ""))
sys.exit(1 if failures else 0)
PY
