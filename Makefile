# lbwrap: every command creates the virtual environment first if it is missing.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup run demo test test-all typecheck test-compat bench docs clean

setup: $(VENV)/.lbwrap-installed

$(VENV)/.lbwrap-installed: pyproject.toml scripts/setup_env.sh
	scripts/setup_env.sh $(VENV)

## The main job: shielded SAC from pixels on lbwrap/PixelHazardRun-v0, quick preset (~6 min on
## 2 CPU cores), with a report (metrics.csv, plots, GIF) in runs/.
run: setup
	$(PY) examples/train_sac_shielded.py --preset quick

## A random agent on a vision task: return, cost, violations and frames in a few seconds.
demo: setup
	$(PY) examples/random_agent.py

## The test suite (fast; slow tests are marked and skipped by default).
test: setup
	$(PY) -m pytest -q

## Everything, the slow tests too.
test-all: setup
	$(PY) -m pytest -q -m ""

## The type checker over the package (mypy; settings in pyproject.toml). CI runs it after the tests.
typecheck: setup
	$(PY) -m mypy

## The compatibility matrix (Python 3.10-3.12 x oldest/newest stack, throwaway venvs;
## tens of minutes and several GB of downloads): results in /tmp/lbwrap-compat/results.csv. Not part of CI.
test-compat:
	scripts/test_compat.sh

bench: setup
	$(PY) benchmarks/env_throughput.py

## The documentation site (MkDocs + mkdocstrings) into site/; broken links or anchors fail it.
docs: setup
	$(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) runs .pytest_cache
