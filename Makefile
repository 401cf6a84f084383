# Two entry points: `make run` starts the daemon on the example config,
# `make test` runs the whole test suite against a real MariaDB or MySQL.

PYTHON ?= python3
VENV ?= .venv
CONFIG ?= segflow.yaml
# The server the tests create their own database on (root, empty password).
SEGFLOW_TEST_SERVER ?= mysql://root@127.0.0.1:3306/
export SEGFLOW_TEST_SERVER

BIN := $(VENV)/bin

.PHONY: run test check install clean

$(BIN)/segflowd: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/segflowd

run: $(BIN)/segflowd
	$(BIN)/segflowd check-db --config $(CONFIG)
	$(BIN)/segflowd --config $(CONFIG)

check: $(BIN)/segflowd
	$(BIN)/segflowd check --config $(CONFIG)

test: $(BIN)/segflowd
	$(BIN)/python -m segflowd.testserver "$(SEGFLOW_TEST_SERVER)"
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) outbox .pytest_cache .hypothesis
