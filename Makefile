# Everyday entry points. `make test` and `make run` assume `bash scripts/setup.sh` (= make setup) ran.
PYTHON ?= $(shell command -v python >/dev/null 2>&1 && echo python || echo python3)

.PHONY: setup lock test run broker-start broker-stop broker-status

setup:
	bash scripts/setup.sh

# Refresh the pinned dependency set after changing pyproject.toml (or to take newer releases):
# both locks come from one resolution, so the image's runtime set equals the tested one.
# `make lock` keeps current pins where they still fit; `make lock LOCK_FLAGS=--upgrade` takes new releases.
lock:
	$(PYTHON) -m uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
	  --generate-hashes $(LOCK_FLAGS) -q -o requirements/dev.lock
	$(PYTHON) -m uv pip compile pyproject.toml --extra build --universal --python-version 3.11 \
	  --generate-hashes -c requirements/dev.lock -q -o requirements/runtime.lock

test:
	$(PYTHON) -m pytest -q
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy

run:
	$(PYTHON) -m cli run

# A detached broker on 127.0.0.1:9092, state in .gridwatch/broker (GRIDWATCH_KAFKA_VERSION picks 3.9.2 / 4.x).
broker-start:
	$(PYTHON) -m local.kafka start

broker-stop:
	$(PYTHON) -m local.kafka stop

broker-status:
	$(PYTHON) -m local.kafka status
