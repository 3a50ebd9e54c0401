# Dialog Gateway — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
TOOLS := .tools
BUF := $(TOOLS)/node_modules/.bin/buf
BUF_VERSION := 1.75.0
# The baseline of buf-breaking, as a buf input ('.git#tag=v1.4.0', '.git#ref=<commit>', …);
# empty: chosen from the git history (see buf-breaking).
BUF_AGAINST ?=

.DEFAULT_GOAL := help
.PHONY: help run test lint gen check-gen certs env bench clean buf-lint buf-breaking \
	contract-test contract-record

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

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

# The baseline is main: the commit where this checkout's branch left it (git merge-base), which
# is main's last commit when the checkout is main, as on a fresh clone. When the baseline is the
# commit checked out (main itself, or a detached checkout without a local main, which falls back
# to HEAD), comparing with it only covers uncommitted edits, so the working tree is also compared
# with that commit's parent: a commit that breaks the contract of the one before it fails.
# Everything is read from the local repository, offline.
buf-breaking: $(BUF) ## buf breaking: protos/ against main (WIRE_JSON rules, buf.yaml)
	@set -eu; \
	if [ -n "$(BUF_AGAINST)" ]; then \
	  echo "buf breaking --against '$(BUF_AGAINST)'"; exec $(BUF) breaking --against '$(BUF_AGAINST)'; \
	fi; \
	if [ ! -e .git ]; then \
	  echo "buf breaking: skipped: no .git here (not a clone), so no history to compare with"; exit 0; \
	fi; \
	repo=$$(cd "$$(git rev-parse --git-common-dir)" && pwd); \
	head=$$(git rev-parse HEAD); \
	if main=$$(git rev-parse --verify -q 'refs/heads/main^{commit}'); then \
	  name=main; base=$$(git merge-base HEAD "$$main" || echo "$$main"); \
	  [ "$$base" = "$$main" ] || name="main where this branch left it"; \
	else \
	  echo "buf breaking: no local branch main (a detached checkout): comparing with HEAD instead"; \
	  name=HEAD; base=$$head; \
	fi; \
	against() { echo "buf breaking: protos/ against $$1 ($$(git rev-parse --short $$2))"; \
	  $(BUF) breaking --against "$$repo#ref=$$2"; }; \
	against "$$name" "$$base"; \
	if [ "$$base" = "$$head" ]; then \
	  if parent=$$(git rev-parse --verify -q 'HEAD~1^{commit}') && git cat-file -e "$$parent:buf.yaml" 2>/dev/null; then \
	    against "the parent of HEAD" "$$parent"; \
	  else \
	    echo "buf breaking: HEAD has no parent with protos/ here (a first commit or a shallow clone): HEAD itself is not checked"; \
	  fi; \
	fi

test: $(VENV)/.installed certs buf-lint buf-breaking ## run buf lint, buf breaking and the whole test suite
	$(BIN)/pytest

# The examples in tests/contract/examples are replayed against a fresh gateway and its reference
# back-ends (also part of `make test`). contract-record rewrites their expected answers from what
# the running code says: review the diff, it is the change of the public contract.
contract-test: $(VENV)/.installed ## replay the recorded public-contract examples against a fresh stack
	$(BIN)/pytest tests/contract

contract-record: $(VENV)/.installed ## re-record the contract examples' answers (never in CI)
	CONTRACT_RECORD=1 $(BIN)/pytest tests/contract -p no:cacheprovider

lint: $(VENV)/.installed buf-lint buf-breaking ## ruff, mypy --strict, buf lint and buf breaking
	$(BIN)/ruff check gateway adapters tests scripts
	$(BIN)/mypy

# The benchmark (tests/perf, docs/performance.md): it installs what it lacks (Debian packages:
# Go, wrk, nginx) and builds its Go programs into .tools/bench/. BENCH_QUICK=1 makes a short
# smoke run; GO_GATEWAY_SRC names the sources of the Go gateway measured against (its rows are
# skipped when they are missing).
BENCH_QUICK ?=
GO_GATEWAY_SRC ?= ../shared/peers/go-grpc-gateway

$(VENV)/.bench-installed: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

bench: $(VENV)/.bench-installed certs ## run the benchmarks: one table, tests/perf/results.md and results.png
	BENCH_QUICK=$(BENCH_QUICK) GO_GATEWAY_SRC=$(abspath $(GO_GATEWAY_SRC)) $(PY) -m tests.perf

clean: ## remove the venv, tools, caches and local data (keeps certs/ and .env)
	rm -rf $(VENV) $(TOOLS) .mypy_cache .ruff_cache .pytest_cache .hypothesis data
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
