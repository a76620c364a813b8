"""The `openai` backend: any OpenAI-compatible server (vLLM serve, SGLang, TGI, `transformers serve`, OpenAI).

Design choices (why):
- One HTTP call per (prompt, top-up) on a bounded thread pool: the sync `openai` client is thread-safe and
  threads keep `generate` a plain blocking call like the other backends.
- Our own retry loop (client retries off): exponential backoff with full jitter on 408/409/429/5xx, timeouts
  and connection errors, honouring Retry-After; any other 4xx or a malformed body fails at once with a
  one-line `BackendError` naming the endpoint and status, never the API key.
- Several servers (`base_url="URL1,URL2"` or a file of URLs): `servers.ServerPool` sends each request to the
  least busy healthy one and takes a failing one out of rotation, so a server that dies or restarts mid-run
  costs retries, never records. What a server was seen to refuse (n, chat prefill, a parameter) is learned
  once for all of them: a fleet is assumed to run one engine.
- Servers differ, so results are normalised here: a server that ignores `n` is asked again (with derived
  seeds) until n completions exist; a server that keeps the stop string (or ignores `stop`) is cut with
  `base.truncate_at_stop`.
- `endpoint="completions"` (default) sends the prompt as raw text: rectify needs a verbatim continuation of
  `initial_reason_steps`. `endpoint="chat"` sends the text before the step-wise prefix as the user message and
  the prefix (``Let's think step by step.\\nStep 1:...``) as an assistant message to continue, using vLLM's
  `continue_final_message`/`add_generation_prompt` request fields. A server that rejects those fields (OpenAI,
  `transformers serve`) gets the whole prompt as one user message instead (warned once); a reply that
  repeats the prefix has it removed so `text` is always what follows the prompt.
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from .. import log
from ..records import InputError
from ..steps import STEP_PREFIX
from .base import Completion, Request, SamplingParams, sample_seed, truncate_at_stop
from .servers import (MULTI_SERVER_UNAVAILABLE_TIMEOUT, Attempt, Cancelled, Server, ServerPool, Unavailable,
                      parse_server_urls)

ENDPOINTS = ("completions", "chat")
RETRY_STATUSES = frozenset({408, 409, 429}) | frozenset(range(500, 600))
MAX_ROUNDS = 16  # bound on top-up requests for servers that return fewer than n choices


class BackendError(RuntimeError):
    """A generation request that failed for good (one line: endpoint, status, server message)."""


class OpenAIBackend:
    name = "openai"

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 endpoint: str = "completions", concurrency: int = 8, max_retries: int = 5,
                 timeout: float = 60.0, *, extra_body: dict | None = None, retry_base_delay: float = 0.5,
                 retry_max_delay: float = 30.0, unavailable_timeout: float | None = None, **kw: Any):
        import openai

        if endpoint not in ENDPOINTS:
            raise InputError(f"unknown endpoint {endpoint!r}; choose one of {', '.join(ENDPOINTS)}", field="--endpoint")
        if concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise InputError("concurrency >= 1, max_retries >= 0 and timeout > 0 are required", field="--concurrency")
        if unavailable_timeout is not None and not (isinstance(unavailable_timeout, (int, float))
                                                    and unavailable_timeout >= 0):
            raise InputError(f"unavailable_timeout must be seconds >= 0, got {unavailable_timeout!r}",
                             field="--backend-option")
        urls = parse_server_urls(base_url)
        key = os.environ.get(api_key_env) if api_key_env else None
        if not key:
            if urls == [None]:
                raise InputError(f"the openai backend needs an API key in ${api_key_env} (another variable: "
                                 "--backend-option api_key_env=NAME; or a --base-url of a local server)",
                                 field="--backend-option")
            key = "EMPTY"  # local servers ignore the key, but the client insists on one
        self.model = model
        self.base_url = ",".join(u for u in urls if u) or None
        self.endpoint = endpoint
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.extra_body = dict(extra_body or {})
        self.ignored_options = sorted(kw)  # hf/vllm options the CLI passes to every backend (device, dtype, ...)
        # The key is held only by the client (which never prints it) and used to redact server messages.
        self._secret = key if key != "EMPTY" else None
        servers = [Server(url, openai.OpenAI(api_key=key, base_url=url, timeout=timeout, max_retries=0))
                   for url in urls]
        if unavailable_timeout is None and len(servers) > 1:
            unavailable_timeout = MULTI_SERVER_UNAVAILABLE_TIMEOUT
        self.pool = ServerPool(servers, concurrency, max_retries=max_retries,
                               unavailable_timeout=None if unavailable_timeout is None else float(unavailable_timeout),
                               retry_base_delay=retry_base_delay,
                               retry_max_delay=retry_max_delay)
        self._prefill = True  # chat: try assistant prefill until the server refuses it
        self._one_per_call = False  # set once the server is seen to ignore `n`
        self._lock = threading.Lock()
        self._warned: set[str] = set()
        self._cancel = threading.Event()
        self._param_fixes: dict[str, str | None] = {}  # refused parameter -> new name, or None: dropped

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.model!r}, base_url={self.base_url!r}, endpoint={self.endpoint!r})"

    @property
    def tokenizer(self) -> Any:
        return None  # remote model: no local tokenizer or chat template

    def close(self) -> None:
        if len(self.pool.servers) > 1:
            self.pool.log_summary()
        for server in self.pool.servers:
            server.client.close()

    # -------------------------------------------------------------------------------------- generation

    def generate(self, requests: Sequence[Request], params: SamplingParams) -> list[list[Completion]]:
        """For each request, `request.n or params.n` completions in order; calls run `concurrency` at a time
        per server."""
        wanted = [params.n if r.n is None else r.n for r in requests]
        results: list[list[Completion]] = [[] for _ in requests]
        pool = ThreadPoolExecutor(max_workers=self.pool.slots)
        self._cancel = threading.Event()
        try:
            for _ in range(MAX_ROUNDS):
                pending = [i for i, n in enumerate(wanted) if len(results[i]) < n]
                if not pending:
                    return results
                # Sample k of a prompt is drawn with sample_seed(seed, k), whether the server returns all n
                # from one call or must be asked once per sample, so outputs never depend on which happened.
                jobs = []
                for i in pending:
                    have, seed = len(results[i]), requests[i].seed
                    if self._one_per_call:
                        jobs += [(i, pool.submit(self._call, requests[i].prompt, params, 1, sample_seed(seed, k)))
                                 for k in range(have, wanted[i])]
                    else:
                        jobs.append((i, pool.submit(self._call, requests[i].prompt, params, wanted[i] - have,
                                                    sample_seed(seed, have))))
                for i, job in jobs:
                    results[i].extend(job.result()[: wanted[i] - len(results[i])])
        except BaseException:
            self._cancel.set()  # a failure or Ctrl-C: other calls stop retrying so the process can exit
            raise
        finally:
            pool.shutdown(wait=False, cancel_futures=True)  # on failure, don't wait out other retries
        raise BackendError(f"{self._where(None)}: server kept returning too few choices after {MAX_ROUNDS} rounds")

    def _call(self, prompt: str, params: SamplingParams, n: int, seed: int) -> list[Completion]:
        # Chat: `max_completion_tokens`, OpenAI's name (its reasoning models reject max_tokens; vLLM accepts
        # both). The legacy completions endpoint only knows `max_tokens`.
        length = "max_tokens" if self.endpoint == "completions" else "max_completion_tokens"
        body: dict[str, Any] = {"model": self.model, "n": n, length: params.max_tokens,
                                "temperature": params.temperature, "top_p": params.top_p, "seed": seed}
        if params.stop:
            body["stop"] = list(params.stop)
        if self.endpoint == "completions":
            body["prompt"] = prompt
            if params.logprobs:
                body["logprobs"] = 1
            response, where = self._send(_completions_create, body)
            choices = [(_choice_text(c, where), c.finish_reason,
                        _completion_logprobs(c) if params.logprobs else None, c) for c in _choices(response, where)]
            prefill = ""
        else:
            user, prefill = split_prefill(prompt)
            if params.logprobs:
                body["logprobs"] = True
            response, where = self._chat(body, user, prefill, prompt)
            choices = [(_message_text(c, where), c.finish_reason,
                        _chat_logprobs(c) if params.logprobs else None, c) for c in _choices(response, where)]
            if not self._prefill and prefill:
                # The server answered a user message: drop a repeated prefix so text continues the prompt.
                choices = [(t[len(prefill):] if t.startswith(prefill) else t, f, lp, c) for t, f, lp, c in choices]
        if n > 1 and len(choices) == 1 and not self._one_per_call:
            with self._lock:
                self._one_per_call = True
            self._warn_once("n", "server ignores n; asking once per sample (each with its own seed)")
        if params.logprobs and choices and all(lp is None for _, _, lp, _ in choices):
            self._warn_once("logprobs", "server returned no logprobs; completions carry logprobs=None")
        return self._completions(choices, response, params)

    def _chat(self, body: dict, user: str, prefill: str, prompt: str) -> tuple[Any, str]:
        if prefill and self._prefill:
            messages = [{"role": "user", "content": user}, {"role": "assistant", "content": prefill}]
            extra = {"continue_final_message": True, "add_generation_prompt": False}
            try:
                return self._send(_chat_create, {**body, "messages": messages}, extra)
            except _Rejected:
                with self._lock:
                    self._prefill = False
                self._warn_once("prefill", "server does not continue an assistant message; sending the prompt "
                                "as one user message")
        return self._send(_chat_create, {**body, "messages": [{"role": "user", "content": prompt}]})

    def _completions(self, choices: list[tuple[str, Any, list[float] | None, Any]], response: Any,
                     params: SamplingParams) -> list[Completion]:
        out = []
        total_tokens = getattr(getattr(response, "usage", None), "completion_tokens", None)
        prompt_tokens = getattr(getattr(response, "usage", None), "prompt_tokens", None)
        lengths = [len(text or "") for text, _, _, _ in choices]
        for (text, finish, logprobs, raw), length in zip(choices, lengths):
            text = text or ""
            cut, matched = truncate_at_stop(text, params.stop)
            stop_reason = matched or _server_stop_reason(raw, params.stop)
            if logprobs is not None and matched:
                logprobs = logprobs[: _tokens_within(raw, len(cut), len(logprobs))]
            if logprobs is not None:
                num_tokens = len(logprobs)
            elif isinstance(total_tokens, int) and len(choices) == 1:
                num_tokens = total_tokens
            elif isinstance(total_tokens, int):
                # usage is per response; share it by text length (an estimate for servers honouring n)
                num_tokens = round(total_tokens * length / max(1, sum(lengths)))
            else:
                num_tokens = 0
            reason = "stop" if matched else ("length" if finish == "length" else "stop")
            out.append(Completion(text=cut, num_tokens=num_tokens, finish_reason=reason, logprobs=logprobs,
                                  stop_reason=stop_reason,
                                  prompt_tokens=(prompt_tokens if isinstance(prompt_tokens, int) else None)
                                  if not out else 0))
        return out

    # ------------------------------------------------------------------------------------ HTTP + retries

    def _send(self, create: Any, body: dict, extra: dict | None = None) -> tuple[Any, str]:
        """(response, "POST URL" of the server that gave it): `body` sent to the pool's servers until one
        answers, or the pool says the request gives up (servers.ServerPool.failed)."""
        import openai

        extra_body = {**self.extra_body, **(extra or {})} or None
        attempt = Attempt()
        while True:
            try:
                server = self.pool.acquire(self._cancel, attempt)
            except Cancelled:
                raise BackendError(f"{self._where(None)}: cancelled") from None
            except Unavailable:
                raise BackendError(self._unavailable()) from None
            body = self._adapted(body)
            sent_at = time.monotonic()
            retry_after = None
            try:
                response = create(server.client)(**body, extra_body=extra_body)
            except openai.APIStatusError as exc:
                status = exc.status_code
                if status not in RETRY_STATUSES:
                    self.pool.release(server)
                    if status in (400, 422) and self._learn_unsupported(_server_message(exc), body, server):
                        continue  # the same request without (or with the other name of) the refused parameter
                    if extra and status in (400, 422) and _names_fields(_server_message(exc), extra):
                        raise _Rejected() from None
                    raise BackendError(self._describe(server, f"HTTP {status}", _server_message(exc),
                                                      attempt.failures)) from None
                failure = (f"HTTP {status}", _server_message(exc))
                retry_after = exc.response.headers.get("retry-after")
            except openai.APITimeoutError:
                failure = (f"timed out after {self.timeout:g} s", "")
            except openai.APIConnectionError as exc:
                failure = ("connection failed", str(exc.__cause__ or exc))
            except openai.APIResponseValidationError as exc:
                self.pool.release(server)
                raise BackendError(self._describe(server, "malformed response", str(exc), attempt.failures)) from None
            except ValueError as exc:  # a body that is not JSON
                self.pool.release(server)
                raise BackendError(self._describe(server, "malformed response (not JSON)", str(exc),
                                                  attempt.failures)) from None
            except BaseException:
                self.pool.release(server)
                raise
            else:
                self.pool.answered(server, time.monotonic() - sent_at, getattr(response, "usage", None))
                return response, self._where(server)
            error = self._describe(server, *failure, 0)
            if self.pool.failed(server, attempt, sent_at, error, time.monotonic() - sent_at, retry_after):
                if all(s.failures for s in self.pool.servers) and len(self.pool.servers) > 1:
                    raise BackendError(self._unavailable())
                raise BackendError(self._describe(server, *failure, attempt.failures - 1))

    def _unavailable(self) -> str:
        """All servers failing: one line with each server's last error."""
        quiet = max(0.0, time.monotonic() - self.pool.last_answer) if self.pool.last_answer else None
        since = f"no answer for {quiet:.0f} s" if quiet is not None else "no answer yet"
        errors = "; ".join((s.last_error or f"{self._where(s)}: ok").removeprefix("openai backend: ")
                           for s in self.pool.servers)
        count = len(self.pool.servers)
        return (f"openai backend: {f'all {count} servers' if count > 1 else 'the server'} failing ({since}; "
                f"unavailable_timeout {self.pool.unavailable_timeout:g} s): {errors}")

    def _adapted(self, body: dict) -> dict:
        """`body` with the parameters this server was seen to refuse dropped or renamed."""
        with self._lock:
            fixes = dict(self._param_fixes)
        if not fixes:
            return body
        out = {}
        for key, value in body.items():
            if key not in fixes:
                out[key] = value
            elif fixes[key] is not None:
                out.setdefault(fixes[key], value)
        return out

    def _learn_unsupported(self, message: str, body: dict, server: Server) -> bool:
        """A 400 that says one of our sampling parameters is unsupported (reasoning models: temperature and
        top_p other than the default, max_tokens; some servers: max_completion_tokens): remember to drop or
        rename it for every later request. False when the message names none we can do without."""
        name = _unsupported_param(message, body)
        if name is None:
            return False
        fix = {"max_tokens": "max_completion_tokens", "max_completion_tokens": "max_tokens"}.get(name)
        with self._lock:
            if name in self._param_fixes or (fix and fix in self._param_fixes):
                return False  # already adapted (renaming back and forth would never end)
            self._param_fixes[name] = fix
        self._warn_once(f"param:{name}", f"{self._where(server)}: the server does not support '{name}'; "
                        + (f"sending '{fix}' instead" if fix else "leaving it out (its default applies)"))
        return True

    def _where(self, server: Server | None) -> str:
        """"openai backend: POST URL/path" of one server, or of all of them (None)."""
        path = "/completions" if self.endpoint == "completions" else "/chat/completions"
        servers = [server] if server is not None else self.pool.servers
        urls = ",".join(f"{str(s.client.base_url).rstrip('/')}{path}" for s in servers)
        return f"openai backend: POST {urls}"

    def _describe(self, server: Server, what: str, detail: str, retries: int) -> str:
        tries = f" after {retries + 1} attempts" if retries else ""
        detail = " ".join(str(detail).split())[:300]
        if self._secret:
            detail = detail.replace(self._secret, "***")
        return f"{self._where(server)}: {what}{tries}" + (f": {detail}" if detail else "")

    def _warn_once(self, key: str, message: str) -> None:
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        log.warn(message)


def _completions_create(client: Any) -> Any:
    return client.completions.create


def _chat_create(client: Any) -> Any:
    return client.chat.completions.create


class _Rejected(Exception):
    """The server refused the chat-prefill fields (400/422): fall back to a plain user message."""


# ------------------------------------------------------------------------------------------ parsing


ADAPTABLE_PARAMS = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "seed")


def _unsupported_param(message: str, body: dict) -> str | None:
    """Which of our sampling parameters a 400 message refuses ("Unsupported parameter: 'temperature' is not
    supported with this model.", "Unsupported value: 'temperature' does not support 0.0 ..."), if any."""
    text = message.lower()
    if not any(word in text for word in ("unsupported", "not supported", "does not support")):
        return None
    for name in sorted(ADAPTABLE_PARAMS, key=len, reverse=True):  # max_completion_tokens before max_tokens
        if name in body and (f"'{name}'" in text or f'"{name}"' in text or f"`{name}`" in text):
            return name
    return None


def _names_fields(message: str, fields: dict) -> bool:
    """Does a 400/422 message reject our extra request fields (rather than, say, the prompt length)?"""
    text = message.lower()
    return any(name in text for name in fields) or any(
        word in text for word in ("unrecognized", "unexpected", "not permitted", "extra fields", "extra_forbidden"))


def split_prefill(prompt: str) -> tuple[str, str]:
    """(user text, assistant prefix): the prompt split where the step-wise CoT prefix starts, else (prompt, "")."""
    at = prompt.find(STEP_PREFIX)
    if at < 0:
        return prompt, ""
    return prompt[:at].strip(), prompt[at:]


def _choices(response: Any, where: str) -> list[Any]:
    choices = getattr(response, "choices", None)
    if not isinstance(choices, list) or any(not hasattr(c, "finish_reason") for c in choices):
        raise BackendError(f"{where}: malformed response (no 'choices' list): {str(response)[:200]}")
    # Servers that honour n may return choices out of order; `index` restores it.
    return sorted(choices, key=lambda c: getattr(c, "index", 0) or 0)


def _choice_text(choice: Any, where: str) -> str:
    text = getattr(choice, "text", None)
    if not isinstance(text, str):
        raise BackendError(f"{where}: malformed response (a choice without text): {str(choice)[:200]}")
    return text


def _message_text(choice: Any, where: str) -> str:
    message = getattr(choice, "message", None)
    content = getattr(message, "content", None)
    if message is None or (content is not None and not isinstance(content, str)):
        raise BackendError(f"{where}: malformed response (a choice without message content): {str(choice)[:200]}")
    return content or ""  # null content (e.g. a refusal or an empty turn) is an empty completion


def _completion_logprobs(choice: Any) -> list[float] | None:
    values = getattr(getattr(choice, "logprobs", None), "token_logprobs", None)
    return [float(v) for v in values if v is not None] if values else None


def _chat_logprobs(choice: Any) -> list[float] | None:
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    return [float(t.logprob) for t in content] if content else None


def _tokens_within(choice: Any, chars: int, count: int) -> int:
    """How many returned tokens start inside the first `chars` characters of the text (stop-string trim)."""
    logprobs = getattr(choice, "logprobs", None)
    tokens = getattr(logprobs, "tokens", None)
    if tokens is None and getattr(logprobs, "content", None):
        tokens = [t.token for t in logprobs.content]
    if not tokens:
        return count
    kept, offset = 0, 0
    for token in tokens[:count]:
        if offset >= chars:
            break
        offset += len(token)
        kept += 1
    return kept


def _server_stop_reason(choice: Any, stop: Sequence[str]) -> str | None:
    """vLLM reports the matched stop string as `stop_reason` (an int means a stop token: not a string)."""
    reason = getattr(choice, "stop_reason", None)
    if reason is None:
        reason = (getattr(choice, "model_extra", None) or {}).get("stop_reason")
    return reason if isinstance(reason, str) and reason in stop else None


def _server_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
        if message is None and isinstance(inner, dict):
            message = inner.get("detail")
        return str(message if message is not None else body)
    return str(body if body is not None else getattr(exc, "message", exc))
