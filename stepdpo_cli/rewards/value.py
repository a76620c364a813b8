"""SVPO's value head: tanh(Linear(last hidden state)) read at a step's last token, trained with the policy.

AlphaMath's head (Super_MARIO `modeling_value_head.py`): dropout -> Linear(hidden, 1) -> tanh on the last hidden
state, read at each step's end; here dropout is 0, as everywhere in training (setup._disable_dropout). Values live
in [-1, 1] (MCTS terminal rewards -1/+1); stepdpo's Q (success rates in [0, 1]) maps to 2Q - 1, and the scorer
hands back (v + 1) / 2 so every selector that reads PRM rewards in [0, 1] reads values the same way.

An SVPO model dir is a plain causal LM dir (loads with AutoModelForCausalLM and samples like any policy) plus
`value_head.safetensors` (`weight` (1, hidden), `bias` (1,)); `stepdpo.json` says objective "svpo".
"""
from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import torch

from ..records import InputError
from ..templates import read_model_meta
from .prm import ProcessRewardModel, load_prm

VALUE_HEAD_FILE = "value_head.safetensors"


def q_to_value(q: float) -> float:
    """A success rate in [0, 1] as a value target in [-1, 1]."""
    return 2.0 * float(q) - 1.0


class PolicyWithValueHead(torch.nn.Module):
    """The causal LM and its value head as one module (one optimizer, one accelerate/DeepSpeed wrapper).
    forward(**inputs) returns the LM's output with `values` (B, L): tanh of the head on the last hidden state."""

    def __init__(self, model: Any):
        super().__init__()
        self.model = model
        self.value_head = torch.nn.Linear(model.config.hidden_size, 1)
        torch.nn.init.normal_(self.value_head.weight, std=1.0 / model.config.hidden_size)
        torch.nn.init.zeros_(self.value_head.bias)
        self.value_head.to(next(model.parameters()).dtype)

    @property
    def config(self):  # packing and the loop read the LM's config
        return self.model.config

    @property
    def _supports_attention_backend(self) -> bool:  # packing.packing_supported asks the LM
        return bool(getattr(self.model, "_supports_attention_backend", False))

    def forward(self, **inputs):
        out = self.model(**inputs, output_hidden_states=True)
        hidden = out.hidden_states[-1]
        return SimpleNamespace(logits=out.logits, values=torch.tanh(self.value_head(hidden).squeeze(-1)))


def save_value_head(state: dict, path: str) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, os.path.join(path, VALUE_HEAD_FILE))


def split_state_dict(state: dict) -> tuple[dict, dict]:
    """A PolicyWithValueHead state dict -> (the LM's, the head's)."""
    lm = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    head = {k[len("value_head."):]: v for k, v in state.items() if k.startswith("value_head.")}
    return lm, head


def check_value_dir(path: str, option: str = "--value") -> dict:
    meta = read_model_meta(path) if os.path.isdir(path) else {}
    if meta.get("objective") != "svpo" or not os.path.isfile(os.path.join(path, VALUE_HEAD_FILE)):
        raise InputError(f"{path} is not an SVPO model dir (stepdpo.json objective svpo and {VALUE_HEAD_FILE}); "
                         "train one with `stepdpo train --objective svpo`", field=option)
    return meta


class ValueModel(ProcessRewardModel):
    """An SVPO model as a step scorer: `score([(problem, bodies), ...])` -> (tanh v + 1) / 2 at each step's end,
    with the PRM's fixed-shape batches (rewards/prm.py), so beam search, best-of-n and tree search take it as
    they take a PRM."""

    name = "value"

    def __init__(self, path: str, *, option: str = "--value", **options: Any):
        super().__init__(path, option=option, **options)

    def check_dir(self, path: str, option: str) -> dict:
        return check_value_dir(path, option)

    def load(self) -> "ValueModel":
        if self.model is not None:
            return self
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from ..backends.hf import _resolve_device, _resolve_dtype

        hf_logging.disable_progress_bar()
        self.device = _resolve_device(self.requested_device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        lm = AutoModelForCausalLM.from_pretrained(self.path, dtype=_resolve_dtype(self.dtype, self.device))
        model = PolicyWithValueHead(lm)
        model.value_head.load_state_dict(load_file(os.path.join(self.path, VALUE_HEAD_FILE)))
        return self.loaded(model)

    def step_values(self, ids, mask):
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), logits_to_keep=1)
        return ((out.values.float() + 1) / 2).cpu()


def load_step_scorer(path: str, backend: str = "hf", **options: Any) -> ProcessRewardModel:
    """A PRM dir (load_prm) or an SVPO model dir (ValueModel, hf only): whatever scores steps in [0, 1]."""
    if os.path.isdir(path) and read_model_meta(path).get("objective") == "svpo":
        if backend != "hf":
            raise InputError("an SVPO value head runs on the hf backend only", field="--backend")
        return ValueModel(path, **options)
    return load_prm(path, backend, **options)
