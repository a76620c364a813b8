"""The `hf` backend: transformers models driven by a hand-written batched decode loop.

Why not `model.generate`: on small models its per-token Python overhead dominates, it cannot share one
prompt prefill between the n samples of a prompt, and its sampling draws from one global RNG, so a
request's samples would depend on what else is in the batch. Here:

- requests are sorted by prompt length and packed into batches of at most `batch_size` decoded rows;
- each batch's prompts are prefilled ONCE (left padding, explicit positions), then the KV cache is
  expanded to one row per sample (`shared_prefill=False` re-encodes each prompt per sample, for checks);
- every request owns a `torch.Generator` seeded with `Request.seed`; each step it draws one uniform per
  sample and tokens are picked by inverse-CDF sampling, so a request's completions depend only on the
  request and its seed, never on its batch neighbours;
- finished rows (EOS, a stop string, max_tokens) leave the batch and stop costing compute.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .base import Completion, Request, SamplingParams, truncate_at_stop

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def _resolve_device(device: str | None) -> str:
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype | str:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "", "auto"):
        # bf16 matmuls are slow on most CPUs; on GPUs keep the checkpoint's own dtype.
        return torch.float32 if device == "cpu" else "auto"
    try:
        return _DTYPES[dtype]
    except KeyError:
        from ..records import InputError
        raise InputError(f"unknown dtype {dtype!r}; choose auto, float32, bfloat16 or float16", field="--dtype") from None


def _buffered_cache(config: Any, reserve: int) -> Any:
    """A DynamicCache whose layers write into preallocated buffers instead of `torch.cat` per token.

    `torch.cat` re-copies the whole cache at every step (quadratic in length); it was the largest single
    cost of decoding on the tiny model. Sliding-window models keep transformers' own layers.
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    class BufferLayer(DynamicLayer):
        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                self.length = 0
                shape = (*key_states.shape[:2], key_states.shape[2] + reserve, key_states.shape[3])
                self.kbuf = key_states.new_empty(shape)
                self.vbuf = value_states.new_empty((*shape[:3], value_states.shape[3]))
            end = self.length + key_states.shape[2]
            if end > self.kbuf.shape[2]:  # grow geometrically (only when reserve was too small)
                extra = max(end - self.kbuf.shape[2], self.kbuf.shape[2])
                self.kbuf = torch.cat([self.kbuf, self.kbuf.new_empty((*self.kbuf.shape[:2], extra, self.kbuf.shape[3]))], 2)
                self.vbuf = torch.cat([self.vbuf, self.vbuf.new_empty((*self.vbuf.shape[:2], extra, self.vbuf.shape[3]))], 2)
            self.kbuf[:, :, self.length:end] = key_states
            self.vbuf[:, :, self.length:end] = value_states
            self.length = end
            self.keys, self.values = self.kbuf[:, :, :end], self.vbuf[:, :, :end]
            return self.keys, self.values

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self.is_initialized:
                self.kbuf, self.vbuf = self.kbuf[indices], self.vbuf[indices]
                self.keys, self.values = self.kbuf[:, :, :self.length], self.vbuf[:, :, :self.length]

    cache = DynamicCache(config=config)
    if all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [BufferLayer() for _ in cache.layers]
    return cache


def _nucleus(probs: torch.Tensor, top_p: float, head: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-p: the highest-probability tokens (descending) with the tail beyond mass `top_p` zeroed.

    A full sort of a 150k vocabulary costs seconds per step on this CPU, so only the top `head` tokens
    are sorted; rows whose nucleus is wider than that (rare for trained models) fall back to a full sort.
    """
    vocab = probs.shape[-1]
    if vocab <= head:
        kept, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    else:
        kept, order = torch.topk(probs, head, dim=-1, sorted=True)
        wide = (kept.sum(-1) < top_p).nonzero().flatten()
        if len(wide):
            full, full_order = torch.sort(probs[wide], dim=-1, descending=True, stable=True)
            kept = torch.cat([kept, kept.new_zeros((len(kept), vocab - head))], -1)
            order = torch.cat([order, order.new_zeros((len(order), vocab - head))], -1)
            kept[wide], order[wide] = full, full_order
    # Keep the smallest head whose mass reaches top_p (the top token is always kept).
    return kept.masked_fill(kept.cumsum(-1) - kept > top_p, 0.0), order


@dataclass
class _Row:
    """One sample being decoded: which request (within the batch) and which of its n samples."""
    request: int
    sample: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)


class HFBackend:
    name = "hf"

    def __init__(self, model_path: str, device: str = "cpu", dtype: str | torch.dtype = "auto", batch_size: int = 64,
                 shared_prefill: bool = True, trust_remote_code: bool = False, **options: Any):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars are noise on a CLI's stderr

        self.model = model_path
        self.device = _resolve_device(device)
        self.batch_size = max(1, int(batch_size))
        self.shared_prefill = shared_prefill
        self.options = options  # other backends' options (base_url, concurrency, ...) are accepted and ignored
        self._tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.lm = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=_resolve_dtype(dtype, self.device), trust_remote_code=trust_remote_code
        ).to(self.device)
        self.lm.eval()
        self.eos_ids = self._eos_ids()
        pad = self._tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (min(self.eos_ids) if self.eos_ids else 0)

    # ------------------------------------------------------------------------------------------ interface

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def close(self) -> None:
        self.lm = None  # type: ignore[assignment]

    def generate(self, requests: Sequence[Request], params: SamplingParams) -> list[list[Completion]]:
        """For each request, `request.n or params.n` completions, in request order."""
        results: list[list[Completion]] = [[] for _ in requests]
        encoded = [self.encode(r.prompt) for r in requests]
        counts = [r.n if r.n is not None else params.n for r in requests]
        # Longest first: similar lengths share a batch (less padding) and memory peaks early.
        order = sorted((i for i in range(len(requests)) if counts[i] > 0), key=lambda i: (-len(encoded[i]), i))
        batch: list[int] = []
        rows = 0
        for i in order:
            if batch and rows + counts[i] > self.batch_size:
                self._run_batch(batch, requests, encoded, counts, params, results)
                batch, rows = [], 0
            batch.append(i)
            rows += counts[i]
        if batch:
            self._run_batch(batch, requests, encoded, counts, params, results)
        return results

    def encode(self, prompt: str) -> list[int]:
        """Token ids of a prompt; BOS is added as vLLM does, unless the rendered prompt already starts with it."""
        bos = self._tokenizer.bos_token
        add_special = not (bos and prompt.startswith(bos))
        return self._tokenizer(prompt, add_special_tokens=add_special)["input_ids"]

    # ------------------------------------------------------------------------------------------ internals

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        if self._tokenizer.eos_token_id is not None:
            ids.add(int(self._tokenizer.eos_token_id))
        configured = getattr(getattr(self.lm, "generation_config", None), "eos_token_id", None)
        if isinstance(configured, int):
            ids.add(configured)
        elif isinstance(configured, (list, tuple)):
            ids.update(int(x) for x in configured)
        return ids

    @torch.inference_mode()
    def _run_batch(self, batch: list[int], requests: Sequence[Request], encoded: list[list[int]],
                   counts: list[int], params: SamplingParams, results: list[list[Completion]]) -> None:
        device = self.device
        rows = [_Row(b, j) for b, i in enumerate(batch) for j in range(counts[i])]
        # Row r decodes from prompt `source[r]` (an index into `batch`).
        source = torch.tensor([row.request for row in rows], device=device)
        prompts = [encoded[i] for i in batch] if self.shared_prefill else [encoded[batch[r.request]] for r in rows]
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for k, ids in enumerate(prompts):
            input_ids[k, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            mask[k, width - len(ids):] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = _buffered_cache(self.lm.config, reserve=params.max_tokens)
        out = self.lm(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                      use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1, :]
        next_pos = mask.sum(-1)
        if self.shared_prefill:
            # One prefill per prompt; the n samples get copies of its KV cache rows.
            cache.batch_select_indices(source)
            logits, mask, next_pos = logits[source], mask[source], next_pos[source]

        generators = [torch.Generator().manual_seed(int(requests[i].seed)) for i in batch]
        stop = tuple(s for s in params.stop if s)
        tail = max((len(s.encode("utf-8")) for s in stop), default=0) + 1
        # `slots[t]` is the row decoded in tensor row t, or -1 once it finished. Finished rows stay in the
        # batch (fed padding) until a quarter of it is dead, then the batch is compacted: copying the
        # cache at every finish cost more than the wasted rows.
        slots = list(range(len(rows)))
        finished: dict[int, tuple[str, str | None]] = {}
        for _ in range(params.max_tokens):
            live = [t for t, a in enumerate(slots) if a >= 0]
            if len(live) < len(slots):
                logits = logits[torch.tensor(live, device=device)]
            tokens, token_logprobs = self._pick(logits, [rows[slots[t]] for t in live], generators, counts, batch,
                                                params)
            step_tokens = [self.pad_id] * len(slots)
            for k, t in enumerate(live):
                a = slots[t]
                row = rows[a]
                row.tokens.append(tokens[k])
                step_tokens[t] = tokens[k]
                if token_logprobs is not None:
                    row.logprobs.append(token_logprobs[k])
                if tokens[k] in self.eos_ids:
                    finished[a] = ("stop", None)
                elif len(row.tokens) >= params.max_tokens:
                    finished[a] = ("length", None)
                else:
                    continue
                slots[t] = -1
            if stop:
                pending = [t for t in live if slots[t] >= 0]
                tails = self._tokenizer.batch_decode([rows[slots[t]].tokens[-tail:] for t in pending],
                                                     skip_special_tokens=True)
                for t, text in zip(pending, tails):
                    hit = next((s for s in stop if s in text), None)
                    if hit is not None:
                        finished[slots[t]] = ("stop", hit)
                        slots[t] = -1
            survivors = [t for t, a in enumerate(slots) if a >= 0]
            if not survivors:
                break
            if len(slots) - len(survivors) >= max(1, len(slots) // 4):
                index = torch.tensor(survivors, device=device)
                cache.batch_select_indices(index)
                mask, next_pos = mask[index], next_pos[index]
                step_tokens = [step_tokens[t] for t in survivors]
                slots = [slots[t] for t in survivors]
            mask = torch.cat([mask, mask.new_ones((len(slots), 1))], dim=-1)
            out = self.lm(input_ids=torch.tensor(step_tokens, device=device)[:, None], attention_mask=mask,
                          position_ids=next_pos[:, None], past_key_values=cache, use_cache=True)
            logits = out.logits[:, -1, :]
            next_pos = next_pos + 1

        for a, row in enumerate(rows):
            reason, stop_hit = finished.get(a, ("length", None))
            ids = row.tokens[:-1] if reason == "stop" and stop_hit is None and row.tokens else row.tokens
            text = self._tokenizer.decode(ids, skip_special_tokens=True)
            if stop_hit is not None:
                text, stop_hit = truncate_at_stop(text, stop)
            results[batch[row.request]].append(Completion(
                text=text, num_tokens=len(row.tokens), finish_reason=reason,
                logprobs=row.logprobs if params.logprobs else None, stop_reason=stop_hit,
            ))

    def _pick(self, logits: torch.Tensor, rows: list[_Row], generators: list[torch.Generator], counts: list[int],
              batch: list[int], params: SamplingParams) -> tuple[list[int], list[float] | None]:
        """Next token per row: argmax when greedy, else top-p inverse-CDF sampling with per-request uniforms."""
        logits = logits.float()
        if params.temperature <= 0:
            chosen = logits.argmax(-1)
        else:
            # Each live request draws exactly n uniforms per step (one per sample, live or not), so its
            # random stream is a function of its own seed and history only.
            draws: dict[int, torch.Tensor] = {}
            for row in rows:
                if row.request not in draws:
                    draws[row.request] = torch.rand(counts[batch[row.request]], generator=generators[row.request])
            u = torch.stack([draws[row.request][row.sample] for row in rows]).to(logits.device)
            probs = torch.softmax(logits / params.temperature, dim=-1)
            if params.top_p < 1.0:
                probs, order = _nucleus(probs, params.top_p)
            else:
                order = None
            cdf = probs.cumsum(-1)
            pick = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).clamp_(max=cdf.shape[-1] - 1)
            chosen = pick.squeeze(-1) if order is None else order.gather(-1, pick).squeeze(-1)
        token_logprobs = None
        if params.logprobs:
            # Raw model log-probs (before temperature / top-p), as vLLM reports them.
            token_logprobs = torch.log_softmax(logits, dim=-1).gather(-1, chosen[:, None]).squeeze(-1).tolist()
        return chosen.tolist(), token_logprobs
