#!/usr/bin/env bash
# Makes the shipped SFT checkpoint (examples/arith/sft-model/) once, with our own `stepdpo train --objective sft`.
# The demo starts from the committed result; rerun this only to change the task or the model.
# Cost: SFT_STEPS optimizer steps of SFT_BATCH rows (~0.35 s/step on 2 free cores; much more on a shared machine).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PY:-../../.venv/bin/python}
SFT_STEPS=${SFT_STEPS:-2500}
SFT_BATCH=${SFT_BATCH:-32}
SFT_LR=${SFT_LR:-2e-3}
LAYERS=${LAYERS:-4}
OUT=${OUT:-sft-model}
WORK=${WORK:-work/sft}
mkdir -p "$WORK"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1

# The same seed and difficulty as the demo's data (Makefile), so the test problems are held out from SFT rows.
$PY -m stepdpo_cli.tasks.arith data --out-dir "$WORK/data" --seed 0 --sft $((SFT_STEPS * SFT_BATCH))
$PY -m stepdpo_cli.tasks.arith init-model --output "$WORK/init" --sft "$WORK/data/sft.jsonl" --layers "$LAYERS"
start=$(date +%s)
$PY -m stepdpo_cli train --objective sft --model "$WORK/init" --data "$WORK/data/sft.jsonl" --output "$OUT" \
  --template raw --lr "$SFT_LR" --batch-size "$SFT_BATCH" --max-steps "$SFT_STEPS" --warmup-ratio 0.03 \
  --scheduler cosine --weight-decay 0.0 --logging-steps 25 --save-steps ${SAVE_STEPS:-0} --seed 0 > "$WORK/train_metrics.jsonl"
echo "sft wall seconds: $(( $(date +%s) - start ))" | tee "$WORK/wall.txt" >&2
rm -rf "$OUT/checkpoints"  # resumable states are large; the model dir is what ships
cp "$WORK/train_metrics.jsonl" "$WORK/wall.txt" "$OUT/"
# Measured accuracy shipped beside the checkpoint: greedy on the demo's held-out problems.
$PY -m stepdpo_cli eval --model "$OUT" -i "$WORK/data/test.jsonl" -o "$WORK/eval_sft.jsonl" --summary "$OUT/eval_summary.json" --max-tokens 128
