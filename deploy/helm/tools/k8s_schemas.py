"""Turn Kubernetes' own OpenAPI v2 document (api/openapi-spec/swagger.json of the
k8s.io/kubernetes Go module, fetched through the Go module proxy) into the per-kind JSON
schemas kubeconform reads from a local directory, so manifests validate offline.

    python deploy/helm/tools/k8s_schemas.py SWAGGER_JSON OUT_DIR

Writes OUT_DIR/<kind><kind-suffix>.json (kubeconform's `{{.ResourceKind}}{{.KindSuffix}}`,
e.g. deployment-apps-v1.json, service-v1.json). Strict like kubeconform's
"-standalone-strict" schemas: unknown fields are errors. Standard library only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# The kinds the chart renders from the core API (CRDs such as KafkaTopic are skipped).
KINDS = {
    ("", "v1", "ConfigMap"),
    ("", "v1", "Secret"),
    ("", "v1", "Service"),
    ("", "v1", "ServiceAccount"),
    ("", "v1", "Pod"),  # helm test's
    ("networking.k8s.io", "v1", "Ingress"),
    ("apps", "v1", "Deployment"),
    ("apps", "v1", "StatefulSet"),
    ("batch", "v1", "Job"),
    ("policy", "v1", "PodDisruptionBudget"),
    ("autoscaling", "v2", "HorizontalPodAutoscaler"),
    ("networking.k8s.io", "v1", "NetworkPolicy"),
}
INT_OR_STRING = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
QUANTITY = {"oneOf": [{"type": "string"}, {"type": "number"}]}


def _clean(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _clean(v) for k, v in node.items() if k != "format" and not k.startswith("x-")}
        if out.get("type") == "object" and "properties" in out:
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(node, list):
        return [_clean(v) for v in node]
    return node


def _refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/definitions/"):
            found.add(ref.removeprefix("#/definitions/"))
        for v in node.values():
            _refs(v, found)
    elif isinstance(node, list):
        for v in node:
            _refs(v, found)


def _reachable(defs: dict[str, Any], root: str) -> set[str]:
    seen: set[str] = set()
    todo = [root]
    while todo:
        name = todo.pop()
        if name in seen or name not in defs:
            continue
        seen.add(name)
        found: set[str] = set()
        _refs(defs[name], found)
        todo.extend(found - seen)
    return seen


def kind_suffix(group: str, version: str) -> str:
    return f"-{group.split('.')[0]}-{version}" if group else f"-{version}"


def convert(swagger: dict[str, Any], out: Path) -> list[Path]:
    raw = swagger["definitions"]
    defs: dict[str, Any] = {}
    for name, schema in raw.items():
        if name.endswith("util.intstr.IntOrString"):
            defs[name] = INT_OR_STRING
        elif name.endswith("api.resource.Quantity"):
            defs[name] = QUANTITY
        else:
            defs[name] = _clean(schema)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in raw.items():
        for gvk in schema.get("x-kubernetes-group-version-kind", []):
            key = (gvk["group"], gvk["version"], gvk["kind"])
            if key not in KINDS:
                continue
            group, version, kind = key
            api_version = f"{group}/{version}" if group else version
            doc = dict(defs[name])
            props = dict(doc.get("properties", {}))
            props["apiVersion"] = {"type": "string", "enum": [api_version]}
            props["kind"] = {"type": "string", "enum": [kind]}
            doc["properties"] = props
            doc["required"] = sorted(set(doc.get("required", [])) | {"apiVersion", "kind"})
            doc["$schema"] = "http://json-schema.org/draft-07/schema#"
            doc["definitions"] = {n: defs[n] for n in sorted(_reachable(raw, name)) if n != name}
            # the root's own $refs to itself (none today) would need the root in definitions too
            doc["definitions"][name] = defs[name]
            path = out / f"{kind.lower()}{kind_suffix(group, version)}.json"
            path.write_text(json.dumps(doc, separators=(",", ":")))
            written.append(path)
    missing = {k for k in KINDS} - {
        (g, v, k)
        for s in raw.values()
        for gvk in s.get("x-kubernetes-group-version-kind", [])
        for g, v, k in [(gvk["group"], gvk["version"], gvk["kind"])]
    }
    if missing:
        raise SystemExit(f"kinds missing from the OpenAPI document: {sorted(missing)}")
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    swagger = json.loads(Path(argv[1]).read_text())
    for path in convert(swagger, Path(argv[2])):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
