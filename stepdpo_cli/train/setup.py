"""What a training run is built from: its configuration, trackers, accelerator, model, optimizer and batch order.

loop.py runs the steps; this module makes what they run on, so each piece can be tested (and reused by new
objectives) without the loop.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field

import torch

from .. import log
from ..records import InputError, derive_seed
from .data import num_batches
from .losses import LossConfig


@dataclass
class TrainConfig:
    model: str
    data: str
    output: str
    objective: str = "step-dpo"
    beta: float = 0.4
    lr: float = 5e-7
    epochs: float = 1.0
    batch_size: int = 4
    grad_accum: int = 1
    scheduler: str = "cosine"
    warmup_ratio: float = 0.1
    max_length: int = 1024
    template: str | None = None
    seed: int = 0  # the CLI's --seed default, as in every stage
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    merge_lora: bool = True
    gradient_checkpointing: bool = False
    bf16: bool = False  # fp32 master weights + bf16 autocast (accelerate's mixed precision)
    pure_bf16: bool = False  # weights and optimizer state in bf16: half the memory, tiny updates get lost
    max_prompt_length: int = 512  # context tokens kept at least when a row is too long (official: 512)
    step_text: str = "step-end"  # step-end: a continued step ends with its newline; as-given: official trainer
    loss: str = "sigmoid"
    label_smoothing: float = 0.0
    nll_weight: float = 0.0
    step_temperature: float = 0.5
    save_steps: int = 0
    logging_steps: int = 1
    resume: bool = False
    report_to: str = "none"
    deepspeed: str | None = None
    max_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    attn_implementation: str = "sdpa"
    max_tokens_per_batch: int = 0  # > 0: padding-free rows of several pairs, <= this many tokens each (packing.py)
    data_split: str = "train"  # --data-split: for hub ids and save_to_disk DatasetDicts
    skip_invalid: bool = False  # --skip-invalid: bad rows are logged and skipped instead of exit 2
    sft_weight: float = 1.0  # svpo: weight of the SFT term (chosen steps with Q >= 0.5)
    value_weight: float = 1.0  # svpo: weight of the value head's squared error
    tdpo_alpha: float = 0.5  # --loss tdpo2: weight of the rejected sequential KL (authors' default)
    prm_labels: str = "final-answer"  # objective prm: final-answer | first-error | step-scores (rewards/labels.py)
    extra: dict = field(default_factory=dict)

    @property
    def preference(self) -> bool:
        return self.objective not in ("sft", "prm")

    def loss_config(self) -> LossConfig:
        return LossConfig(self.objective, self.beta, self.loss, self.label_smoothing, self.nll_weight,
                          self.step_temperature, self.tdpo_alpha, self.sft_weight, self.value_weight)


TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}  # -> module


def tracker_names(report_to: str) -> list[str]:
    """`--report-to` ("none", or trackers separated by commas) -> accelerate tracker names; InputError naming a
    tracker that is unknown or whose package is not installed."""
    import importlib.util

    names = [n.strip().lower() for n in (report_to or "none").split(",") if n.strip()]
    if names in ([], ["none"]):
        return []
    for name in names:
        if name not in TRACKERS:
            raise InputError(f"{name!r} is not one of none, {', '.join(TRACKERS)}", field="--report-to")
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise InputError(f"{name} is not installed (pip install 'stepdpo[trackers]' or pip install {name})",
                             field="--report-to")
    return list(dict.fromkeys(names))


def init_trackers(accelerator, config: TrainConfig, trackers: list[str]) -> None:
    """Start the trackers with the run's config. Their files go under OUTPUT: tensorboard OUTPUT/runs, wandb
    OUTPUT/wandb (WANDB_MODE=offline works), mlflow a file store OUTPUT/mlruns unless MLFLOW_TRACKING_URI is set."""
    import pathlib

    run_name = os.path.basename(os.path.normpath(config.output))
    if "mlflow" in trackers and not os.environ.get("MLFLOW_TRACKING_URI"):
        import mlflow

        # A local file store needs no server or database (MLflow 3 asks to opt in to it).
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(pathlib.Path(config.output, "mlruns").absolute().as_uri())
    init_kwargs = {"wandb": {"dir": config.output, "name": run_name}, "mlflow": {"run_name": run_name}}
    values = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in asdict(config).items()
              if k != "extra"}
    accelerator.init_trackers("stepdpo", config=values,
                              init_kwargs={k: v for k, v in init_kwargs.items() if k in trackers})


def progress_status(metrics: dict) -> str:
    """The progress bar's text: the last logged loss and reward accuracy."""
    parts = [f"{name} {metrics[key]:.4f}" for key, name in (("loss", "loss"), ("reward_accuracy", "reward acc"),
                                                                     ("step_accuracy", "step acc"))
             if isinstance(metrics.get(key), float)]
    return "  ".join(parts)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_host_memory() -> bool:
    """Let glibc keep freed activation memory for reuse instead of returning it to the kernel (True if set).

    Training on the CPU allocates and frees the same tens of MB of activations every forward. glibc serves
    such blocks with mmap and gives them back on free (or trims the heap top), so every step page-faults its
    activations in again: measured here, 565k page faults and ~14% of a 50 s CPU run (dense, 16 pairs at
    context 1024: 20.7 -> 16.9 s). A 32 MiB mmap threshold (glibc's largest) and a 1 GiB trim threshold keep
    them in the heap, as jemalloc or tcmalloc would, at a peak RSS 0-8% higher (heap fragmentation). The
    setting is process-wide and stays after train returns. No effect on other C libraries (musl, macOS) or
    on GPU memory."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))


def make_accelerator(config: TrainConfig):
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    # gloo on CPU, but only inside a launched run: for a plain single process accelerate must see no backend.
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 or os.environ.get("LOCAL_RANK") is not None
    handlers = [InitProcessGroupKwargs(backend="gloo")] if launched and not torch.cuda.is_available() else []
    plugin = None
    if config.deepspeed:
        from accelerate.utils import DeepSpeedPlugin

        from .launch import deepspeed_config

        ds = deepspeed_config(config.deepspeed, config)
        plugin = DeepSpeedPlugin(hf_ds_config=ds)
    accelerator = Accelerator(
        gradient_accumulation_steps=config.grad_accum,
        mixed_precision="bf16" if config.bf16 and not config.pure_bf16 else "no",
        kwargs_handlers=handlers, deepspeed_plugin=plugin, step_scheduler_with_optimizer=False,
        log_with=tracker_names(config.report_to) or None,
        project_dir=os.path.join(config.output, "runs") if tracker_names(config.report_to) else None,
    )
    # A DeepSpeed config from an accelerate yaml (--config-file) may say "auto" for the micro-batch size,
    # which accelerate can only fill from a prepared DataLoader; we batch ourselves, so fill it here.
    state_plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if state_plugin is not None and state_plugin.deepspeed_config.get("train_micro_batch_size_per_gpu") == "auto":
        state_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.batch_size
    return accelerator


def load_model(config: TrainConfig, model_path: str):
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    # --bf16 keeps fp32 master weights and runs the forward under bf16 autocast: at the paper's lr (5e-7) an
    # AdamW update is ~lr per weight, far below bf16's resolution (2^-8 relative), so weights stored in bf16
    # would round most updates away (measured: ~1% of a bf16 tensor's entries change in 20 steps).
    # --pure-bf16 stores them in bf16 anyway, for those who need the memory.
    dtype = torch.bfloat16 if config.pure_bf16 else torch.float32
    if config.objective == "prm":  # the causal LM's body + a fresh 1-label head (rewards/prm.py)
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the new head is the point, not a "MISSING weights" warning
        try:
            model = AutoModelForTokenClassification.from_pretrained(model_path, dtype=dtype, num_labels=1,
                                                                    attn_implementation=config.attn_implementation)
        finally:
            hf_logging.set_verbosity(level)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype,
                                                     attn_implementation=config.attn_implementation)
    model.config.use_cache = False
    _disable_dropout(model)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.lora:
        from peft import LoraConfig, get_peft_model

        if config.gradient_checkpointing:
            model.enable_input_require_grads()
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                          target_modules="all-linear",
                          task_type="TOKEN_CLS" if config.objective == "prm" else "CAUSAL_LM")
        model = get_peft_model(model, lora)
    if config.objective == "svpo":  # the policy and a fresh tanh value head, trained together (rewards/value.py)
        from ..rewards.value import PolicyWithValueHead

        torch.manual_seed(derive_seed(config.seed, "value-head"))
        model = PolicyWithValueHead(model)
    return model


def load_reference(config: TrainConfig, model_path: str, accelerator, *, packed: bool = False):
    """TDPO's live reference: the initial weights, frozen, in eval mode, run beside the policy at every step
    (twice the weight memory). Without DeepSpeed it is prepared for evaluation (moved to the device, under the
    same bf16 autocast as the policy, no DDP wrapper); with ZeRO-3 it is sharded like the policy (a DeepSpeed
    engine without an optimizer, TRL's recipe); under ZeRO-1/2, which shard only optimizer state and
    gradients, each process holds a whole copy (stage 0). Call after the policy's accelerator.prepare, which
    fills the DeepSpeed config's "auto" values. `packed`: route its attention through the packed layout, as the
    policy's (packing.plan_for)."""
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if config.pure_bf16 else torch.float32
    reference = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype,
                                                     attn_implementation=config.attn_implementation)
    reference.config.use_cache = False
    _disable_dropout(reference)
    reference.requires_grad_(False)
    if packed:
        from .packing import use_packed_attention

        use_packed_attention(reference)
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return accelerator.prepare_model(reference, evaluation_mode=True).eval()
    import copy

    import deepspeed

    ds = copy.deepcopy(plugin.deepspeed_config)
    for key in ("optimizer", "scheduler"):
        ds.pop(key, None)
    zero = ds.setdefault("zero_optimization", {})
    if zero.get("stage", 0) != 3:
        ds["zero_optimization"] = {"stage": 0}
    engine, *_ = deepspeed.initialize(model=reference, config=ds)
    engine.eval()  # DeepSpeedEngine.eval returns None
    return engine


def _disable_dropout(model) -> None:
    """Dropout off in the policy, as in TRL: the reference log-probs come from the same model in eval mode,
    so a policy with dropout on would start with a random, non-zero log-ratio."""
    for name in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop",
                 "hidden_dropout_prob", "attention_probs_dropout_prob", "activation_dropout"):
        if isinstance(getattr(model.config, name, None), float):
            setattr(model.config, name, 0.0)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        elif isinstance(getattr(module, "attention_dropout", None), float):  # read by attention at call time
            module.attention_dropout = 0.0


def offloads_optimizer(accelerator) -> bool:
    """The DeepSpeed config (ours or an accelerate yaml's) keeps optimizer states on the CPU."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return False
    offload = plugin.deepspeed_config.get("zero_optimization", {}).get("offload_optimizer") or {}
    return offload.get("device") in ("cpu", "nvme")


def make_optimizer(config: TrainConfig, params: list, accelerator):
    """AdamW; with ZeRO optimizer offload, DeepSpeed's vectorised CPU Adam (several times faster on the host
    than torch's AdamW, which DeepSpeed would otherwise run there: zero_force_ds_cpu_optimizer false)."""
    if offloads_optimizer(accelerator):
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        if accelerator.is_main_process:
            log.log("train: optimizer states offloaded to the CPU: DeepSpeed's CPU Adam (compiled on first use)")
        return DeepSpeedCPUAdam(params, lr=config.lr, weight_decay=config.weight_decay, adamw_mode=True)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def schedule(config: TrainConfig, num_examples: int, world: int) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps)."""
    per_step = config.batch_size * world * config.grad_accum
    steps_per_epoch = num_batches(num_examples, per_step)
    total = config.max_steps or max(1, math.ceil(steps_per_epoch * config.epochs))
    return steps_per_epoch, total


def epoch_batches(num_examples: int, epoch: int, config: TrainConfig, world: int, rank: int) -> list[list[list[int]]]:
    """This rank's row indices for each optimizer step of `epoch`: [step][micro-batch][row]."""
    gen = torch.Generator().manual_seed(derive_seed(config.seed, "epoch", epoch))
    order = torch.randperm(num_examples, generator=gen).tolist()
    per_step = config.batch_size * world * config.grad_accum
    steps = num_batches(num_examples, per_step)
    order = (order * (steps * per_step // max(num_examples, 1) + 1))[: steps * per_step]  # wrap to fill
    out = []
    for s in range(steps):
        chunk = order[s * per_step:(s + 1) * per_step]
        micro = []
        for a in range(config.grad_accum):
            base = a * world * config.batch_size + rank * config.batch_size
            micro.append(chunk[base:base + config.batch_size])
        out.append(micro)
    return out
