"""The symbolic tier of grading: math-verify in persistent worker processes, killed when they overrun.

math-verify's own timeouts use SIGALRM, which only works on the main thread (and cannot interrupt C-level
big-integer arithmetic). A separate process is the one bound that holds from threads and from
multiprocessing workers alike: the parent waits on a pipe with a deadline and kills the process when it
passes. Workers are started with subprocess (not multiprocessing), so daemonic pool workers can use them,
and a forked child drops its parent's workers and starts its own. `STEPDPO_GRADE_WORKERS` (default 2)
caps the workers per process.
"""
from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import threading
import time

MAX_SYMBOLIC_CHARS = 300  # longer answers are compared as strings only
WORKER_START_TIMEOUT = 120.0  # importing sympy on a loaded machine can take many seconds

_symbolic_cache: dict[tuple[str, str], bool] = {}
_CACHE_LIMIT = 50000


symbolic_calls = 0  # comparisons that reached the symbolic tier (cache hits included); for benchmarks


def symbolic_match(pred: str, ref: str, timeout: float) -> bool:
    """math-verify's verdict on prediction vs reference; False when it overruns `timeout` seconds."""
    global symbolic_calls
    symbolic_calls += 1
    key = (pred, ref)
    cached = _symbolic_cache.get(key)
    if cached is not None:
        return cached
    result = _pool().compare(pred, ref, timeout)
    if result is None:  # timed out: not cached, a later call with more time may decide it
        return False
    if len(_symbolic_cache) >= _CACHE_LIMIT:
        _symbolic_cache.clear()
    _symbolic_cache[key] = result
    return result


class _Worker:
    """One math-verify process speaking JSON lines on its stdin/stdout."""

    def __init__(self) -> None:
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_parent,
                                                                          os.environ.get("PYTHONPATH")])),
               "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from stepdpo_cli.grading.worker import _worker_main; _worker_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=None if os.environ.get("STEPDPO_DEBUG") else subprocess.DEVNULL,
            env=env, start_new_session=True)  # own session: a terminal Ctrl-C goes to the parent only
        self._buffer = b""
        self.ready = False

    def _readline(self, deadline: float) -> bytes | None:
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(remaining * 1000):
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError("grading worker exited")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def compare(self, pred: str, ref: str, timeout: float) -> bool | None:
        """True/False, or None when the worker overran `timeout` or died (the caller then replaces it)."""
        if not self.ready:
            if self._readline(time.monotonic() + WORKER_START_TIMEOUT) != b"ready":
                raise RuntimeError("grading worker did not start (is math-verify installed?)")
            self.ready = True
        self.proc.stdin.write(json.dumps({"p": pred, "r": ref}).encode() + b"\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        line = self._readline(time.monotonic() + timeout)
        return None if line is None else bool(json.loads(line)["ok"])

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=10)
        except Exception:  # noqa: BLE001 - already gone
            pass

    def detach(self) -> None:
        """In a forked child: close our copies of the parent's pipes without touching its process."""
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                os.close(stream.fileno())  # type: ignore[union-attr]
            except Exception:  # noqa: BLE001
                pass
        self.proc.returncode = 0  # so Popen.__del__ does not try to reap a process that is not our child


class _WorkerPool:
    """Up to `size` workers; a thread checks one out for one comparison. Replaced wholesale after fork()."""

    def __init__(self, size: int) -> None:
        self.pid = os.getpid()
        self.size = size
        self.idle: list[_Worker] = []
        self.live: set[_Worker] = set()  # idle and checked out, so exit and fork can reach every one
        self.count = 0
        self.cond = threading.Condition()
        self.warned = False

    def _checkout(self) -> _Worker:
        with self.cond:
            while not self.idle and self.count >= self.size:
                self.cond.wait()
            if self.idle:
                return self.idle.pop()
            self.count += 1
        try:
            worker = _Worker()
        except Exception:
            with self.cond:
                self.count -= 1
                self.cond.notify()
            raise
        self.live.add(worker)
        return worker

    def _release(self, worker: _Worker | None) -> None:
        with self.cond:
            if worker is None:
                self.count -= 1
            else:
                self.live.add(worker)
                self.idle.append(worker)
            self.cond.notify()

    def compare(self, pred: str, ref: str, timeout: float) -> bool | None:
        """True/False, or None when the comparison overran `timeout` (its worker is then replaced)."""
        worker = self._checkout()
        try:
            result = worker.compare(pred, ref, timeout)
        except Exception as exc:  # noqa: BLE001 - a broken worker means "not shown equal", never a crash
            result = None
            if not self.warned:
                self.warned = True
                print(f"warning: symbolic grading unavailable: {exc}", file=sys.stderr)
        if result is None:  # overran or died: kill it, start a replacement now so it warms up meanwhile
            worker.kill()
            self.live.discard(worker)
            try:
                replacement: _Worker | None = _Worker()
            except Exception:  # noqa: BLE001
                replacement = None
            self._release(replacement)
            return None
        self._release(worker)
        return result

    def close(self) -> None:
        if os.getpid() != self.pid:
            return
        for worker in list(self.live):
            worker.kill()
        self.live.clear()
        self.idle = []


_POOL: _WorkerPool | None = None
_POOL_LOCK = threading.Lock()


def _pool_size() -> int:
    try:
        return max(1, int(os.environ.get("STEPDPO_GRADE_WORKERS", "2")))
    except ValueError:
        return 2


def _pool() -> _WorkerPool:
    global _POOL
    pool = _POOL
    if pool is not None and pool.pid == os.getpid():
        return pool
    with _POOL_LOCK:
        if _POOL is not None and _POOL.pid != os.getpid():
            _forget_parent_pool()
        if _POOL is None:
            _POOL = _WorkerPool(_pool_size())
        return _POOL


def _forget_parent_pool() -> None:
    """In a forked child: the parent's workers (and any lock a parent thread held) are not ours."""
    global _POOL, _POOL_LOCK
    _POOL_LOCK = threading.Lock()
    if _POOL is not None and _POOL.pid != os.getpid():
        for worker in list(_POOL.live):
            worker.detach()
        _POOL = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parent_pool)


@atexit.register
def _shutdown() -> None:
    if _POOL is not None:
        _POOL.close()


def _worker_main() -> None:
    """The worker process: read {"p", "r"} lines, answer {"ok"} lines. Protocol on a private copy of stdout."""
    import logging
    import resource

    try:  # a runaway expression hits MemoryError instead of the machine's swap
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    except (ValueError, OSError):
        pass
    protocol = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints from libraries cannot corrupt the protocol
    logging.disable(logging.CRITICAL)
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig(), ExprExtractionConfig()]

    def equal(pred: str, ref: str) -> bool:
        # parsing_timeout/timeout_seconds None: no SIGALRM; the parent process enforces the time bound.
        gold = parse(f"${ref}$", config, parsing_timeout=None)  # type: ignore[arg-type]
        target = parse(f"${pred}$", config, parsing_timeout=None)  # type: ignore[arg-type]
        return bool(gold and target and verify(gold, target, timeout_seconds=None))

    protocol.write(b"ready\n")
    protocol.flush()
    for line in sys.stdin.buffer:
        try:
            request = json.loads(line)
            ok = equal(str(request["p"])[:MAX_SYMBOLIC_CHARS], str(request["r"])[:MAX_SYMBOLIC_CHARS])
        except Exception:  # noqa: BLE001 - unparsable means not shown equal
            ok = False
        protocol.write(json.dumps({"ok": ok}).encode() + b"\n")
        protocol.flush()
