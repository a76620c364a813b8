"""The one generation interface: prompts in, n completions each out. Backends: hf, vllm, openai.

Every backend returns the same `Completion` objects so stages never know which one ran. This module knows no
concrete backend: `registry.py` maps a model spec (``hf:PATH``, ``vllm:PATH``, ``openai:NAME``) to one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from ..records import derive_seed


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    max_tokens: int = 512
    stop: tuple[str, ...] = ()
    logprobs: bool = False  # per-token log-probs of the sampled tokens

    def as_record(self) -> dict:
        return {"n": self.n, "temperature": self.temperature, "top_p": self.top_p,
                "max_tokens": self.max_tokens, "stop": list(self.stop)}


@dataclass
class Request:
    """One prompt and the seed its samples are drawn with (derived per record, so batching never matters)."""
    prompt: str
    seed: int = 0
    n: int | None = None  # overrides SamplingParams.n for this prompt


@dataclass
class Completion:
    text: str  # generated text only, stop string removed
    num_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    logprobs: list[float] | None = None
    stop_reason: str | None = None  # the stop string matched, if any
    # Prompt tokens the server billed for the request (openai `usage`; on its first completion only, so sums
    # count each request once); None when the backend does not report them.
    prompt_tokens: int | None = None


class Backend(Protocol):
    name: str  # "hf", "vllm", "openai"
    model: str  # what the spec named

    def generate(self, requests: Sequence[Request], params: SamplingParams) -> list[list[Completion]]:
        """For each request, `request.n or params.n` completions, in request order."""
        ...

    @property
    def tokenizer(self) -> Any:
        """A tokenizer with `chat_template` where the backend has one locally, else None."""
        ...

    def close(self) -> None: ...


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, str | None]:
    """Cut `text` at the earliest stop string (servers that keep the stop string, or ignore `stop`)."""
    best, matched = len(text), None
    for s in stop:
        if not s:
            continue
        i = text.find(s)
        if 0 <= i < best:
            best, matched = i, s
    return text[:best], matched


def sample_seed(seed: int, k: int) -> int:
    """The seed of sample k of a request for engines that draw each sample separately (vllm, openai):
    the request's own seed for the first, derived ones after, so results do not depend on whether
    the engine honours `n`."""
    return seed if k == 0 else derive_seed(seed, "sample", k)
