# lbwrap: every command creates the virtual environment first if it is missing.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup run test test-all bench clean

setup: $(VENV)/.lbwrap-installed

$(VENV)/.lbwrap-installed: pyproject.toml scripts/setup_env.sh
	scripts/setup_env.sh $(VENV)

## The main job: a short run on a safety-gymnasium vision task.
run: setup
	$(PY) examples/random_agent.py

## The test suite (fast; slow tests are marked and skipped by default).
test: setup
	$(PY) -m pytest -q

## Everything, the slow tests too.
test-all: setup
	$(PY) -m pytest -q -m ""

bench: setup
	$(PY) benchmarks/env_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
