"""Several OpenAI-compatible servers behind one backend: where each request goes, and when a run gives up.

Design choices (why):
- Least outstanding requests, `concurrency` per server: a slow or loaded server takes fewer requests without
  any tuning, and requests never queue on one server while another is idle.
- A server that errors (429, 5xx, timeout, connection refused) is taken out of rotation (a circuit breaker):
  it waits a backoff (full jitter, doubling per failed probe, capped; a Retry-After is a floor), then one
  request probes it; a success puts it back. Requests it failed go to the other servers at once. Requests
  that were already in flight when it went down count as one failure of the server, not many.
- Outputs never depend on the routing: every request carries its own seed, so a record is the same text
  whichever server answered it (where the servers honour seeds, as vLLM does).
- When to give up. With `unavailable_timeout` T (the default, 120 s, with several servers): the run fails
  once every server is out of rotation and none has answered anything for T seconds (counted from when the
  waiting request started, so an idle stretch of the stage does not count); a server restart shorter than T
  costs nothing. Without it (the default with one server): a request fails after `max_retries` retries,
  the behaviour before several servers existed. Either way a request that keeps failing (5xx) while other
  requests are answered gives up after `max_retries + 1` failures per server: a request that breaks
  servers must not go round them for ever.
"""
from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .. import log
from ..records import InputError

MULTI_SERVER_UNAVAILABLE_TIMEOUT = 120.0  # seconds with every server down before a run fails


def parse_server_urls(value: str | None) -> list[str | None]:
    """`--base-url`: one URL, a comma-separated list, or a file of URLs (one per line, `#` comments).

    None: $OPENAI_BASE_URL (which may also be a list or a file), else [None]: the OpenAI API itself."""
    field_name = "--base-url"
    if value is None:
        value, field_name = os.environ.get("OPENAI_BASE_URL") or None, "$OPENAI_BASE_URL"
    if value is None:
        return [None]
    value = value.strip()
    if "://" in value:
        entries = [(f"{u.strip()!r}", u.strip()) for u in value.split(",") if u.strip()]
        where = ""
    else:
        path = os.path.expanduser(value)
        if not os.path.isfile(path):
            raise InputError(f"not a URL (http://HOST:PORT/v1) nor a file of URLs: {value!r}", field=field_name)
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.read(1 << 20).splitlines()  # bounded: a URL list is small
        entries = [(f"line {number}", line.split("#", 1)[0].strip()) for number, line in enumerate(lines, 1)]
        entries = [(at, url) for at, url in entries if url]
        where = f"{value}: "
    if not entries:
        raise InputError(f"{where}no server URL given", field=field_name)
    seen: set[str] = set()
    for at, url in entries:
        if not url.startswith(("http://", "https://")) or len(url) <= len("https://"):
            raise InputError(f"{where}{at}: not an http(s) URL: {url!r}", field=field_name)
        if url.rstrip("/") in seen:
            raise InputError(f"{where}{at}: server listed twice: {url}", field=field_name)
        seen.add(url.rstrip("/"))
    return [url for _, url in entries]


@dataclass
class Server:
    """One server: its client, its health and what it did (for the summary)."""
    url: str | None
    client: Any
    outstanding: int = 0
    failures: int = 0  # consecutive failed probes; 0 means healthy
    down_since: float = 0.0
    down_until: float = 0.0
    probing: bool = False
    last_error: str = ""
    requests: int = 0
    answered: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    busy_seconds: float = 0.0


@dataclass
class Attempt:
    """One request's history across servers (owned by the thread sending it)."""
    started: float = field(default_factory=time.monotonic)
    failures: int = 0
    last_failure: float = 0.0


class ServerPool:
    """Servers behind one backend. Threads call `acquire` for a server, then exactly one of `answered`,
    `failed` or `release` with it."""

    def __init__(self, servers: list[Server], concurrency: int, *, max_retries: int,
                 unavailable_timeout: float | None, retry_base_delay: float, retry_max_delay: float):
        self.servers = servers
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.unavailable_timeout = unavailable_timeout
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay
        self.last_answer = 0.0  # monotonic time of the last answer from any server
        self._changed = threading.Condition()
        self._jitter = random.Random()  # jitter only spaces out retries; it never affects outputs

    @property
    def slots(self) -> int:
        return self.concurrency * len(self.servers)

    def acquire(self, cancel: threading.Event, attempt: Attempt) -> Server:
        """The healthy server with the fewest requests in flight (below `concurrency`), or a server due for a
        probe; waits while none is. Raises `Cancelled` once `cancel` is set, `Unavailable` once every server
        has been down for `unavailable_timeout`."""
        with self._changed:
            while True:
                if cancel.is_set():
                    raise Cancelled()
                now = time.monotonic()
                if all(s.failures for s in self.servers) and self._silent(attempt, now):
                    raise Unavailable()
                healthy = [s for s in self.servers if s.failures == 0 and s.outstanding < self.concurrency]
                if healthy:
                    chosen = min(healthy, key=lambda s: s.outstanding)
                else:
                    due = [s for s in self.servers if s.failures and not s.probing and s.down_until <= now]
                    chosen = min(due, key=lambda s: s.down_until) if due else None
                    if chosen is not None:
                        chosen.probing = True
                if chosen is not None:
                    chosen.outstanding += 1
                    chosen.requests += 1
                    return chosen
                waits = [s.down_until - now for s in self.servers if s.failures and not s.probing]
                self._changed.wait(min([w for w in waits if w > 0] + [0.25]))  # woken early by any release

    def release(self, server: Server) -> None:
        """The request ended without saying anything about the server's health (a 4xx, a cancel)."""
        with self._changed:
            self._finish(server)

    def answered(self, server: Server, seconds: float, usage: Any) -> None:
        with self._changed:
            self._finish(server)
            server.answered += 1
            server.busy_seconds += seconds
            server.failures, server.down_until = 0, 0.0
            for name in ("prompt_tokens", "completion_tokens"):
                value = getattr(usage, name, None)
                if isinstance(value, int):
                    setattr(server, name, getattr(server, name) + value)
            self.last_answer = time.monotonic()

    def failed(self, server: Server, attempt: Attempt, sent_at: float, error: str, seconds: float,
               retry_after: str | None = None) -> bool:
        """A retryable failure of `server`: out of rotation for a backoff. True when the request gives up."""
        with self._changed:
            self._finish(server)
            now = time.monotonic()
            server.failed += 1
            server.busy_seconds += seconds
            server.last_error = error
            if server.failures == 0 or sent_at >= server.down_since:  # in flight before it went down: same outage
                server.failures += 1
                server.down_since = now
                server.down_until = now + self._delay(server.failures - 1, retry_after)
            answered_since_last_failure = attempt.failures > 0 and self.last_answer > attempt.last_failure
            attempt.failures += 1
            attempt.last_failure = now
            if self.unavailable_timeout is None:
                return attempt.failures > self.max_retries
            if all(s.failures for s in self.servers) and self._silent(attempt, now):
                return True
            tried_everywhere = attempt.failures >= (self.max_retries + 1) * len(self.servers)
            return tried_everywhere and answered_since_last_failure

    def _silent(self, attempt: Attempt, now: float) -> bool:
        """No server has answered for `unavailable_timeout` seconds of this request's life."""
        return self.unavailable_timeout is not None and \
            now - max(self.last_answer, attempt.started) >= self.unavailable_timeout

    def _finish(self, server: Server) -> None:
        server.outstanding -= 1
        server.probing = False
        self._changed.notify_all()

    def _delay(self, failures: int, retry_after: str | None) -> float:
        delay = self._jitter.uniform(0, min(self.retry_max_delay, self.retry_base_delay * 2 ** failures))
        try:
            delay = max(delay, min(float(retry_after), self.retry_max_delay)) if retry_after else delay
        except ValueError:
            pass
        return delay

    def summary_lines(self) -> list[str]:
        """One line per server: requests, answers, failures, tokens, time busy."""
        lines = []
        for s in self.servers:
            mean = s.busy_seconds / s.requests if s.requests else 0.0
            lines.append(f"server {s.url}: {s.requests} request(s), {s.answered} answered, {s.failed} failed, "
                         f"{s.prompt_tokens} prompt + {s.completion_tokens} completion tokens, "
                         f"{s.busy_seconds:.1f} s busy ({mean:.2f} s per request)")
        return lines

    def log_summary(self) -> None:
        for line in self.summary_lines():
            log.log(f"openai backend: {line}")


class Unavailable(Exception):
    """Every server has been down for `unavailable_timeout` seconds."""


class Cancelled(Exception):
    """Another request of the same call failed for good (or Ctrl-C): stop waiting for a server."""
