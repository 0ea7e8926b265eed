# make test: set up a virtualenv (first run only), install v0adam with its test extras, run the tests.
# TORCH picks the torch build; the default is the CPU build CI uses. On a GPU machine: make test TORCH=torch
VENV ?= .venv
TORCH ?= torch==2.13.0
PYTHON := $(VENV)/bin/python

.PHONY: test bench bench-pytest evidence evidence-quick evidence-long lint format device-check clean

$(VENV)/.installed: setup.py
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q "$(TORCH)"
	$(PYTHON) -m pip install -q -e ".[test,integration,bench,dev]"
	PATH="$(abspath $(VENV))/bin:$$PATH" bash .ci/install_torchtitan
	touch $@

test: $(VENV)/.installed
	$(PYTHON) -m pytest -q

bench: $(VENV)/.installed
	$(PYTHON) -m bench
	$(PYTHON) -m bench --training --out bench/results
	$(PYTHON) -m bench --memory --out bench/results

bench-pytest: $(VENV)/.installed
	$(PYTHON) -m pytest bench/ --benchmark-only

# The v0/warmup sweep (under an hour on 2 cores), and its few-minute variant; results in examples/results/.
evidence: $(VENV)/.installed
	$(PYTHON) examples/warmup_free.py

evidence-quick: $(VENV)/.installed
	$(PYTHON) examples/warmup_free.py --quick

# Each method at its best lr of the sweep above, 2,500 steps (about 35 minutes on 2 cores).
evidence-long: $(VENV)/.installed
	$(PYTHON) examples/warmup_free.py --long

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .

device-check:
	bash bench/device_check.sh

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache .benchmarks
