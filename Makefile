# The two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# uv manages the virtualenv from uv.lock; install it with pip when it is missing.
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")

.PHONY: help install run migrate test lint format bench faults clean

# PostgreSQL and Redis: the ones configured or answering on the default addresses, else embedded
# ones (devservices/) with their data in $(DATA_DIR)/, started for the command and stopped after it.
# SERVICES=auto|embedded|external forces the choice. The URLs of a run are in $(SERVICES_ENV).
DATA_DIR := .data
SERVICES_ENV := $(DATA_DIR)/services.env
DEVSERVICES := $(UV) run python -m devservices run
HONCHO := honcho -e .env,$(SERVICES_ENV)

help:
	@echo "make run    install, create + migrate the database, run API, workers and scheduler"
	@echo "            (on the local PostgreSQL + Redis if they answer, else embedded ones, data in $(DATA_DIR)/)"
	@echo "make test   run the test suite (local PostgreSQL + Redis if they answer, else embedded ones)"
	@echo "make migrate  create + migrate the database only"
	@echo "make lint   ruff + mypy"
	@echo "make bench  run the benchmarks, write docs/benchmarks.md"
	@echo "make faults run the fault suite and the abuse suite, write docs/reliability.md"

install:
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	@$(UV) sync --frozen --quiet

# APP_ENV defaults to development here (dev token key); set it, or put it in .env, to override.
# PORT defaults to 8000 as documented: honcho would otherwise give the API its own default, 5000.
run: install
	@APP_ENV=$${APP_ENV:-development} PORT=$${PORT:-8000} exec $(DEVSERVICES) \
	  --env-file .env --write-env $(SERVICES_ENV) -- \
	  bash -c '$(HONCHO) run helpdesk migrate && exec $(HONCHO) start -f Procfile'

migrate: install
	@exec $(DEVSERVICES) --env-file .env --write-env $(SERVICES_ENV) -- $(HONCHO) run helpdesk migrate

# Test runs use TEST_DATABASE_URL / TEST_REDIS_URL; embedded servers get a fresh directory.
test: install
	@exec $(DEVSERVICES) --for test -- pytest $(PYTEST_ARGS)

lint: install
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run mypy

format: install
	$(UV) run ruff check --fix .
	$(UV) run ruff format .

bench: install
	$(UV) run python -m bench.run_all

faults: install
	$(UV) run python -m bench.faults

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache
