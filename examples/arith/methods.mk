# The step-level methods side by side (make -C examples/arith methods): one model, one problem set, one budget.
#
# The protocol is declared here, before any result, and docs/methods.md states it again above its tables:
#   regime    reach: the shipped SFT checkpoint on chains of 4 operations (within its reach, ~80% greedy), where the
#             study (docs/study.md) found SFT on the chosen steps ahead of Step-DPO
#   data      seed DATA_SEED: TEST held-out problems, VAL validation problems, POOL problems to build every
#             method's data from; no split holds a problem the shipped model was trained on
#   methods   sft       the shipped checkpoint, untrained
#             control   SFT on the Step-DPO rows' chosen steps (no rejected step, no preference term)
#             dpo       whole-solution DPO on the Step-DPO material (pair --format dpo)
#             stepdpo   Step-DPO: sample (N_SAMPLE, T=1, wrong kept) -> verifier localize -> rectify -> pair
#             nll       Step-DPO + NLL on the chosen step (weight NLL, Step-DPO's LR and beta)
#             tdpo2     Step-DPO's rows with the TDPO2 loss (alpha TDPO_ALPHA; live reference)
#             fullstep  Full-Step-DPO: N_PRM samples per pool problem (all kept), a final-answer PRM trained on
#                       them (PRM_STEPS x PRM_BATCH), pairs top-TOP x bottom-TOP by mean step reward
#             mcts      MCTS-DPO: `search` trees on the first SEARCH_POOL pool problems (SIMULATIONS, EXPAND,
#                       ROOT_EXPAND, SEARCH_ROLLOUTS), `pair --strategy tree`, cDPO with each row's smoothing
#             qvalue    Setlur et al.: the N_PRM samples' wrong ones localized by QV_ROLLOUTS rollouts per step
#                       (linear), the critical step's prefix against a correct sample (pair --strategy q-value
#                       --format dpo --top QV_TOP), trained with DPO
#             svpo      the tree pairs with SVPO's loss: Step-DPO + SFT on chosen + value head on the tree's Q
#             every trained method: STEPS optimizer steps x BATCH rows from the SFT checkpoint, cosine, warm-up
#             0.1, seeds SEEDS
#   tuning    LR x BETA chosen on VAL (greedy) per method, seed TUNE_SEED (control: LR only; nll takes
#             Step-DPO's values). Ties go to the smaller LR, then the smaller beta. The test set is never read.
#             The seed-TUNE_SEED final of a tuned method is its chosen tuning run (same data, values and seed).
#   measures  greedy accuracy on TEST and mean accuracy over K samples at EVAL_T, every comparison paired on the
#             same problems (seeds averaged per problem; 95% CI over problems); the SFT checkpoint's selectors
#             on TEST: majority vote, best-of-K_SELECT and weighted vote with the fullstep PRM, PRM-guided step
#             beam search, and SVPO's value-guided beam search (its seed-TUNE_SEED model and head); cost: tokens
#             generated and CPU seconds to build each method's data, train CPU seconds
#
# Every file is a make target: an interrupted run resumes where it stopped (rerun the target). Two one-thread
# jobs at a time (make -j2, OMP_NUM_THREADS=1). Targets: methods, methods-data, methods-tune, methods-models,
# methods-select, methods-report, methods-check; methods-quick runs the whole protocol in miniature (make test).

PY       ?= ../../.venv/bin/python
STEPDPO  ?= $(PY) -m stepdpo_cli
SFT      ?= sft-model
M        ?= methods
OUT      ?= ../../docs/methods.md
R         = $(M)/reach
TIMED     = ./timed.sh $(M)/times.jsonl

SFT_ROWS  ?= 80000
RANGE     ?= --min-steps 4 --max-steps 4
DATA_SEED ?= 4
TEST      ?= 2000
VAL       ?= 500
POOL      ?= 1000
SEEDS     ?= 1 2 3
TUNE_SEED ?= 1
LRS       ?= 2e-5 5e-5
BETAS     ?= 0.1 0.5
STEPS     ?= 100
BATCH     ?= 16
NLL       ?= 1
TDPO_ALPHA ?= 0.5
K         ?= 2
EVAL_T    ?= 0.7
MAX_TOKENS ?= 128
N_SAMPLE  ?= 2
N_RECTIFY ?= 8
MAX_CANDIDATES ?= 2
N_PRM     ?= 4
PRM_STEPS ?= 300
PRM_BATCH ?= 16
PRM_LR    ?= 1e-4
TOP       ?= 2
QV_ROLLOUTS ?= 4
QV_TOP    ?= 2
SEARCH_POOL ?= 600
SIMULATIONS ?= 16
EXPAND    ?= 2
ROOT_EXPAND ?= 4
SEARCH_ROLLOUTS ?= 2
K_SELECT  ?= 4
BEAM      ?= 2
BEAM_EXPAND ?= 2
GEN        = --max-tokens $(MAX_TOKENS) --batch-size 128
PIPELINE   = N_SAMPLE=$(N_SAMPLE) N_RECTIFY=$(N_RECTIFY) MAX_CANDIDATES=$(MAX_CANDIDATES) MAX_TOKENS=$(MAX_TOKENS) \
             TEMPERATURE=1.0 ACCEPT=step PY=$(abspath $(PY)) SHIPPED_ROWS=$(M)/shipped/sft.jsonl

export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM = false
export HF_HUB_OFFLINE = 1
VERIFIER = stepdpo_cli.tasks.arith:verify_steps

TRAINED  = control dpo stepdpo nll tdpo2 fullstep mcts qvalue svpo
TUNED    = dpo stepdpo tdpo2 fullstep mcts qvalue svpo
TUNE_NAMES = $(foreach v,$(TUNED),$(foreach lr,$(LRS),$(foreach b,$(BETAS),tune_$(v)_lr$(lr)_b$(b)))) \
             $(foreach lr,$(LRS),tune_control_lr$(lr))
FINAL_NAMES = $(foreach v,$(TRAINED),$(foreach s,$(SEEDS),$(v)_s$(s)))

part      = $(word $(1),$(subst _, ,$(2)))
objective = $(if $(filter control,$(1)),sft,$(if $(filter dpo qvalue,$(1)),dpo,$(if $(filter fullstep,$(1)),full-step-dpo,$(if $(filter svpo,$(1)),svpo,step-dpo))))
pairs_of  = $(R)/$(if $(filter dpo,$(1)),pairs_dpo,$(if $(filter fullstep,$(1)),pairs_fullstep,$(if $(filter mcts svpo,$(1)),pairs_tree,$(if $(filter qvalue,$(1)),pairs_qvalue,pairs_stepdpo)))).jsonl
extra     = $(if $(filter tdpo2,$(1)),--loss tdpo2 --tdpo-alpha $(TDPO_ALPHA))
# $(call train,NAME,METHOD,LR/BETA OPTIONS,SEED)
train     = $(TIMED) train-$(1) $(STEPDPO) train --objective $(call objective,$(2)) --model $(SFT) \
  --data $(call pairs_of,$(2)) --output $(R)/models/$(1) --template raw $(3) $(call extra,$(2)) \
  --batch-size $(BATCH) --max-steps $(STEPS) --warmup-ratio 0.1 --scheduler cosine --seed $(4) \
  --logging-steps 10 -q > $(R)/metrics-$(1).jsonl
# $(call evaluate,NAME,MODEL,KIND): greedy / sampled on the test problems, val = greedy on the validation split
evaluate  = $(TIMED) eval-$(1)-$(3) $(STEPDPO) eval --model $(2) \
  -i $(R)/data/$(if $(filter val,$(3)),val,test).jsonl -o $(R)/eval/$(1)-$(3).jsonl --summary $(R)/eval/$(1)-$(3).json \
  $(if $(filter sampled,$(3)),--n $(K) --temperature $(EVAL_T) --top-p 1.0) --seed 0 -q $(GEN)

.PHONY: methods methods-data methods-tune methods-models methods-select methods-report methods-check methods-quick
.DELETE_ON_ERROR:
.SECONDARY:

methods: methods-check

# The protocol in miniature (make test): every method, two seeds, one LR x beta, a few steps.
methods-quick:
	$(MAKE) -f methods.mk methods-check M=methods-quick OUT=methods-quick/methods.md TEST=40 VAL=20 POOL=40 \
	  SEEDS="1 2" LRS=2e-5 BETAS=0.1 STEPS=3 BATCH=4 N_RECTIFY=4 N_PRM=4 PRM_STEPS=4 PRM_BATCH=4 SEARCH_POOL=6 \
	  SIMULATIONS=4 K=1 K_SELECT=2 SFT_ROWS=$(SFT_ROWS)

$(M)/shipped/sft.jsonl:
	$(PY) -m stepdpo_cli.tasks.arith data --out-dir $(M)/shipped --seed 0 --sft $(SFT_ROWS)
$(R)/data/test.jsonl $(R)/data/val.jsonl $(R)/data/pool.jsonl &: $(M)/shipped/sft.jsonl
	$(PY) -m stepdpo_cli.tasks.arith data --out-dir $(R)/data --seed $(DATA_SEED) --sft 0 --pool $(POOL) \
	  --test $(TEST) --val $(VAL) $(RANGE) --exclude $<

# ---- Step-DPO's material (control, dpo, stepdpo, nll, tdpo2), by the demo's own rules
$(R)/pairs_stepdpo.jsonl $(R)/pairs_dpo.jsonl &: $(R)/data/pool.jsonl
	$(MAKE) -f Makefile WORK=$(R) SFT=$(SFT) DATA_SEED=$(DATA_SEED) $(PIPELINE) TIMED="$(TIMED)" \
	  $(R)/pairs_stepdpo.jsonl $(R)/pairs_dpo.jsonl

# ---- Full-Step-DPO: samples, a final-answer PRM, scored pairs
$(R)/prm_samples.jsonl: $(R)/data/pool.jsonl
	$(TIMED) prm-sample $(STEPDPO) sample --model $(SFT) -i $< -o $@ --n $(N_PRM) --temperature 1.0 --top-p 1.0 \
	  --keep all --seed $(DATA_SEED) -q $(GEN)
$(R)/models/prm/stepdpo.json: $(R)/prm_samples.jsonl
	$(TIMED) prm-train $(STEPDPO) train --objective prm --prm-labels final-answer --model $(SFT) --data $< \
	  --output $(R)/models/prm --template raw --lr $(PRM_LR) --max-steps $(PRM_STEPS) --batch-size $(PRM_BATCH) \
	  --seed 1 --logging-steps 50 -q > $(R)/metrics-prm.jsonl
$(R)/prm_scored.jsonl: $(R)/prm_samples.jsonl $(R)/models/prm/stepdpo.json
	$(TIMED) prm-score $(STEPDPO) score --prm $(R)/models/prm -i $< -o $@ -q
$(R)/pairs_fullstep.jsonl: $(R)/prm_scored.jsonl
	$(TIMED) pair-fullstep $(STEPDPO) pair --strategy full-step --top $(TOP) -i $< -o $@

# ---- Q-value pairs: the same samples, the wrong ones rolled out step by step
$(R)/qv_rolled.jsonl: $(R)/prm_samples.jsonl
	$(PY) methods.py wrong -i $< -o $(R)/qv_wrong.jsonl
	$(TIMED) qv-localize $(STEPDPO) localize --method rollout --model $(SFT) --rollouts $(QV_ROLLOUTS) \
	  --search linear --temperature 1.0 --top-p 1.0 --max-tokens $(MAX_TOKENS) --seed $(DATA_SEED) \
	  -i $(R)/qv_wrong.jsonl -o $(R)/qv_wrong_rolled.jsonl -q
	$(PY) methods.py merge --samples $< --rolled $(R)/qv_wrong_rolled.jsonl -o $@
$(R)/pairs_qvalue.jsonl: $(R)/qv_rolled.jsonl
	$(TIMED) pair-qvalue $(STEPDPO) pair --strategy q-value --format dpo --top $(QV_TOP) -i $< -o $@

# ---- MCTS trees (mcts, svpo)
$(R)/trees.jsonl: $(R)/data/pool.jsonl
	head -n $(SEARCH_POOL) $< > $(R)/search_problems.jsonl
	$(TIMED) search $(STEPDPO) search --model $(SFT) -i $(R)/search_problems.jsonl -o $@ \
	  --simulations $(SIMULATIONS) --expand $(EXPAND) --root-expand $(ROOT_EXPAND) --rollouts $(SEARCH_ROLLOUTS) \
	  --max-step-tokens 64 --max-tokens $(MAX_TOKENS) --temperature 1.0 --top-p 1.0 --seed $(DATA_SEED) \
	  --template raw --batch-size 128 -q
$(R)/pairs_tree.jsonl: $(R)/trees.jsonl
	$(TIMED) pair-tree $(STEPDPO) pair --strategy tree -i $< -o $@

PAIRS = $(R)/pairs_stepdpo.jsonl $(R)/pairs_dpo.jsonl $(R)/pairs_fullstep.jsonl $(R)/pairs_qvalue.jsonl \
        $(R)/pairs_tree.jsonl
methods-data: $(PAIRS)

# ---- tuning on the validation split
$(foreach n,$(TUNE_NAMES),$(R)/models/$(n)/stepdpo.json): $(R)/models/tune_%/stepdpo.json: | $(PAIRS)
	$(call train,tune_$*,$(call part,1,$*),--lr $(patsubst lr%,%,$(call part,2,$*)) \
	  $(if $(call part,3,$*),--beta $(patsubst b%,%,$(call part,3,$*))),$(TUNE_SEED))
$(R)/chosen.json: $(foreach n,$(TUNE_NAMES),$(R)/eval/$(n)-val.json)
	$(PY) study.py choose --dir $(R) --nll $(NLL) --out $@
methods-tune: $(R)/chosen.json $(R)/eval/sft-val.json

# ---- the finals: the tuning seed's model is the chosen tuning run; every other seed trains
$(foreach n,$(FINAL_NAMES),$(R)/models/$(n)/stepdpo.json): $(R)/models/%/stepdpo.json: $(R)/chosen.json
	@if [ "$(call part,2,$*)" = "s$(TUNE_SEED)" ] && [ "$(filter $(call part,1,$*),$(TUNED) control)" ]; then \
	  tuned=$$($(PY) methods.py tuned $(R)/chosen.json $(call part,1,$*)); \
	  echo "$* = $$tuned (the chosen tuning run)"; rm -rf $(R)/models/$*; cp -pr $(R)/models/$$tuned $(R)/models/$*; \
	  touch $(R)/models/$*/stepdpo.json; \
	  cp -p $(R)/metrics-$$tuned.jsonl $(R)/metrics-$*.jsonl; \
	else \
	  $(call train,$*,$(call part,1,$*),$$($(PY) study.py args $< $(call part,1,$*)),$(patsubst s%,%,$(call part,2,$*))); \
	fi

# ---- evaluations
$(R)/eval/sft-greedy.json $(R)/eval/sft-sampled.json $(R)/eval/sft-val.json: $(R)/eval/sft-%.json: $(R)/data/test.jsonl
	$(call evaluate,sft,$(SFT),$*)
$(foreach n,$(TUNE_NAMES),$(R)/eval/$(n)-val.json): $(R)/eval/%-val.json: $(R)/models/%/stepdpo.json
	$(call evaluate,$*,$(R)/models/$*,val)
$(foreach n,$(FINAL_NAMES),$(R)/eval/$(n)-greedy.json): $(R)/eval/%-greedy.json: $(R)/models/%/stepdpo.json
	$(call evaluate,$*,$(R)/models/$*,greedy)
$(foreach n,$(FINAL_NAMES),$(R)/eval/$(n)-sampled.json): $(R)/eval/%-sampled.json: $(R)/models/%/stepdpo.json
	$(call evaluate,$*,$(R)/models/$*,sampled)
methods-models: $(foreach n,sft $(FINAL_NAMES),$(R)/eval/$(n)-greedy.json $(R)/eval/$(n)-sampled.json)

# ---- inference-time selectors on the test problems
$(R)/eval/select-prm.json: $(R)/data/test.jsonl $(R)/models/prm/stepdpo.json
	$(TIMED) eval-select-prm $(STEPDPO) eval --model $(SFT) -i $< -o $(R)/eval/select-prm.jsonl --summary $@ \
	  --n $(K_SELECT) --temperature $(EVAL_T) --top-p 1.0 --seed 0 --prm $(R)/models/prm -q $(GEN)
$(R)/eval/beam-prm.json: $(R)/data/test.jsonl $(R)/models/prm/stepdpo.json
	$(TIMED) eval-beam-prm $(STEPDPO) eval --model $(SFT) -i $< -o $(R)/eval/beam-prm.jsonl --summary $@ \
	  --search beam --beam-width $(BEAM) --expand $(BEAM_EXPAND) --temperature $(EVAL_T) --top-p 1.0 --seed 0 \
	  --prm $(R)/models/prm -q --max-tokens 64 --batch-size 128
$(R)/eval/beam-value.json: $(R)/data/test.jsonl $(R)/models/svpo_s$(TUNE_SEED)/stepdpo.json
	$(TIMED) eval-beam-value $(STEPDPO) eval --model $(R)/models/svpo_s$(TUNE_SEED) -i $< \
	  -o $(R)/eval/beam-value.jsonl --summary $@ --search beam --beam-width $(BEAM) --expand $(BEAM_EXPAND) \
	  --temperature $(EVAL_T) --top-p 1.0 --seed 0 --value $(R)/models/svpo_s$(TUNE_SEED) -q --max-tokens 64 \
	  --batch-size 128
methods-select: $(R)/eval/select-prm.json $(R)/eval/beam-prm.json $(R)/eval/beam-value.json

methods-report: methods-tune methods-models methods-select
	$(PY) methods.py report --dir $(R) --seeds "$(SEEDS)" --out $(OUT) \
	  --settings "DATA_SEED=$(DATA_SEED) TEST=$(TEST) VAL=$(VAL) POOL=$(POOL) SEEDS=$(SEEDS) TUNE_SEED=$(TUNE_SEED) \
	  LRS=$(LRS) BETAS=$(BETAS) STEPS=$(STEPS) BATCH=$(BATCH) NLL=$(NLL) TDPO_ALPHA=$(TDPO_ALPHA) K=$(K) \
	  EVAL_T=$(EVAL_T) N_SAMPLE=$(N_SAMPLE) N_RECTIFY=$(N_RECTIFY) MAX_CANDIDATES=$(MAX_CANDIDATES) N_PRM=$(N_PRM) \
	  PRM_STEPS=$(PRM_STEPS) PRM_BATCH=$(PRM_BATCH) PRM_LR=$(PRM_LR) TOP=$(TOP) QV_ROLLOUTS=$(QV_ROLLOUTS) \
	  QV_TOP=$(QV_TOP) SEARCH_POOL=$(SEARCH_POOL) SIMULATIONS=$(SIMULATIONS) EXPAND=$(EXPAND) \
	  ROOT_EXPAND=$(ROOT_EXPAND) SEARCH_ROLLOUTS=$(SEARCH_ROLLOUTS) K_SELECT=$(K_SELECT) BEAM=$(BEAM) \
	  BEAM_EXPAND=$(BEAM_EXPAND) MAX_TOKENS=$(MAX_TOKENS) OMP_NUM_THREADS=$(OMP_NUM_THREADS)"

methods-check: methods-report
	$(PY) methods.py check --dir $(R) --seeds "$(SEEDS)" --test $(TEST) --out $(OUT)
