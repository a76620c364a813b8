# The miniature study (make -C examples/arith study): does Step-DPO beat SFT, DPO and SFT on the corrected steps?
#
# The protocol is declared here, before any result, and docs/study.md states it again above its tables:
#   regimes   full   the shipped checkpoint on chains of 3-8 operations (the demo's task; fails long chains)
#             reach  the same checkpoint on chains of 4 operations only: within its reach, ~85% greedy
#   data      per regime, seed DATA_SEED: TEST held-out problems, VAL validation problems, POOL problems to build
#             preference data from; no split holds a problem the shipped model was trained on (shipped/sft.jsonl)
#   variants  stepdpo  Step-DPO on the model's own corrected steps        dpo  whole-solution DPO, same material
#             ood      Step-DPO, chosen step = the verifier's rewrite     nll  Step-DPO + NLL on chosen (NLL)
#             control  SFT on the Step-DPO rows' chosen steps (no rejected step, no preference term)
#             r2       round 2: sample/localize/rectify/pair again from stepdpo_sN, Step-DPO from stepdpo_sN
#             every variant: STEPS optimizer steps x BATCH pairs, seeds SEEDS (3), cosine, warm-up 0.1
#   tuning    LR x BETA chosen on VAL (greedy) per variant, seed 1: stepdpo (ood, nll and r2 reuse its values),
#             dpo; control: LR. Ties go to the smaller LR, then the smaller beta. The test set is never read.
#   measures  greedy accuracy on TEST and mean accuracy over K samples at EVAL_T; every comparison paired on
#             the same problems, seeds averaged per problem (95% CI over problems) and each seed's difference
#
# Targets: study (everything, then docs/study.md), study-data, study-tune, study-models, study-round2,
# study-report. Every file is a make target, so an interrupted study resumes where it stopped: rerun the target.
# make -j2 with OMP_NUM_THREADS=1: two one-thread jobs on two cores are ~2x one two-thread job (tiny models).

PY       ?= ../../.venv/bin/python
STEPDPO  ?= $(PY) -m stepdpo_cli
SFT      ?= sft-model
STUDY    ?= study
OUT      ?= ../../docs/study.md
TIMED     = ./timed.sh $(STUDY)/times.jsonl

REGIMES  ?= full reach
full_RANGE   ?= --min-steps 3 --max-steps 8
full_POOL    ?= 600
reach_RANGE  ?= --min-steps 4 --max-steps 4
reach_POOL   ?= 1500
# The shipped checkpoint's SFT rows (make_sft.sh: seed 0, 2500 steps x 32 rows), re-made to keep them out.
SFT_ROWS ?= 80000

DATA_SEED ?= 1
R2_SEED   ?= 2
TEST      ?= 2000
VAL       ?= 1000
SEEDS     ?= 1 2 3
TUNE_SEED ?= 1
LRS       ?= 5e-6 2e-5 5e-5
BETAS     ?= 0.1 0.5
CONTROL_LRS ?= $(LRS)
NLL       ?= 1
STEPS     ?= 100
BATCH     ?= 16
K         ?= 2
EVAL_T    ?= 0.7
MAX_TOKENS ?= 128
N_SAMPLE  ?= 2
N_RECTIFY ?= 8
MAX_CANDIDATES ?= 2
GEN        = --max-tokens $(MAX_TOKENS) --batch-size 128
# The data pipeline's knobs, passed to the demo's Makefile (one copy of sample -> localize -> rectify -> pair).
PIPELINE   = N_SAMPLE=$(N_SAMPLE) N_RECTIFY=$(N_RECTIFY) MAX_CANDIDATES=$(MAX_CANDIDATES) MAX_TOKENS=$(MAX_TOKENS) \
             TEMPERATURE=1.0 ACCEPT=step PY=$(abspath $(PY)) SHIPPED_ROWS=$(STUDY)/shipped-exact/sft.jsonl

export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM = false
export HF_HUB_OFFLINE = 1

VARIANTS  = stepdpo dpo ood nll control
TUNE_NAMES = $(foreach lr,$(LRS),$(foreach b,$(BETAS),tune_stepdpo_lr$(lr)_b$(b) tune_dpo_lr$(lr)_b$(b))) \
             $(foreach lr,$(CONTROL_LRS),tune_control_lr$(lr))
FINAL_NAMES = $(foreach v,$(VARIANTS),$(foreach s,$(SEEDS),$(v)_s$(s)))
R2_NAMES  = $(foreach s,$(SEEDS),r2_s$(s))

# $(call part,N,STEM): the Nth _-separated part of a model name's stem (dpo_lr2e-5_b0.1 -> dpo lr2e-5 b0.1;
# stepdpo_s2 -> stepdpo s2)
part      = $(word $(1),$(subst _, ,$(2)))
objective = $(if $(filter stepdpo ood nll r2,$(1)),step-dpo,$(if $(filter dpo,$(1)),dpo,sft))
pairs_of  = $(if $(filter dpo ood,$(1)),pairs_$(1),pairs_stepdpo).jsonl

# $(call evaluate,REGIME,NAME,MODEL,KIND): KIND greedy / sampled on the test problems, val = greedy on val.
evaluate  = $(TIMED) $(1)-eval-$(2)-$(4) $(STEPDPO) eval --model $(3) \
  -i $(STUDY)/$(1)/data/$(if $(filter val,$(4)),val,test).jsonl -o $(STUDY)/$(1)/eval/$(2)-$(4).jsonl \
  --summary $(STUDY)/$(1)/eval/$(2)-$(4).json $(if $(filter sampled,$(4)),--n $(K) --temperature $(EVAL_T) \
  --top-p 1.0) --seed 0 -q $(GEN)

.PHONY: study study-data study-tune study-models study-round2 study-report study-quick study-check
.DELETE_ON_ERROR:

study: study-check

# The whole protocol in miniature, for tests: the `full` regime only (make demo-quick runs the reach regime's
# settings; both regimes took CI past 30 minutes), small splits, one LR x beta, 2 seeds, few steps.
study-quick:
	$(MAKE) -f study.mk study study-check STUDY=study-quick OUT=study-quick/study.md REGIMES=full TEST=60 VAL=40 full_POOL=60 \
	  reach_POOL=80 SEEDS="1 2" LRS=2e-5 BETAS=0.1 STEPS=4 BATCH=4 K=1 N_RECTIFY=4 SFT_ROWS=$(SFT_ROWS)

study-check: study-report
	$(PY) study.py check --study $(STUDY) --regimes "$(REGIMES)" --seeds "$(SEEDS)" --test $(TEST) --out $(OUT)

$(STUDY)/shipped/sft.jsonl:
	$(PY) -m stepdpo_cli.tasks.arith data --out-dir $(STUDY)/shipped --seed 0 --sft $(SFT_ROWS) --pool 0 --test 0
# The rows exactly as make_sft.sh drew them (its data call keeps the default seed-0 test and pool out, which the
# file above does not, so the two differ in ~0.3% of rows); the report counts every split's overlap with it.
$(STUDY)/shipped-exact/sft.jsonl:
	$(PY) -m stepdpo_cli.tasks.arith data --out-dir $(STUDY)/shipped-exact --seed 0 --sft $(SFT_ROWS)

# ------------------------------------------------------------------------------------------------ per regime
define regime
$(STUDY)/$(1)/data/test.jsonl $(STUDY)/$(1)/data/val.jsonl $(STUDY)/$(1)/data/pool.jsonl &: $(STUDY)/shipped/sft.jsonl \
    | $(STUDY)/shipped-exact/sft.jsonl
	$(PY) -m stepdpo_cli.tasks.arith data --out-dir $(STUDY)/$(1)/data --seed $(DATA_SEED) --sft 0 \
	  --pool $($(1)_POOL) --test $(TEST) --val $(VAL) $($(1)_RANGE) --exclude $$<

# Round 1's preference data, by the demo's own rules (its `data` rule is satisfied by the files above).
$(STUDY)/$(1)/pairs_stepdpo.jsonl $(STUDY)/$(1)/pairs_dpo.jsonl $(STUDY)/$(1)/pairs_ood.jsonl &: \
    $(STUDY)/$(1)/data/pool.jsonl
	$(MAKE) -f Makefile WORK=$(STUDY)/$(1) SFT=$(SFT) DATA_SEED=$(DATA_SEED) $(PIPELINE) \
	  TIMED="./timed.sh $(STUDY)/times.jsonl" $(STUDY)/$(1)/pairs_stepdpo.jsonl $(STUDY)/$(1)/pairs_dpo.jsonl \
	  $(STUDY)/$(1)/pairs_ood.jsonl

# Round 2 from each round-1 Step-DPO seed: the same pool, sampled again (R2_SEED) from that model.
$(foreach s,$(SEEDS),$(STUDY)/$(1)/r2/s$(s)/pairs_stepdpo.jsonl): \
    $(STUDY)/$(1)/r2/s%/pairs_stepdpo.jsonl: $(STUDY)/$(1)/models/stepdpo_s%/stepdpo.json
	mkdir -p $(STUDY)/$(1)/r2/s$$*/data
	cp -p $(STUDY)/$(1)/data/test.jsonl $(STUDY)/$(1)/data/pool.jsonl $(STUDY)/$(1)/r2/s$$*/data/
	$(MAKE) -f Makefile WORK=$(STUDY)/$(1)/r2/s$$* SFT=$(STUDY)/$(1)/models/stepdpo_s$$* DATA_SEED=$(R2_SEED) \
	  $(PIPELINE) TIMED="./timed.sh $(STUDY)/times.jsonl" $$@

# Validation choice of LR / beta (the tuning runs' val evals only).
$(STUDY)/$(1)/chosen.json: $(foreach n,$(TUNE_NAMES),$(STUDY)/$(1)/eval/$(n)-val.json)
	$(PY) study.py choose --dir $(STUDY)/$(1) --nll $(NLL) --out $$@

$(foreach n,$(TUNE_NAMES),$(STUDY)/$(1)/models/$(n)/stepdpo.json): \
    $(STUDY)/$(1)/models/tune_%/stepdpo.json: $(STUDY)/$(1)/pairs_stepdpo.jsonl $(STUDY)/$(1)/pairs_dpo.jsonl
	$(TIMED) $(1)-train-tune_$$* $(STEPDPO) train --objective $$(call objective,$$(call part,1,$$*)) \
	  --model $(SFT) --data $(STUDY)/$(1)/$$(call pairs_of,$$(call part,1,$$*)) \
	  --output $(STUDY)/$(1)/models/tune_$$* --template raw --lr $$(patsubst lr%,%,$$(call part,2,$$*)) \
	  $$(if $$(call part,3,$$*),--beta $$(patsubst b%,%,$$(call part,3,$$*))) \
	  --batch-size $(BATCH) --max-steps $(STEPS) --warmup-ratio 0.1 --scheduler cosine --seed $(TUNE_SEED) \
	  --logging-steps 1 -q > $(STUDY)/$(1)/metrics-tune_$$*.jsonl

$(foreach n,$(R2_NAMES),$(STUDY)/$(1)/models/$(n)/stepdpo.json): \
    $(STUDY)/$(1)/models/r2_s%/stepdpo.json: $(STUDY)/$(1)/r2/s%/pairs_stepdpo.jsonl $(STUDY)/$(1)/chosen.json
	$(TIMED) $(1)-train-r2_s$$* $(STEPDPO) train --objective step-dpo --model $(STUDY)/$(1)/models/stepdpo_s$$* \
	  --data $$< --output $(STUDY)/$(1)/models/r2_s$$* --template raw \
	  $$$$($(PY) study.py args $(STUDY)/$(1)/chosen.json r2) \
	  --batch-size $(BATCH) --max-steps $(STEPS) --warmup-ratio 0.1 --scheduler cosine --seed $$* \
	  --logging-steps 1 -q > $(STUDY)/$(1)/metrics-r2_s$$*.jsonl

$(foreach n,$(FINAL_NAMES),$(STUDY)/$(1)/models/$(n)/stepdpo.json): \
    $(STUDY)/$(1)/models/%/stepdpo.json: $(STUDY)/$(1)/chosen.json $(STUDY)/$(1)/pairs_stepdpo.jsonl
	$(TIMED) $(1)-train-$$* $(STEPDPO) train --objective $$(call objective,$$(call part,1,$$*)) --model $(SFT) \
	  --data $(STUDY)/$(1)/$$(call pairs_of,$$(call part,1,$$*)) --output $(STUDY)/$(1)/models/$$* --template raw \
	  $$$$($(PY) study.py args $$< $$(call part,1,$$*)) \
	  --batch-size $(BATCH) --max-steps $(STEPS) --warmup-ratio 0.1 --scheduler cosine \
	  --seed $$(patsubst s%,%,$$(call part,2,$$*)) --logging-steps 1 -q > $(STUDY)/$(1)/metrics-$$*.jsonl

# Evaluations: the shipped checkpoint (sft) and every trained model; val for tuning, test for the results.
$(STUDY)/$(1)/eval/sft-greedy.json: $(STUDY)/$(1)/data/test.jsonl
	$$(call evaluate,$(1),sft,$(SFT),greedy)
$(STUDY)/$(1)/eval/sft-sampled.json: $(STUDY)/$(1)/data/test.jsonl
	$$(call evaluate,$(1),sft,$(SFT),sampled)
$(STUDY)/$(1)/eval/sft-val.json: $(STUDY)/$(1)/data/test.jsonl
	$$(call evaluate,$(1),sft,$(SFT),val)
$(foreach n,$(TUNE_NAMES),$(STUDY)/$(1)/eval/$(n)-val.json): \
    $(STUDY)/$(1)/eval/%-val.json: $(STUDY)/$(1)/models/%/stepdpo.json
	$$(call evaluate,$(1),$$*,$(STUDY)/$(1)/models/$$*,val)
$(foreach n,$(FINAL_NAMES) $(R2_NAMES),$(STUDY)/$(1)/eval/$(n)-greedy.json): \
    $(STUDY)/$(1)/eval/%-greedy.json: $(STUDY)/$(1)/models/%/stepdpo.json
	$$(call evaluate,$(1),$$*,$(STUDY)/$(1)/models/$$*,greedy)
$(foreach n,$(FINAL_NAMES) $(R2_NAMES),$(STUDY)/$(1)/eval/$(n)-sampled.json): \
    $(STUDY)/$(1)/eval/%-sampled.json: $(STUDY)/$(1)/models/%/stepdpo.json
	$$(call evaluate,$(1),$$*,$(STUDY)/$(1)/models/$$*,sampled)

$(1)-data: $(STUDY)/$(1)/pairs_stepdpo.jsonl
$(1)-tune: $(STUDY)/$(1)/chosen.json $(STUDY)/$(1)/eval/sft-val.json
$(1)-models: $(foreach n,sft $(FINAL_NAMES),$(STUDY)/$(1)/eval/$(n)-greedy.json $(STUDY)/$(1)/eval/$(n)-sampled.json)
$(1)-round2: $(foreach n,$(R2_NAMES),$(STUDY)/$(1)/eval/$(n)-greedy.json $(STUDY)/$(1)/eval/$(n)-sampled.json)
endef
$(foreach r,$(REGIMES),$(eval $(call regime,$(r))))

study-data: $(foreach r,$(REGIMES),$(r)-data)
study-tune: $(foreach r,$(REGIMES),$(r)-tune)
study-models: $(foreach r,$(REGIMES),$(r)-models)
study-round2: $(foreach r,$(REGIMES),$(r)-round2)

study-report: study-tune study-models study-round2 $(STUDY)/shipped-exact/sft.jsonl
	$(PY) study.py report --study $(STUDY) --regimes "$(REGIMES)" --out $(OUT) --seeds "$(SEEDS)" \
	  --sft-rows $(STUDY)/shipped-exact/sft.jsonl \
	  --settings "DATA_SEED=$(DATA_SEED) R2_SEED=$(R2_SEED) TEST=$(TEST) VAL=$(VAL) full_POOL=$(full_POOL) \
	  reach_POOL=$(reach_POOL) SEEDS=$(SEEDS) LRS=$(LRS) BETAS=$(BETAS) CONTROL_LRS=$(CONTROL_LRS) NLL=$(NLL) \
	  STEPS=$(STEPS) BATCH=$(BATCH) K=$(K) EVAL_T=$(EVAL_T) N_SAMPLE=$(N_SAMPLE) N_RECTIFY=$(N_RECTIFY) \
	  MAX_CANDIDATES=$(MAX_CANDIDATES) MAX_TOKENS=$(MAX_TOKENS) OMP_NUM_THREADS=$(OMP_NUM_THREADS)"
