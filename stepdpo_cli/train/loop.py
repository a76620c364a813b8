"""The training loop: accelerate (+ DeepSpeed) over packed shared-prefix batches.

Order of work: read + tokenise rows -> load the policy -> accelerate.prepare -> reference log-probs with
the *initial* policy (once, cached in OUTPUT/ref_logps.pt, reused on resume; no reference model is held
while training, except for TDPO, whose reference runs beside the policy) -> optional resume from
OUTPUT/checkpoints/step-N -> steps -> save a HF model dir.

Data order is a pure function of (seed, epoch): each epoch is a seeded permutation, cut into global
batches of batch_size * processes * grad_accum rows (wrapped around to fill the last one), so a resumed
run sees exactly the batches the uninterrupted run would have.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shutil
import time
from dataclasses import asdict
from typing import Callable

import orjson
import torch

from .. import log
from ..records import InputError, atomic_write_json, derive_seed
from ..rewards.value import save_value_head, split_state_dict
from ..templates import MODEL_META_FILE, template_for_model
from . import packing
from .data import EncodeStats, Example, encode_rows, validator
from .losses import LossConfig
from .objectives import forward, micro_step, per_step_logps
from .setup import (TrainConfig, epoch_batches, init_trackers, keep_host_memory, load_model, load_reference,
                    make_accelerator, make_optimizer, progress_status, schedule, tracker_names)

REF_FILE = "ref_logps.pt"
CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
KEEP_CHECKPOINTS = 2


# ---------------------------------------------------------------------------------------------- reference

def _mask_dtype(model) -> torch.dtype:
    for p in model.parameters():
        if p.dtype.is_floating_point:
            return p.dtype
    return torch.float32


def compute_reference(model, examples: list[Example], accelerator, config: TrainConfig, pad_id: int,
                      cache: dict, packing_plan: packing.Plan | None = None) -> dict:
    """Fill `cache[key] = (chosen per-step logps, rejected per-step logps)` for missing examples, sharded over
    processes (every rank runs the same number of forwards: ZeRO-3 needs that), then gathered to all."""
    from accelerate.utils import gather_object

    missing = [e for e in examples if e.key not in cache]
    missing = list({e.key: e for e in missing}.values())
    if not missing:
        return cache
    world, rank = accelerator.num_processes, accelerator.process_index
    per_rank = math.ceil(len(missing) / world)
    mine = (missing[rank::world] + missing[:1] * per_rank)[:per_rank]  # pad with a duplicate to equal counts
    dtype = _mask_dtype(model)
    results = []
    model.eval()
    with torch.no_grad():
        for chunk in packing.reference_chunks(mine, config.batch_size, packing_plan):
            batch, tok = forward(model, chunk, pad_id, accelerator.device, dtype, packing_plan)
            cs, rs = per_step_logps(tok, batch, chunk)
            results.extend((e.key, c.cpu(), r.cpu()) for e, c, r in zip(chunk, cs, rs))
    model.train()
    for key, c, r in gather_object(results) if world > 1 else results:
        cache[key] = (c, r)
    return cache


# ---------------------------------------------------------------------------------------------- checkpoints

def _checkpoints(output: str) -> list[tuple[int, str]]:
    root = os.path.join(output, CHECKPOINTS)
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if name.startswith("step-") and os.path.isfile(os.path.join(path, STATE_FILE)):
            found.append((int(name[5:]), path))
    return sorted(found)


def _save_checkpoint(accelerator, output: str, step: int, state: dict) -> None:
    path = os.path.join(output, CHECKPOINTS, f"step-{step}")
    accelerator.save_state(path)
    if accelerator.is_main_process:
        atomic_write_json(os.path.join(path, STATE_FILE), state)  # written last: marks the checkpoint complete
        for _, old in _checkpoints(output)[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


# ---------------------------------------------------------------------------------------------- loop

def read_examples(config: TrainConfig, tokenizer, template: str) -> tuple[list[Example], EncodeStats]:
    from ..datasets import iter_rows  # JSONL, or a hub id / save_to_disk / parquet through `datasets`

    stats = EncodeStats()
    rows = iter_rows(config.data, split=config.data_split, validate=validator(config.objective, config.prm_labels),
                     skip_invalid=config.skip_invalid, log=log.warn)
    if config.objective == "prm":
        from .prm_data import PrmEncodeStats, encode_prm_rows

        prm_stats = PrmEncodeStats()
        examples = encode_prm_rows(rows, tokenizer, template, config.prm_labels, config.max_length, prm_stats,
                                   max_prompt_length=config.max_prompt_length)
        stats.rows, stats.truncated = prm_stats.rows, prm_stats.truncated
        if prm_stats.unlabelled:
            log.warn(f"skipped {prm_stats.unlabelled} row(s) with no label (localize_status undecided)")
        if not examples:
            raise InputError("no usable training rows", source=config.data)
        return examples, stats
    examples = encode_rows(rows, tokenizer, template, config.objective, config.max_length, stats,
                           max_prompt_length=config.max_prompt_length, step_text=config.step_text)
    if not examples:
        raise InputError("no usable training rows" + (f" ({stats.skipped_empty} with empty chosen/rejected)"
                                                      if stats.skipped_empty else ""), source=config.data)
    return examples, stats


def train(config: TrainConfig, emit: Callable[[dict], None] | None = None) -> dict:
    """Train and save a HF model dir at `config.output`; `emit(metrics)` gets each logging step's metrics
    (on the main process). Returns the summary dict that is also written into stepdpo.json."""
    from transformers import AutoTokenizer, get_scheduler

    from ..backends.registry import parse_model_spec

    spec = parse_model_spec(config.model)
    if spec.backend != "hf":
        raise InputError(f"train needs a local or hub transformers model, not a {spec.backend} spec",
                         field="--model")
    model_path = spec.model
    if config.deepspeed and config.lora and "3" in str(config.deepspeed):
        raise InputError("--lora with ZeRO-3 is not supported; use --deepspeed zero2", field="--lora")
    accelerator = make_accelerator(config)
    if accelerator.device.type == "cpu":
        keep_host_memory()
    main = accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index
    torch.manual_seed(derive_seed(config.seed, "init", rank))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if config.objective not in ("step-dpo", "svpo", "prm") and tokenizer.eos_token_id is None:
        raise InputError("the tokenizer has no EOS token, needed after whole solutions", field="--model")
    template = template_for_model(config.template, model_path, tokenizer)
    examples, stats = read_examples(config, tokenizer, template)
    if main:
        log.log(f"train: {len(examples)} {config.objective} rows from {config.data} (template {template}, "
                f"{world} process(es)" + (f", deepspeed {config.deepspeed}" if config.deepspeed else "") + ")")
        if stats.skipped_empty:
            log.warn(f"skipped {stats.skipped_empty} row(s) with an empty chosen or rejected")
        if stats.truncated:
            log.warn(f"truncated {stats.truncated} row(s) to --max-length {config.max_length}")

    model = load_model(config, model_path)
    packing_plan = None if config.objective == "prm" else packing.plan_for(
        model, config.max_tokens_per_batch, accelerator.device, deepspeed=bool(config.deepspeed), say=main)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(config, trainable, accelerator)
    steps_per_epoch, total_steps = schedule(config, len(examples), world)
    scheduler = get_scheduler(config.scheduler, optimizer, num_warmup_steps=int(config.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    dtype = _mask_dtype(model)

    os.makedirs(config.output, exist_ok=True)
    loss_config = config.loss_config()
    reference = None
    if loss_config.live_reference:  # TDPO: full next-token distributions, which no cache of log-probs holds
        reference = load_reference(config, model_path, accelerator,
                                   packed=packing_plan is not None and packing_plan.mode == "packed")
        if main:
            log.log(f"train: {config.loss}: the reference model runs beside the policy at every step "
                    "(its whole next-token distribution; no cached log-probs)")
    started = time.perf_counter()  # "seconds" in the summary: reference pass + steps (no load/save)
    ref: dict = {}
    if config.preference and reference is None:
        ref = _reference_logps(model, examples, accelerator, config, pad_id, model_path, template, packing_plan)

    start_step = 0
    checkpoints = _checkpoints(config.output) if config.resume else []
    if checkpoints:
        start_step, path = checkpoints[-1]
        accelerator.load_state(path)
        if main:
            log.log(f"train: resumed from {path} (step {start_step})")
    elif config.resume and main:
        log.log("train: --resume but no checkpoint yet; starting from step 0")
    trackers = tracker_names(config.report_to)
    if trackers:
        init_trackers(accelerator, config, trackers)
    stack = contextlib.ExitStack()  # the progress bar, closed after the last step
    advance = stack.enter_context(log.progress("train", total=total_steps, completed=start_step, status=True)) \
        if main else (lambda n=1, status=None: None)

    window: dict[str, float] = {}
    last: dict = {}
    tokens, t0 = 0, time.perf_counter()
    model.train()
    step = start_step
    epoch = start_step // steps_per_epoch
    while step < total_steps:
        plan = epoch_batches(len(examples), epoch, config, world, rank)
        for index in range(step - epoch * steps_per_epoch, len(plan)):
            if step >= total_steps:
                break
            lr = optimizer.param_groups[0]["lr"] if not config.deepspeed else scheduler.get_last_lr()[0]
            for micro in plan[index]:
                with accelerator.accumulate(model):
                    batch_examples = [examples[i] for i in micro]
                    metrics = _micro_backward(accelerator, model, batch_examples, ref, loss_config, pad_id, dtype,
                                              packing_plan, reference)
                    grad_norm = None
                    if accelerator.sync_gradients:
                        grad_norm = accelerator.clip_grad_norm_(model.parameters(),
                                                                config.max_grad_norm if config.max_grad_norm > 0
                                                                else float("inf"))
                    optimizer.step()
                    scheduler.step() if accelerator.sync_gradients else None
                    optimizer.zero_grad()
                for k, v in metrics.items():
                    window[k] = window.get(k, 0.0) + v
                window["_micro"] = window.get("_micro", 0.0) + 1
                tokens += sum(e.num_tokens for e in batch_examples)
            step += 1
            if grad_norm is None and hasattr(model, "get_global_grad_norm"):
                grad_norm = model.get_global_grad_norm()
            window["grad_norm"] = window.get("grad_norm", 0.0) + float(grad_norm if grad_norm is not None else 0.0)
            window["_steps"] = window.get("_steps", 0.0) + 1
            if step % config.logging_steps == 0 or step == total_steps:
                last = _log_metrics(accelerator, window, step, steps_per_epoch, lr, tokens, time.perf_counter() - t0,
                                    config, emit)
                window, tokens, t0 = {}, 0, time.perf_counter()
            advance(1, status=progress_status(last))
            if config.save_steps and step % config.save_steps == 0 and step < total_steps:
                _save_checkpoint(accelerator, config.output, step, {"step": step, "epoch": epoch,
                                                                    "seed": config.seed})
        epoch += 1
    stack.close()

    summary = {"objective": config.objective, "steps": step, "rows": len(examples), "processes": world,
               "seconds": round(time.perf_counter() - started, 2), **{k: last[k] for k in last if k != "step"}}
    _save_model(accelerator, model, tokenizer, config, template, model_path, summary)
    if trackers:
        accelerator.end_training()
    return summary


def _reference_logps(model, examples, accelerator, config, pad_id, model_path, template, packing_plan=None) -> dict:
    """Reference log-probs of the initial policy, cached beside the output (reused on resume)."""
    path = os.path.join(config.output, REF_FILE)
    fingerprint = reference_fingerprint(config, model_path, template, examples)
    cache: dict = {}
    if os.path.isfile(path):
        stored = torch.load(path, weights_only=False)
        if stored.get("fingerprint") == fingerprint:
            cache = stored["logps"]
    before = len(cache)
    t0 = time.perf_counter()
    cache = compute_reference(model, examples, accelerator, config, pad_id, cache, packing_plan)
    if len(cache) != before:
        if accelerator.is_main_process:
            torch.save({"fingerprint": fingerprint, "logps": cache}, path)
            log.log(f"train: reference log-probs for {len(cache) - before} row(s) in "
                    f"{time.perf_counter() - t0:.1f}s -> {path}")
        accelerator.wait_for_everyone()
    return cache


def weights_fingerprint(model_path: str) -> dict:
    """What identifies a model dir's weights without reading them: each weight/config file's size and mtime
    (rewritten by any save, e.g. SFT re-run into the same dir) and a hash of config.json. A hub id is its name."""
    if not os.path.isdir(model_path):
        return {"model": model_path}
    files = {}
    for name in sorted(os.listdir(model_path)):
        if name.endswith((".safetensors", ".bin", ".pt", ".pth", ".json", ".model")):
            info = os.stat(os.path.join(model_path, name))
            files[name] = [info.st_size, info.st_mtime_ns]
    config_hash = None
    if os.path.isfile(os.path.join(model_path, "config.json")):
        with open(os.path.join(model_path, "config.json"), "rb") as handle:
            config_hash = hashlib.sha256(handle.read()).hexdigest()
    return {"model": os.path.abspath(model_path), "files": files, "config_sha256": config_hash}


def reference_fingerprint(config: TrainConfig, model_path: str, template: str, examples: list[Example]) -> dict:
    """The reference cache is valid only for these weights, these token ids (rows, template, truncation,
    step text) and this precision."""
    rows = hashlib.sha256()
    for e in examples:
        rows.update(orjson.dumps([e.key, e.prefix, e.chosen, e.rejected, e.chosen_steps, e.rejected_steps]))
    return {**weights_fingerprint(model_path), "template": template, "objective": config.objective,
            "rows_sha256": rows.hexdigest(), "bf16": config.bf16, "pure_bf16": config.pure_bf16,
            "attn_implementation": config.attn_implementation}


def _micro_backward(accelerator, model, examples: list[Example], ref: dict, lc: LossConfig, pad_id: int, dtype,
                    packing_plan: packing.Plan | None = None, reference=None) -> dict:
    """Forward + backward of one micro-batch. Packed, it runs as forwards of one row each (memory bounded by
    --max-tokens-per-batch), each loss weighted by its share of the micro-batch's mean (pairs; SFT: tokens), so
    the summed gradients and the metrics equal one forward's. `reference`: the live reference model (TDPO),
    else `ref` holds the cached reference log-probs."""
    groups = packing.forward_groups(examples, packing_plan) if packing_plan is not None else [examples]
    total = _loss_units(examples, lc)
    metrics: dict[str, float] = {}
    for n, group in enumerate(groups):
        share = _loss_units(group, lc) / total if len(groups) > 1 else 1.0
        with contextlib.nullcontext() if n == len(groups) - 1 else accelerator.no_sync(model):
            loss, part = micro_step(model, group, ref, lc, pad_id, accelerator.device, dtype, packing_plan,
                                     reference)
            accelerator.backward(loss * share if len(groups) > 1 else loss)
        for k, v in part.items():
            metrics[k] = metrics.get(k, 0.0) + share * v
    return metrics


def _loss_units(examples: list[Example], lc: LossConfig) -> float:
    """What the micro-batch loss averages over: pairs, or (SFT) continuation tokens."""
    if lc.objective == "sft":
        return float(max(sum(len(e.chosen) + len(e.rejected) for e in examples), 1))
    return float(len(examples))



def _log_metrics(accelerator, window: dict, step: int, steps_per_epoch: int, lr: float, tokens: int,
                 seconds: float, config: TrainConfig, emit) -> dict:
    micro, steps = window.pop("_micro", 1.0), window.pop("_steps", 1.0)
    names = sorted(window)
    values = torch.tensor([window[n] / (steps if n == "grad_norm" else micro) for n in names] + [tokens],
                          dtype=torch.float64, device=accelerator.device)
    if accelerator.num_processes > 1:
        values = accelerator.reduce(values, reduction="sum")
        values[:-1] /= accelerator.num_processes
    metrics = {"step": step, "epoch": round(step / steps_per_epoch, 4)}
    metrics.update({n: float(values[i]) for i, n in enumerate(names)})
    metrics["lr"] = lr
    metrics["tokens_per_s"] = round(float(values[-1]) / max(seconds, 1e-9), 1)
    order = ["step", "epoch", "loss", "reward_accuracy", "step_accuracy", "mean_reward", "chosen_reward",
             "rejected_reward", "margin", "chosen_logp", "rejected_logp", "chosen_kl", "rejected_kl", "value_loss",
             "value_accuracy", "sft_loss", "lr", "grad_norm", "tokens_per_s"]
    metrics = {k: metrics[k] for k in order if k in metrics}
    if accelerator.is_main_process and emit is not None:
        emit(metrics)
    if tracker_names(config.report_to):
        accelerator.log({f"train/{k}": v for k, v in metrics.items() if k != "step"}, step=step)
    return metrics


def _save_model(accelerator, model, tokenizer, config: TrainConfig, template: str, model_path: str,
                summary: dict) -> None:
    """A HF model dir: weights (LoRA merged unless --no-merge-lora), tokenizer, stepdpo.json."""
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if config.lora and config.merge_lora:
            unwrapped = unwrapped.merge_and_unload()
            state_dict = None  # the merged module's own weights
        if config.objective == "svpo":  # the LM as a plain HF dir, its value head beside it
            state_dict, head = split_state_dict(state_dict if state_dict is not None else unwrapped.state_dict())
            unwrapped = unwrapped.model
            save_value_head(head, config.output)
        unwrapped.save_pretrained(config.output, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(config.output)
        meta = {"template": template, "objective": config.objective, "base_model": model_path,
                **({"prm": {"labels": config.prm_labels, "step_format": prm_step_format(), "head": "1 logit per "
                            "token (AutoModelForTokenClassification); reward = sigmoid at each step's last token"}}
                   if config.objective == "prm" else {}),
                **({"value_head": {"file": "value_head.safetensors", "reads": "tanh(Linear(last hidden state)) at "
                                   "each step's last token", "target": "2Q - 1"}}
                   if config.objective == "svpo" else {}),
                "lora": config.lora, "lora_merged": config.lora and config.merge_lora,
                "config": {k: v for k, v in asdict(config).items() if k not in ("extra",)}, "summary": summary}
        atomic_write_json(os.path.join(config.output, MODEL_META_FILE), meta)
        log.summary("train", {k: summary[k] for k in ("objective", "steps", "rows", "seconds", "loss",
                                                      "reward_accuracy", "step_accuracy") if k in summary})
    accelerator.wait_for_everyone()


def prm_step_format() -> str:
    from ..rewards.prm import STEP_FORMAT

    return STEP_FORMAT
