"""The `hf` backend: transformers models driven by a hand-written batched decode loop.

Why not `model.generate`: on small models its per-token Python overhead dominates, it cannot share one
prompt prefill between the n samples of a prompt, and its sampling draws from one global RNG, so a
request's samples would depend on what else is in the batch. Here:

- requests are sorted by prompt length and packed into batches of at most `batch_size` decoded rows;
- each batch's prompts are prefilled ONCE (left padding, explicit positions); the n samples of a prompt
  then decode against that one copy of its KV (`_shared_prefix_attention`; models outside
  `_SHARED_ATTENTION_MODELS` get the prefix KV copied per sample instead). `shared_prefill=False`
  re-encodes each prompt per sample: the baseline for tests and bench/bench_hf_prefill.py;
- every request owns a `torch.Generator` seeded with `Request.seed`; each step it draws one uniform per
  sample and tokens are picked by inverse-CDF sampling, so a request's completions depend only on the
  request and its seed, never on its batch neighbours;
- finished rows (EOS, a stop string, max_tokens) stop sampling at once and leave the batch when a
  quarter of its prompts are done (whole prompts, which share one prefix), so they stop costing compute.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from transformers.cache_utils import CacheLayerMixin

from ..templates import encode_context
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


def _context_length(text_config: Any) -> int | None:
    value = getattr(text_config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


_SHARED_ATTENTION = "stepdpo_shared_prefix"
# Model families whose attention is plain scaled-dot-product over (optionally grouped) heads, so the
# prefix-shared attention below computes exactly what their own attention would.
_SHARED_ATTENTION_MODELS = {"qwen2", "qwen3", "llama", "mistral"}


def _register_shared_attention() -> None:
    """Register the prefix-shared attention under its own name (prefill masks are sdpa's)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if _SHARED_ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(_SHARED_ATTENTION, _shared_prefix_attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(_SHARED_ATTENTION, sdpa_mask)


def _shared_prefix_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: Any, dropout: float = 0.0, scaling: float | None = None,
                             shared_kv: Any = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Decode-step attention that reads each prompt's KV once for all of its samples.

    The cache keeps one copy of every prompt's keys/values ([P, kv_heads, W, d]) and a per-sample suffix
    ([P*m, kv_heads, S, d]). The m samples' queries of a prompt are stacked against its single prefix copy,
    then one softmax runs over [prefix | suffix]: the same numbers as attention over a repeated cache,
    with the prefix read from memory once per prompt instead of m times (decode is memory-bound here).
    Prefill (and any call without `shared_kv`) is transformers' sdpa attention.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if shared_kv is None or query.shape[2] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    layer = shared_kv.layers[module.layer_idx]
    rows, heads, _, dim = query.shape
    prompts, kv_heads, width, _ = layer.pk.shape
    m, groups = rows // prompts, heads // kv_heads
    scale = scaling if scaling is not None else dim ** -0.5
    # [P*m, H, 1, d] -> [P, kv, m*G, d]: query heads h = kv*G + g share kv head `kv` (as repeat_kv does).
    q = query.reshape(prompts, m, kv_heads, groups, dim).permute(0, 2, 1, 3, 4).reshape(prompts, kv_heads, m * groups, dim)
    prefix_scores = torch.matmul(q, layer.pk.transpose(-1, -2)).mul_(scale)
    prefix_scores.masked_fill_(~shared_kv.prefix_mask[:, None, None, :], float("-inf"))
    suffix_q = query.reshape(rows, kv_heads, groups, dim)
    suffix_scores = torch.matmul(suffix_q, key.transpose(-1, -2)).mul_(scale)  # [P*m, kv, G, S]
    steps = suffix_scores.shape[-1]
    suffix_scores = suffix_scores.reshape(prompts, m, kv_heads, groups, steps).permute(0, 2, 1, 3, 4)
    scores = torch.cat([prefix_scores, suffix_scores.reshape(prompts, kv_heads, m * groups, steps)], dim=-1)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(probs[..., :width], layer.pv)  # [P, kv, m*G, d]
    out = out.reshape(prompts, kv_heads, m, groups, dim).permute(0, 2, 1, 3, 4).reshape(rows, kv_heads, groups, dim)
    suffix_probs = probs[..., width:].reshape(prompts, kv_heads, m, groups, steps).permute(0, 2, 1, 3, 4)
    out = out + torch.matmul(suffix_probs.reshape(rows, kv_heads, groups, steps), value)
    return out.reshape(rows, 1, heads, dim), None


class _KVLayer(CacheLayerMixin):
    """One decoder layer's cache: the prompts' prefix K/V (prefill) and a preallocated per-row suffix.

    Shared mode keeps the prefix once per prompt (read by `_shared_prefix_attention`). Expanded mode (other
    models) copies each prompt's prefix into its rows' buffers so any attention implementation works.
    Buffers are written in place: `torch.cat` per token re-copied the whole cache every step.
    """

    is_sliding = False
    is_compileable = False

    def __init__(self, reserve: int):
        super().__init__()
        self.reserve = reserve
        self.pk = self.pv = None
        self.kbuf = self.vbuf = None
        self.length = 0
        self.is_initialized = False

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        if self.pk is None and self.kbuf is None:  # prefill
            self.pk, self.pv = key_states, value_states
            self.is_initialized = True
            return key_states, value_states
        end = self.length + key_states.shape[2]
        self.kbuf[:, :, self.length:end] = key_states
        self.vbuf[:, :, self.length:end] = value_states
        self.length = end
        return self.kbuf[:, :, :end], self.vbuf[:, :, :end]

    def start_decode(self, slot_prompt: torch.Tensor, shared: bool) -> None:
        """Allocate per-row buffers after prefill; expanded mode copies each row's prompt prefix in."""
        rows = len(slot_prompt)
        kv, width, dim = self.pk.shape[1], self.pk.shape[2], self.pk.shape[3]
        start = 0 if shared else width
        self.kbuf = self.pk.new_empty((rows, kv, start + self.reserve, dim))
        self.vbuf = self.pv.new_empty((rows, kv, start + self.reserve, self.pv.shape[3]))
        if not shared:
            self.kbuf[:, :, :width] = self.pk[slot_prompt]
            self.vbuf[:, :, :width] = self.pv[slot_prompt]
            self.pk = self.pv = None
        self.length = start

    def select(self, prompt_index: torch.Tensor | None, row_index: torch.Tensor) -> None:
        if self.pk is not None and prompt_index is not None:
            self.pk, self.pv = self.pk[prompt_index], self.pv[prompt_index]
        self.kbuf, self.vbuf = self.kbuf[row_index], self.vbuf[row_index]

    def get_seq_length(self) -> int:
        return (0 if self.pk is None else self.pk.shape[2]) + self.length

    def get_mask_sizes(self, query_length: int, *args: Any, **kwargs: Any) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1

    get_max_cache_shape = get_max_length  # its name (abstract) before transformers 5.16

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass


def _make_cache(config: Any, reserve: int) -> Any:
    """A transformers Cache whose layers are `_KVLayer`s (the model only calls `update` on them)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    layers = config.get_text_config(decoder=True).num_hidden_layers
    cache.layers = [_KVLayer(reserve) for _ in range(layers)]
    cache.layer_class_to_replicate = None
    cache.prefix_mask = None
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

    def __init__(self, model_path: str, device: str = "auto", dtype: str | torch.dtype = "auto", batch_size: int = 64,
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
        # --device auto on a machine with several GPUs: let accelerate spread a model too big for one of them.
        spread = device in (None, "", "auto") and torch.cuda.device_count() > 1
        self.lm = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=_resolve_dtype(dtype, self.device), trust_remote_code=trust_remote_code,
            **({"device_map": "auto"} if spread else {}),
        )
        if not spread:
            self.lm = self.lm.to(self.device)
        else:
            self.device = str(self.lm.get_input_embeddings().weight.device)
        self.lm.eval()
        # Prefix-shared decode attention where the model's attention is plain (see _shared_prefix_attention);
        # other models get each prompt's KV copied per sample (same results, more memory traffic).
        text_config = self.lm.config.get_text_config(decoder=True)
        self.shared_attention = bool(
            shared_prefill and text_config.model_type in _SHARED_ATTENTION_MODELS
            and set(getattr(text_config, "layer_types", None) or ["full_attention"]) == {"full_attention"}
            and not getattr(text_config, "use_sliding_window", False)
        )
        if self.shared_attention:
            _register_shared_attention()
            self.lm.config._attn_implementation = _SHARED_ATTENTION
        self.context_length = _context_length(text_config)
        # transformers 5.24 names the cache argument `cache` (past_key_values warns, removed in 5.40).
        self._cache_arg = "cache" if "cache" in inspect.signature(self.lm.forward).parameters else "past_key_values"
        self._capped = 0
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
        limits = self._token_limits(encoded, params.max_tokens)
        # Longest first: similar lengths share a batch (less padding) and memory peaks early.
        order = sorted((i for i in range(len(requests)) if counts[i] > 0), key=lambda i: (-len(encoded[i]), i))
        batch: list[int] = []
        rows = 0
        for i in order:
            if batch and rows + counts[i] > self.batch_size:
                self._run_batch(batch, requests, encoded, counts, limits, params, results)
                batch, rows = [], 0
            batch.append(i)
            rows += counts[i]
        if batch:
            self._run_batch(batch, requests, encoded, counts, limits, params, results)
        return results

    def encode(self, prompt: str) -> list[int]:
        """Token ids of a prompt: `templates.encode_context`, the ids `train` scores after (one BOS)."""
        return encode_context(self._tokenizer, prompt)

    def _token_limits(self, encoded: list[list[int]], max_tokens: int) -> list[int]:
        """Per-request generation budget: max_tokens, cut so prompt + completion fit the model's context
        (such samples end with finish_reason "length"); a prompt that leaves no room is an input error."""
        if not self.context_length:
            return [max_tokens] * len(encoded)
        limits = []
        for ids in encoded:
            room = self.context_length - len(ids)
            if room < 1:
                from ..records import InputError
                raise InputError(f"a prompt of {len(ids)} tokens does not fit the model's context of "
                                 f"{self.context_length} tokens", field="--model")
            limits.append(min(max_tokens, room))
        capped = sum(limit < max_tokens for limit in limits)
        if capped:
            from .. import log
            self._capped += capped
            log.warn(f"hf: {capped} prompt(s) too long for --max-tokens {max_tokens} within the model's "
                     f"{self.context_length}-token context: generation capped (finish_reason length)")
        return limits

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
                   counts: list[int], limits: list[int], params: SamplingParams,
                   results: list[list[Completion]]) -> None:
        device = self.device
        rows = [_Row(b, j) for b, i in enumerate(batch) for j in range(counts[i])]
        # The batch is a grid of prompts x m slots; slot t holds a row index, or -1 (padding / finished).
        # Shared prefill: one prompt per request, m = its n. Otherwise every sample re-encodes its prompt.
        if self.shared_prefill:
            prompts = [encoded[i] for i in batch]
            m = max(counts[i] for i in batch)
            firsts = [sum(counts[i] for i in batch[:b]) for b in range(len(batch))]
            slots = [firsts[b] + j if j < counts[i] else -1 for b, i in enumerate(batch) for j in range(m)]
        else:
            prompts = [encoded[batch[row.request]] for row in rows]
            m = 1
            slots = list(range(len(rows)))
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for k, ids in enumerate(prompts):
            input_ids[k, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            mask[k, width - len(ids):] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        max_tokens = max(limits[i] for i in batch)
        cache = _make_cache(self.lm.config, reserve=max_tokens)
        out = self.lm(input_ids=input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                      use_cache=True, logits_to_keep=1, **{self._cache_arg: cache})
        slot_prompt = torch.arange(len(prompts), device=device).repeat_interleave(m)
        logits, next_pos = out.logits[:, -1, :][slot_prompt], mask.sum(-1)[slot_prompt]
        shared = self.shared_attention
        for layer in cache.layers:
            layer.start_decode(slot_prompt, shared)
        if shared:
            cache.prefix_mask = mask.bool()
        else:
            mask = mask[slot_prompt]

        generators = [torch.Generator().manual_seed(int(requests[i].seed)) for i in batch]
        stop = tuple(s for s in params.stop if s)
        tail = max((len(s.encode("utf-8")) for s in stop), default=0) + 1
        finished: dict[int, tuple[str, str | None]] = {}
        for _ in range(max_tokens):
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
                elif len(row.tokens) >= limits[batch[row.request]]:
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
            # Finished rows keep being fed padding until a quarter of the prompts (shared: whole prompts
            # only, its samples share one prefix) are done; then the batch is compacted. Copying the cache
            # at every single finish cost more than the wasted rows.
            groups = len(slots) // m
            keep_groups = [g for g in range(groups) if any(a >= 0 for a in slots[g * m:(g + 1) * m])]
            if not keep_groups:
                break
            if groups - len(keep_groups) >= max(1, groups // 4):
                row_index = [g * m + j for g in keep_groups for j in range(m)]
                index = torch.tensor(row_index, device=device)
                prompt_index = torch.tensor(keep_groups, device=device) if shared else None
                for layer in cache.layers:
                    layer.select(prompt_index, index)
                if shared:
                    cache.prefix_mask = cache.prefix_mask[prompt_index]
                else:
                    mask = mask[index]
                next_pos = next_pos[index]
                step_tokens = [step_tokens[t] for t in row_index]
                slots = [slots[t] for t in row_index]
            if shared:
                step_mask: Any = {"full_attention": None}  # the attention reads cache.prefix_mask instead
            else:
                mask = torch.cat([mask, mask.new_ones((len(slots), 1))], dim=-1)
                step_mask = mask
            out = self.lm(input_ids=torch.tensor(step_tokens, device=device)[:, None], attention_mask=step_mask,
                          position_ids=next_pos[:, None], use_cache=True, **{self._cache_arg: cache},
                          **({"shared_kv": cache} if shared else {}))
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
            offsets: dict[int, int] = {}
            draws = []
            drawn = 0  # a running total: summing the draws per new request was quadratic in the batch
            for row in rows:
                if row.request not in offsets:
                    offsets[row.request] = drawn
                    draws.append(torch.rand(counts[batch[row.request]], generator=generators[row.request]))
                    drawn += len(draws[-1])
            index = torch.tensor([offsets[row.request] + row.sample for row in rows])
            u = torch.cat(draws)[index].to(logits.device)
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
