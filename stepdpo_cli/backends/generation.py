"""The policy model of the generating stages (sample, eval, localize --method rollout, rectify), loaded lazily.

`GenerationModel` checks the spec and the local path at once (a usage error before any input is read), then
loads the backend and picks the prompt template only when the first chunk of input has been read and validated:
bad input fails in a second instead of after a model load, and empty input loads nothing.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, Iterator

from ..records import InputError
from .registry import backend_kwargs, check_local_model, load_backend, parse_backend_options, parse_model_spec


class GenerationModel:
    """A backend and its template for one stage run, given the CLI's generation options."""

    def __init__(self, model: str, backend: str | None, template: str | None, n: int, batch_size: int,
                 extra: dict[str, Any] | None = None, **options: Any):
        self.spec, self.backend, self.requested_template = model, backend, template
        parsed = parse_model_spec(model, backend)  # a bad spec is a usage error before any input is read
        self.kind, self.path = parsed.backend, parsed.model
        check_local_model(parsed.backend, parsed.model, options.get("device"))
        self.options = backend_kwargs(self.kind, extra, **options, batch_size=batch_size)
        # Problems per backend call: hf fills `batch_size` rows; remote/vLLM backends get more to overlap.
        self.chunk_size = max(1, batch_size // n) * (1 if self.kind == "hf" else 4)
        self.engine: Any = None
        self.template: str | None = None

    def load(self) -> Any:
        from ..templates import template_for_model

        if self.engine is None:
            self.engine = load_backend(self.spec, self.backend, **self.options)
            self.template = template_for_model(self.requested_template, self.path, self.engine.tokenizer)
        return self.engine

    def run(self, records: Iterable[dict], stage: Callable[..., Iterator[Any]], **kwargs: Any) -> Iterator[Any]:
        """`stage(records, engine, template=..., chunk_size=..., **kwargs)`, the engine loaded on the first record."""
        records = iter(records)
        head = list(itertools.islice(records, self.chunk_size))
        if not head:
            return
        engine = self.load()
        yield from stage(itertools.chain(head, records), engine, template=self.template,
                         chunk_size=self.chunk_size, **kwargs)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


def load_policy(spec: str, backend: str | None, option: str, *, device: str = "auto", base_url: str | None = None,
                extra: list[str] | None = None, dtype: str = "auto", concurrency: int | None = None,
                batch_size: int = 64) -> Any:
    """Load the policy for rollout/rectify the way `sample` does; a bad spec names the option (exit 2)."""
    try:
        engine = GenerationModel(spec, backend, None, 1, batch_size, parse_backend_options(extra), device=device,
                                 dtype=dtype, base_url=base_url, concurrency=concurrency).load()
    except InputError as exc:
        raise InputError(exc.message, field=exc.field or option) from None
    return engine
