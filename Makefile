# `make demo` and `make test` work on a fresh machine: the first call creates .venv and installs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch is installed only when the venv has no torch yet, so a CUDA build that
# a user put there is kept and no CUDA packages are pulled on a CPU machine.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install demo test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[dev,decord]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vidadapt demo

test: $(STAMP)
	$(PY) -m pytest -n 2 tests

lint: $(STAMP)
	$(PY) -m ruff check vidadapt tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
