"""Padding-free packing: several pairs per row, each pair's chosen and rejected attending to their own prefix only.

A row is a run of documents ``[prefix | chosen | rejected]`` (SFT: ``[prefix | completion]``) laid end to end,
filled up to a token budget (`--max-tokens-per-batch`), with no padding. Positions restart at 0 for every
pair, and rejected's positions restart where chosen's started, so each continuation sees exactly the ids and
positions of its own unpacked sequence. Attention is restricted per document by an attention function
registered with transformers (`ATTENTION`), which gets the row layout as a keyword argument of the model call:

- on CUDA with torch >= 2.5: FlexAttention with a `BlockMask` (block-sparse: fully masked blocks are skipped);
- elsewhere (CPU: FlexAttention has no backward there in torch 2.13): one SDPA call per document part
  (prefix + chosen causal; rejected against prefix + rejected), each on its own keys, so no (L, L) mask exists
  and memory grows linearly with the row length.

Sliding windows are applied from the window each attention layer passes in (Mistral, Qwen2 sliding layers),
on logical positions, so packed and unpacked agree. Models whose attention does not go through transformers'
attention interface (ALiBi / 2D-mask-only: Bloom, MPT, Falcon) and models with logit soft-capping cannot use a
custom mask: they get `separate` forwards (one row per continuation, a plain 2D padding mask, the model's own
attention). `plan_for` chooses and says which, once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .. import log
from .data import Example, target_logps

ATTENTION = "stepdpo_packed"
LAYOUT_KWARG = "stepdpo_layout"
SEPARATE_ONLY = ("bloom", "mpt", "falcon", "baichuan", "jais")  # ALiBi: position in the mask, not in the ids
ATTENTION_EXTRAS = ("gpt_oss",)  # attention sinks passed to the kernel


@dataclass
class Plan:
    """How batches are laid out: `dense` (data.pack's shared-prefix 4D mask, one row per pair, left-padded),
    `packed` (this module's rows), `separate` (chosen and rejected in their own rows)."""
    mode: str = "dense"
    max_tokens: int = 0
    attention: str = ""  # packed: "flex" or "sdpa-segments"
    window: int | None = None  # the model's sliding window, if any layer has one
    # all of a micro-step's rows in one (right-padded) forward: DeepSpeed counts backward calls, and processes
    # must run the same number of forwards (DDP syncs buffers in each; ZeRO-3 gathers weights)
    one_forward: bool = False
    say: bool = True  # this process logs (the main one)
    said: set = field(default_factory=set)


def sliding_window(config: Any) -> int | None:
    """The smallest sliding window any layer uses (None: all layers attend to everything)."""
    window = getattr(config, "sliding_window", None)
    if not window:
        return None
    types = getattr(config, "layer_types", None)
    if types is not None and "sliding_attention" not in types:
        return None  # e.g. Qwen2 with use_sliding_window off
    return int(window)


def packing_supported(model: Any) -> str | None:
    """None if `model` can use the packed attention; otherwise why not."""
    config = model.config
    if getattr(config, "model_type", "") in SEPARATE_ONLY or getattr(config, "alibi", False):
        return f"{config.model_type} uses ALiBi / 2D masks"
    if not getattr(model, "_supports_attention_backend", False):
        return f"{type(model).__name__} does not take a custom attention function"
    if getattr(config, "attn_logit_softcapping", None):
        return "attention logit soft-capping"  # applied inside the kernel call: the packed path has no hook for it
    if getattr(config, "model_type", "") in ATTENTION_EXTRAS:
        return f"{config.model_type} adds terms to attention (sinks)"
    return None


def plan_for(model: Any, max_tokens: int, device: Any, *, deepspeed: bool = False, say: bool = True) -> Plan:
    """Choose the layout and attention for `model` (unwrapped) and, if `say`, log the choice once on stderr."""
    window = sliding_window(model.config)
    why_not = packing_supported(model)
    dist = torch.distributed
    deepspeed = deepspeed or (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)
    emit = log.log if say else (lambda message: None)
    if max_tokens <= 0:
        mode = "separate" if why_not else "dense"
        if why_not:
            emit(f"train: {why_not}: chosen and rejected run as separate forwards (one reference pass)")
        return Plan(mode, 0, window=window, say=say)
    if why_not:
        emit(f"train: --max-tokens-per-batch: {why_not}; packing off, chosen and rejected run as separate forwards")
        return Plan("separate", max_tokens, window=window, one_forward=deepspeed, say=say)
    flex = torch.device(device).type == "cuda" and _flex_available()
    plan = Plan("packed", max_tokens, "flex" if flex else "sdpa-segments", window, one_forward=deepspeed, say=say)
    use_packed_attention(model)
    emit(f"train: packing pairs into rows of <= {max_tokens} tokens, no padding; attention: "
            + ("FlexAttention block mask" if flex else "one SDPA call per pair (no dense mask; FlexAttention "
               "needs CUDA for training)") + (f"; sliding window {window}" if window else ""))
    return plan


def uses_rows(plan: Plan | None, examples: list[Example]) -> bool:
    """True: `forward` here (packed or separate rows); False: data.pack's dense shared-prefix batch. The dense
    mask replaces the model's own, sliding window included, so a batch longer than the window runs chosen and
    rejected separately instead (said once)."""
    if plan is None:
        return False
    if plan.mode != "dense":
        return True
    if plan.window and max(e.num_tokens for e in examples) > plan.window:
        if "window" not in plan.said:
            plan.said.add("window")
            if plan.say:
                log.log(f"train: sliding window {plan.window} is shorter than prefix + chosen + rejected: such "
                        f"batches run chosen and rejected as separate forwards (one reference pass)")
        return True
    return False


def reference_chunks(examples: list[Example], batch_size: int, plan: Plan | None) -> list[list[Example]]:
    """Forwards of the reference pass: packed rows of <= max_tokens (one per forward), else batch_size pairs
    (several processes: every rank the same count of forwards, see Plan.one_forward)."""
    if plan is not None and plan.mode == "packed" and not plan.one_forward:
        return [[examples[i] for i in row] for row in fill_rows(examples, plan.max_tokens)]
    return [examples[i:i + batch_size] for i in range(0, len(examples), batch_size)]


# ---------------------------------------------------------------------------------------------- rows

def fill_rows(examples: list[Example], max_tokens: int) -> list[list[int]]:
    """Indices of `examples` per row: the fewest rows of <= max_tokens (a longer pair: its own row), filled
    evenly (longest pair first into the emptiest row), so rows that share a forward pad little."""
    sizes = [e.num_tokens for e in examples]
    order = sorted(range(len(examples)), key=lambda i: -sizes[i])
    count = max(math.ceil(sum(sizes) / max(max_tokens, 1)), 1)
    while True:
        rows: list[list[int]] = [[] for _ in range(min(count, len(examples)))]
        used = [0] * len(rows)
        for i in order:
            r = used.index(min(used))
            rows[r].append(i)
            used[r] += sizes[i]
        if count >= len(examples) or all(u <= max_tokens or len(row) == 1 for u, row in zip(used, rows)):
            return [row for row in rows if row]
        count += 1


def forward_groups(examples: list[Example], plan: Plan) -> list[list[Example]]:
    """A micro-step's pairs, split into forwards of one row each (memory bounded by the budget), or one forward
    for all rows where the backward count must be one per micro-step (DeepSpeed)."""
    if plan.mode != "packed" or plan.one_forward or not plan.max_tokens:
        return [examples]
    return [[examples[i] for i in row] for row in fill_rows(examples, plan.max_tokens)]


@dataclass
class RowBatch:
    """Model inputs for packed or separate rows, and per-PAIR targets in input order (the shape `PackedBatch`
    gives downstream code: row b of `target_ids` / `segment` / `step_index` is examples[b])."""
    input_ids: torch.Tensor  # (rows, N), right-padded to the longest row
    position_ids: torch.Tensor  # (rows, N)
    attention_mask: torch.Tensor | None  # (rows, N) 2D padding mask (separate mode), else None
    keep: torch.Tensor  # (rows, N) bool: positions whose logits are needed (flattened by the model)
    target_ids: torch.Tensor  # (pairs, T)
    source_index: torch.Tensor  # (pairs, T) index into the flattened kept logits
    segment: torch.Tensor  # (pairs, T) 1 chosen, 2 rejected, 0 none
    step_index: torch.Tensor  # (pairs, T)
    layout: "Layout | None"
    num_tokens: int  # real tokens
    padded_tokens: int  # rows * N

    def to(self, device) -> "RowBatch":
        for name in ("input_ids", "position_ids", "attention_mask", "keep", "target_ids", "source_index",
                     "segment", "step_index"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))
        if self.layout is not None:
            self.layout = self.layout.to(device)
        return self

    def model_inputs(self) -> dict:
        inputs = {"input_ids": self.input_ids, "position_ids": self.position_ids, "logits_to_keep": self.keep,
                  "use_cache": False}
        if self.attention_mask is not None:
            inputs["attention_mask"] = self.attention_mask
        if self.layout is not None:
            inputs[LAYOUT_KWARG] = self.layout
            # An empty 4D mask: transformers takes a 4D mask as given and builds no (N, N) one of its own;
            # the layout is the real mask.
            inputs["attention_mask"] = torch.ones((self.input_ids.shape[0], 1, 0, 0), dtype=torch.bool,
                                                  device=self.input_ids.device)
        return inputs

    def positions(self, logits: torch.Tensor) -> torch.Tensor:
        """(pairs, T) row of the model's flattened kept logits that predicts each target."""
        return self.source_index


def build_rows(examples: list[Example], plan: Plan, pad_id: int) -> RowBatch:
    """Lay `examples` out as packed rows (plan.mode "packed") or as separate chosen / rejected rows."""
    # docs[row] = [(pair, part)]: part "pcr" = prefix+chosen+rejected, "c" = prefix+chosen, "r" = prefix+rejected
    if plan.mode == "packed":
        rows = [[(i, "pcr") for i in row] for row in fill_rows(examples, plan.max_tokens or 1 << 62)]
    else:
        rows = [[(i, "c")] for i in range(len(examples))]
        rows += [[(i, "r")] for i, e in enumerate(examples) if e.rejected]
    lengths = []
    for row in rows:
        n = 0
        for i, part in row:
            e = examples[i]
            n += len(e.prefix) + (len(e.chosen) if "c" in part else 0) + (len(e.rejected) if "r" in part else 0)
        lengths.append(n)
    B, N = len(rows), max(lengths)
    T = max(len(e.chosen) + len(e.rejected) for e in examples)
    input_ids = torch.full((B, N), pad_id, dtype=torch.long)
    position_ids = torch.zeros((B, N), dtype=torch.long)
    keep = torch.zeros((B, N), dtype=torch.bool)
    # flat position (b * N + n) predicting each target; mapped to kept-logit indices at the end
    source_flat = torch.zeros((len(examples), T), dtype=torch.long)
    target_ids = torch.zeros((len(examples), T), dtype=torch.long)
    segment = torch.zeros((len(examples), T), dtype=torch.long)
    step_index = torch.zeros((len(examples), T), dtype=torch.long)
    docs = []  # (row, start, P, C, R) for the attention layout
    for b, row in enumerate(rows):
        s = 0
        for i, part in row:
            e = examples[i]
            P = len(e.prefix)
            C = len(e.chosen) if "c" in part else 0
            R = len(e.rejected) if "r" in part else 0
            cont = (e.chosen if C else []) + (e.rejected if R else [])
            input_ids[b, s:s + P + C + R] = torch.tensor(e.prefix + cont, dtype=torch.long)
            position_ids[b, s:s + P + C] = torch.arange(P + C)
            position_ids[b, s + P + C:s + P + C + R] = torch.arange(P, P + R)
            # predictor of chosen token k: s+P-1+k; of rejected token k: s+P-1 (k=0), else s+P+C+k-1
            if C:
                src = torch.arange(s + P - 1, s + P + C - 1)
                target_ids[i, :C] = torch.tensor(e.chosen, dtype=torch.long)
                source_flat[i, :C] = b * N + src
                segment[i, :C] = 1
                if e.chosen_steps:
                    step_index[i, :C] = torch.tensor(e.chosen_steps, dtype=torch.long)
                keep[b, src] = True
            if R:
                src = torch.arange(s + P + C - 1, s + P + C + R - 1)
                src[0] = s + P - 1
                off = len(e.chosen)
                target_ids[i, off:off + R] = torch.tensor(e.rejected, dtype=torch.long)
                source_flat[i, off:off + R] = b * N + src
                segment[i, off:off + R] = 2
                if e.rejected_steps:
                    step_index[i, off:off + R] = torch.tensor(e.rejected_steps, dtype=torch.long)
                keep[b, src] = True
            docs.append((b, s, P, C, R))
            s += P + C + R
    kept_index = torch.full((B * N,), -1, dtype=torch.long)
    flat_keep = keep.flatten()
    kept_index[flat_keep] = torch.arange(int(flat_keep.sum()))
    source_index = kept_index[source_flat].clamp(min=0) * (segment > 0)
    attention_mask = None
    layout = None
    if plan.mode == "packed":
        layout = Layout(docs, B, N, plan.attention)
    else:
        attention_mask = (torch.arange(N)[None, :] < torch.tensor(lengths)[:, None]).long()
    return RowBatch(input_ids, position_ids, attention_mask, keep, target_ids, source_index, segment, step_index,
                    layout, num_tokens=sum(lengths), padded_tokens=B * N)


def token_logps(logits: torch.Tensor, batch: RowBatch) -> torch.Tensor:
    """(pairs, T) log-prob of each continuation token (0 where none), from the model's flattened kept logits."""
    return target_logps(logits, batch.positions(logits), batch.target_ids) * (batch.segment > 0)


def forward(model, examples: list[Example], plan: Plan, pad_id: int, device) -> tuple[RowBatch, torch.Tensor]:
    """Packed or separate forward: (batch, (pairs, T) token log-probs), rows of both in `examples` order."""
    batch = build_rows(examples, plan, pad_id).to(device)
    logits = model(**batch.model_inputs()).logits
    return batch, token_logps(logits, batch)


# ---------------------------------------------------------------------------------------------- attention

class Layout:
    """Where each document sits in the rows; handed to every attention layer through the model call."""

    def __init__(self, docs: list[tuple[int, int, int, int, int]], rows: int, length: int, attention: str):
        self.docs, self.rows, self.length, self.attention = docs, rows, length, attention
        self.device = torch.device("cpu")
        self._masks: dict = {}

    def to(self, device) -> "Layout":
        self.device = torch.device(device)
        self._masks = {}
        return self

    def rejected_mask(self, P: int, R: int, window: int | None) -> torch.Tensor:
        """(R, P+R) bool: rejected query i (position P+i) sees prefix key j < P and rejected key P+k, k <= i,
        within the window on logical positions."""
        key = ("r", P, R, window)
        if key not in self._masks:
            q = torch.arange(P, P + R, device=self.device)[:, None]
            k = torch.arange(P + R, device=self.device)[None, :]
            allowed = k <= q
            if window:
                allowed &= q - k < window
            self._masks[key] = allowed
        return self._masks[key]

    def causal_mask(self, n: int, window: int | None) -> torch.Tensor | None:
        """None when plain causal (SDPA's is_causal) is exact."""
        if not window or n <= window:
            return None
        key = ("c", n, window)
        if key not in self._masks:
            q = torch.arange(n, device=self.device)[:, None]
            k = torch.arange(n, device=self.device)[None, :]
            self._masks[key] = (k <= q) & (q - k < window)
        return self._masks[key]

    def block_mask(self, window: int | None):
        key = ("block", window)
        if key not in self._masks:
            self._masks[key] = _block_mask(self, window)
        return self._masks[key]


def _doc_tensors(layout: Layout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per (row, token): document id (-1 padding), part (0 prefix, 1 chosen, 2 rejected), logical position."""
    doc = torch.full((layout.rows, layout.length), -1, dtype=torch.long)
    part = torch.zeros((layout.rows, layout.length), dtype=torch.long)
    pos = torch.zeros((layout.rows, layout.length), dtype=torch.long)
    for d, (b, s, P, C, R) in enumerate(layout.docs):
        doc[b, s:s + P + C + R] = d
        part[b, s + P:s + P + C] = 1
        part[b, s + P + C:s + P + C + R] = 2
        pos[b, s:s + P + C] = torch.arange(P + C)
        pos[b, s + P + C:s + P + C + R] = torch.arange(P, P + R)
    return doc.to(layout.device), part.to(layout.device), pos.to(layout.device)


def _block_mask(layout: Layout, window: int | None):
    from torch.nn.attention.flex_attention import create_block_mask

    doc, part, pos = _doc_tensors(layout)

    def mask_mod(b, h, q, k):
        same = (doc[b, q] == doc[b, k]) & (doc[b, k] >= 0) & (k <= q)
        allowed = same & ((part[b, k] == 0) | (part[b, k] == part[b, q]))
        if window:
            allowed = allowed & (pos[b, q] - pos[b, k] < window)
        return allowed | ((doc[b, q] < 0) & (q == k))  # padding queries see themselves: no empty rows

    # compiled on CUDA (as transformers builds its own block masks): no (rows, N, N) intermediate
    return create_block_mask(mask_mod, layout.rows, None, layout.length, layout.length, device=layout.device,
                             _compile=layout.device.type == "cuda")


_compiled_flex = None


def _flex(query, key, value, block_mask, scale, enable_gqa):
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if not query.is_cuda:  # eager: forward-only reference maths (inductor's CPU flex kernel fails to build here)
        return flex_attention(query, key, value, block_mask=block_mask, scale=scale, enable_gqa=enable_gqa)
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=True)
    return _compiled_flex(query, key, value, block_mask=block_mask, scale=scale, enable_gqa=enable_gqa)


def _segment_attention(layout: Layout, query, key, value, scale, dropout, window, gqa: bool):
    """SDPA per document part; the output rows are assembled in place order, padding rows are zero.
    Rows and documents are cut with unbind / split, whose backward concatenates: slicing the (rows, heads, N, d)
    tensors per document would make every slice's gradient a zero-filled full-size tensor."""
    by_row: dict[int, list] = {}
    for b, s, P, C, R in layout.docs:
        by_row.setdefault(b, []).append((s, P, C, R))
    out_rows = []
    for b, (q_row, k_row, v_row) in enumerate(zip(query.unbind(0), key.unbind(0), value.unbind(0))):
        docs = by_row.get(b, [])
        sizes = [n for _, P, C, R in docs for n in (P + C, R)]
        pad = layout.length - sum(sizes)
        sizes += [pad] if pad else []
        qs, ks, vs = (t.split(sizes, dim=1) for t in (q_row, k_row, v_row))
        pieces = []
        for d, (_, P, C, R) in enumerate(docs):
            q1, k1, v1 = qs[2 * d][None], ks[2 * d][None], vs[2 * d][None]
            mask = layout.causal_mask(P + C, window)
            pieces.append(F.scaled_dot_product_attention(q1, k1, v1, attn_mask=mask, dropout_p=dropout,
                                                         is_causal=mask is None, scale=scale, enable_gqa=gqa))
            if R:
                k2 = torch.cat([k1[:, :, :P], ks[2 * d + 1][None]], dim=2)
                v2 = torch.cat([v1[:, :, :P], vs[2 * d + 1][None]], dim=2)
                pieces.append(F.scaled_dot_product_attention(qs[2 * d + 1][None], k2, v2,
                                                             attn_mask=layout.rejected_mask(P, R, window),
                                                             dropout_p=dropout, scale=scale, enable_gqa=gqa))
        if pad:
            pieces.append(query.new_zeros(1, query.shape[1], pad, value.shape[-1]))
        out_rows.append(torch.cat(pieces, dim=2))
    return torch.cat(out_rows, dim=0)


def _packed_attention(original: str):
    """A transformers attention function: the packed layout if the call carries one, else `original`'s."""
    from transformers import AttentionInterface

    def attention(module, query, key, value, attention_mask, scaling=None, dropout: float = 0.0,
                  sliding_window: int | None = None, **kwargs):
        layout = kwargs.pop(LAYOUT_KWARG, None)
        if layout is None:
            return AttentionInterface._global_mapping[original](module, query, key, value, attention_mask,
                                                                scaling=scaling, dropout=dropout,
                                                                sliding_window=sliding_window, **kwargs)
        dropout = dropout if module.training else 0.0
        gqa = query.shape[1] != key.shape[1]
        if layout.attention == "flex" and not dropout:  # FlexAttention has no dropout: per-pair SDPA then
            out = _flex(query, key, value, layout.block_mask(sliding_window), scaling, gqa)
        else:
            out = _segment_attention(layout, query, key, value, scaling, dropout, sliding_window, gqa)
        return out.transpose(1, 2).contiguous(), None

    return attention


def use_packed_attention(model) -> None:
    """Route `model`'s attention through the packed function (registered as ATTENTION + "-" + the original).
    Calls without a layout build the original's masks and run the original's kernel, unchanged."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    original = model.config._attn_implementation or "sdpa"
    if original.startswith(ATTENTION):
        return
    name = f"{ATTENTION}-{original}"
    AttentionInterface.register(name, _packed_attention(original))
    if original in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS._global_mapping[original])
    model.config._attn_implementation = name


def restore_attention(model) -> None:
    """Back to the model's own attention implementation (before saving it)."""
    name = model.config._attn_implementation or ""
    if name.startswith(ATTENTION + "-"):
        model.config._attn_implementation = name[len(ATTENTION) + 1:]


def _flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: F401
    except ImportError:
        return False
    return True
