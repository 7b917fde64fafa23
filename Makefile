# Everyday entry points. `make test` and `make run` assume `bash scripts/setup.sh` (= make setup) ran.
PYTHON ?= $(shell command -v python >/dev/null 2>&1 && echo python || echo python3)

.PHONY: setup test run broker-start broker-stop broker-status

setup:
	bash scripts/setup.sh

test:
	$(PYTHON) -m pytest -q
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy

run:
	$(PYTHON) -m streams.cli run

# A detached broker on 127.0.0.1:9092, state in .gridwatch/broker (GRIDWATCH_KAFKA_VERSION picks 3.9.2 / 4.x).
broker-start:
	$(PYTHON) -m streams.broker start

broker-stop:
	$(PYTHON) -m streams.broker stop

broker-status:
	$(PYTHON) -m streams.broker status
