.DEFAULT_GOAL := help
PY ?= python
PG_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test
PYTEST_ARGS ?= -n 2

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

install: ## Install the package with test extras (editable)
	$(PY) -m pip install -q -e '.[test]'

serve: ## Install and start the marketplace with the demo catalogue
	$(PY) -m pip install -q -e . && cyxwiz serve --demo

fmt: ## Format the code
	ruff format src tests bench
	ruff check --fix src tests bench

lint: ## Lint and type-check
	ruff check src tests bench
	ruff format --check src tests bench
	mypy

test: install ## Install test extras and run the whole suite (SQLite)
	./scripts/ensure-chromium
	$(PY) -m pytest $(PYTEST_ARGS)

test-pg: ## Run the whole suite against PostgreSQL (PG_URL)
	CYXWIZ_TEST_DATABASE_URL=$(PG_URL) $(PY) -m pytest $(PYTEST_ARGS)

bench: ## Run the benchmarks (each prints a table of figures with ratios)
	$(PY) bench/storage.py
	$(PY) bench/ledger.py
	$(PY) bench/metering.py
	$(PY) bench/inference.py

.PHONY: help install serve fmt lint test test-pg bench
