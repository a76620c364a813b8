"""`stepdpo train`: SFT, DPO, Step-DPO (sigmoid, IPO or TDPO loss), Full-Step-DPO or a process reward model; relaunches through accelerate when asked (train/)."""
from __future__ import annotations

import os
import sys
from typing import Optional

import typer
from typing_extensions import Annotated

from .. import log
from ..records import InputError
from .options import SEED, QuietOpt, SeedOpt, SkipInvalidOpt, check_ranges

EPILOG = "Example: stepdpo train --objective step-dpo --model ckpt/sft --data pairs.jsonl --output ckpt/step-dpo"


def check_train_output(model: str, output: str) -> None:
    """--output equal to --model, or inside it, would overwrite the base model's weights (exit 2)."""
    from ..backends.registry import parse_model_spec

    path = parse_model_spec(model).model
    if not os.path.isdir(path):
        return  # a hub id: nothing local to overwrite
    base, out = os.path.realpath(path), os.path.realpath(output)
    if out == base or out.startswith(base.rstrip(os.sep) + os.sep):
        raise InputError(f"{output} is {'--model' if out == base else 'inside --model'} ({path}); training "
                         "would overwrite the base model: choose another directory", field="--output")


def train(
    model: Annotated[str, typer.Option("--model", "-m", help="Policy: local HF dir, hub id or hf:PATH.")],
    data: Annotated[str, typer.Option("--data", "-i", help="Training rows (pairs or SFT rows): JSONL, - for stdin, a "
                                                     ".parquet/.json/.csv file, a save_to_disk folder or a hub "
                                                     "dataset id (e.g. xinlai/Math-Step-DPO-10K).")],
    output: Annotated[str, typer.Option("--output", "-o", help="Output model dir (also checkpoints, ref "
                                                               "log-probs); not --model or inside it.")],
    objective: Annotated[str, typer.Option(help="sft | dpo | step-dpo | full-step-dpo | prm (a process reward "
                                                "model: a 1-logit head read at each step's end, binary "
                                                "cross-entropy; see --prm-labels) | svpo (Step-DPO on tree pairs + an SFT "
                                                "term on chosen steps with Q >= 0.5 + a tanh value head on the last "
                                                "hidden state regressed on 2Q - 1 at both steps' ends; saved as "
                                                "value_head.safetensors beside the model; SVPO's own loss is not "
                                                "public, docs/records.md states this one).")] = "step-dpo",
    prm_labels: Annotated[str, typer.Option(help="prm: each step's target. final-answer: its solution's "
                                                 "`correct` (Full-Step-DPO, N=1) | first-error: 1 before a "
                                                 "localizer's first_error_step, 0 from it | step-scores: rollout "
                                                 "success rates (soft). TRL rows (prompt, completions, labels) "
                                                 "use their own labels.")] = "final-answer",
    data_split: Annotated[str, typer.Option(help="Split of a hub dataset or save_to_disk DatasetDict.")] = "train",
    beta: Annotated[float, typer.Option(help="DPO beta.")] = 0.4,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate.")] = 5e-7,
    epochs: Annotated[float, typer.Option(help="Epochs (fractions allowed).")] = 1.0,
    batch_size: Annotated[int, typer.Option(help="Rows per micro-batch per process.")] = 4,
    grad_accum: Annotated[int, typer.Option(help="Gradient accumulation steps.")] = 1,
    scheduler: Annotated[str, typer.Option(help="cosine | linear | constant (with warmup).")] = "cosine",
    warmup_ratio: Annotated[float, typer.Option(help="Warmup fraction of the steps.")] = 0.1,
    max_length: Annotated[int, typer.Option(help="Max tokens of context + longest continuation.")] = 1024,
    max_tokens_per_batch: Annotated[int, typer.Option(help="Pack several pairs per row with no padding, rows of "
                                                           "at most this many tokens, one row per forward (0: one "
                                                           "left-padded row per pair). --batch-size stays pairs "
                                                           "per micro-step.")] = 0,
    template: Annotated[Optional[str], typer.Option(help="Prompt template (default: the model's recorded one, "
                                                         "else chat/raw); must match sample.")] = None,
    seed: SeedOpt = SEED,
    lora: Annotated[bool, typer.Option("--lora", help="Train LoRA adapters (peft), merged into the output.")] = False,
    lora_r: Annotated[int, typer.Option(help="LoRA rank.")] = 16,
    lora_alpha: Annotated[int, typer.Option(help="LoRA alpha.")] = 32,
    merge_lora: Annotated[bool, typer.Option("--merge-lora/--no-merge-lora", help="Merge adapters into the saved model.")] = True,
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing")] = False,
    bf16: Annotated[bool, typer.Option("--bf16", help="bf16 mixed precision: fp32 master weights and optimizer "
                                                      "state, bf16 autocast forward.")] = False,
    pure_bf16: Annotated[bool, typer.Option("--pure-bf16", help="Weights and optimizer state in bf16 (half the "
                                                                "memory; at lr ~5e-7 most updates round away).")] = False,
    max_prompt_length: Annotated[int, typer.Option(help="Context tokens kept at least when a row exceeds "
                                                        "--max-length (oldest dropped, BOS kept; official 512).")] = 512,
    step_text: Annotated[str, typer.Option(help="step-end: a step the solution continues ends with its newline | "
                                                "as-given: score chosen/rejected exactly as written (official).")] = "step-end",
    loss: Annotated[str, typer.Option(help="sigmoid (DPO) | ipo | tdpo1 | tdpo2 (TDPO, Zeng et al. 2024: DPO's "
                                           "margin minus the difference of the sequential KL(ref || policy) over "
                                           "the whole vocabulary at every continuation token; a reference model "
                                           "runs beside the policy at every step, since cached log-probs cannot "
                                           "give its whole distribution: twice the weight memory. The authors' "
                                           "defaults: tdpo2, --tdpo-alpha 0.5, --beta 0.1).")] = "sigmoid",
    sft_weight: Annotated[float, typer.Option(help="svpo: weight of the SFT term.")] = 1.0,
    value_weight: Annotated[float, typer.Option(help="svpo: weight of the value head's squared error.")] = 1.0,
    tdpo_alpha: Annotated[float, typer.Option(help="tdpo2: weight of the KL term, z = margin - alpha * (KL_rejected "
                                                   "- stopgrad(KL_chosen)); 0 is DPO. tdpo1 has none.")] = 0.5,
    label_smoothing: Annotated[float, typer.Option(help="cDPO label smoothing (sigmoid loss); a row's own "
                                                        "`label_smoothing` field (tree pairs) wins for that row.")] = 0.0,
    nll_weight: Annotated[float, typer.Option(help="Weight of a per-token NLL term on chosen.")] = 0.0,
    step_temperature: Annotated[float, typer.Option(help="full-step-dpo: gamma in softmax(gamma * step score).")] = 0.5,
    save_steps: Annotated[int, typer.Option(help="Checkpoint every N steps (0: never).")] = 0,
    logging_steps: Annotated[int, typer.Option(help="Metrics line every N steps.")] = 1,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint in --output.")] = False,
    report_to: Annotated[str, typer.Option(help="none, or trackers separated by commas: tensorboard (OUTPUT/runs), "
                                                "wandb (OUTPUT/wandb; WANDB_MODE=offline works), mlflow (file store "
                                                "OUTPUT/mlruns unless MLFLOW_TRACKING_URI), trackio. The run's "
                                                "config is logged.")] = "none",
    deepspeed: Annotated[Optional[str], typer.Option(help="zero2 | zero3 | zero3-offload | config JSON.")] = None,
    num_processes: Annotated[int, typer.Option(help="Processes (re-launches through accelerate launch).")] = 1,
    config_file: Annotated[Optional[str], typer.Option(help="accelerate config yaml (multi-node).")] = None,
    max_steps: Annotated[int, typer.Option(help="Stop after N optimizer steps (overrides --epochs).")] = 0,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.0,
    max_grad_norm: Annotated[float, typer.Option(help="Gradient clipping (0: off).")] = 1.0,
    skip_invalid: SkipInvalidOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train with SFT, DPO, Step-DPO, Full-Step-DPO, or a PRM; writes a HF model dir and metrics JSONL on stdout."""
    from ..records import dumps
    from ..train.data import OBJECTIVES
    from ..train.launch import needs_launch, relaunch
    from ..rewards.labels import LABEL_SOURCES
    from ..train.losses import LOSS_TYPES

    log.set_quiet(quiet)
    for name, value, allowed in (("--objective", objective, OBJECTIVES), ("--loss", loss, LOSS_TYPES),
                                 ("--scheduler", scheduler, ("cosine", "linear", "constant")),
                                 ("--step-text", step_text, ("step-end", "as-given")),
                                 ("--prm-labels", prm_labels, LABEL_SOURCES)):
        if value not in allowed:
            raise InputError(f"{value!r} is not one of {', '.join(allowed)}", field=name)
    from ..train.setup import tracker_names

    tracker_names(report_to)  # an unknown or missing tracker is a usage error before anything loads
    check_ranges(sizes={"--batch-size": batch_size, "--grad-accum": grad_accum, "--max-length": max_length,
                        "--num-processes": num_processes, "--logging-steps": logging_steps})
    check_train_output(model, output)
    if max_tokens_per_batch < 0:
        raise InputError("must be >= 0", field="--max-tokens-per-batch")
    if loss in ("tdpo1", "tdpo2") and objective not in ("dpo", "step-dpo"):
        raise InputError(f"TDPO is a loss for preference pairs (dpo, step-dpo), not {objective}", field="--loss")
    if objective == "svpo" and (lora or max_tokens_per_batch):
        raise InputError("svpo trains the whole model with its value head, in the dense shared-prefix batch",
                         field="--lora" if lora else "--max-tokens-per-batch")
    if min(sft_weight, value_weight) < 0:
        raise InputError("must be >= 0", field="--sft-weight" if sft_weight < 0 else "--value-weight")
    if tdpo_alpha < 0:
        raise InputError("must be >= 0", field="--tdpo-alpha")
    if objective == "prm" and max_tokens_per_batch:
        raise InputError("packing is for preference pairs; a PRM trains one padded row per solution",
                         field="--max-tokens-per-batch")
    # Libraries (DeepSpeed's logger, accelerate) print to stdout; stdout must carry only metrics JSONL.
    # Metrics go to a duplicate of the real stdout, and fd 1 is pointed at stderr for everything else
    # (at /dev/null with -q: DeepSpeed print()s banners that no logging setting reaches).
    sys.stdout.flush()
    metrics_fd = os.dup(1)
    if quiet:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    else:
        os.dup2(2, 1)
    if needs_launch(num_processes, config_file, deepspeed):
        code = relaunch(sys.argv[1:], num_processes=num_processes, config_file=config_file, deepspeed=deepspeed,
                        data=data, output=output, objective=objective, stdout=metrics_fd, split=data_split)
        raise typer.Exit(code)
    from ..train.loop import TrainConfig
    from ..train.loop import train as run_training

    config = TrainConfig(
        model=model, data=data, data_split=data_split, output=output, objective=objective, beta=beta, lr=lr,
        epochs=epochs,
        batch_size=batch_size, grad_accum=grad_accum, scheduler=scheduler if scheduler != "constant"
        else "constant_with_warmup", warmup_ratio=warmup_ratio, max_length=max_length, template=template, seed=seed,
        lora=lora, lora_r=lora_r, lora_alpha=lora_alpha, merge_lora=merge_lora,
        gradient_checkpointing=gradient_checkpointing, bf16=bf16, pure_bf16=pure_bf16,
        max_prompt_length=max_prompt_length, step_text=step_text, loss=loss, label_smoothing=label_smoothing,
        nll_weight=nll_weight, step_temperature=step_temperature, save_steps=save_steps,
        logging_steps=logging_steps, resume=resume, report_to=report_to, deepspeed=deepspeed,
        max_steps=max_steps, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
        max_tokens_per_batch=max_tokens_per_batch, skip_invalid=skip_invalid, prm_labels=prm_labels,
        tdpo_alpha=tdpo_alpha, sft_weight=sft_weight, value_weight=value_weight,
    )

    metrics_out = os.fdopen(metrics_fd, "wb")

    def emit(metrics: dict) -> None:
        metrics_out.write(dumps(metrics))
        metrics_out.flush()

    run_training(config, emit=emit)
