"""Many records graded at once: threads over one function, results in input order (`map_in_order`)."""
from __future__ import annotations

import os
import queue
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, TypeVar

Item = TypeVar("Item")


def grade_threads() -> int:
    """Records graded at once (`STEPDPO_GRADE_THREADS`, default 4). Threads suffice: the slow symbolic work runs
    in worker processes (worker.py), so a thread waiting on one pathological answer blocks no other."""
    try:
        return max(1, int(os.environ.get("STEPDPO_GRADE_THREADS", "4")))
    except ValueError:
        return 4


def map_in_order(function: Callable[[Item], Any], items: Iterable[Item], *,
                 threads: int | None = None) -> Iterator[tuple[Item, Any]]:
    """(item, function(item)) in input order, up to `threads` items in flight and a bounded read-ahead.

    One slow item costs its own time while the others proceed. Input is read on its own thread, so a result
    goes out as soon as it and those before it are done, even while the next input line has not arrived (a
    pipe fed record by record sees each record promptly). If reading `items` raises (bad input), every item
    read before it is still yielded first, then the error is raised, so nothing already graded is lost."""
    threads = grade_threads() if threads is None else threads
    if threads <= 1:
        for item in items:
            yield item, function(item)
        return
    window = 4 * threads
    inbox: queue.Queue = queue.Queue(maxsize=window)  # bounded: the reader stays at most a window ahead

    def read() -> None:
        try:
            for item in items:
                inbox.put((True, item))
            inbox.put((False, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there in order
            inbox.put((False, exc))

    # A daemon thread: blocked on an idle stdin it must not keep the process alive after the run ends.
    threading.Thread(target=read, name="stepdpo-grade-reader", daemon=True).start()
    pool = ThreadPoolExecutor(threads, thread_name_prefix="stepdpo-grade")
    pending: deque[tuple[Item, Future]] = deque()
    reading, error = True, None
    try:
        while reading or pending:
            if pending and (pending[0][1].done() or not reading or len(pending) >= window):
                first, future = pending.popleft()
                yield first, future.result()
                continue
            try:  # wait for input, but look at the oldest result again soon when something is in flight
                more, value = inbox.get(timeout=0.02 if pending else None)
            except queue.Empty:
                continue
            if more:
                pending.append((value, pool.submit(function, value)))
            else:
                reading, error = False, value
        if error is not None:
            raise error
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
