# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint demo bench install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Relay in sandbox mode: emulated Bugpilot, Zendesk and Intercom on 8081-8083,
# relay on localhost:8080, SQLite in ./relay.db, the sample rules.
run: $(STAMP)
	RELAY_SANDBOX=1 RELAY_RULES_FILE=$${RELAY_RULES_FILE:-rules.example.yaml} \
	RELAY_LOG_FORMAT=$${RELAY_LOG_FORMAT:-console} $(BIN)/relay run

# Everything: unit, end-to-end, fault, kill and multi-replica tests, lint.
test: $(STAMP)
	$(BIN)/pytest -q
	$(MAKE) lint

lint: $(STAMP)
	$(BIN)/ruff check relay tests bench
	$(BIN)/ruff format --check relay tests bench
	$(BIN)/mypy relay

# Sends a signed Zendesk and Intercom event through a running `make run`.
demo: $(STAMP)
	RELAY_SANDBOX=1 $(BIN)/relay demo

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache relay.db relay.db-*
