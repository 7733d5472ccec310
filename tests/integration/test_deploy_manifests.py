"""The deployment artefacts: alert rules (promtool), dashboard, and the Helm chart.

Tools come from `make deploy-tools` (a prerequisite of `make test`): helm, kubeconform and
yq built from the Go module proxy into $OUTREACH_CACHE_DIR/bin, Kubernetes' JSON schemas
generated from its OpenAPI document; promtool is the Debian package. A test that lacks
its tool is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

import common.metrics as metrics_module
from common.topics import all_topics
from tests.monitoring import alert_expressions, dashboard_expressions, metrics_named

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
CHART = ROOT / "deploy" / "helm" / "proactive-outreach"
CACHE = Path(os.environ.get("OUTREACH_CACHE_DIR", Path.home() / ".cache" / "proactive-outreach"))
K8S_VERSION = "v1.31.4"  # as mk/deploy.mk
SECRET_ENV = {
    "TWILIO_AUTH_TOKEN",
    "SENDGRID_API_KEY",
    "PREFERENCES_WRITE_TOKEN",
    "PREFERENCES_READ_TOKEN",
    "OUTREACH_PREFERENCES_TOKEN",
    "OUTREACH_OPERATOR_TOKEN",
    "OUTREACH_UNSUBSCRIBE_SECRET",
    "OUTREACH_OFFER_SECRET",
    "PREFERENCES_PSEUDONYM_SALT",
    "OUTREACH_DATABASE_URL",
    "PREFERENCES_DATABASE_URL",
    "OUTREACH_REPLY_SECRET",
    "OUTREACH_INBOUND_PARSE_PASSWORD",
    "ZENDESK_API_TOKEN",
    "ZENDESK_WEBHOOK_SECRET",
}
OPS_PORTS = {
    "orders-watcher": 8081,
    "risk-detector": 8082,
    "outreach": 8083,
    "preferences": 8084,
    "studio": 8086,  # its ops port; the studio itself is the `web` port, 8085
}
MODULES = {
    "orders-watcher": "services.orders_watcher",
    "risk-detector": "services.risk_detector",
    "outreach": "services.outreach",
    "preferences": "services.preferences",
    "studio": "services.outreach.studio",
}


def _tool(name: str) -> str:
    for candidate in (CACHE / "bin" / name, shutil.which(name)):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.skip(f"{name} not installed (make deploy-tools)")


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


# --- alert rules ---------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    promtool = _tool("promtool")
    out = _run(promtool, "check", "rules", str(MONITORING / "alerts.yaml")).stdout
    assert "SUCCESS" in out


def test_promtool_unit_tests_prove_each_alert() -> None:
    promtool = _tool("promtool")
    out = _run(promtool, "test", "rules", "alerts_test.yaml", cwd=MONITORING).stdout
    assert "SUCCESS" in out
    # every alert has a firing case and a silent case in the unit tests
    alerts = set(re.findall(r"^\s*- alert: (\w+)", (MONITORING / "alerts.yaml").read_text(), re.M))
    tests = (MONITORING / "alerts_test.yaml").read_text()
    assert alerts
    for alert in alerts:
        blocks = re.findall(
            rf"alertname: {alert}\n\s*exp_alerts:(.*?)(?=\n\s*- eval_time|\n\s*- interval|\Z)",
            tests,
            re.S,
        )
        assert any(b.strip().startswith("[]") for b in blocks), (
            f"{alert}: no case where it stays silent"
        )
        assert any("exp_labels" in b for b in blocks), f"{alert}: no case where it fires"


def _known_series() -> set[str]:
    names: set[str] = {"up"}
    for metric in vars(metrics_module).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        base, kind = metric._name, metric._type
        if kind == "counter":
            names |= {f"{base}_total", f"{base}_created"}
        elif kind == "histogram":
            names |= {f"{base}_bucket", f"{base}_count", f"{base}_sum", f"{base}_created"}
        else:
            names.add(base)
    return names


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_rules_and_dashboard_use_only_exported_metrics(source: str) -> None:
    exprs = alert_expressions() if source == "alerts" else dashboard_expressions("*")
    assert exprs, f"no expressions found in {source}"
    known = _known_series()
    used = metrics_named(exprs)
    assert used, f"{source} references no outreach_* metric"
    unknown = used - known
    assert not unknown, f"{source} uses metrics common/metrics.py does not export: {unknown}"


def test_alerts_have_severity_summary_description_runbook() -> None:
    text = (MONITORING / "alerts.yaml").read_text()
    rules = re.split(r"\n\s*- alert: ", text)[1:]
    assert len(rules) >= 6
    for rule in rules:
        name = rule.split("\n", 1)[0].strip()
        assert re.search(r"severity: (warning|critical|info)", rule), name
        for key in ("summary:", "description:"):
            assert key in rule, f"{name}: no {key}"
        assert f"runbook_url: docs/operations.md#{name.lower()}" in rule, name
    for metric in (
        "outreach_dead_letters_total",
        "outreach_consumer_lag_messages",
        'outreach_provider_request_seconds_count{outcome="error"}',
        "outreach_template_render_failures_total",
        "outreach_deadline_lag_seconds",
        "outreach_last_input_timestamp_seconds",
        "outreach_suppressions_total",
    ):
        assert metric in text, f"no alert on {metric}"


def test_the_business_dashboard_shows_the_experiments() -> None:
    exprs = " ".join(dashboard_expressions("business-dashboard.json"))
    for metric in (
        "outreach_experiment_customers",
        "outreach_experiment_outcome",
        "outreach_experiment_difference",
    ):
        assert metric in exprs, f"no panel on {metric}"
    for outcome in ("repeat_30", "wismo_30", "spend_90", "unsubscribe_30", "csat_90"):
        assert outcome in exprs, f"no panel on {outcome}"


def test_dashboard_has_the_panels() -> None:
    dash = json.loads((MONITORING / "dashboard.json").read_text())
    exprs = " ".join(dashboard_expressions())
    for metric in (
        "outreach_events_consumed_total",
        "outreach_dead_letters_total",
        "outreach_incidents_total",
        "outreach_requests_total",
        "outreach_messages_total",
        "outreach_suppressions_total",
        "outreach_provider_request_seconds_bucket",
        "outreach_consumer_lag_messages",
        "outreach_template_render_failures_total",
        "outreach_deadline_lag_seconds",
        "outreach_replies_total",
        "outreach_handoffs_total",
        "outreach_survey_score_sum",
    ):
        assert metric in exprs, f"no panel on {metric}"
    assert "histogram_quantile(0.99" in exprs
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_dockerfile_is_multi_stage_locked_and_non_root() -> None:
    text = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M)
    assert len(re.findall(r"^FROM ", text, re.M)) == 3  # assets (node), builder, runtime
    assert "npm ci" in text and "COPY --from=assets" in text
    assert "uv sync --frozen --no-dev" in text
    assert "COPY --from=builder /opt/venv /opt/venv" in text
    for src in ("common/", "services/", "simulator/", "protos/"):
        assert f"COPY {src} {src}" in text
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert text.rstrip().splitlines()[-1].startswith("CMD [")


# --- Helm chart ----------------------------------------------------------------------


@cache
def _render(*sets: str) -> list[dict[str, Any]]:
    helm, yq = _tool("helm"), _tool("yq")
    args = [helm, "template", "po", str(CHART), "--kube-version", K8S_VERSION.lstrip("v")]
    for s in sets:
        args += ["--set", s]
    manifests = _run(*args).stdout
    proc = subprocess.run(
        [yq, "eval-all", "-o=json", "-I=0", "[.]"],
        input=manifests,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [d for d in json.loads(proc.stdout) if d]


def _kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _component(doc: dict[str, Any]) -> str:
    return str(doc["metadata"]["labels"]["app.kubernetes.io/component"])


def test_helm_lint() -> None:
    helm = _tool("helm")
    for extra in ([], ["--set", "keda.enabled=true,strimzi.enabled=false"]):
        _run(helm, "lint", str(CHART), "--kube-version", K8S_VERSION.lstrip("v"), *extra)


def test_every_deployment_is_probed_limited_and_locked_down() -> None:
    docs = _render()
    deployments = _kind(docs, "Deployment")
    assert {_component(d) for d in deployments} == set(OPS_PORTS)
    for dep in deployments:
        name = _component(dep)
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        volumes = {v["name"]: v for v in pod["volumes"]}
        for c in pod["containers"]:
            assert c["command"] == ["python", "-m", MODULES[name]]
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", name
            for section in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][section]), (name, section)
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            assert ports["http"] == OPS_PORTS[name]
            ready = c["readinessProbe"]["httpGet"]
            assert ready["path"] == "/readyz" and ready["port"] == "http", name
            live = c["livenessProbe"]
            if name == "preferences":
                assert ports["grpc"] == 50051
                assert live["grpc"]["port"] == 50051
            else:
                assert live["httpGet"]["path"] == "/livez" and live["httpGet"]["port"] == "http"
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert {"/data", "/tmp"} <= set(mounts), name
            for path in ("/data", "/tmp"):
                assert "emptyDir" in volumes[mounts[path]], (name, path)
            env = {e["name"]: e for e in c.get("env", [])}
            # Its own address, for the other replicas (explain): from the pod's IP.
            assert env.pop("POD_IP")["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
            advertised = env.pop("OUTREACH_ADVERTISED_URL")["value"]
            assert advertised == f"http://$(POD_IP):{OPS_PORTS[name]}"
            for entry in env.values():
                assert entry["name"] in SECRET_ENV, f"{name}: plain env {entry['name']}"
                assert "secretKeyRef" in entry["valueFrom"], entry


def test_preferences_tls_mounts_the_secret_and_probes_liveness_over_http() -> None:
    def preferences(*sets: str) -> tuple[dict[str, Any], dict[str, Any]]:
        docs = _render(*sets)
        (deployment,) = [d for d in _kind(docs, "Deployment") if _component(d) == "preferences"]
        (config,) = [
            d
            for d in _kind(docs, "ConfigMap")
            if d["metadata"]["labels"].get("app.kubernetes.io/component") == "preferences"
        ]
        return deployment, config

    plain, plain_config = preferences()
    (container,) = plain["spec"]["template"]["spec"]["containers"]
    assert "grpc" in container["livenessProbe"]
    assert "PREFERENCES_TLS_CERT" not in plain_config["data"]

    tls, tls_config = preferences(
        "services.preferences.tls.enabled=true",
        "services.preferences.tls.secretName=preferences-tls",
        "services.preferences.tls.clientCA=true",
    )
    pod = tls["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert {
        "name": "tls",
        "secret": {"secretName": "preferences-tls", "defaultMode": 0o440},
    } in pod["volumes"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["tls"]["mountPath"] == "/etc/preferences/tls" and mounts["tls"]["readOnly"]
    data = tls_config["data"]
    assert data["PREFERENCES_TLS_CERT"] == "/etc/preferences/tls/tls.crt"
    assert data["PREFERENCES_TLS_KEY"] == "/etc/preferences/tls/tls.key"
    assert data["PREFERENCES_TLS_CLIENT_CA"] == "/etc/preferences/tls/ca.crt"


def test_config_and_secrets() -> None:
    docs = _render("services.helpdesk.enabled=true")
    config_doc = (ROOT / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", config_doc, re.M))
    config: dict[str, str] = {}
    for cm in _kind(docs, "ConfigMap"):
        if "grafana_dashboard" in cm["metadata"]["labels"]:
            continue
        data = cm.get("data", {})
        leaked = set(data) & SECRET_ENV
        assert not leaked, f"secrets in ConfigMap {cm['metadata']['name']}: {leaked}"
        undocumented = set(data) - documented
        assert not undocumented, f"settings not in docs/configuration.md: {undocumented}"
        config.update(data)
    assert config["OUTREACH_HTTP_HOST"] == "0.0.0.0"
    assert config["PREFERENCES_GRPC_HOST"] == "0.0.0.0"
    assert config["OUTREACH_DATA_DIR"] == "/data"
    assert config["PREFERENCES_GRPC_TARGET"] == "po-proactive-outreach-preferences:50051"
    refs = {
        env["name"]
        for dep in _kind(docs, "Deployment")
        for c in dep["spec"]["template"]["spec"]["containers"]
        for env in c.get("env", [])
    }
    assert refs - {"POD_IP", "OUTREACH_ADVERTISED_URL"} == SECRET_ENV


def test_services_pdbs_hpas_networkpolicies() -> None:
    docs = _render()
    services = {_component(s): s for s in _kind(docs, "Service")}
    assert set(services) == set(OPS_PORTS)
    for name, svc in services.items():
        assert svc["spec"]["type"] == "ClusterIP"
        ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
        assert ports["http"] == OPS_PORTS[name]
    assert {p["name"]: p["port"] for p in services["preferences"]["spec"]["ports"]} == {
        "http": 8084,
        "grpc": 50051,
    }
    assert {_component(p) for p in _kind(docs, "PodDisruptionBudget")} == set(OPS_PORTS)
    hpas = _kind(docs, "HorizontalPodAutoscaler")
    # Not the studio's: a rehearsal's core would scale it out on CPU each time.
    assert {_component(h) for h in hpas} == set(OPS_PORTS) - {"studio"}
    assert all(h["apiVersion"] == "autoscaling/v2" for h in hpas)
    assert not _kind(docs, "ScaledObject")  # KEDA is opt-in

    policies = {p["metadata"]["name"]: p["spec"] for p in _kind(docs, "NetworkPolicy")}
    deny = policies["po-proactive-outreach-default-deny-ingress"]
    assert deny["policyTypes"] == ["Ingress"] and not deny.get("ingress")
    grpc = policies["po-proactive-outreach-preferences-allow-outreach-grpc"]
    assert grpc["ingress"][0]["ports"] == [{"port": 50051, "protocol": "TCP"}]
    assert (
        grpc["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        == "outreach"
    )
    assert "po-proactive-outreach-outreach-allow-webhooks" in policies
    assert "po-proactive-outreach-studio-allow-users" in policies
    for name in OPS_PORTS:
        mon = policies[f"po-proactive-outreach-{name}-allow-monitoring"]
        assert mon["ingress"][0]["ports"][0]["port"] == OPS_PORTS[name]
        assert "namespaceSelector" in mon["ingress"][0]["from"][0]


def test_keda_replaces_the_hpa_of_lag_scaled_services() -> None:
    docs = _render("keda.enabled=true")
    scaled = {_component(s): s for s in _kind(docs, "ScaledObject")}
    assert set(scaled) == {"orders-watcher", "risk-detector", "outreach"}
    for name, obj in scaled.items():
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        triggers = obj["spec"]["triggers"]
        assert triggers and all(t["type"] == "kafka" for t in triggers)
        assert {t["metadata"]["consumerGroup"] for t in triggers} == {name.replace("-", "_")}
    assert {_component(h) for h in _kind(docs, "HorizontalPodAutoscaler")} == {"preferences"}
    for dep in _kind(docs, "Deployment"):
        if _component(dep) != "studio":  # (its replicas are set: no autoscaler)
            assert "replicas" not in dep["spec"]  # the autoscaler owns it


def test_kafka_topics_mirror_common_topics() -> None:
    docs = _render()
    topics = {t["spec"]["topicName"]: t for t in _kind(docs, "KafkaTopic")}
    specs = {s.name: s for s in all_topics()}
    assert set(topics) == set(specs)
    for name, spec in specs.items():
        t = topics[name]
        assert t["apiVersion"] in ("kafka.strimzi.io/v1", "kafka.strimzi.io/v1beta2")
        assert "strimzi.io/cluster" in t["metadata"]["labels"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", t["metadata"]["name"])
        assert t["spec"]["partitions"] == spec.partitions, name
        assert int(t["spec"]["config"]["retention.ms"]) == spec.retention_ms, name
        policy = "compact" if spec.compacted else "delete"
        assert t["spec"]["config"]["cleanup.policy"] == policy, name
    assert not _kind(_render("strimzi.enabled=false"), "KafkaTopic")


SCRAM = "kafka.users.create=true,kafka.authentication=scram-sha-512,kafka.securityProtocol=SASL_SSL"


def _kafka_env(docs: list[dict[str, Any]], workload: dict[str, Any]) -> dict[str, Any]:
    """What a workload's container gets: its ConfigMaps' data, then its env."""
    container = workload["spec"]["template"]["spec"]["containers"][0]
    maps = {m["metadata"]["name"]: m.get("data", {}) for m in _kind(docs, "ConfigMap")}
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        env |= maps[source["configMapRef"]["name"]]
    env |= {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}
    return {k: v for k, v in env.items() if k.startswith("KAFKA_S")}


def test_each_service_connects_as_its_own_kafka_user_limited_to_its_topics() -> None:
    docs = _render(SCRAM, "kafka.caSecret=outreach-cluster-ca-cert")
    users = {_component(u): u for u in _kind(docs, "KafkaUser")}
    assert set(users) == {"orders-watcher", "risk-detector", "outreach", "preferences", "studio"}
    known = {s.name for s in all_topics()} | {"outreach.watermarks"}
    for component, user in users.items():
        assert user["metadata"]["labels"]["strimzi.io/cluster"] == "outreach"
        assert user["spec"]["authentication"]["type"] == "scram-sha-512"
        acls = user["spec"]["authorization"]["acls"]
        topics = {a["resource"]["name"] for a in acls if a["resource"]["type"] == "topic"}
        assert {"type": "cluster"} in [a["resource"] for a in acls]
        group = component.replace("-", "_")
        assert topics - {f"{group}-"} <= known, component  # no topic outside the pipeline's
        assert f"deadletter.{group}" in topics or component == "studio"
        groups = [a for a in acls if a["resource"]["type"] == "group"]
        assert [g["resource"]["name"] for g in groups] == [group]
        writes = {a["resource"].get("name") for a in acls if "Write" in a["operations"]}
        assert "commerce.orders" not in writes  # nobody writes the shop's topics
    # outreach reads what its worker consumes and writes what it publishes.
    outreach = {
        (a["resource"].get("name"), op)
        for a in users["outreach"]["spec"]["authorization"]["acls"]
        for op in a["operations"]
    }
    read = ("outreach.requests", "outreach.incidents", "commerce.customers", "support.resolutions")
    # support.handoffs too: the worker keeps every hand-off for the conversation view
    # (its group outreach-handoff-records is within the outreach prefix).
    for topic in (*read, "support.handoffs"):
        assert (topic, "Read") in outreach
    # The outcomes of decisions (group outreach-outcomes, docs/outcomes.md).
    for topic in ("commerce.orders", "commerce.returns", "commerce.feedback", "outreach.optouts"):
        assert (topic, "Read") in outreach
    for topic in ("outreach.messages", "outreach.optouts"):
        assert (topic, "Write") in outreach
    assert ("outreach.requests", "Write") not in outreach
    # The studio's rehearsals read the shop's input (and the opt-outs) and write nothing.
    studio = users["studio"]["spec"]["authorization"]["acls"]
    replayed = {"commerce.orders", "commerce.shipments", "commerce.returns",
                "commerce.customers", "commerce.feedback", "outreach.optouts"}  # fmt: skip
    reads = {a["resource"]["name"] for a in studio if "Read" in a["operations"]}
    assert replayed <= reads
    assert not {
        a["resource"]["name"]
        for a in studio
        if "Write" in a["operations"] and a["resource"]["type"] == "topic"
    } - {"studio-"}  # (its own prefix only, as every user's: it makes no topic)
    for workload in _kind(docs, "Deployment"):
        env = _kafka_env(docs, workload)
        user = users[_component(workload)]["metadata"]["name"]
        assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert env["KAFKA_SASL_USERNAME"] == user
        assert env["KAFKA_SASL_PASSWORD"] == {"secretKeyRef": {"name": user, "key": "password"}}
        assert env["KAFKA_SSL_CAFILE"] == "/etc/kafka/ca/ca.crt"
        volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
        assert volumes["kafka-ca"]["secret"]["secretName"] == "outreach-cluster-ca-cert"


def test_mutual_tls_mounts_each_users_certificate_and_plaintext_needs_nothing() -> None:
    docs = _render(
        "kafka.users.create=true,kafka.authentication=tls,kafka.securityProtocol=SSL",
        "kafka.userSecrets.outreach=outreach-from-vault",
    )
    for workload in _kind(docs, "Deployment"):
        pod = workload["spec"]["template"]["spec"]
        env = _kafka_env(docs, workload)
        assert env["KAFKA_SSL_CERTFILE"] == "/etc/kafka/user/user.crt"
        assert "KAFKA_SASL_PASSWORD" not in env
        secret = {v["name"]: v for v in pod["volumes"]}["kafka-user"]["secret"]["secretName"]
        assert secret.endswith(_component(workload)) or secret == "outreach-from-vault"
    assert {u["spec"]["authentication"]["type"] for u in _kind(docs, "KafkaUser")} == {"tls"}
    plain = _render()
    assert not _kind(plain, "KafkaUser")
    for workload in _kind(plain, "Deployment"):
        env = _kafka_env(plain, workload)
        assert env.get("KAFKA_SECURITY_PROTOCOL") in (None, "PLAINTEXT")
        assert not set(env) - {"KAFKA_SECURITY_PROTOCOL"}


def test_monitoring_objects_carry_the_one_source() -> None:
    docs = _render()
    rule = _kind(docs, "PrometheusRule")
    assert len(rule) == 1 and rule[0]["apiVersion"] == "monitoring.coreos.com/v1"
    yq = _tool("yq")
    source = json.loads(_run(yq, "-o=json", "-I=0", ".", str(MONITORING / "alerts.yaml")).stdout)
    base = "https://github.com/example/proactive-outreach/blob/main/"
    for group in source["groups"]:  # the chart makes the runbook links absolute
        for alert in group["rules"]:
            alert["annotations"]["runbook_url"] = base + alert["annotations"]["runbook_url"]
    assert rule[0]["spec"]["groups"] == source["groups"]
    monitors = _kind(docs, "ServiceMonitor")
    assert len(monitors) == 1
    assert monitors[0]["spec"]["endpoints"][0]["port"] == "http"
    assert monitors[0]["spec"]["endpoints"][0]["path"] == "/metrics"
    # our `service` label, not the one the Prometheus Operator sets from the Service
    assert monitors[0]["spec"]["endpoints"][0]["honorLabels"] is True
    dashboards = [
        c
        for c in _kind(docs, "ConfigMap")
        if c["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]
    assert len(dashboards) == 1
    data = dashboards[0]["data"]
    for key, name in (
        ("proactive-outreach.json", "dashboard.json"),
        ("proactive-outreach-business.json", "business-dashboard.json"),
    ):
        assert json.loads(data[key]) == json.loads((MONITORING / name).read_text())


def _checksums(*sets: str) -> dict[str, str]:
    return {
        _component(d): d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        for d in _kind(_render(*sets), "Deployment")
    }


def test_images_scheduling_and_a_restart_only_for_ones_own_configuration() -> None:
    for dep in _kind(_render(), "Deployment"):
        image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image == "ghcr.io/example/proactive-outreach:0.1.0"
    digest = "sha256:" + "a" * 64
    docs = _render(
        f"image.digest={digest}",
        "global.imageRegistry=mirror.example",
        "nodeSelector.pool=outreach",
        "services.outreach.nodeSelector.pool=senders",
        "tolerations[0].key=dedicated",
        "tolerations[0].operator=Exists",
        "podAnnotations.team=care",
        "services.studio.podLabels.exposed=yes",
        "extraEnv[0].name=EXTRA",
        "extraEnv[0].value=1",
    )
    for dep in _kind(docs, "Deployment"):
        name, pod = _component(dep), dep["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        assert container["image"] == f"mirror.example/example/proactive-outreach@{digest}"
        assert pod["spec"]["nodeSelector"] == {
            "pool": "senders" if name == "outreach" else "outreach"
        }
        assert pod["spec"]["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
        assert pod["metadata"]["annotations"]["team"] == "care"
        assert (pod["metadata"]["labels"].get("exposed") == "yes") == (name == "studio")
        assert {"name": "EXTRA", "value": "1"} in container["env"]
    before = _checksums()
    after = _checksums("services.risk-detector.env.RISK_DETECTOR_LOG_EXTRA=1")
    assert {n for n in before if before[n] != after[n]} == {"risk-detector"}
    common = _checksums("config.LOG_LEVEL=DEBUG")
    assert all(before[n] != common[n] for n in before)


def test_a_job_upgrades_both_databases_before_anything_new_starts() -> None:
    (job,) = _kind(_render(), "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    commands = {c["name"]: c["command"] for c in pod["containers"]}
    assert commands == {
        "outreach": ["python", "-m", "services.outreach.migrate"],
        "preferences": ["python", "-m", "services.preferences.migrate"],
    }
    for container in pod["containers"]:
        (url,) = [e for e in container["env"] if e["name"].endswith("_DATABASE_URL")]
        assert (
            url["valueFrom"]["secretKeyRef"]["key"] == f"{container['name'].upper()}_DATABASE_URL"
        )
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    (only,) = _kind(_render("services.preferences.enabled=false"), "Job")
    assert [c["name"] for c in only["spec"]["template"]["spec"]["containers"]] == ["outreach"]
    assert not _kind(_render("migrations.enabled=false"), "Job")
    # A Secret the chart makes (development) exists before the Job that reads it.
    (secret,) = _kind(_render("secrets.create=true", "secrets.data.A=b"), "Secret")
    assert secret["metadata"]["annotations"]["helm.sh/hook-weight"] == "-10"


def test_stream_state_on_a_volume_makes_a_stateful_set() -> None:
    docs = _render(
        "services.risk-detector.persistence.enabled=true",
        "services.risk-detector.persistence.storageClass=fast",
    )
    (stateful,) = _kind(docs, "StatefulSet")
    assert _component(stateful) == "risk-detector"
    assert "risk-detector" not in {_component(d) for d in _kind(docs, "Deployment")}
    (claim,) = stateful["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert claim["spec"]["storageClassName"] == "fast"
    pod = stateful["spec"]["template"]["spec"]
    assert "data" not in {v["name"] for v in pod["volumes"]}  # the claim, not an emptyDir
    assert {"name": "data", "mountPath": "/data"} in pod["containers"][0]["volumeMounts"]
    hpas = {_component(h): h for h in _kind(docs, "HorizontalPodAutoscaler")}
    assert hpas["risk-detector"]["spec"]["scaleTargetRef"]["kind"] == "StatefulSet"
    assert hpas["orders-watcher"]["spec"]["scaleTargetRef"]["kind"] == "Deployment"


def test_the_chart_readme_explains_every_value() -> None:
    """Every value the schema knows — top level, one level down, and each service's —
    is named in the chart's README."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    readme = re.sub(r"```.*?```", "", (CHART / "README.md").read_text(), flags=re.S)
    named = set(re.findall(r"`([^`\n]+)`", readme))
    missing = []
    for key, spec in schema["properties"].items():
        children = spec.get("properties", {}) if key not in ("services", "config") else {}
        if not children:
            missing += [key] if not any(n == key or n.startswith(f"{key}.") for n in named) else []
        missing += [f"{key}.{child}" for child in children if f"{key}.{child}" not in named]
    for child in schema["definitions"]["service"]["properties"]:
        if f"services.<name>.{child}" not in named:
            missing.append(f"services.<name>.{child}")
    assert not missing, f"not in deploy/helm/proactive-outreach/README.md: {missing}"


def test_the_ingress_exposes_only_webhooks_unsubscribe_survey_and_the_studio() -> None:
    assert not _kind(_render(), "Ingress")
    docs = _render(
        "ingress.enabled=true",
        "ingress.outreachHost=outreach.example.com",
        "ingress.studioHost=studio.example.com",
        "ingress.className=nginx",
    )
    (ingress,) = _kind(docs, "Ingress")
    routes = {
        (rule["host"], path["path"]): (
            path["backend"]["service"]["name"],
            path["backend"]["service"]["port"]["name"],
        )
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    }
    assert routes == {
        ("outreach.example.com", "/webhooks/"): ("po-proactive-outreach-outreach", "http"),
        ("outreach.example.com", "/unsubscribe"): ("po-proactive-outreach-outreach", "http"),
        ("outreach.example.com", "/survey"): ("po-proactive-outreach-outreach", "http"),
        ("studio.example.com", "/"): ("po-proactive-outreach-studio", "web"),
    }
    assert ingress["spec"]["ingressClassName"] == "nginx"


def test_the_helpdesk_adapter_runs_when_enabled_with_its_route_policy_and_kafka_user() -> None:
    assert not [d for d in _kind(_render(), "Deployment") if _component(d) == "helpdesk"]
    docs = _render(
        "services.helpdesk.enabled=true",
        "ingress.enabled=true",
        "ingress.outreachHost=outreach.example.com",
        SCRAM,
    )
    (deployment,) = [d for d in _kind(docs, "Deployment") if _component(d) == "helpdesk"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "services.outreach.helpdesk"]
    secrets = {e["name"] for e in container["env"] if "valueFrom" in e}
    assert {"ZENDESK_API_TOKEN", "ZENDESK_WEBHOOK_SECRET"} <= secrets
    (ingress,) = _kind(docs, "Ingress")
    paths = {
        p["path"]: (p["pathType"], p["backend"]["service"]["name"])
        for rule in ingress["spec"]["rules"]
        for p in rule["http"]["paths"]
    }
    assert paths["/webhooks/zendesk"] == ("Exact", "po-proactive-outreach-helpdesk")
    assert paths["/webhooks/"] == ("Prefix", "po-proactive-outreach-outreach")
    policies = {p["metadata"]["name"] for p in _kind(docs, "NetworkPolicy")}
    assert "po-proactive-outreach-helpdesk-allow-webhooks" in policies
    (user,) = [u for u in _kind(docs, "KafkaUser") if _component(u) == "helpdesk"]
    acls = {
        (a["resource"].get("name"), op)
        for a in user["spec"]["authorization"]["acls"]
        for op in a["operations"]
    }
    assert {("support.handoffs", "Read"), ("support.resolutions", "Write")} <= acls
    assert ("helpdesk", "Read") in acls  # its consumer group


def test_every_component_has_its_own_service_account_without_a_token() -> None:
    docs = _render()
    accounts = {a["metadata"]["name"]: a for a in _kind(docs, "ServiceAccount")}
    for dep in _kind(docs, "Deployment"):
        pod = dep["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == f"po-proactive-outreach-{_component(dep)}"
        assert accounts[pod["serviceAccountName"]]["automountServiceAccountToken"] is False
        assert pod["automountServiceAccountToken"] is False
    shared = _render("serviceAccount.create=false", "serviceAccount.name=outreach-runner")
    assert not _kind(shared, "ServiceAccount")
    for dep in _kind(shared, "Deployment"):
        assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "outreach-runner"


def test_helm_test_asks_each_service_for_readyz_and_the_network_policy_lets_it() -> None:
    docs = _render()
    pods = {p["metadata"]["labels"]["app.kubernetes.io/component"]: p for p in _kind(docs, "Pod")}
    assert set(pods) == {f"{name}-test" for name in OPS_PORTS}
    policies = {p["metadata"]["name"]: p for p in _kind(docs, "NetworkPolicy")}
    for name, port in OPS_PORTS.items():
        pod = pods[f"{name}-test"]
        assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
        script = pod["spec"]["containers"][0]["command"][-1]
        assert f"http://po-proactive-outreach-{name}:{port}/readyz" in script
        allowed = policies[f"po-proactive-outreach-{name}-allow-monitoring"]["spec"]["ingress"]
        assert any(
            peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
            == f"{name}-test"
            and rule["ports"] == [{"port": port, "protocol": "TCP"}]
            for rule in allowed
            for peer in rule["from"]
        ), name


def test_values_schema_turns_a_typo_away_before_anything_is_rendered() -> None:
    helm = _tool("helm")
    base = [helm, "template", "po", str(CHART), "--kube-version", K8S_VERSION.lstrip("v")]
    for bad, says in (
        ("services.outreach.replcas=3", "Additional property replcas is not allowed"),
        ("config.OUTREACH_CLOCK=evnt", 'must be one of the following: "wall", "event"'),
        ("image.digest=latest", "image.digest"),
        ("services.preferences.grpcPort=0", "grpcPort"),
    ):
        proc = subprocess.run([*base, "--set", bad], capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0 and says in proc.stderr, (bad, proc.stderr[-500:])


def _notes(tmp_path: Path, *sets: str) -> str:
    """NOTES.txt as `helm install` would print it (`helm template` leaves it out: it is
    rendered here as the value of a YAML document in a copy of the chart)."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart, symlinks=False)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "NOTES.txt").unlink()
    wrapped = "notes: |\n" + "".join(f"  {line}" for line in notes.splitlines(keepends=True))
    (chart / "templates" / "notes.yaml").write_text(wrapped)
    helm = _tool("helm")
    args = [helm, "template", "po", str(chart), "--kube-version", K8S_VERSION.lstrip("v")]
    args += ["-n", "care", "--show-only", "templates/notes.yaml"]
    for one in sets:
        args += ["--set", one]
    return _run(*args).stdout


def test_the_notes_say_how_to_reach_the_studio_and_what_is_left_to_do(tmp_path: Path) -> None:
    notes = _notes(tmp_path)
    assert "exec -it deploy/po-proactive-outreach-studio" in notes
    assert "users add alice --role admin" in notes
    assert "port-forward svc/po-proactive-outreach-studio 8085" in notes
    assert 'Secret "po-proactive-outreach-secrets" is yours to create' in notes
    assert "topics create" not in notes  # Strimzi's KafkaTopics make them
    bare = _notes(tmp_path / "bare", "strimzi.enabled=false", "services.studio.enabled=false")
    assert "outreachctl topics create" in bare and "studio" not in bare


def test_manifests_validate_offline_against_kubernetes_schemas(tmp_path: Path) -> None:
    kubeconform = _tool("kubeconform")
    schemas = CACHE / "k8s-schemas" / K8S_VERSION
    if not (schemas / ".done").exists():
        pytest.skip(f"no Kubernetes schemas in {schemas} (make deploy-tools)")
    helm = _tool("helm")
    with_ingress = (
        "ingress.enabled=true,ingress.outreachHost=o.example,ingress.studioHost=s.example"
        ",services.helpdesk.enabled=true"
    )
    stateful = "services.risk-detector.persistence.enabled=true"
    secured = f"{SCRAM},kafka.caSecret=ca"
    renders = (
        [],
        ["--set", "keda.enabled=true"],
        ["--set", with_ingress],
        ["--set", stateful],
        ["--set", secured],
    )
    for i, extra in enumerate(renders):
        rendered = tmp_path / f"rendered-{i}.yaml"
        rendered.write_text(
            _run(
                helm,
                "template",
                "po",
                str(CHART),
                "--kube-version",
                K8S_VERSION.lstrip("v"),
                *extra,
            ).stdout
        )
        out = _run(
            kubeconform,
            "-strict",
            "-summary",
            "-skip",
            "KafkaTopic,KafkaUser,ServiceMonitor,PrometheusRule,ScaledObject",
            "-schema-location",
            str(schemas) + "/{{.ResourceKind}}{{.KindSuffix}}.json",
            str(rendered),
        ).stdout
        assert "Invalid: 0, Errors: 0" in out, out
        assert re.search(r"Valid: [1-9]", out), out
