"""Training rows -> token ids -> packed shared-prefix batches.

One row becomes one `Example`: the context (rendered prompt + `initial_reason_steps`, or + the CoT prefix
when a row has none) and one (SFT) or two (preference) continuations. Context and continuations are
tokenised separately and concatenated, so chosen and rejected see byte-identical context ids.

A batch packs each example as ONE sequence ``[context | chosen | rejected]`` (left-padded): a 4D additive
mask keeps chosen and rejected apart, and rejected's position ids restart where chosen's started, so the
context is computed once per pair. Left padding puts every continuation token in the last `keep`
positions, so the LM head only runs there (``logits_to_keep``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from ..records import PROBLEM_ALIASES, InputError, content_id
from ..steps import COT_INTRO, STEP_PREFIX, split_steps
from ..templates import encode_context, generation_prompt  # noqa: F401 - encode_context: one rule for all

OBJECTIVES = ("sft", "dpo", "step-dpo", "full-step-dpo", "prm", "svpo")
STEP_OBJECTIVES = ("step-dpo", "svpo")  # one step per continuation, no EOS after it
# step-end: a step the solution continues ends with its newline (what the model emits; see with_step_end).
# as-given: `chosen`/`rejected` scored exactly as written, as the official StepDPOTrainer does.
STEP_TEXTS = ("step-end", "as-given")
COMPLETION_ALIASES = ("completion", "solution", "response", "output")
# SFT on preference rows trains their chosen text alone (the control for a preference term).
SFT_FIELDS = (*COMPLETION_ALIASES, "chosen")
PROMPT_FIELDS = ("prompt", *(a for a in PROBLEM_ALIASES if a != "prompt"))  # Math-Step-DPO-10K says prompt


@dataclass
class Example:
    key: str  # content hash: reference log-probs are cached under it
    prefix: list[int]
    chosen: list[int]  # SFT: the completion
    rejected: list[int] = field(default_factory=list)
    chosen_steps: list[int] = field(default_factory=list)  # full-step-dpo: step index of each chosen token
    rejected_steps: list[int] = field(default_factory=list)
    chosen_scores: list[float] = field(default_factory=list)
    rejected_scores: list[float] = field(default_factory=list)
    label_positions: list[int] = field(default_factory=list)  # prm: index into `chosen` of each step's last token
    labels: list[float] = field(default_factory=list)  # prm: each step's target in [0, 1]
    label_smoothing: float | None = None  # the row's own cDPO epsilon (tree pairs: from visit counts)
    chosen_q: float | None = None  # svpo: the search tree's Q of the chosen / rejected step, in [0, 1]
    rejected_q: float | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.prefix) + len(self.chosen) + len(self.rejected)


# ---------------------------------------------------------------------------------------------- validation

def _text_field(record: dict, names: tuple[str, ...], *, required: bool = True) -> str | None:
    for name in names:
        value = record.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise InputError(f"must be a string, not {type(value).__name__}", field=name)
        return value
    if required:
        also = f" (also looked for {', '.join(names[1:])})" if len(names) > 1 else ""
        raise InputError("missing" + also, field=names[0])
    return None


def _scores(record: dict, name: str, text: str) -> list[float]:
    value = record.get(name)
    if value is None:
        raise InputError("missing: full-step-dpo needs one score per step (e.g. rollout success rates "
                         "from `stepdpo localize --method rollout`)", field=name)
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                              for v in value):
        raise InputError("must be a list of numbers", field=name)
    steps = len(split_steps(text))
    if len(value) != steps:
        raise InputError(f"has {len(value)} scores but the text has {steps} step(s)", field=name)
    return [float(v) for v in value]


def validator(objective: str, prm_labels: str = "final-answer") -> Callable[[dict], dict]:
    """A `validate` function for `records.iter_jsonl`: checks the fields `objective` needs (InputError names them)."""
    if objective not in OBJECTIVES:
        raise InputError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}",
                         field="--objective")
    if objective == "prm":
        from ..rewards.labels import prm_validator

        return prm_validator(prm_labels)

    def validate(record: dict) -> dict:
        _text_field(record, PROMPT_FIELDS)
        steps_given = _text_field(record, ("initial_reason_steps",), required=objective in STEP_OBJECTIVES)
        if objective == "sft":
            _text_field(record, SFT_FIELDS)
            return record
        chosen = _text_field(record, ("chosen",))
        rejected = _text_field(record, ("rejected",))
        smoothing = record.get("label_smoothing")
        if smoothing is not None and (not isinstance(smoothing, (int, float)) or isinstance(smoothing, bool)
                                      or not 0.0 <= smoothing <= 0.5):
            raise InputError("must be a number in [0, 0.5] (this pair's cDPO epsilon)", field="label_smoothing")
        if objective == "svpo":
            for name in ("chosen_q", "rejected_q"):
                q = record.get(name)
                if not isinstance(q, (int, float)) or isinstance(q, bool) or not 0.0 <= q <= 1.0:
                    raise InputError("must be a number in [0, 1]: svpo regresses its value head on the search "
                                     "tree's Q (`pair --strategy tree` rows)", field=name)
        if objective == "full-step-dpo":
            _scores(record, "chosen_step_scores", _strip_intro(chosen, steps_given))
            _scores(record, "rejected_step_scores", _strip_intro(rejected, steps_given))
        return record

    return validate


# ---------------------------------------------------------------------------------------------- encoding

def _strip_intro(text: str, steps_given: str | None) -> str:
    """Whole solutions may still start with the CoT prefix the context already ends with. An empty
    `initial_reason_steps` (Math-Step-DPO-10K rows whose first step is wrong) gets that prefix too."""
    if not steps_given and text.lstrip().startswith(STEP_PREFIX):
        return text.lstrip()[len(STEP_PREFIX):]
    if not steps_given and text.lstrip().startswith(COT_INTRO + "\n"):
        return text.lstrip()[len(COT_INTRO) + 1:]
    return text


def context_text(record: dict, template: str, tokenizer: Any) -> str:
    """Rendered prompt + `initial_reason_steps`; rows without it get the CoT prefix (sample prompts end with it)."""
    problem = _text_field(record, PROMPT_FIELDS)
    steps_given = record.get("initial_reason_steps")
    return generation_prompt(problem, template, tokenizer, reason_prefix=steps_given or STEP_PREFIX)


def encode_continuation(tokenizer: Any, text: str, *, eos: bool, with_steps: bool = False) -> tuple[list[int], list[int]]:
    """Token ids of `text` (+ EOS); with `with_steps`, each token's 0-based step index (via char offsets)."""
    if not with_steps:
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []
        return ids + ([tokenizer.eos_token_id] if eos else []), []
    bodies = split_steps(text)
    # A step owns its body and the marker that opens the next one ends at that body's start: boundaries
    # are the ends of bodies 1..n-1, so "\nStep i:" belongs to step i.
    starts, cursor = [0], 0
    for body in bodies[:-1]:
        found = text.find(body, cursor)
        cursor = (found if found >= 0 else cursor) + len(body)
        starts.append(cursor)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True) if text else None
    ids = list(encoded["input_ids"]) if encoded else []
    steps = []
    for begin, _end in (encoded["offset_mapping"] if encoded else []):
        step = 0
        while step + 1 < len(starts) and begin >= starts[step + 1]:
            step += 1
        steps.append(step)
    if eos:
        ids.append(tokenizer.eos_token_id)
        steps.append(len(bodies) - 1)  # EOS ends the last step
    return ids, steps


@dataclass
class EncodeStats:
    rows: int = 0
    skipped_empty: int = 0
    truncated: int = 0


def with_step_end(step: str, full: Any) -> str:
    """A step that the solution continues after ends with the newline before "Step k+1:" in the model's own text.

    Tokenisers merge that newline into the step's last token (Qwen2/Llama-3 write ".\n" as one token), so a step
    cut before it ends in a token the model never emits after a step (measured on the demo model: -17 nats for
    the final "." alone, for chosen and rejected alike). With `full_chosen`/`full_rejected` we know the newline
    follows and keep it; a final step (full == step) or a row without them is left as it is.
    """
    if continues(step, full) and full[len(step)] == "\n":
        return step + "\n"
    return step


def continues(step: str, full: Any) -> bool:
    """`full` (full_chosen / full_rejected) goes on past `step`: the step does not end the solution."""
    return isinstance(full, str) and len(full.strip()) > len(step.strip()) and full.startswith(step)


def encode_rows(rows: Iterable[dict], tokenizer: Any, template: str, objective: str, max_length: int,
                stats: EncodeStats | None = None, *, max_prompt_length: int = 512,
                step_text: str = "step-end") -> list[Example]:
    """Validated rows -> Examples. Preference rows with an empty chosen/rejected are skipped (counted):
    a pair needs two continuations (the released Math-Step-DPO-10K has ~1.2K rows with empty `rejected`)."""
    if step_text not in STEP_TEXTS:
        raise InputError(f"{step_text!r} is not one of {', '.join(STEP_TEXTS)}", field="--step-text")
    stats = stats if stats is not None else EncodeStats()
    step_end = (lambda step, full: with_step_end(step, full)) if step_text == "step-end" else (lambda step, full: step)
    eos = objective not in STEP_OBJECTIVES  # partial steps must not end in EOS; whole solutions do
    with_steps = objective == "full-step-dpo"
    examples = []
    for row in rows:
        stats.rows += 1
        steps_given = row.get("initial_reason_steps")
        context = context_text(row, template, tokenizer)
        row_eos = eos
        if objective == "sft":
            completion = _text_field(row, COMPLETION_ALIASES, required=False)
            if completion is None:  # a preference row: its chosen step, ending as the step-dpo trainer ends it
                completion = step_end(row["chosen"], row.get("full_chosen"))
                row_eos = not continues(row["chosen"], row.get("full_chosen"))
            texts = [_strip_intro(completion, steps_given)]
        else:
            texts = [_strip_intro(row["chosen"], steps_given), _strip_intro(row["rejected"], steps_given)]
            if not all(t.strip() for t in texts):
                stats.skipped_empty += 1
                continue
            if objective in STEP_OBJECTIVES:
                texts = [step_end(texts[0], row.get("full_chosen")), step_end(texts[1], row.get("full_rejected"))]
            if objective == "svpo":  # every step ends with its newline, where the value head reads it (as a PRM)
                texts = [t if t.endswith("\n") else t + "\n" for t in texts]
        prefix = encode_context(tokenizer, context)
        encoded = [encode_continuation(tokenizer, t, eos=row_eos, with_steps=with_steps) for t in texts]
        conts = [ids for ids, _ in encoded]
        cut = _truncate(prefix, conts, max_length, max_prompt_length, tokenizer.bos_token_id)
        if cut:
            stats.truncated += 1
            prefix, conts = cut
        example = Example(key=content_id(objective, context, *texts), prefix=prefix, chosen=conts[0],
                          chosen_steps=encoded[0][1][: len(conts[0])])
        if len(conts) > 1:
            example.rejected, example.rejected_steps = conts[1], encoded[1][1][: len(conts[1])]
            if row.get("label_smoothing") is not None:
                example.label_smoothing = float(row["label_smoothing"])
        if objective == "svpo":
            example.chosen_q, example.rejected_q = float(row["chosen_q"]), float(row["rejected_q"])
        if with_steps:
            example.chosen_scores = [float(s) for s in row["chosen_step_scores"]]
            example.rejected_scores = [float(s) for s in row["rejected_step_scores"]]
        examples.append(example)
    return examples


def _truncate(prefix: list[int], conts: list[list[int]], max_length: int, max_prompt_length: int = 512,
              bos_id: int | None = None):
    """Fit context + the longest continuation into `max_length` (the unpacked sequence length, as in TRL):
    drop the context's oldest tokens first (down to `max_prompt_length`, the official trainer's 512), then
    cut continuations' tails. A leading BOS stays: the model never saw a context without it."""
    longest = max(len(c) for c in conts)
    if len(prefix) + longest <= max_length:
        return None
    keep_prefix = max(min(len(prefix), max_length - longest), min(len(prefix), max_prompt_length))
    if keep_prefix < len(prefix):
        bos = prefix[:1] if bos_id is not None and prefix and prefix[0] == bos_id else []
        prefix = bos + prefix[len(prefix) - keep_prefix + len(bos):]
    room = max(max_length - len(prefix), 1)
    return prefix, [c[:room] for c in conts]


# ---------------------------------------------------------------------------------------------- packing

@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # (B, L) left-padded [pad | prefix | chosen | rejected]
    position_ids: torch.Tensor  # (B, L); rejected restarts at len(prefix)
    attention_mask: torch.Tensor  # (B, 1, L, L) additive float mask
    keep: int  # logits_to_keep: the last `keep` positions hold every continuation token's predictor
    target_ids: torch.Tensor  # (B, T) continuation tokens (chosen then rejected)
    source_index: torch.Tensor  # (B, T) index into the kept logits predicting each target
    segment: torch.Tensor  # (B, T) 1 chosen, 2 rejected, 0 padding
    step_index: torch.Tensor  # (B, T) 0-based step of each target (full-step-dpo), else 0
    num_tokens: int  # real (non-pad) tokens in the batch

    def model_inputs(self) -> dict:
        return {"input_ids": self.input_ids, "position_ids": self.position_ids,
                "attention_mask": self.attention_mask, "logits_to_keep": self.keep, "use_cache": False}

    def positions(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, T) row of the flattened kept logits (B * keep, V) that predicts each target."""
        rows = torch.arange(logits.shape[0], device=logits.device)[:, None]
        return rows * logits.shape[1] + self.source_index


def pack(examples: list[Example], pad_id: int, dtype: torch.dtype = torch.float32) -> PackedBatch:
    """Pack examples into shared-prefix sequences (see module doc)."""
    lengths = [e.num_tokens for e in examples]
    L = max(lengths)
    T = max(len(e.chosen) + len(e.rejected) for e in examples)
    keep = T + 1
    B = len(examples)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    position_ids = torch.zeros((B, L), dtype=torch.long)
    seg_full = torch.full((B, L), -1, dtype=torch.long)  # -1 pad, 0 prefix, 1 chosen, 2 rejected
    target_ids = torch.zeros((B, T), dtype=torch.long)
    source_index = torch.zeros((B, T), dtype=torch.long)
    segment = torch.zeros((B, T), dtype=torch.long)
    step_index = torch.zeros((B, T), dtype=torch.long)
    offset = L - keep  # position of kept-logits index 0
    for b, e in enumerate(examples):
        P, C, R = len(e.prefix), len(e.chosen), len(e.rejected)
        start = L - lengths[b]
        input_ids[b, start:] = torch.tensor(e.prefix + e.chosen + e.rejected, dtype=torch.long)
        position_ids[b, start:start + P + C] = torch.arange(P + C)
        position_ids[b, start + P + C:] = torch.arange(P, P + R)
        seg_full[b, start:start + P] = 0
        seg_full[b, start + P:start + P + C] = 1
        seg_full[b, start + P + C:] = 2
        prefix_end = start + P - 1  # its logits predict the first token of chosen AND of rejected
        cont_start = start + P
        n = C + R
        target_ids[b, :n] = input_ids[b, cont_start:]
        src = torch.arange(cont_start - 1, cont_start - 1 + n)
        if R:
            src[C] = prefix_end
        source_index[b, :n] = src - offset
        segment[b, :C] = 1
        segment[b, C:n] = 2
        if e.chosen_steps:
            step_index[b, :C] = torch.tensor(e.chosen_steps, dtype=torch.long)
        if e.rejected_steps:
            step_index[b, C:n] = torch.tensor(e.rejected_steps, dtype=torch.long)
    # key j visible to query i: j <= i, neither is padding, and j is prefix or in i's own segment.
    q, k = seg_full[:, :, None], seg_full[:, None, :]
    idx = torch.arange(L)
    allowed = (idx[None, None, :] <= idx[None, :, None]) & (k >= 0) & ((k == 0) | (k == q))
    allowed |= torch.eye(L, dtype=torch.bool)[None]  # padding queries see themselves: no all -inf rows (NaN)
    mask = torch.zeros((B, 1, L, L), dtype=dtype)
    mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    return PackedBatch(input_ids, position_ids, mask, keep, target_ids, source_index, segment, step_index,
                       num_tokens=sum(lengths))


def target_logps(logits: torch.Tensor, positions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) at each row of `positions` into the flattened (N, V) logits, in fp32. One log-softmax
    over the rows, then a gather: measured peak above the logits (8 x 600 x 32K), 3x their fp32 size
    (6x for bf16 logits); logit minus logsumexp took 4x (9x)."""
    flat = logits.reshape(-1, logits.shape[-1])
    return flat.float().log_softmax(-1)[positions, targets]


def token_logps(logits: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    """(B, T) log-prob of each continuation token (0 at padding), from kept logits (B, keep, V)."""
    return target_logps(logits, batch.positions(logits), batch.target_ids) * (batch.segment > 0)


def token_kl(logits: torch.Tensor, ref_logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """KL(ref || policy) over the whole vocabulary at each of `positions` (rows of the flattened logits), in
    fp32: sum_v p_ref(v) (log p_ref(v) - log p(v)) (TDPO's sequential KL, one term per target token). Both
    sides are log-softmaxes: a probability that underflows to 0 gives a 0 term, not 0 * log 0 = NaN. Only the
    continuation positions are materialised as (..., V)."""
    flat, ref_flat = logits.reshape(-1, logits.shape[-1]), ref_logits.reshape(-1, ref_logits.shape[-1])
    logp = flat[positions].float().log_softmax(-1)
    ref_logp = ref_flat[positions].float().log_softmax(-1)
    return (ref_logp.exp() * (ref_logp - logp)).sum(-1)


def num_batches(n: int, per_batch: int) -> int:
    return max(1, math.ceil(n / per_batch))
