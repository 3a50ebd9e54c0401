# Dialog Gateway — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
TOOLS := .tools
BUF := $(TOOLS)/node_modules/.bin/buf
BUF_VERSION := 1.75.0

.DEFAULT_GOAL := help
.PHONY: help run test lint gen check-gen certs env bench clean buf-lint

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

$(BUF):
	mkdir -p $(TOOLS)
	npm install --silent --no-audit --no-fund --prefix $(TOOLS) @bufbuild/buf@$(BUF_VERSION)

gen: $(VENV)/.installed ## regenerate gen/ and docs/openapi.yaml from protos/
	$(PY) scripts/gen_protos.py gen
	$(PY) scripts/gen_openapi.py docs/openapi.yaml

certs: $(VENV)/.installed ## create the development CA and certificates in certs/
	$(BIN)/dialog-gateway certs

.env: .env.example
	@test -f .env || { sed "s/^JWT_SECRET=.*/JWT_SECRET=$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(48))')/" .env.example > .env; chmod 600 .env; echo "wrote .env with a random JWT_SECRET"; }

env: .env ## create .env from .env.example with a random secret

run: $(VENV)/.installed gen certs .env ## set everything up and start the gateway with its reference back-ends
	$(BIN)/dialog-gateway up

buf-lint: $(BUF) ## lint the protos with buf (STANDARD rules)
	$(BUF) lint

test: $(VENV)/.installed certs buf-lint ## run buf lint and the whole test suite
	$(BIN)/pytest

lint: $(VENV)/.installed buf-lint ## ruff, mypy --strict and buf lint
	$(BIN)/ruff check gateway adapters tests scripts
	$(BIN)/mypy

bench: $(VENV)/.installed certs ## run the benchmarks in tests/perf
	$(BIN)/pytest tests/perf -s -p no:cacheprovider

clean: ## remove the venv, tools, caches and local data (keeps certs/ and .env)
	rm -rf $(VENV) $(TOOLS) .mypy_cache .ruff_cache .pytest_cache .hypothesis data
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
