"""The `openai` backend: any OpenAI-compatible server (vLLM serve, SGLang, TGI, `transformers serve`, OpenAI).

Design choices (why):
- One HTTP call per (prompt, top-up) on a bounded thread pool: the sync `openai` client is thread-safe and
  threads keep `generate` a plain blocking call like the other backends.
- Our own retry loop (client retries off): exponential backoff with full jitter on 408/409/429/5xx, timeouts
  and connection errors, honouring Retry-After; any other 4xx or a malformed body fails at once with a
  one-line `BackendError` naming the endpoint and status, never the API key.
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
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from .. import log
from ..records import InputError
from ..steps import STEP_PREFIX
from .base import Completion, Request, SamplingParams, sample_seed, truncate_at_stop

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
                 retry_max_delay: float = 30.0, **kw: Any):
        import openai

        if endpoint not in ENDPOINTS:
            raise InputError(f"unknown endpoint {endpoint!r}; choose one of {', '.join(ENDPOINTS)}", field="--endpoint")
        if concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise InputError("concurrency >= 1, max_retries >= 0 and timeout > 0 are required", field="--concurrency")
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        key = os.environ.get(api_key_env) if api_key_env else None
        if not key:
            if base_url is None:
                raise InputError(f"the openai backend needs an API key in ${api_key_env} (another variable: "
                                 "--backend-option api_key_env=NAME; or a --base-url of a local server)",
                                 field="--backend-option")
            key = "EMPTY"  # local servers ignore the key, but the client insists on one
        self.model = model
        self.base_url = base_url
        self.endpoint = endpoint
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.extra_body = dict(extra_body or {})
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay
        self.ignored_options = sorted(kw)  # hf/vllm options the CLI passes to every backend (device, dtype, ...)
        # The key is held only by the client (which never prints it) and used to redact server messages.
        self._secret = key if key != "EMPTY" else None
        self._client = openai.OpenAI(api_key=key, base_url=base_url, timeout=timeout, max_retries=0)
        self._prefill = True  # chat: try assistant prefill until the server refuses it
        self._one_per_call = False  # set once the server is seen to ignore `n`
        self._lock = threading.Lock()
        self._jitter = random.Random()  # jitter only spaces out retries; it never affects outputs
        self._warned: set[str] = set()
        self._cancel = threading.Event()
        self._param_fixes: dict[str, str | None] = {}  # refused parameter -> new name, or None: dropped

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.model!r}, base_url={self.base_url!r}, endpoint={self.endpoint!r})"

    @property
    def tokenizer(self) -> Any:
        return None  # remote model: no local tokenizer or chat template

    def close(self) -> None:
        self._client.close()

    # -------------------------------------------------------------------------------------- generation

    def generate(self, requests: Sequence[Request], params: SamplingParams) -> list[list[Completion]]:
        """For each request, `request.n or params.n` completions in order; calls run `concurrency` at a time."""
        wanted = [params.n if r.n is None else r.n for r in requests]
        results: list[list[Completion]] = [[] for _ in requests]
        pool = ThreadPoolExecutor(max_workers=self.concurrency)
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
        raise BackendError(f"{self._where()}: server kept returning too few choices after {MAX_ROUNDS} rounds")

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
            response = self._send(self._client.completions.create, body)
            choices = [(_choice_text(c, self._where()), c.finish_reason,
                        _completion_logprobs(c) if params.logprobs else None, c) for c in _choices(response, self._where())]
            prefill = ""
        else:
            user, prefill = split_prefill(prompt)
            if params.logprobs:
                body["logprobs"] = True
            response = self._chat(body, user, prefill, prompt)
            choices = [(_message_text(c, self._where()), c.finish_reason,
                        _chat_logprobs(c) if params.logprobs else None, c) for c in _choices(response, self._where())]
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

    def _chat(self, body: dict, user: str, prefill: str, prompt: str) -> Any:
        if prefill and self._prefill:
            messages = [{"role": "user", "content": user}, {"role": "assistant", "content": prefill}]
            extra = {"continue_final_message": True, "add_generation_prompt": False}
            try:
                return self._send(self._client.chat.completions.create, {**body, "messages": messages}, extra)
            except _Rejected:
                with self._lock:
                    self._prefill = False
                self._warn_once("prefill", "server does not continue an assistant message; sending the prompt "
                                "as one user message")
        return self._send(self._client.chat.completions.create,
                          {**body, "messages": [{"role": "user", "content": prompt}]})

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

    def _send(self, create: Any, body: dict, extra: dict | None = None) -> Any:
        import openai

        extra_body = {**self.extra_body, **(extra or {})} or None
        attempt = 0
        while True:
            body = self._adapted(body)
            try:
                return create(**body, extra_body=extra_body)
            except openai.APIStatusError as exc:
                status = exc.status_code
                if status in (400, 422) and self._learn_unsupported(_server_message(exc), body):
                    continue  # the same request without (or with the other name of) the refused parameter
                if extra and status in (400, 422) and _names_fields(_server_message(exc), extra):
                    raise _Rejected() from None
                if status not in RETRY_STATUSES or attempt >= self.max_retries:
                    raise BackendError(self._describe(f"HTTP {status}", _server_message(exc), attempt)) from None
                delay = self._delay(attempt, exc.response.headers.get("retry-after"))
            except openai.APITimeoutError:
                if attempt >= self.max_retries:
                    raise BackendError(self._describe(f"timed out after {self.timeout:g} s", "", attempt)) from None
                delay = self._delay(attempt)
            except openai.APIConnectionError as exc:
                if attempt >= self.max_retries:
                    raise BackendError(self._describe("connection failed", str(exc.__cause__ or exc), attempt)
                                       ) from None
                delay = self._delay(attempt)
            except openai.APIResponseValidationError as exc:
                raise BackendError(self._describe("malformed response", str(exc), attempt)) from None
            except ValueError as exc:  # a body that is not JSON
                raise BackendError(self._describe("malformed response (not JSON)", str(exc), attempt)) from None
            attempt += 1
            if self._cancel.wait(delay):
                raise BackendError(f"{self._where()}: cancelled")

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

    def _learn_unsupported(self, message: str, body: dict) -> bool:
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
        self._warn_once(f"param:{name}", f"{self._where()}: the server does not support '{name}'; "
                        + (f"sending '{fix}' instead" if fix else "leaving it out (its default applies)"))
        return True

    def _delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Full-jitter exponential backoff; a server's Retry-After (seconds) is a floor, within the cap."""
        with self._lock:
            delay = self._jitter.uniform(0, min(self.retry_max_delay, self.retry_base_delay * 2 ** attempt))
        try:
            delay = max(delay, min(float(retry_after), self.retry_max_delay)) if retry_after else delay
        except ValueError:
            pass
        return delay

    def _where(self) -> str:
        path = "/completions" if self.endpoint == "completions" else "/chat/completions"
        return f"openai backend: POST {str(self._client.base_url).rstrip('/')}{path}"

    def _describe(self, what: str, detail: str, attempt: int) -> str:
        tries = f" after {attempt + 1} attempts" if attempt else ""
        detail = " ".join(str(detail).split())[:300]
        if self._secret:
            detail = detail.replace(self._secret, "***")
        return f"{self._where()}: {what}{tries}" + (f": {detail}" if detail else "")

    def _warn_once(self, key: str, message: str) -> None:
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        log.warn(message)


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
