"""The chart installed on a real Kubernetes API server (deploy/kubernetes/local_apiserver.py:
kube-apiserver and etcd built from their Go modules): every object it renders is accepted,
stored and then checked again with the server's strict field validation (an unknown or
misplaced field is an error there, where `helm install` only warns), the hooks (the
migrations Job) too; an upgrade to a secured Kafka with one KafkaUser per service goes
through; an uninstall leaves nothing of the release behind.

No kubelet or controllers run: objects are stored, nothing starts (`helm test` and the
hooks' completion need a cluster). Run by `make check-install`, which builds the server
once (about three minutes here with the Go modules cached); `make test` leaves it out.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.kubernetes.local_apiserver import LocalApiServer
from tests.conftest import wait_for
from tests.integration.test_deploy_manifests import CHART, _tool

pytestmark = [
    pytest.mark.skipif(
        not os.environ.get("OUTREACH_INSTALL_TEST"),
        reason="installs on a real API server: make check-install",
    ),
    pytest.mark.timeout(900),
]
NAMESPACE = "outreach"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
# Minimal definitions of the operators' kinds the chart declares (Strimzi, the Prometheus
# Operator, KEDA): the server stores them as given.
OPERATOR_KINDS = [
    ("kafka.strimzi.io", "KafkaTopic", "kafkatopics", ["v1", "v1beta2"]),
    ("kafka.strimzi.io", "KafkaUser", "kafkausers", ["v1", "v1beta2"]),
    ("monitoring.coreos.com", "ServiceMonitor", "servicemonitors", ["v1"]),
    ("monitoring.coreos.com", "PrometheusRule", "prometheusrules", ["v1"]),
    ("keda.sh", "ScaledObject", "scaledobjects", ["v1alpha1"]),
]
SECRETS = [
    "secrets.create=true",
    *(
        f"secrets.data.{k}=x"
        for k in (
            "OUTREACH_DATABASE_URL",
            "PREFERENCES_DATABASE_URL",
            "OUTREACH_UNSUBSCRIBE_SECRET",
            "OUTREACH_OFFER_SECRET",
            "OUTREACH_PREFERENCES_TOKEN",
            "PREFERENCES_WRITE_TOKEN",
            "PREFERENCES_READ_TOKEN",
            "PREFERENCES_PSEUDONYM_SALT",
        )
    ),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalApiServer]:
    api = LocalApiServer(tmp_path_factory.mktemp("apiserver")).start()
    try:
        for group, kind, plural, versions in OPERATOR_KINDS:
            definition = crd(group, kind, plural, versions)
            status, answer = api.request("POST", CRDS, definition)
            assert status == 201, answer
        for _, _, plural, _ in OPERATOR_KINDS:
            wait_established(api, plural)
        yield api
    finally:
        api.stop()


def crd(group: str, kind: str, plural: str, versions: list[str]) -> dict[str, Any]:
    schema = {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {"name": v, "served": True, "storage": i == 0, "schema": schema}
                for i, v in enumerate(versions)
            ],
        },
    }


def wait_established(api: LocalApiServer, plural: str) -> None:
    group = next(g for g, _, p, _ in OPERATOR_KINDS if p == plural)

    def established() -> bool:
        _, answer = api.request("GET", f"{CRDS}/{plural}.{group}")
        conditions = (answer.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    wait_for(established, timeout=30, interval=0.2, message=f"{plural} established")


def helm(api: LocalApiServer, *args: str) -> str:
    result = subprocess.run(
        [_tool("helm"), *args, "--kubeconfig", str(api.kubeconfig), "-n", NAMESPACE],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def documents(manifests: str) -> list[dict[str, Any]]:
    converted = subprocess.run(
        [_tool("yq"), "eval-all", "-o=json", "-I=0", "[.]"],
        input=manifests,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [d for d in json.loads(converted.stdout) if d]


class Resources:
    """Where each kind lives in the API (the server's discovery)."""

    def __init__(self, api: LocalApiServer) -> None:
        self.api = api
        self.known: dict[tuple[str, str], tuple[str, bool]] = {}

    def path(self, doc: dict[str, Any]) -> str:
        api_version, kind = doc["apiVersion"], doc["kind"]
        if (api_version, kind) not in self.known:
            base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            _, answer = self.api.request("GET", base)
            for r in answer["resources"]:
                if "/" not in r["name"]:
                    self.known[(api_version, r["kind"])] = (r["name"], r["namespaced"])
        plural, namespaced = self.known[(api_version, kind)]
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        return f"{base}/namespaces/{NAMESPACE}/{plural}" if namespaced else f"{base}/{plural}"


def strict_dry_run(api: LocalApiServer, where: Resources, doc: dict[str, Any]) -> tuple[int, Any]:
    """Create `doc` again as a dry run with strict field validation: 409 for an object
    that exists and is valid, 201 for a new valid one, 4xx with the reason otherwise."""
    query = "?dryRun=All&fieldValidation=Strict"
    return api.request("POST", where.path(doc) + query, doc)


def test_install_upgrade_and_uninstall_on_a_real_api_server(
    server: LocalApiServer, tmp_path: Path
) -> None:
    sets = [arg for s in SECRETS for arg in ("--set", s)]
    helm(server, "install", "po", str(CHART), "--create-namespace", "--no-hooks", *sets)
    installed = documents(helm(server, "get", "manifest", "po"))
    kinds = {d["kind"] for d in installed}
    assert {"Deployment", "Service", "ConfigMap", "KafkaTopic", "PrometheusRule"} <= kinds
    where = Resources(server)
    for doc in installed:
        name = doc["metadata"]["name"]
        status, stored = server.request("GET", f"{where.path(doc)}/{name}")
        assert status == 200, (doc["kind"], name, stored)
        status, answer = strict_dry_run(server, where, doc)
        assert status == 409, (doc["kind"], name, answer)  # exists; every field valid
    # The hooks (the Secret and the migrations Job before install and upgrade, helm
    # test's pods) as the server would take them. A cluster's controllers give every
    # namespace its `default` ServiceAccount; none run here.
    default = {"metadata": {"name": "default"}}
    assert (
        server.request("POST", f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts", default)[0] == 201
    )
    hooks = documents(helm(server, "get", "hooks", "po"))
    assert {"Secret", "Job", "Pod"} <= {d["kind"] for d in hooks}
    for doc in hooks:
        status, answer = strict_dry_run(server, where, doc)
        assert status in (200, 201), (doc["kind"], doc["metadata"]["name"], answer.get("message"))
    # A deployment the server defaulted and kept: the pod template as rendered.
    deployment = next(d for d in installed if d["kind"] == "Deployment")
    _, stored = server.request("GET", f"{where.path(deployment)}/{deployment['metadata']['name']}")
    assert stored["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True

    secured = [
        "kafka.securityProtocol=SASL_SSL",
        "kafka.authentication=scram-sha-512",
        "kafka.users.create=true",
        "kafka.caSecret=outreach-cluster-ca-cert",
    ]
    helm(server, "upgrade", "po", str(CHART), "--no-hooks", *sets,
         *[arg for s in secured for arg in ("--set", s)])  # fmt: skip
    upgraded = documents(helm(server, "get", "manifest", "po"))
    users = [d for d in upgraded if d["kind"] == "KafkaUser"]
    assert len(users) == 5  # the four services and the studio (its rehearsals read)
    for doc in users:
        status, _ = server.request("GET", f"{where.path(doc)}/{doc['metadata']['name']}")
        assert status == 200
        assert strict_dry_run(server, where, doc)[0] == 409

    helm(server, "uninstall", "po", "--no-hooks", "--wait", "--timeout", "120s")
    for doc in upgraded:
        if doc["kind"] in ("Deployment", "StatefulSet", "Service", "ConfigMap", "KafkaUser"):
            status, _ = server.request("GET", f"{where.path(doc)}/{doc['metadata']['name']}")
            assert status == 404, (doc["kind"], doc["metadata"]["name"])
