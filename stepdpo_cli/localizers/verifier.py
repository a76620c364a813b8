"""Programmatic step checkers: `--verifier module:function` (or `path/to/file.py:function`).

A verifier is `fn(problem: str, steps: list[str], record: dict)` returning one verdict per step
(True = right, False = wrong, None = cannot tell), or a dict
`{"verdicts": [...], "corrections": {k: "correct text of step k"}}`. The first False is the first error.
The correction for that step (if any) becomes `reference_step`, the chosen text of the OOD ablation.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from ..records import InputError

Verifier = Callable[[str, list, dict], Any]


def load_callable(spec: str, *, option: str = "--verifier") -> Verifier:
    """Import `module:function` or `file.py:function`; a bad spec is a usage error (exit 2)."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise InputError(f"expected module:function, got {spec!r}", field=option)
    try:
        if module_name.endswith(".py") or os.sep in module_name:
            path = os.path.abspath(module_name)
            if not os.path.isfile(path):
                raise InputError(f"no such file {module_name!r}", field=option)
            name = "_stepdpo_verifier_" + os.path.splitext(os.path.basename(path))[0]
            loader = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(loader)  # type: ignore[arg-type]
            sys.modules[name] = module
            loader.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            if os.getcwd() not in sys.path and "" not in sys.path:
                sys.path.insert(0, os.getcwd())  # `stepdpo` run as a script: let local modules import
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InputError(f"cannot import {module_name!r}: {exc}", field=option) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise InputError(f"{module_name!r} has no callable {attr!r}", field=option)
    return fn


@dataclass
class VerifierResult:
    verdicts: list[bool | None]
    corrections: dict[int, str] = field(default_factory=dict)

    @property
    def first_error(self) -> int | None:
        """1-based index of the first False verdict."""
        for index, verdict in enumerate(self.verdicts, start=1):
            if verdict is False:
                return index
        return None

    @property
    def status(self) -> str:
        """`error_found`, `no_error` (every step True) or `undecided` (no False, some None)."""
        if self.first_error is not None:
            return "error_found"
        return "no_error" if all(v is True for v in self.verdicts) else "undecided"


def run_verifier(fn: Verifier, problem: str, steps: list[str], record: dict) -> VerifierResult:
    """Call a verifier and normalise what it returns to one verdict per step (padded with None)."""
    raw = fn(problem, list(steps), record)
    corrections: dict[int, str] = {}
    if isinstance(raw, dict):
        verdicts_raw = raw.get("verdicts")
        for key, text in (raw.get("corrections") or {}).items():
            try:
                corrections[int(key)] = str(text)
            except (TypeError, ValueError):
                continue
    else:
        verdicts_raw = raw
    if not isinstance(verdicts_raw, (list, tuple)):
        raise TypeError(f"verifier returned {type(raw).__name__}; expected a list of verdicts or "
                        "{'verdicts': [...], 'corrections': {...}}")
    verdicts: list[bool | None] = [None if v is None else bool(v) for v in list(verdicts_raw)[: len(steps)]]
    verdicts += [None] * (len(steps) - len(verdicts))
    return VerifierResult(verdicts, corrections)


def localize_with_verifier(records: Iterable[dict], fn: Verifier, *, spec: str = "") -> Iterator[dict]:
    """Add first_error_step, step_verdicts, localize_status (and reference_step) from a verifier."""
    for record in records:
        try:
            result = run_verifier(fn, record["problem"], record["steps"], record)
        except Exception as exc:  # the user's code failed: say which record, exit 1
            raise RuntimeError(f"verifier {spec or fn!r} failed on record {record.get('id')}: {exc}") from exc
        k = result.first_error
        record["first_error_step"] = k
        record["step_verdicts"] = result.verdicts
        record["localize_status"] = result.status
        record["localizer"] = {"method": "verifier", "verifier": spec}
        if k is not None and k in result.corrections:
            record["reference_step"] = result.corrections[k]
        yield record
