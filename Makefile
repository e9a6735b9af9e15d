# Two commands: `make run` (install everything, start the server) and `make test` (install everything, run the suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= config/deploybot.example.yml

.PHONY: run test lint format bench system-deps setup clean

# Debian packages the real components need (HAProxy for traffic, git for git: revisions, Chromium for the browser
# test of the deployment pages, PostgreSQL for the replicated store's tests, systemd for `systemd-analyze verify` of
# the agent's unit).
system-deps:
	@missing=""; \
	command -v haproxy >/dev/null 2>&1 || missing="$$missing haproxy"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing$$missing (apt)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy git chromium postgresql systemd >/dev/null; \
		else \
			echo "warning: not installed:$$missing, and this is not root: apt-get install$$missing (haproxy for load-balanced groups, chromium for the pages browser test, postgresql for the PostgreSQL store tests, systemd for the agent unit check)"; \
		fi; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

setup: system-deps $(STAMP)

run: setup
	$(BIN)/deploybot serve --config $(CONFIG)

# A hung test fails with every thread's stack (pytest-timeout, 180 s) instead of holding CI. No automatic rerun: a test
# that failed once is a bug to find. Two workers (pytest-xdist), each test file whole on one of them: every port,
# directory and database a test uses is its own, so the files run side by side (about 5 min instead of 10 on 2 cores).
# `.venv/bin/pytest tests/test_x.py` runs serially, for debugging.
test: setup
	$(BIN)/python -m pytest -n 2 --dist loadfile

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# A few minutes. The server-scale swarm runs 50, 200 and 1,000 simulated hosts; BENCH_SWARM_HOSTS=50,200,1000,2000 adds 2,000.
bench: setup
	$(BIN)/python -m bench $(if $(BENCH_SWARM_HOSTS),--swarm-hosts $(BENCH_SWARM_HOSTS))

clean:
	rm -rf $(VENV) var
