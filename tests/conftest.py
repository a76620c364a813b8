"""Shared fixtures: a tiny local model and tokenizer built once per test session (no downloads)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A random tiny Qwen2 model (hidden 128, 4 heads, 2 layers) with a byte-level tokenizer."""
    from stepdpo_cli.tiny import build_tiny_model

    return build_tiny_model(str(tmp_path_factory.mktemp("tiny") / "model"), seed=0)


def run_cli(*args: str, input: str | bytes | None = None, env: dict | None = None, cwd: str | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m stepdpo_cli ARGS` as a user would; returns the completed process (bytes out/err)."""
    full_env = {**os.environ, **(env or {})}
    if isinstance(input, str):
        input = input.encode()
    return subprocess.run([sys.executable, "-m", "stepdpo_cli", *args], input=input, capture_output=True,
                          env=full_env, cwd=cwd or ROOT, timeout=timeout)


def default_sigint() -> None:
    """Popen preexec_fn for tests that send SIGINT: a library imported earlier in the test process can leave
    SIGINT ignored, and children inherit that (Python then never raises KeyboardInterrupt in them)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
