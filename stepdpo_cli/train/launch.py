"""Multi-process runs: `stepdpo train --num-processes N` (or --config-file, or --deepspeed) re-runs itself
under `accelerate launch` with the same arguments; DeepSpeed configs shipped in configs/ are filled here.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import sys
from typing import Any

from ..records import InputError

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
NAMED_CONFIGS = ("zero2", "zero3", "zero3-offload")
LAUNCHED_ENV = "STEPDPO_LAUNCHED"  # set in children so they train instead of launching again
# Options that only the parent understands (dropped from the child's argv).
LAUNCH_OPTIONS = ("--num-processes", "--config-file")


def deepspeed_config(spec: str, config: Any) -> dict:
    """A DeepSpeed config dict from a shipped name (zero2|zero3|zero3-offload) or a JSON file, with the
    "auto" batch/clipping/bf16 fields filled from the training options (DeepSpeed wants them exact)."""
    path = os.path.join(CONFIG_DIR, f"{spec}.json") if spec in NAMED_CONFIGS else spec
    if not os.path.isfile(path):
        raise InputError(f"not one of {', '.join(NAMED_CONFIGS)} and no such file", field="--deepspeed")
    try:
        with open(path, encoding="utf-8") as handle:
            ds = json.load(handle)
    except json.JSONDecodeError as exc:
        raise InputError(f"bad JSON in {path}: {exc}", field="--deepspeed") from None
    ds = copy.deepcopy(ds)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    fills = {
        "train_micro_batch_size_per_gpu": config.batch_size,
        "gradient_accumulation_steps": config.grad_accum,
        "train_batch_size": config.batch_size * config.grad_accum * world,
        "gradient_clipping": config.max_grad_norm if config.max_grad_norm > 0 else 0.0,
    }
    for key, value in fills.items():
        if ds.get(key, "auto") == "auto":
            ds[key] = value
    for section, enabled in (("bf16", config.bf16 or getattr(config, "pure_bf16", False)), ("fp16", False)):
        if isinstance(ds.get(section), dict) and ds[section].get("enabled") == "auto":
            ds[section]["enabled"] = enabled
    return ds


def needs_launch(num_processes: int, config_file: str | None, deepspeed: str | None) -> bool:
    """True in the parent when the run must go through `accelerate launch` (DeepSpeed needs a process group
    even for one process)."""
    if os.environ.get(LAUNCHED_ENV) or os.environ.get("LOCAL_RANK") is not None:
        return False
    return num_processes > 1 or bool(config_file) or bool(deepspeed)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_argv(argv: list[str], data_path: str | None = None) -> list[str]:
    """The parent's `train ...` arguments without launcher-only options; `--data -` replaced by a file."""
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in LAUNCH_OPTIONS:
            skip = "=" not in arg
            continue
        if data_path and name in ("--data", "-i"):
            out.append(f"--data={data_path}")
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def relaunch(argv: list[str], *, num_processes: int, config_file: str | None, deepspeed: str | None,
             data: str, output: str, objective: str | None = None, stdout: int | None = None,
             split: str = "train") -> int:
    """Run `python -m accelerate.commands.launch ... -m stepdpo_cli train ARGS`; returns its exit code.
    `stdout`: the fd the children's metrics JSONL goes to (the launcher's own chatter goes to stderr)."""
    data_path = None
    if data == "-":  # children cannot share our stdin: spool it beside the output
        os.makedirs(output, exist_ok=True)
        data_path = os.path.join(output, "train_data.jsonl")
        with open(data_path, "wb") as handle:
            shutil.copyfileobj(sys.stdin.buffer, handle)
    if objective:  # bad rows exit 2 here, before N processes start (a child's exit code would become 1)
        from ..datasets import iter_rows
        from .data import validator

        for _ in iter_rows(data_path or data, split=split, validate=validator(objective),
                           skip_invalid="--skip-invalid" in argv):
            pass
    env = dict(os.environ)
    env[LAUNCHED_ENV] = "1"
    env.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(os.path.expanduser("~"), ".cache", "stepdpo",
                                                        "torch_extensions"))
    if not _has_cuda():
        env.setdefault("DS_ACCELERATOR", "cpu")  # else DeepSpeed probes and prints a warning on stdout
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if config_file:
        if not os.path.isfile(config_file):
            raise InputError("no such file", field="--config-file")
        cmd += ["--config_file", config_file]
        if num_processes > 1:  # an explicit --num-processes overrides the yaml's
            cmd += ["--num_processes", str(num_processes)]
        with open(config_file, encoding="utf-8") as handle:
            uses_deepspeed = "deepspeed" in handle.read().lower()
        if not _has_cuda() and not uses_deepspeed:
            env["ACCELERATE_USE_CPU"] = "true"  # a MULTI_GPU yaml then runs DDP over gloo on CPU
    else:
        cmd += ["--num_processes", str(num_processes), "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
        if deepspeed:
            cmd += ["--use_deepspeed"]
        elif num_processes > 1:
            cmd += ["--multi_gpu"]
            if not _has_cuda():
                env["ACCELERATE_USE_CPU"] = "true"  # plain DDP over gloo on CPU
    cmd += ["-m", "stepdpo_cli", *child_argv(argv, data_path)]
    return subprocess.run(cmd, env=env, stdout=stdout).returncode


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
