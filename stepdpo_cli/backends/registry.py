"""Model specs and the backend registry: which class a spec names, and which CLI options it takes.

A spec picks the backend: ``hf:PATH``, ``vllm:PATH``, ``openai:NAME``; a bare path or hub id means ``hf``
(or ``--backend``). Backends are imported by name only when loaded, so this module imports none of them and
none of them imports it: adding a backend is a module with a class that meets `base.Backend` and one entry in
`BACKENDS`.
"""
from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from ..records import InputError
from .base import Backend


@dataclass(frozen=True)
class BackendEntry:
    target: str  # "module:Class", relative to this package
    cli_options: tuple[str, ...]  # the shared CLI options (`--device`, `--base-url`, ...) its constructor takes


BACKENDS: dict[str, BackendEntry] = {
    "hf": BackendEntry("hf:HFBackend", ("device", "dtype", "batch_size")),
    "vllm": BackendEntry("vllm:VLLMBackend", ("dtype",)),
    "openai": BackendEntry("openai:OpenAIBackend", ("base_url", "concurrency")),
}


@dataclass
class ModelSpec:
    backend: str
    model: str
    options: dict = field(default_factory=dict)


def parse_model_spec(spec: str, backend: str | None = None) -> ModelSpec:
    """``hf:/path``, ``vllm:/path``, ``openai:gpt-4o``, or a bare path/hub id (backend from `backend` or hf)."""
    if not spec:
        raise InputError("a model is required", field="--model")
    head, sep, rest = spec.partition(":")
    if sep and head in BACKENDS and rest:
        if backend and backend != head:
            raise InputError(f"--backend {backend} contradicts model spec {spec!r}", field="--backend")
        return ModelSpec(head, rest)
    chosen = backend or "hf"
    if chosen not in BACKENDS:
        raise InputError(f"unknown backend {chosen!r}; choose one of {', '.join(BACKENDS)}", field="--backend")
    return ModelSpec(chosen, spec)


def backend_class(name: str) -> type:
    """The class registered as `name` (its module imported now, not before)."""
    module, _, attribute = BACKENDS[name].target.partition(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), attribute)


def load_backend(spec: str, backend: str | None = None, **options: Any) -> Backend:
    """Build the backend a spec names. Options are backend-specific (device, dtype, base_url, ...)."""
    parsed = parse_model_spec(spec, backend)
    return backend_class(parsed.backend)(parsed.model, **options)


def backend_kwargs(kind: str, extra: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    """The CLI's options that backend `kind` takes (None: its default), then --backend-option's, as given."""
    kwargs = {k: v for k, v in options.items() if k in BACKENDS[kind].cli_options and v is not None}
    kwargs.update(extra or {})
    return kwargs


def parse_backend_options(pairs: list[str] | None) -> dict[str, Any]:
    """--backend-option KEY=VALUE pairs; VALUE is parsed as JSON when it is JSON, else kept as a string."""
    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise InputError(f"expected KEY=VALUE, got {pair!r}", field="--backend-option")
        try:
            options[key.strip()] = json.loads(value)
        except ValueError:
            options[key.strip()] = value
    return options


def check_local_model(kind: str, path: str, device: str | None = None, option: str = "--model") -> None:
    """Fail before any output is opened: a path (not a hub id) that does not exist, or a GPU that is not there."""
    if kind in ("hf", "vllm") and (os.path.isabs(path) or path.startswith((".", "~"))) \
            and not os.path.exists(os.path.expanduser(path)):
        raise InputError(f"no such model directory: {path}", field=option)
    if kind == "hf" and device and device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise InputError(f"{device} requested but no CUDA device is available (use --device cpu)",
                             field="--device")
