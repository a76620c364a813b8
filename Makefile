# stepdpo: set-up, tests and the demo.
#   make demo    create .venv, install stepdpo, run the miniature pipeline (examples/arith)
#   make test    install the dev extras into .venv, run the default suite, the vLLM and browser tiers, then make demo-quick
# Re-running is cheap: installs are skipped while pyproject.toml is unchanged (stamp files in .venv).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch goes in first and pinned: 2.13.0 is a CPU wheel; an open range lets pip pick a multi-GB CUDA build.
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=

# deepspeed must not try to compile its ops at install time (they are built on first use, if ever).
export DS_BUILD_OPS ?= 0
# The demo's Makefile and the tests find `stepdpo` and `python` in the venv.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: help install install-dev test test-default test-vllm test-browser test-demo demo demo-quick clean-venv

help:
	@sed -n '2,4p' Makefile | sed 's/^# *//'

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.stamp-install: pyproject.toml | $(PY)
	$(PIP) install "$(TORCH)"
	$(PIP) install -e .
	touch $@

$(VENV)/.stamp-dev: $(VENV)/.stamp-install pyproject.toml
	$(PIP) install -e '.[dev]'
	touch $@

install: $(VENV)/.stamp-install

install-dev: $(VENV)/.stamp-dev

# The default suite, the vLLM tier (its own venv, built by scripts/test-vllm.sh), then the small demo with its
# check (every stage wrote records, every trained model loads and generates) and the study's protocol in
# miniature with its check (every variant, seed and regime evaluated; docs/study.md's sections written), and the
# methods study in miniature with its check (every method and seed evaluated, every section of methods.md written).
test: test-default test-vllm test-browser test-demo

test-demo: install
	rm -rf examples/arith/work-quick examples/arith/study-quick examples/arith/methods-quick
	$(MAKE) -C examples/arith demo-quick
	$(MAKE) -C examples/arith study-quick
	$(MAKE) -C examples/arith methods-quick

test-default: install-dev
	$(PY) -m pytest --durations=10 $(PYTEST_ARGS)

# Exit 5 means the tier collected no test (no vllm tests yet): not a failure of the suite that ran above.
test-vllm:
	@if [ -f scripts/test-vllm.sh ]; then \
		bash scripts/test-vllm.sh; code=$$?; \
		if [ $$code -eq 5 ]; then echo "test-vllm: no vLLM tests collected"; exit 0; fi; exit $$code; \
	else echo "test-vllm: scripts/test-vllm.sh not present; skipped"; fi

# `stepdpo view` pages in headless Chromium; the script installs Debian's chromium (~15 s) or skips without apt.
test-browser: install-dev
	bash scripts/test-browser.sh

demo: install
	$(MAKE) -C examples/arith demo

demo-quick: install
	$(MAKE) -C examples/arith demo-quick

clean-venv:
	rm -rf $(VENV)
