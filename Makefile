# The two set-up commands (README): `make up` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: up test install system-deps lint typecheck unit bench clean

up: install
	$(VENV)/bin/conveyor up

test: install lint typecheck
	# Serial: the S3 tests start one Swift server on fixed ports, which parallel workers
	# (pytest-xdist, installed) would start twice. `pytest -n 4 --dist loadfile` runs the
	# rest in a third of the time for local use.
	$(VENV)/bin/pytest -q

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install-system-deps.sh
	bash scripts/install-system-deps.sh
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

lint: install
	$(VENV)/bin/ruff check src tests $(wildcard bench)
	$(VENV)/bin/ruff format --check src tests $(wildcard bench)

typecheck: install
	$(VENV)/bin/mypy

bench: install
	$(PY) bench/dispatch.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
