"""`--data-parallel N` for the generating stages: N worker processes, each with its own engine on its own
GPU group, over an N-way split of the input; their outputs are merged back in input order.

Why processes: one vLLM engine (or hf model) drives one GPU group; N engines in one process would share one
Python thread. Each worker is the same `stepdpo` command run on a shard, so a worker's records are exactly
what a one-process run writes for those inputs (per-record seeds never depend on batching or on the shard).

Layout (beside the output, removed after the merge): OUTPUT.dp/in-K.jsonl (input record j goes to shard
j % N, validated, with its id) and OUTPUT.dp/out-K.jsonl (worker K's output, written with --resume). An
interrupted run keeps them: rerunning with --resume resumes every worker, then merges. GPUs: worker K sees
CUDA_VISIBLE_DEVICES = the K-th group of `tensor_parallel_size` visible devices.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Any, Callable, Iterable

from . import log
from .records import InputError, ReadStats, RecordWriter, iter_jsonl

WORKER_ENV = "STEPDPO_DATA_PARALLEL_WORKER"  # set in workers so they run their shard instead of splitting again


def is_worker() -> bool:
    return bool(os.environ.get(WORKER_ENV))


def work_dir(output: str) -> str:
    return output + ".dp"


def strip_options(argv: list[str], with_value: Iterable[str], flags: Iterable[str] = ()) -> list[str]:
    """`argv` without the named options (``--opt VALUE``, ``--opt=VALUE``; flags alone)."""
    with_value, flags = set(with_value), set(flags)
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in flags:
            continue
        if name in with_value:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def device_groups(workers: int, tensor_parallel_size: int) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES of each worker: consecutive groups of `tensor_parallel_size` visible GPUs
    (None each on a machine without GPUs: CPU workers share the host)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        devices = [d.strip() for d in visible.split(",") if d.strip()]
    else:
        import torch

        devices = [str(i) for i in range(torch.cuda.device_count())]
    if not devices:
        return [None] * workers
    need = workers * tensor_parallel_size
    if need > len(devices):
        raise InputError(f"{workers} workers x tensor_parallel_size {tensor_parallel_size} need {need} GPUs; "
                         f"{len(devices)} visible", field="--data-parallel")
    return [",".join(devices[k * tensor_parallel_size:(k + 1) * tensor_parallel_size]) for k in range(workers)]


def run_data_parallel(argv: list[str], *, workers: int, records: Iterable[dict], output: str | None, resume: bool,
                      origin: Callable[[dict], Any], done_filter: Callable[[dict, set[str]], bool],
                      tensor_parallel_size: int = 1, drop_options: Iterable[str] = (),
                      group_key: Callable[[dict], Any] | None = None) -> int:
    """Split validated `records` over `workers` runs of this command (`argv`: sys.argv[1:]), then merge their
    outputs into `output` in input order. `origin(out_record)` names the input id an output record came from.
    Returns the number of records written to `output` by the merge."""
    if not output or output == "-":
        raise InputError("--data-parallel needs -o FILE (workers write beside it; the merge resumes)",
                         field="--data-parallel")
    root = work_dir(output)
    groups = device_groups(workers, tensor_parallel_size)  # before anything is removed: it can refuse
    if not resume and os.path.isdir(root):
        shutil.rmtree(root)  # a fresh run starts fresh, like -o without --resume
    os.makedirs(root, exist_ok=True)

    done: set[str] = set()
    if resume:  # inputs the merged output already has are not generated again
        # The writer's own repair (adopt a .partial, cut a torn line and, with group_key, the last input's
        # records) decides what is done, so the shards and the merge agree on it.
        probe = RecordWriter(output, resume=True, group_key=group_key)
        done = set(probe.done_ids)
        probe.close()
    order: list[dict] = []
    handles = [open(os.path.join(root, f"in-{k}.jsonl.tmp"), "wb") for k in range(workers)]
    try:
        from .records import dumps

        for j, record in enumerate(records):
            order.append({"id": record.get("id")})
            if not (done and done_filter(record, done)):
                handles[j % workers].write(dumps(record))  # by position in the whole input: a stable shard
    finally:
        for handle in handles:
            handle.close()
    for k in range(workers):  # same input, same shard files: a resumed worker sees what it saw before
        os.replace(os.path.join(root, f"in-{k}.jsonl.tmp"), os.path.join(root, f"in-{k}.jsonl"))

    child = strip_options(argv, {"-i", "--input", "-o", "--output", "--data-parallel", *drop_options},
                          {"--resume"})
    procs = []
    for k in range(workers):
        env = {**os.environ, WORKER_ENV: str(k)}
        if groups[k] is not None:
            env["CUDA_VISIBLE_DEVICES"] = groups[k]
        cmd = [sys.executable, "-m", "stepdpo_cli", *child, "-i", os.path.join(root, f"in-{k}.jsonl"),
               "-o", os.path.join(root, f"out-{k}.jsonl"), "--resume"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL))
    log.log(f"data-parallel: {workers} workers on {len(order)} record(s)"
            + (f", GPUs {' | '.join(g for g in groups if g)}" if any(groups) else ""))
    codes = []
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.wait()  # they got the same SIGINT: let them write what they finished
        raise
    failed = [c for c in codes if c != 0]
    if failed:
        if 130 in failed or 143 in failed:
            raise KeyboardInterrupt
        code = 2 if all(c == 2 for c in failed) else 1
        log.warn(f"data-parallel: {len(failed)} worker(s) failed; their finished records are kept in {root} "
                 "(rerun with --resume)")
        raise SystemExit(code)
    return _merge(root, workers, order, output, resume, origin, done_filter)


def _merge(root: str, workers: int, order: list[dict], output: str, resume: bool, origin: Callable[[dict], Any],
           done_filter: Callable[[dict, set[str]], bool]) -> int:
    produced: dict[str, list[dict]] = {}
    for k in range(workers):
        path = os.path.join(root, f"out-{k}.jsonl")
        if os.path.exists(path):
            for record in iter_jsonl(path, stats=ReadStats(), unique_ids=False):
                produced.setdefault(str(origin(record)), []).append(record)
    writer = RecordWriter(output, resume=resume)  # repaired by the probe above: no second group cut
    written = 0
    try:
        for item in order:
            if resume and writer.done_ids and done_filter(item, writer.done_ids):
                continue
            group = produced.get(str(item["id"]), [])
            if group:
                writer.write_many(group)
                written += len(group)
    finally:
        writer.close()
    shutil.rmtree(root, ignore_errors=True)
    log.log(f"data-parallel: merged {written} record(s) from {workers} workers into {output}")
    return written


def split_over_workers(workers: int, backend_options: dict[str, Any], *, input: str | None, output: str | None,
                        resume: bool, skip_invalid: bool, validate: Callable[[dict], dict], max_line_bytes: int,
                        origin: Callable[[dict], Any], done_filter: Callable[[dict, set[str]], bool],
                        group_key: Callable[[dict], Any] | None = None,
                        source: Iterable[dict] | None = None, drop_options: tuple[str, ...] = ()) -> bool:
    """--data-parallel N > 1 in the parent: run the command as N workers (run_data_parallel); True when it did."""
    if workers < 1:
        raise InputError("must be >= 1", field="--data-parallel")
    if workers == 1 or is_worker():
        return False
    records = source if source is not None else iter_jsonl(
        input, skip_invalid=skip_invalid, validate=validate, log=log.warn, max_line_bytes=max_line_bytes)
    tensor_parallel = int(backend_options.get("tensor_parallel_size", 1) or 1)
    run_data_parallel(sys.argv[1:], workers=workers, records=records, output=output, resume=resume,
                      origin=origin, done_filter=done_filter, tensor_parallel_size=tensor_parallel,
                      drop_options=drop_options, group_key=group_key)
    return True
