# bwbpf — `make` lists the targets. `make test` sets everything up on a fresh Debian 12
# machine (as root) and runs every test tier.

PYTHON  ?= /usr/bin/python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
ARGS    ?=
PYTEST  := $(PY) -m pytest $(ARGS)

.DEFAULT_GOAL := help
.PHONY: help setup host venv test test-unit test-bpf test-integration lint fix bench demo clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

host: ## Debian packages, kernel headers for bcc, bpffs (needs root)
	@sh scripts/setup-host.sh

$(VENV)/.done: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	@echo "setup: installing bwbpf (editable) with its test extras into $(VENV)"
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@$(PY) -c 'import bcc' || { echo "setup: $(VENV) cannot import bcc (python3-bpfcc)"; exit 1; }
	@touch $@

venv: $(VENV)/.done ## the virtual environment (sees Debian's bcc)

setup: host venv ## everything the tests and the demo need

test: setup lint ## set up, lint, then run every tier: unit, bpf, integration
	$(PYTEST) tests/unit tests/bpf tests/integration

test-unit: venv ## pure logic; no root needed
	$(PYTEST) tests/unit

test-bpf: setup ## load the programs, feed packets through BPF_PROG_TEST_RUN (root)
	$(PYTEST) tests/bpf

test-integration: setup ## namespaces, veths, real traffic, real HTB (root)
	$(PYTEST) tests/integration

lint: venv ## ruff check and format check; C with -Wall -Werror via the bpf tier
	$(VENV)/bin/ruff check bwbpf tests bench
	$(VENV)/bin/ruff format --check bwbpf tests bench

fix: venv ## ruff fix and format
	$(VENV)/bin/ruff check --fix bwbpf tests bench
	$(VENV)/bin/ruff format bwbpf tests bench

bench: setup ## performance figures as ratios to baselines, JSON in bench/results.json
	$(PY) bench/run.py --out bench/results.json

demo: setup ## three slices in namespaces, the daemon, stat, a capped slice and its mail
	$(PY) -m bwbpf.demo

clean: ## remove the venv and caches
	rm -rf $(VENV) .pytest_cache build *.egg-info
