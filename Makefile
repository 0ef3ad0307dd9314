# duogate: `make run` (demo on the simulated radio with a private broker) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PACKAGES := mosquitto mosquitto-clients prosody ejabberd chromium strace
# Node.js runs MicroPython's WebAssembly port in the tests; installed only when node or npm is
# missing (a Node.js from elsewhere often brings its own npm and refuses Debian's).
NODE_APT_PACKAGES := nodejs npm
MICROPYTHON_WASM_VERSION := 1.27.0
NPM_DIR := $(VENV)/node
MICROPYTHON_STAMP := $(NPM_DIR)/.installed-$(MICROPYTHON_WASM_VERSION)
PYTEST_ARGS ?=

.PHONY: run test fleet lint format bench bench-deps soak fuzz install system-deps clean help

help:
	@echo "make run    - simulated radio world + gateway + private mosquitto, reports shown live"
	@echo "make test   - install what the tests need, then ruff, import rules and pytest (tests/, hil_tests/)"
	@echo "make fleet  - the fleet site on mosquitto and on a NATS cluster (docs/FLEET.md)"
	@echo "make bench  - benchmarks -> docs/PERFORMANCE.md"
	@echo "make soak   - long fault scenarios;  make fuzz - long parser fuzzing"
	@echo "make install - install the systemd service on a Raspberry Pi OS machine (root)"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,ble]'
	@touch $(STAMP)

system-deps:
	@missing=""; \
	for bin in mosquitto prosody ejabberdctl mosquitto_sub chromium strace node npm; do \
	  command -v $$bin >/dev/null 2>&1 || [ -x /usr/sbin/$$bin ] || missing="$$missing $$bin"; \
	done; \
	node_packages=""; \
	command -v node >/dev/null && command -v npm >/dev/null || node_packages="$(NODE_APT_PACKAGES)"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing$$missing via apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) $$node_packages >/dev/null; \
	    for svc in mosquitto prosody ejabberd; do \
	      (service $$svc stop || true) >/dev/null 2>&1; \
	    done; \
	  else \
	    echo "missing:$$missing. Install them with: sudo apt-get install $(APT_PACKAGES) $$node_packages" >&2; exit 1; \
	  fi; \
	fi

# MicroPython's WebAssembly port from the npm registry, run by Node.js in the tests
# (tests/micropython_fixtures.py); the stamp names the version, so a new pin installs anew.
$(MICROPYTHON_STAMP): | system-deps
	rm -rf $(NPM_DIR) && mkdir -p $(NPM_DIR)
	npm install --prefix $(NPM_DIR) --no-audit --no-fund --loglevel=error --save-exact \
	  @micropython/micropython-webassembly-pyscript@$(MICROPYTHON_WASM_VERSION)
	@touch $(MICROPYTHON_STAMP)

run: $(STAMP) system-deps
	$(PY) -m gateway.demo examples/demo.toml

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Three workers on two cores: the scenarios mostly wait on radio time and servers (a whole
# run keeps about half a core busy).
TEST_WORKERS ?= 3

test: $(STAMP) system-deps $(MICROPYTHON_STAMP) lint
	$(VENV)/bin/pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The fleet site scenarios on mosquitto and on a 3-node NATS cluster (docs/FLEET.md).
fleet: $(STAMP) system-deps
	$(VENV)/bin/pytest -q -p no:cacheprovider -s tests/test_fleet_site.py tests/test_fleet_site_nats.py

bench: $(STAMP) system-deps bench-deps
	$(PY) -m bench.run

# strace counts the sync calls of the storage-writes benchmark (without it: bytes only).
# pydantic: P7 runs the tree of 5a86920 beside this one, and that tree loaded its config
# with pydantic (the gateway itself no longer needs it).
bench-deps:
	@$(PY) -c 'import pydantic' 2>/dev/null || $(PY) -m pip install --quiet 'pydantic>=2,<3'
	@command -v strace >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing strace via apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace >/dev/null; \
	  else \
	    echo "strace missing: syncs per report not counted. Install it with: sudo apt-get install strace" >&2; \
	  fi; \
	}

soak: $(STAMP) system-deps
	DUOGATE_SOAK=1 $(VENV)/bin/pytest -q hil_tests -m "slow or not slow"

fuzz: $(STAMP)
	@$(PY) -c 'import atheris' 2>/dev/null || $(PY) -m pip install --quiet 'atheris>=2.3' \
	  || echo "atheris did not install: fuzzing with random mutations instead"
	$(PY) -m fuzz.run --runs 1000000

install: $(STAMP)
	$(VENV)/bin/duogate install-service

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .import_linter_cache .hypothesis build dist *.egg-info
