#!/usr/bin/env python3
"""A real Kubernetes API server (kube-apiserver and etcd) on 127.0.0.1, for installing
the chart against it: what the server accepts, defaults and refuses, not only what the
offline schemas say.

No Docker, no downloads of release binaries: kube-apiserver and etcd are built from
their Go modules (the Go module proxy), once, into
$OUTREACH_CACHE_DIR/kubernetes-<version>/bin (default ~/.cache/proactive-outreach); about
three minutes on two cores with the modules cached, more on a first build. There is no
scheduler, controller manager or kubelet: objects are stored and served, nothing runs.

    python deploy/kubernetes/local_apiserver.py build    build the binaries (idempotent)
    python deploy/kubernetes/local_apiserver.py up DIR   start; kubeconfig in DIR/kubeconfig

Tests use the class:  LocalApiServer(data_dir).start() ... .kubeconfig ... .stop()
Standard library only (and go, openssl on the PATH).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

#: The Kubernetes the chart is validated against offline (deploy/helm/tools).
KUBERNETES_VERSION = os.environ.get("OUTREACH_KUBERNETES_VERSION", "1.31.4")
#: The etcd release that Kubernetes version is tested with.
ETCD_VERSION = os.environ.get("OUTREACH_ETCD_VERSION", "3.5.16")
HOST = "127.0.0.1"

APISERVER_MAIN = """package main

import (
\t"os"

\t"k8s.io/component-base/cli"
\t"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
\tos.Exit(cli.Run(app.NewAPIServerCommand()))
}
"""
ETCD_MAIN = """package main

import (
\t"os"

\t"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
\tetcdmain.Main(os.Args)
}
"""


def cache_dir() -> Path:
    return Path(
        os.environ.get("OUTREACH_CACHE_DIR") or Path.home() / ".cache" / "proactive-outreach"
    )


def bin_dir(version: str = KUBERNETES_VERSION) -> Path:
    return cache_dir() / f"kubernetes-{version}" / "bin"


def _go() -> str:
    go = shutil.which("go") or (
        "/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None
    )
    if go is None:
        raise RuntimeError(
            "go is needed to build kube-apiserver and etcd (apt-get install golang-go)"
        )
    return go


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(
        cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd}:\n{result.stdout}{result.stderr}")


def _staging_modules(go: str, version: str, work: Path) -> list[str]:
    """The k8s.io modules k8s.io/kubernetes replaces with its own staging copies: a
    module built outside that tree takes their published versions instead."""
    env = {**os.environ, "GOFLAGS": "-mod=mod"}
    out = subprocess.run(
        [go, "list", "-m", "-json", f"k8s.io/kubernetes@v{version}"],
        cwd=work, env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    gomod = Path(json.loads(out)["GoMod"]).read_text()
    return re.findall(r"^\s+(k8s\.io/[\w.-]+) => \./staging/", gomod, re.MULTILINE)


def _version_flags(version: str) -> str:
    """The version the server reports (clients such as helm check it), as the
    Kubernetes release build stamps it."""
    major, minor, _ = version.split(".")
    stamps = {"gitVersion": f"v{version}", "gitMajor": major, "gitMinor": minor,
              "gitTreeState": "clean", "buildDate": "1970-01-01T00:00:00Z"}  # fmt: skip
    return " ".join(f"-X k8s.io/component-base/version.{k}={v}" for k, v in stamps.items())


def build(version: str = KUBERNETES_VERSION, etcd: str = ETCD_VERSION) -> Path:
    """kube-apiserver and etcd built from their Go modules into bin_dir(); returns it."""
    out = bin_dir(version)
    if (out / "kube-apiserver").exists() and (out / "etcd").exists():
        return out
    go = _go()
    work = out.parent / "src"
    env = {**os.environ, "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"}
    for name, main, requires in (
        ("etcd", ETCD_MAIN, f"require go.etcd.io/etcd/server/v3 v{etcd}\n"),
        ("kube-apiserver", APISERVER_MAIN, None),
    ):
        src = work / name
        src.mkdir(parents=True, exist_ok=True)
        if requires is None:
            staging = _staging_modules(go, version, src.parent)
            minor = "0." + version.split(".", 1)[1]
            requires = (
                f"require k8s.io/kubernetes v{version}\n\nreplace (\n"
                + "".join(f"\t{m} => {m} v{minor}\n" for m in staging)
                + ")\n"
            )
        (src / "go.mod").write_text(f"module outreach.local/{name}\n\ngo 1.22.0\n\n{requires}")
        (src / "main.go").write_text(main)
        _run([go, "mod", "tidy"], src, env)
        partial = str(out / f"{name}.partial")
        _run([go, "build", "-ldflags", _version_flags(version), "-o", partial, "."], src, env)
        (out / f"{name}.partial").rename(out / name)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _openssl(*args: str, cwd: Path) -> None:
    _run(["openssl", *args], cwd)


def make_certificates(pki: Path) -> None:
    """A CA; the server's certificate (127.0.0.1); an administrator's client certificate
    (group system:masters); the service accounts' signing key."""
    if (pki / "admin.crt").exists():
        return
    pki.mkdir(parents=True, exist_ok=True)
    ca = ("-days", "30", "-subj", "/CN=outreach-local-kubernetes-ca")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.crt", *ca, cwd=pki)  # fmt: skip
    for name, subject, extensions in (
        ("server", "/CN=kube-apiserver", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"),
        ("admin", "/O=system:masters/CN=admin", "extendedKeyUsage=clientAuth\n"),
    ):
        (pki / f"{name}.ext").write_text(extensions)
        _openssl("genpkey", "-algorithm", "RSA", "-out", f"{name}.key", cwd=pki)
        _openssl("req", "-new", "-key", f"{name}.key", "-out", f"{name}.csr", "-subj", subject,
                 cwd=pki)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "30", "-out", f"{name}.crt", "-extfile",
                 f"{name}.ext", cwd=pki)  # fmt: skip
    _openssl("genpkey", "-algorithm", "RSA", "-out", "sa.key", cwd=pki)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


class LocalApiServer:
    """etcd and kube-apiserver on 127.0.0.1, owned by this object; `kubeconfig` is an
    administrator's."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.pki = self.data_dir / "pki"
        self.kubeconfig = self.data_dir / "kubeconfig"
        self.port = free_port()
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self.port}"

    def start(self, timeout: float = 120.0) -> LocalApiServer:
        binaries = build()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        make_certificates(self.pki)
        etcd_client, etcd_peer = free_port(), free_port()
        self._spawn("etcd", [
            str(binaries / "etcd"), "--data-dir", str(self.data_dir / "etcd"),
            "--listen-client-urls", f"http://{HOST}:{etcd_client}",
            "--advertise-client-urls", f"http://{HOST}:{etcd_client}",
            "--listen-peer-urls", f"http://{HOST}:{etcd_peer}",
            "--initial-advertise-peer-urls", f"http://{HOST}:{etcd_peer}",
            "--initial-cluster", f"default=http://{HOST}:{etcd_peer}",
            "--listen-metrics-urls", f"http://{HOST}:{free_port()}",
        ])  # fmt: skip
        pki = self.pki
        self._spawn("kube-apiserver", [
            str(binaries / "kube-apiserver"),
            "--etcd-servers", f"http://{HOST}:{etcd_client}",
            "--bind-address", HOST, "--advertise-address", HOST,
            "--secure-port", str(self.port),
            "--tls-cert-file", str(pki / "server.crt"),
            "--tls-private-key-file", str(pki / "server.key"),
            "--client-ca-file", str(pki / "ca.crt"),
            "--service-account-key-file", str(pki / "sa.pub"),
            "--service-account-signing-key-file", str(pki / "sa.key"),
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--service-cluster-ip-range", "10.96.0.0/16",
            "--authorization-mode", "RBAC",
            "--cert-dir", str(self.data_dir / "certs"),
        ])  # fmt: skip
        self._write_kubeconfig()
        self._wait_ready(timeout)
        return self

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.data_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        self.procs.append(
            subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": {
                "server": self.url, "certificate-authority": str(self.pki / "ca.crt")}}],
            "users": [{"name": "admin", "user": {
                "client-certificate": str(self.pki / "admin.crt"),
                "client-key": str(self.pki / "admin.key")}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": "admin"}}],
            "current-context": "local",
        }  # fmt: skip
        self.kubeconfig.write_text(json.dumps(config, indent=2))
        os.chmod(self.kubeconfig, 0o600)

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        context.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return context

    def request(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        """One call to the API as the administrator: (status, the JSON answer decoded, or
        its text when it is not JSON)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self.ssl_context(), timeout=30) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw or b"{}")
        except ValueError:
            return status, raw.decode(errors="replace")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args[0]} exited:\n{self.log_tail()}")
            try:
                status, _ = self.request("GET", "/readyz")
                if status == 200:
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"kube-apiserver not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        tails = []
        for name in ("etcd", "kube-apiserver"):
            path = self.data_dir / f"{name}.log"
            if path.exists():
                tails.append(
                    f"--- {name}\n"
                    + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
                )
        return "\n".join(tails)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()

    def __enter__(self) -> LocalApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["build", "up"])
    parser.add_argument("data_dir", nargs="?", default=None)
    args = parser.parse_args(argv)
    if args.command == "build":
        print(build())
        return 0
    if not args.data_dir:
        parser.error("up needs a data dir")
    server = LocalApiServer(args.data_dir).start()
    print(f"kube-apiserver at {server.url}; KUBECONFIG={server.kubeconfig}; Ctrl-C stops it")
    try:
        while all(p.poll() is None for p in server.procs):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
