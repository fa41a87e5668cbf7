# Two commands do all set-up on a fresh machine (Python 3.11 + Java 17):
#   make demo   local Kafka and ClickHouse servers, a simulated day of ChatGPT Gov traffic,
#               the worker until idle, then the day's headline per tenant
#   make test   unit and integration tests against real Kafka and ClickHouse servers

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_MESSAGES ?= 200000
DEMO_DAY ?= 2026-11-02

export KAFKA_BOOTSTRAP_SERVERS ?= 127.0.0.1:$(or $(KAFKA_PORT),9092)

.PHONY: setup demo test unit test-unit integration lint typecheck bench kafka-start kafka-stop \
	clickhouse-start clickhouse-stop clean bench-month

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# -qq: setuptools prints a notice on every editable install (folders named like the
	@# packages take precedence); the project's own warnings are fixed, errors still show
	$(BIN)/python -m pip install -qq -e '.[dev]'
	touch $(STAMP)

kafka-start:
	infra/kafka/start

kafka-stop:
	infra/kafka/stop

clickhouse-start: setup
	infra/clickhouse/start

clickhouse-stop:
	infra/clickhouse/stop

demo: setup kafka-start clickhouse-start
	mkdir -p var
	$(BIN)/metering simulate --messages $(DEMO_MESSAGES) --start $(DEMO_DAY) --days 1 --out var/demo-day.jsonl.gz
	$(BIN)/metering replay var/demo-day.jsonl.gz
	$(BIN)/metering worker --until-idle 3
	$(BIN)/metering headline --day $(DEMO_DAY)
	@echo
	@echo "Both servers keep running (infra/kafka/stop, infra/clickhouse/stop end them). Try:"
	@echo "  $(BIN)/metering query 'SELECT * FROM metering.monthly_totals' --format table"
	@echo "  curl http://127.0.0.1:8123/ --data-binary 'SELECT sum(messages) FROM metering.agency_daily'"
	@echo "  $(BIN)/metering report adoption --month $(shell echo $(DEMO_DAY) | cut -c1-7)"
	@echo "  a worker that keeps running while you query: $(BIN)/metering worker"

test: setup accessibility-setup promtool-setup
	$(BIN)/python -m pytest tests

unit: setup promtool-setup
	$(BIN)/python -m pytest tests/unit

test-unit: unit

integration: setup accessibility-setup promtool-setup
	$(BIN)/python -m pytest tests/integration

# The page tests (tests/accessibility, tests/integration/test_oversight_page.py) need
# Debian's chromium and axe-core from tests/accessibility/package-lock.json.
.PHONY: accessibility-setup
accessibility-setup: tests/accessibility/node_modules/axe-core/axe.min.js
	@command -v chromium >/dev/null || (apt-get update && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y chromium) || \
		{ echo "accessibility-setup: cannot install chromium (apt-get, as root)" >&2; exit 1; }

# tests/unit/test_alert_rules.py and tests/integration/test_alert_rules.py run promtool
# on infra/prometheus/: Debian's prometheus package, its server kept from starting.
.PHONY: promtool-setup
promtool-setup:
	@command -v promtool >/dev/null || infra/prometheus/install-promtool || \
		{ echo "promtool-setup: cannot install promtool (Debian's prometheus package, as root)" >&2; exit 1; }

tests/accessibility/node_modules/axe-core/axe.min.js: tests/accessibility/package-lock.json
	@command -v npm >/dev/null || \
		{ echo "accessibility-setup: npm is needed to install axe-core (Node.js 18+)" >&2; exit 1; }
	npm ci --prefix tests/accessibility --no-audit --no-fund
	touch $@

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

bench: setup kafka-start clickhouse-start
	$(BIN)/python -m bench.pipeline

# the recorded month end to end (18M events, about 30 minutes; MONTH_MESSAGES=1000000 to check)
MONTH_MESSAGES ?= 18000000
bench-month: setup kafka-start
	$(BIN)/python -m bench.month --messages $(MONTH_MESSAGES)

clean:
	-infra/kafka/stop
	-infra/clickhouse/stop
	rm -rf var $(VENV)
