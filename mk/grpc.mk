# gRPC tools from outside Python, built once from the Go module proxy into
# $(OUTREACH_CACHE_DIR)/bin (as helm, kubeconform and yq in mk/deploy.mk):
#   grpcurl  the integration test tests/integration/preferences/test_grpc_cli.py drives
#            preferences with it (reflection, health, calls, TLS/mTLS);
#   ghz      load generator for `make bench-preferences` (part of `make bench`).
# Both versions build with Go >= 1.23 (checked with go1.26).
GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
GRPC_TOOLS_BIN := $(OUTREACH_CACHE_DIR)/bin
GRPCURL_VERSION ?= v1.9.4
GHZ_VERSION ?= v0.121.0
GRPCURL := $(GRPC_TOOLS_BIN)/grpcurl
GHZ := $(GRPC_TOOLS_BIN)/ghz
# Arguments of bench/preferences_grpc.py, e.g. PREFERENCES_BENCH_ARGS="--customers 20000 --duration 10s"
PREFERENCES_BENCH_ARGS ?=

$(GRPCURL):
	@mkdir -p $(GRPC_TOOLS_BIN)
	cd $$(mktemp -d) && GOBIN=$(abspath $(GRPC_TOOLS_BIN)) GOFLAGS=-mod=mod $(GO) install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)

$(GHZ):
	@mkdir -p $(GRPC_TOOLS_BIN)
	cd $$(mktemp -d) && GOBIN=$(abspath $(GRPC_TOOLS_BIN)) GOFLAGS=-mod=mod $(GO) install github.com/bojand/ghz/cmd/ghz@$(GHZ_VERSION)

.PHONY: grpc-tools
grpc-tools: $(GRPCURL) $(GHZ) ## build grpcurl and ghz from the Go module proxy

.PHONY: bench-preferences
bench-preferences: venv system-deps $(GHZ) ## GetContactPlan under ghz load, 1M customers in PostgreSQL (docs/performance-preferences.md)
	$(PY) -m bench.preferences_grpc --ghz $(GHZ) $(PREFERENCES_BENCH_ARGS)

# `make test` / `make test-integration` run tests/integration/preferences/test_grpc_cli.py,
# which finds grpcurl in $(GRPC_TOOLS_BIN).
test test-integration: $(GRPCURL)
