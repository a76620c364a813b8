"""The symbolic worker processes: an overrun kills the process, nothing outlives its parent."""
from __future__ import annotations

import subprocess
import sys
import time

from stepdpo_cli.grading import worker as grading_worker
from stepdpo_cli.grading.worker import symbolic_match


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _worker_pids() -> set[int]:
    pool = grading_worker._pool()
    return {worker.proc.pid for worker in pool.idle}


def test_overrun_kills_the_worker_process():
    assert symbolic_match("\\sin^2 x+\\cos^2 x", "1", 30.0) is True
    before = _worker_pids()
    assert symbolic_match("\\tan^2 x+1", "\\sec^2 x", 1e-6) is False
    gone = before - _worker_pids()
    assert gone and not any(_alive(pid) for pid in gone)
    assert symbolic_match("\\tan^2 x+1", "\\sec^2 x", 30.0) is True  # a replacement serves the next call


def test_workers_do_not_outlive_their_parent():
    code = ("from stepdpo_cli.grading import worker as g; "
            "assert g.symbolic_match('x > 3', '3 < x', 60.0); "
            "print(*[w.proc.pid for w in g._pool().idle])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    pids = [int(p) for p in result.stdout.split()]
    assert pids
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids)
