# gRPC stubs: protos/ is the source of truth; the generated Python lives in common/proto/
# (shared by preferences and its callers). `make check-protos` fails if they are stale.
PROTO_SRC := protos/outreach/preferences/v1/preferences.proto
PROTO_OUT := common/proto

.PHONY: protos
protos: venv ## regenerate the gRPC stubs from protos/
	$(PY) deploy/dev/gen_protos.py $(PROTO_OUT)

.PHONY: check-protos
check-protos: venv ## fail if the committed stubs differ from protos/
	@tmp=$$(mktemp -d) && $(PY) deploy/dev/gen_protos.py $$tmp >/dev/null && \
	  diff -r -x __pycache__ $$tmp $(PROTO_OUT) >/dev/null && rm -rf $$tmp && echo "protos: stubs are current" || \
	  { echo "protos: stubs are stale, run 'make protos'"; rm -rf $$tmp; exit 1; }
