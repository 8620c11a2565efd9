# One obvious way to run things. Every target creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-slow test-all lint docs venv venv-dev clean browser browser-test llama-cpp-check

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed
venv-dev: $(VENV)/.installed-dev

## make demo: train the tiny character model on built-in text and print a sample
demo: venv
	$(PY) scripts/p1_train_char.py

## make test: lint, the docs site's strict build, then the default test suite (slow tests excluded; the docs'
## code blocks run at quick sizes, LLM_LAB_DOCS_QUICK=1)
test: venv-dev browser
	$(PY) -m ruff check .
	$(MKDOCS)
	@LLM_LAB_TEST_ARTIFACTS=test-artifacts $(PY) -m pytest -q -m "not slow"; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

## make test-slow: only the slow tests (subprocess training, kill/resume, DDP, benchmarks quick modes)
test-slow: venv-dev
	@$(PY) -m pytest -q -m slow; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no slow tests: failing"; exit 1; fi; exit $$rc

test-all: test test-slow

## make llama-cpp-check: build llama-cpp-python from source (minutes; no wheel for this machine) into .venv-llama,
## a venv of its own (never the project's), then check that llama.cpp's greedy tokens on our f32 GGUF exports equal ours
LLAMA_VENV := .venv-llama
LLAMA_CPP_PYTHON_VERSION := 0.3.36
$(LLAMA_VENV)/.installed:
	$(PYTHON) -m venv $(LLAMA_VENV)
	$(LLAMA_VENV)/bin/python -m pip install -q --upgrade pip
	$(LLAMA_VENV)/bin/python -m pip install llama-cpp-python==$(LLAMA_CPP_PYTHON_VERSION)
	touch $@

llama-cpp-check: venv-dev $(LLAMA_VENV)/.installed
	$(PY) -m llm_lab bench llama-cpp --llama-python $(LLAMA_VENV)/bin/python

## make gpu-check: on a CUDA machine, the CUDA legs of the device tests, then the step, generate and time-to-loss
## benchmarks, within 7.5 minutes, ending in experiments/gpu_check/report.md; without CUDA: one line, exit 0.
## GPU_CHECK_ARGS passes options, e.g. GPU_CHECK_ARGS="--data ../shared/data/tiny_shakespeare.txt"
.PHONY: gpu-check
gpu-check: venv-dev
	$(PY) scripts/gpu_check.py $(GPU_CHECK_ARGS)

lint: venv-dev
	$(PY) -m ruff check .

# --- docs: MkDocs Material; the reference pages are generated from the code (docs/hooks/generate.py).
MKDOCS := NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet
## make docs: build the documentation site into site/ (git-ignored); --strict: a broken link or page fails
docs: venv-dev
	$(MKDOCS)
	@echo "docs: open site/index.html"

# --- browser (serving): Debian's chromium for the playground's browser test; Playwright drives it, never downloads one.
## make browser: install Debian's chromium if it is missing (needs root and apt-get; elsewhere the browser
## test is skipped with a loud reason)
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "make browser: installing Debian's chromium system-wide with apt-get (as root) for the playground's browser test"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else echo "make browser: chromium missing and cannot be installed here (not root or no apt-get)"; fi; }

## make browser-test: only the playground's browser tests; screenshots go to test-artifacts/ (git-ignored)
browser-test: venv-dev browser
	LLM_LAB_TEST_ARTIFACTS=test-artifacts $(PY) -m pytest -q tests/serve/test_playground_browser.py \
	  tests/serve/test_playground_inspect_browser.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info site
