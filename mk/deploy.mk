# Deployment artefacts: the Helm chart, alert rules and dashboard. Everything offline
# except the Go module proxy (helm, kubeconform and Kubernetes' OpenAPI document are Go
# modules, built/fetched once into $(OUTREACH_CACHE_DIR)).
#   make helm-template   render the chart to $(DEPLOY_RENDERED)
#   make check-deploy    helm lint + template + offline schema validation + promtool
#   make check-install   install, upgrade and uninstall the chart on a real API server
GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
PROMTOOL ?= promtool
DEPLOY_BIN := $(OUTREACH_CACHE_DIR)/bin
HELM_VERSION ?= v3.16.4
KUBECONFORM_VERSION ?= v0.8.0
YQ_VERSION ?= v4.44.6
# Kubernetes version whose OpenAPI schemas the manifests are validated against.
K8S_VERSION ?= v1.31.4
HELM := $(DEPLOY_BIN)/helm
KUBECONFORM := $(DEPLOY_BIN)/kubeconform
YQ := $(DEPLOY_BIN)/yq
K8S_SCHEMAS := $(OUTREACH_CACHE_DIR)/k8s-schemas/$(K8S_VERSION)
CHART := deploy/helm/proactive-outreach
DEPLOY_RENDERED ?= var/deploy/proactive-outreach.yaml
HELM_FLAGS ?= --kube-version $(patsubst v%,%,$(K8S_VERSION))
# CRDs validated elsewhere (promtool for the rules); kubeconform checks the core kinds.
KUBECONFORM_SKIP := KafkaTopic,KafkaUser,ServiceMonitor,PrometheusRule,ScaledObject

$(HELM):
	@mkdir -p $(DEPLOY_BIN)
	cd $$(mktemp -d) && GOBIN=$(abspath $(DEPLOY_BIN)) GOFLAGS=-mod=mod $(GO) install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

$(KUBECONFORM):
	@mkdir -p $(DEPLOY_BIN)
	cd $$(mktemp -d) && GOBIN=$(abspath $(DEPLOY_BIN)) GOFLAGS=-mod=mod $(GO) install github.com/yannh/kubeconform/cmd/kubeconform@$(KUBECONFORM_VERSION)

# yq turns the rendered YAML into JSON for tests/integration/test_deploy_manifests.py
# (PyYAML is not in the lock).
$(YQ):
	@mkdir -p $(DEPLOY_BIN)
	cd $$(mktemp -d) && GOBIN=$(abspath $(DEPLOY_BIN)) GOFLAGS=-mod=mod $(GO) install github.com/mikefarah/yq/v4@$(YQ_VERSION)

# Kubernetes' own swagger.json ships in the k8s.io/kubernetes module (api/openapi-spec/);
# deploy/helm/tools/k8s_schemas.py turns it into kubeconform's per-kind JSON schemas.
$(K8S_SCHEMAS)/.done: deploy/helm/tools/k8s_schemas.py | venv
	@mkdir -p $(K8S_SCHEMAS)
	dir=$$(cd $$(mktemp -d) && GOFLAGS=-mod=mod $(GO) mod download -json k8s.io/kubernetes@$(K8S_VERSION) \
	  | $(abspath $(PY)) -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') && \
	  $(PY) deploy/helm/tools/k8s_schemas.py $$dir/api/openapi-spec/swagger.json $(K8S_SCHEMAS) >/dev/null
	@touch $@

.PHONY: deploy-tools
deploy-tools: $(HELM) $(KUBECONFORM) $(YQ) $(K8S_SCHEMAS)/.done ## build helm, kubeconform, yq; fetch the Kubernetes schemas

.PHONY: helm-template
helm-template: $(HELM) ## render the Helm chart to $(DEPLOY_RENDERED)
	@mkdir -p $(dir $(DEPLOY_RENDERED))
	$(HELM) template proactive-outreach $(CHART) $(HELM_FLAGS) $(HELM_SET) > $(DEPLOY_RENDERED) 2> >(grep -v 'found symbolic link' >&2)
	@echo "rendered $(DEPLOY_RENDERED)"

.PHONY: check-deploy
check-deploy: deploy-tools ## lint + render the chart, validate it offline, check and test the alert rules
	$(HELM) lint $(CHART) $(HELM_FLAGS) 2> >(grep -v 'found symbolic link' >&2)
	$(HELM) lint $(CHART) $(HELM_FLAGS) --set keda.enabled=true,strimzi.enabled=false 2> >(grep -v 'found symbolic link' >&2)
	$(MAKE) --no-print-directory helm-template
	$(KUBECONFORM) -strict -summary -skip $(KUBECONFORM_SKIP) \
	  -schema-location '$(K8S_SCHEMAS)/{{.ResourceKind}}{{.KindSuffix}}.json' $(DEPLOY_RENDERED)
	$(PROMTOOL) check rules deploy/monitoring/alerts.yaml
	cd deploy/monitoring && $(PROMTOOL) test rules alerts_test.yaml
	$(PY) -c 'import json; json.load(open("deploy/monitoring/dashboard.json"))'

.PHONY: check-install
check-install: venv deploy-tools ## the chart on a real kube-apiserver + etcd (built from Go modules once, ~3 min): install, strict validation, upgrade, uninstall
	$(PY) deploy/kubernetes/local_apiserver.py build
	OUTREACH_INSTALL_TEST=1 $(PYTEST) $(PYTEST_FLAGS) tests/install

# `make test` / `make test-integration` run tests/integration/test_deploy_manifests.py,
# which needs these tools (it finds them in $(DEPLOY_BIN) and $(K8S_SCHEMAS)).
test test-integration: deploy-tools
