# agentcoord — `make run` serves on 127.0.0.1:50051 with an embedded Redis; `make test` runs the tests.
# Every tool the targets need is installed here, into .venv and ./bin, from the package registries.

PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/bin
PY := $(VENV)/bin/python
GRPCURL_VERSION := v1.9.4
GRPCURL := $(BIN)/grpcurl
export PATH := $(BIN):$(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install grpcurl generate check-generated lint run test bench demo clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# `make grpcurl` installs ./bin/grpcurl alone (make test installs it too).
grpcurl: $(GRPCURL)

$(GRPCURL):
	GOBIN=$(BIN) go install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)

generate: install
	$(PY) scripts/gen_protos.py

# Regenerates, then fails if anything generated differs from what is committed.
check-generated: generate
	@drift=$$(git status --porcelain -- clients/python/agentcoord/v1 clients/python/agentcoord/client/_sync clients/python/agentcoord/client/reasons.py); \
	if [ -n "$$drift" ]; then echo "generated code drifted from proto/ or client/_async; run make generate and commit:"; echo "$$drift"; git diff --stat -- clients/python; exit 1; fi
	@echo "generated code is up to date"

lint: install
	$(VENV)/bin/buf lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

run: install
	$(VENV)/bin/agentcoord serve --metrics-listen 127.0.0.1:9464

test: install $(GRPCURL)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# The code-review fleet end to end: a server on an embedded Redis, agents as separate processes.
demo: install
	$(PY) examples/code_review/fleet.py

# Timing is measured here, never asserted in tests.
bench: install
	@for f in bench/bench_*.py; do [ -e "$$f" ] || continue; m=$$(basename $$f .py); echo "== $$m"; $(PY) -m bench.$$m || exit 1; done

clean:
	rm -rf $(VENV) $(BIN) .pytest_cache .mypy_cache .ruff_cache
