# Process rewards in miniature (make -C examples/arith prm): Full-Step-DPO's pipeline and PRM-guided inference.
#
# Declared before any result (docs/prm.md repeats it): the shipped SFT checkpoint, the `reach` regime (chains of
# 4 operations), problems drawn apart from its SFT rows.
#   PRM       sample N_PRM solutions of each of PRM_POOL problems (T=1, all kept), train two PRMs from the SFT
#             checkpoint: `final-answer` labels (Full-Step-DPO's self-supervised N=1: every step takes its
#             solution's correctness) and `first-error` labels (the exact verifier's first wrong step: an upper
#             bound the self-supervised PRM can be held against). PRM_STEPS steps x PRM_BATCH solutions.
#   localize  HELD held-out solutions (test problems, 2 samples each, all kept); gold = the verifier; each PRM at
#             threshold 0.5 and the rollout localizer (ROLLOUTS rollouts, binary search, --check-root) scored with
#             ProcessBench's F1.
#   pairs     the pool's samples scored by the final-answer PRM; pair --strategy full-step --top TOP; Full-Step-DPO
#             from the SFT checkpoint, STEPS x BATCH (the demo's budget), LR, BETA, gamma 0.5, seeds SEEDS.
#   inference on TEST problems with the SFT checkpoint: greedy; K_SELECT samples at EVAL_T scored by each PRM, then
#             majority vote, best-of-n and weighted vote on the same samples; step-level beam search (BEAM x EXPAND)
#             guided by each PRM.
# Every file is a target: an interrupted run resumes where it stopped.

PY      ?= ../../.venv/bin/python
STEPDPO ?= $(PY) -m stepdpo_cli
SFT     ?= sft-model
W       ?= work-prm
OUT     ?= ../../docs/prm.md
TIMED    = ./timed.sh $(W)/times.jsonl
SFT_ROWS ?= 80000

DATA_SEED ?= 3
RANGE     ?= --min-steps 4 --max-steps 4
PRM_POOL  ?= 500
N_PRM     ?= 8
TEST      ?= 500
HELD      ?= 300
PRM_LR    ?= 1e-4
PRM_STEPS ?= 400
PRM_BATCH ?= 16
ROLLOUTS  ?= 8
TOP       ?= 4
LR        ?= 2e-5
BETA      ?= 0.5
STEPS     ?= 100
BATCH     ?= 16
SEEDS     ?= 1 2
K         ?= 2
K_SELECT  ?= 8
EVAL_T    ?= 0.7
BEAM      ?= 4
EXPAND    ?= 4
GEN        = --max-tokens 128 --batch-size 128

export OMP_NUM_THREADS ?= 2
export TOKENIZERS_PARALLELISM = false
export HF_HUB_OFFLINE = 1
VERIFIER = stepdpo_cli.tasks.arith:verify_steps

.PHONY: prm prm-report
.DELETE_ON_ERROR:
# Pattern-rule outputs (models, localized files) are results, not intermediates: make must not delete them.
.SECONDARY:

SHIPPED = $(W)/shipped/sft.jsonl
$(SHIPPED):
	$(PY) -m stepdpo_cli.tasks.arith data --out-dir $(dir $@) --seed 0 --sft $(SFT_ROWS)
$(W)/data/pool.jsonl $(W)/data/test.jsonl &: | $(SHIPPED)
	$(PY) -m stepdpo_cli.tasks.arith data --out-dir $(W)/data --seed $(DATA_SEED) --sft 0 --pool $(PRM_POOL) \
	  --test $(TEST) $(RANGE) --exclude $(SHIPPED)

# ---- the PRMs
$(W)/samples.jsonl: $(W)/data/pool.jsonl
	$(TIMED) sample $(STEPDPO) sample --model $(SFT) -i $< -o $@ --n $(N_PRM) --temperature 1.0 --top-p 1.0 \
	  --keep all --seed $(DATA_SEED) -q $(GEN)
$(W)/samples_verified.jsonl: $(W)/samples.jsonl
	$(STEPDPO) localize --method verifier --verifier $(VERIFIER) -i $< -o $@ -q
$(W)/models/prm-final/stepdpo.json: $(W)/samples.jsonl
	$(TIMED) train-prm-final $(STEPDPO) train --objective prm --prm-labels final-answer --model $(SFT) --data $< \
	  --output $(W)/models/prm-final --template raw --lr $(PRM_LR) --max-steps $(PRM_STEPS) \
	  --batch-size $(PRM_BATCH) --seed 1 --logging-steps 50 > $(W)/metrics-prm-final.jsonl
$(W)/models/prm-verifier/stepdpo.json: $(W)/samples_verified.jsonl
	$(TIMED) train-prm-verifier $(STEPDPO) train --objective prm --prm-labels first-error --model $(SFT) --data $< \
	  --output $(W)/models/prm-verifier --template raw --lr $(PRM_LR) --max-steps $(PRM_STEPS) \
	  --batch-size $(PRM_BATCH) --seed 1 --logging-steps 50 > $(W)/metrics-prm-verifier.jsonl

# ---- localization on held-out solutions
$(W)/held.jsonl: $(W)/data/test.jsonl
	head -n $$(( $(HELD) / 2 )) $< > $(W)/held_problems.jsonl
	$(STEPDPO) sample --model $(SFT) -i $(W)/held_problems.jsonl -o $@ --n 2 --temperature 1.0 --top-p 1.0 \
	  --keep all --seed 11 -q $(GEN)
$(W)/held_gold.jsonl: $(W)/held.jsonl
	$(STEPDPO) localize --method verifier --verifier $(VERIFIER) -i $< -o $@ -q
$(W)/held_%.jsonl: $(W)/held.jsonl $(W)/models/%/stepdpo.json
	$(TIMED) localize-$* $(STEPDPO) localize --method prm --prm $(W)/models/$* -i $< -o $@ -q
$(W)/held_rollout.jsonl: $(W)/held.jsonl
	$(TIMED) localize-rollout $(STEPDPO) localize --method rollout --model $(SFT) --rollouts $(ROLLOUTS) \
	  --search binary --check-root --temperature 1.0 --top-p 1.0 --max-tokens 128 --seed 11 -i $< -o $@ -q
$(W)/f1-%.json: $(W)/held_%.jsonl $(W)/held_gold.jsonl
	$(STEPDPO) score-localizer -i $< --gold $(W)/held_gold.jsonl --summary $@ -q > /dev/null

# ---- Full-Step-DPO from PRM-scored pairs
$(W)/scored.jsonl: $(W)/samples.jsonl $(W)/models/prm-final/stepdpo.json
	$(TIMED) score $(STEPDPO) score --prm $(W)/models/prm-final -i $< -o $@ -q
$(W)/pairs_fullstep.jsonl: $(W)/scored.jsonl
	$(STEPDPO) pair --strategy full-step --top $(TOP) -i $< -o $@
$(W)/models/fullstep-s%/stepdpo.json: $(W)/pairs_fullstep.jsonl
	$(TIMED) train-fullstep-s$* $(STEPDPO) train --objective full-step-dpo --model $(SFT) --data $< \
	  --output $(W)/models/fullstep-s$* --template raw --lr $(LR) --beta $(BETA) --batch-size $(BATCH) \
	  --max-steps $(STEPS) --warmup-ratio 0.1 --scheduler cosine --seed $* --logging-steps 10 \
	  > $(W)/metrics-fullstep-s$*.jsonl

model_path = $(if $(filter sft,$(1)),$(SFT),$(W)/models/$(1))
$(W)/eval/%-greedy.json: $(W)/data/test.jsonl | $(foreach s,$(SEEDS),$(W)/models/fullstep-s$(s)/stepdpo.json)
	$(TIMED) eval-$*-greedy $(STEPDPO) eval --model $(call model_path,$*) -i $< -o $(W)/eval/$*-greedy.jsonl \
	  --summary $@ --seed 0 -q $(GEN)
$(W)/eval/%-sampled.json: $(W)/data/test.jsonl | $(foreach s,$(SEEDS),$(W)/models/fullstep-s$(s)/stepdpo.json)
	$(TIMED) eval-$*-sampled $(STEPDPO) eval --model $(call model_path,$*) -i $< -o $(W)/eval/$*-sampled.jsonl \
	  --summary $@ --n $(K) --temperature $(EVAL_T) --top-p 1.0 --seed 0 -q $(GEN)

# ---- PRM-guided inference with the SFT checkpoint
$(W)/eval/select-%.json: $(W)/data/test.jsonl $(W)/models/%/stepdpo.json
	$(TIMED) eval-select-$* $(STEPDPO) eval --model $(SFT) -i $< -o $(W)/eval/select-$*.jsonl --summary $@ \
	  --n $(K_SELECT) --temperature $(EVAL_T) --top-p 1.0 --seed 0 --prm $(W)/models/$* -q $(GEN)
$(W)/eval/beam-%.json: $(W)/data/test.jsonl $(W)/models/%/stepdpo.json
	$(TIMED) eval-beam-$* $(STEPDPO) eval --model $(SFT) -i $< -o $(W)/eval/beam-$*.jsonl --summary $@ \
	  --search beam --beam-width $(BEAM) --expand $(EXPAND) --temperature $(EVAL_T) --top-p 1.0 --seed 0 \
	  --prm $(W)/models/$* -q --max-tokens 64 --batch-size 128

MODELS = sft $(foreach s,$(SEEDS),fullstep-s$(s))
PRM_FILES = $(foreach m,prm-final prm-verifier rollout,$(W)/f1-$(m).json) \
  $(foreach m,$(MODELS),$(W)/eval/$(m)-greedy.json $(W)/eval/$(m)-sampled.json) $(foreach p,prm-final prm-verifier,$(W)/eval/select-$(p).json $(W)/eval/beam-$(p).json)

prm: $(PRM_FILES)
	$(PY) prm_report.py --work $(W) --out $(OUT) --models "$(MODELS)" --settings "DATA_SEED=$(DATA_SEED) \
	  RANGE=$(RANGE) PRM_POOL=$(PRM_POOL) N_PRM=$(N_PRM) TEST=$(TEST) HELD=$(HELD) PRM_LR=$(PRM_LR) \
	  PRM_STEPS=$(PRM_STEPS) PRM_BATCH=$(PRM_BATCH) ROLLOUTS=$(ROLLOUTS) TOP=$(TOP) LR=$(LR) BETA=$(BETA) \
	  STEPS=$(STEPS) BATCH=$(BATCH) SEEDS=$(SEEDS) K=$(K) K_SELECT=$(K_SELECT) EVAL_T=$(EVAL_T) BEAM=$(BEAM) \
	  EXPAND=$(EXPAND)"
