#!/usr/bin/env python3
"""A real single-node Apache Kafka broker (KRaft, broker+controller) on 127.0.0.1.

No Docker: the broker's jars come from Maven Central (once, cached outside the repo in
$OUTREACH_CACHE_DIR/kafka-<version>/libs, default ~/.cache/proactive-outreach), storage
is formatted with kafka.tools.StorageTool, and the JVM runs detached in its own session
with its pid in <data dir>/kafka.pid.

    python deploy/kafka/local_kafka.py up      [--port 9092] start (idempotent), wait until ready
                                       [--secure] with TLS, mutual-TLS and SASL_SSL listeners
    python deploy/kafka/local_kafka.py wait    [--timeout S] wait until the broker answers
    python deploy/kafka/local_kafka.py status  running or not (exit 0 / 1)
    python deploy/kafka/local_kafka.py down    stop by pid (SIGTERM, then SIGKILL)
    python deploy/kafka/local_kafka.py fetch   only fetch the jars

Tests use the class:  LocalKafka(port=0).start() ... .bootstrap ... .stop()
Standard library only, so it runs before any virtualenv exists.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

#: The pinned broker (see README.md for why). OUTREACH_KAFKA_VERSION overrides it.
PINNED_VERSION = "4.1.2"
KAFKA_VERSION = os.environ.get("OUTREACH_KAFKA_VERSION", PINNED_VERSION)
HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"

# The logging binding the broker's POM leaves out, per major version (pom.xml properties).
_LOGGING_4X = {
    "slf4j.version": "2.0.17",
    "logging.groupId": "org.apache.logging.log4j",
    "logging.artifactId": "log4j-slf4j2-impl",
    "logging.version": "2.24.3",
}
_LOGGING_3X = {
    "slf4j.version": "1.7.36",
    "logging.groupId": "org.slf4j",
    "logging.artifactId": "slf4j-reload4j",
    "logging.version": "1.7.36",
}


def _major(version: str) -> int:
    return int(version.split(".", 1)[0])


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "proactive-outreach"
    return Path(os.environ.get("OUTREACH_CACHE_DIR") or default)


def libs_dir(version: str = KAFKA_VERSION) -> Path:
    return cache_dir() / f"kafka-{version}" / "libs"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_jars(version: str = KAFKA_VERSION) -> Path:
    """Fetch the broker's runtime jars with Maven once; later calls find the marker file.

    Concurrent callers (two test sessions) serialise on a lock file; the jars are copied
    into a temporary folder and renamed into place, so a failed fetch leaves nothing behind.
    """
    libs = libs_dir(version)
    marker = libs / ".complete"
    if marker.exists():
        return libs
    with _file_lock(libs.parent / ".fetch.lock"):
        if marker.exists():
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise RuntimeError(
                "Maven (mvn) is needed to fetch the Kafka jars: apt-get install maven"
            )
        staging = libs.parent / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        logging = _LOGGING_4X if _major(version) >= 4 else _LOGGING_3X
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(HERE / "pom.xml"),
            f"-Dkafka.version={version}",
            *(f"-D{key}={value}" for key, value in logging.items()),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staging}",
        ]
        result = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(
                f"fetching Kafka {version} jars failed ({' '.join(cmd)}):\n"
                f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
            )
        if not any(staging.glob(f"kafka_2.13-{version}.jar")):
            raise RuntimeError(f"no kafka_2.13-{version}.jar in {staging} after mvn")
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        marker.write_text(version + "\n")
    return libs


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def new_cluster_id() -> str:
    """A Kafka Uuid string: url-safe base64 of 16 random bytes, no padding, no leading '-'."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


# ---------------------------------------------------------------------------------------
# Readiness probe: hand-written Kafka protocol (ApiVersions v0, then Metadata v1..v8).


def _recv(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise OSError("connection closed")
        data += chunk
    return data


def _call(sock: socket.socket, api_key: int, version: int, correlation: int, body: bytes) -> bytes:
    """Send one request with a v1 header (non-flexible) and return the body after the id."""
    client = b"outreach-probe"
    header = struct.pack(">hhih", api_key, version, correlation, len(client)) + client
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    size = struct.unpack(">i", _recv(sock, 4))[0]
    reply = _recv(sock, size)
    if struct.unpack(">i", reply[:4])[0] != correlation:
        raise OSError("correlation id mismatch")
    return reply[4:]


def probe(port: int, timeout: float = 2.0) -> tuple[bool, str]:
    """Ask the broker on 127.0.0.1:port whether it serves clients.

    ApiVersions (v0, error code must be 0) proves a Kafka listener; a Metadata request
    must then list at least one broker, i.e. this broker has registered with its
    controller and been unfenced, so topics can be created. Returns (ready, reason).
    """
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            body = _call(sock, 18, 0, 1, b"")
            error, count = struct.unpack_from(">hi", body, 0)
            if error != 0:
                return False, f"ApiVersions error {error}"
            ranges = {}
            for i in range(count):
                key, low, high = struct.unpack_from(">hhh", body, 6 + 6 * i)
                ranges[key] = (low, high)
            if 3 not in ranges:
                return False, "no Metadata API advertised"
            low, high = ranges[3]
            version = max(low, 1)
            if version > min(high, 8):
                return True, "Metadata has no non-flexible version to probe; ApiVersions ok"
            request = struct.pack(">i", 0)  # no topics: brokers and cluster only
            if version >= 4:
                request += b"\x00"  # allow_auto_topic_creation
            if version >= 8:
                request += b"\x00\x00"  # include cluster / topic authorized operations
            reply = _call(sock, 3, version, 2, request)
            at = 4 if version >= 3 else 0  # throttle_time_ms
            brokers = struct.unpack_from(">i", reply, at)[0]
            if brokers < 1:
                return False, "broker not yet registered (Metadata lists no brokers)"
            return True, f"ApiVersions ok, Metadata v{version} lists {brokers} broker(s)"
    except (OSError, struct.error) as exc:
        return False, f"{type(exc).__name__}: {exc}"


def api_versions_ok(port: int, timeout: float = 2.0) -> bool:
    """Kept for callers of the earlier API: True when the broker is ready (see probe)."""
    return probe(port, timeout)[0]


# ---------------------------------------------------------------------------------------

LOG4J2 = """status = warn
shutdownHook = disable
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {log}
appender.file.filePattern = {log}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 2
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.statechange.name = state.change.logger
logger.statechange.level = warn
logger.request.name = kafka.request.logger
logger.request.level = warn
"""

LOG4J1 = """log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File={log}
log4j.appender.file.MaxFileSize=20MB
log4j.appender.file.MaxBackupIndex=2
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.request.logger=WARN
"""


SECURE_LISTENERS = ("SSL", "MTLS", "SASL_SSL")
SASL_USER = "outreach"


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(
        ["openssl", *args], cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed:\n{result.stderr}")


def make_certificates(tls: Path, days: int = 30) -> None:
    """A CA of its own, the broker's certificate (127.0.0.1, localhost) and a client's,
    as PEM files in `tls` (made once; kept with the data dir), and the SASL user's
    password."""
    if (tls / "client.pem").exists():
        return
    tls.mkdir(parents=True, exist_ok=True)
    os.chmod(tls, 0o700)
    (tls / "sasl.password").write_text(base64.urlsafe_b64encode(os.urandom(18)).decode() + "\n")
    ca = ["-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", str(days)]
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        str(days),
        "-subj",
        "/CN=outreach-local-ca",
        cwd=tls,
    )
    for name, extensions in (
        ("broker", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        (tls / f"{name}.ext").write_text(extensions + "\n")
        _openssl(
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            f"{name}.key",
            cwd=tls,
        )
        _openssl(
            "req",
            "-new",
            "-key",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN=outreach-{name}",
            cwd=tls,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            *ca,
            "-out",
            f"{name}.crt",
            "-extfile",
            f"{name}.ext",
            cwd=tls,
        )
    # The broker's PEM keystore: its key (PKCS#8) then its certificate.
    (tls / "broker.pem").write_text(
        (tls / "broker.key").read_text() + (tls / "broker.crt").read_text()
    )
    (tls / "client.pem").write_text((tls / "client.crt").read_text())
    for path in tls.iterdir():
        os.chmod(path, 0o600)


class LocalKafka:
    """One single-node KRaft broker on 127.0.0.1, owned by this object (or its pid file).

    port=0 / controller_port=0 pick free ports; data_dir=None makes a temporary folder
    that stop() deletes. start() returns self once clients can use the broker.
    """

    def __init__(
        self,
        port: int = 9092,
        controller_port: int = 0,
        data_dir: str | os.PathLike[str] | None = None,
        partitions: int = 4,
        heap: str = "512m",
        log_dir: str | os.PathLike[str] | None = None,
        version: str = KAFKA_VERSION,
        secure: bool = False,
    ) -> None:
        self._own_dir = data_dir is None
        # Besides PLAINTEXT, listeners for TLS (SSL), mutual TLS (MTLS) and SASL over TLS
        # (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512): certificates from a CA of its own.
        self.secure = secure
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="outreach-kafka-")).resolve()
        self.log_dir = Path(log_dir).resolve() if log_dir else self.data_dir
        self.version = version
        self.partitions = partitions
        self.heap = heap
        self.pid_file = self.data_dir / "kafka.pid"
        self.properties = self.data_dir / "server.properties"
        self.log_file = self.log_dir / "server.log"
        self.stdout_file = self.log_dir / "kafka.out"
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None
        # A broker already running from this data dir keeps its ports.
        recorded = self._recorded_ports() if self.running_pid() is not None else None
        if recorded:
            self.port, self.controller_port = recorded["PLAINTEXT"], recorded["CONTROLLER"]
            self.secure_ports = {n: recorded[n] for n in SECURE_LISTENERS if n in recorded}
            self.secure = bool(self.secure_ports)
        else:
            self.port = port or free_port()
            self.controller_port = controller_port or free_port()
            self.secure_ports = {n: free_port() for n in SECURE_LISTENERS} if secure else {}
        self.tls_dir = self.data_dir / "tls"

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    def secure_bootstrap(self, listener: str) -> str:
        """The address of one of the secure listeners (SSL, MTLS, SASL_SSL)."""
        if listener not in self.secure_ports:
            raise ValueError(f"no {listener} listener: start LocalKafka(secure=True)")
        return f"{HOST}:{self.secure_ports[listener]}"

    def client_env(self, listener: str, mechanism: str = "SCRAM-SHA-512") -> dict[str, str]:
        """The KAFKA_* settings (common/kafka_security.py) of a client of `listener`:
        the CA to trust; for MTLS the client's certificate; for SASL_SSL the user."""
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.secure_bootstrap(listener),
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL" if listener == "SASL_SSL" else "SSL",
            "KAFKA_SSL_CAFILE": str(self.tls_dir / "ca.pem"),
        }
        if listener == "MTLS":
            env["KAFKA_SSL_CERTFILE"] = str(self.tls_dir / "client.pem")
            env["KAFKA_SSL_KEYFILE"] = str(self.tls_dir / "client.key")
        if listener == "SASL_SSL":
            env["KAFKA_SASL_MECHANISM"] = mechanism
            env["KAFKA_SASL_USERNAME"] = SASL_USER
            env["KAFKA_SASL_PASSWORD"] = self.sasl_password()
        return env

    def sasl_password(self) -> str:
        return (self.tls_dir / "sasl.password").read_text().strip()

    # -- state ------------------------------------------------------------------------

    def _recorded_ports(self) -> dict[str, int] | None:
        try:
            lines = self.properties.read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            if line.startswith("listeners="):
                return dict(
                    (item.split("://")[0], int(item.rsplit(":", 1)[1]))
                    for item in line.split("=", 1)[1].split(",")
                )
        return None

    def running_pid(self) -> int | None:
        """The pid in the pid file if that process is alive and is our broker."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _is_our_broker(pid, self.properties) else None

    def is_ready(self) -> bool:
        return probe(self.port)[0]

    # -- files ------------------------------------------------------------------------

    def _write_config(self) -> None:
        kafka_logs = self.data_dir / "logs"
        kafka_logs.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            "# Written by deploy/kafka/local_kafka.py; rewritten on every start.",
            "process.roles=broker,controller",
            "node.id=1",
            # A static quorum: no --standalone at format time, and the controller port may
            # change between restarts of the same data dir.
            f"controller.quorum.voters=1@{HOST}:{self.controller_port}",
            f"listeners=PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}"
            + "".join(f",{n}://{HOST}:{p}" for n, p in self.secure_ports.items()),
            f"advertised.listeners=PLAINTEXT://{HOST}:{self.port}"
            + "".join(f",{n}://{HOST}:{p}" for n, p in self.secure_ports.items()),
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
            + (",SSL:SSL,MTLS:SSL,SASL_SSL:SASL_SSL" if self.secure_ports else ""),
            *(self._secure_config() if self.secure_ports else []),
            f"log.dirs={kafka_logs}",
            f"num.partitions={self.partitions}",
            "default.replication.factor=1",
            "min.insync.replicas=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=8",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=4",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=true",
            "delete.topic.enable=true",
            "log.retention.hours=168",
            "log.segment.bytes=67108864",
            "",
        ]
        self.properties.write_text("\n".join(lines))
        if _major(self.version) >= 4:
            (self.data_dir / "log4j2.properties").write_text(LOG4J2.format(log=self.log_file))
        else:
            (self.data_dir / "log4j.properties").write_text(LOG4J1.format(log=self.log_file))

    def _secure_config(self) -> list[str]:
        """TLS from PEM files (no keystore tool needed); SASL users: PLAIN in the
        listener's JAAS line, SCRAM in the cluster's metadata (added at format)."""
        tls = self.tls_dir
        password = self.sasl_password()
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        plain = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'user_{SASL_USER}="{password}";'
        )
        return [
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={tls / 'broker.pem'}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={tls / 'ca.pem'}",
            "ssl.client.auth=none",
            "listener.name.mtls.ssl.client.auth=required",
            "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
            f"listener.name.sasl_ssl.plain.sasl.jaas.config={plain}",
            f"listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={scram}",
            f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram}",
        ]

    def _java(self, libs: Path) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise RuntimeError(
                "java (17+) is needed to run Kafka: apt-get install openjdk-17-jre-headless"
            )
        if _major(self.version) >= 4:
            logging = f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}"
        else:
            logging = f"-Dlog4j.configuration=file:{self.data_dir / 'log4j.properties'}"
        return [
            java,
            f"-Xmx{self.heap}",
            f"-Xms{self.heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self.log_dir}",
            logging,
            "-cp",
            f"{libs}/*",
        ]

    def _format_storage(self, java: list[str]) -> None:
        if (self.data_dir / "logs" / "meta.properties").exists():
            return
        cmd = [
            *java,
            "kafka.tools.StorageTool",
            "format",
            "-t",
            new_cluster_id(),
            "-c",
            str(self.properties),
            "--ignore-formatted",
        ]
        if self.secure_ports:
            password = self.sasl_password()
            for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
                cmd += ["--add-scram", f"{mechanism}=[name={SASL_USER},password={password}]"]
        result = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(
                "formatting KRaft storage failed:\n"
                f"{result.stdout}{result.stderr}\n{self.log_tail()}"
            )

    # -- lifecycle --------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> LocalKafka:
        """Start the broker (or adopt the one running from this data dir) and wait for it."""
        if self.running_pid() is not None:
            self.wait(timeout)
            return self
        try:
            libs = ensure_jars(self.version)
            for port in (self.port, self.controller_port):
                if port_in_use(port):
                    raise RuntimeError(f"port {HOST}:{port} is already in use by another process")
            self.data_dir.mkdir(parents=True, exist_ok=True)
            if self.secure_ports:
                make_certificates(self.tls_dir)
            self._write_config()
            java = self._java(libs)
            self._format_storage(java)
        except BaseException:
            if self._own_dir:
                shutil.rmtree(self.data_dir, ignore_errors=True)
            raise
        started = time.monotonic()
        with open(self.stdout_file, "ab") as out:
            self.proc = subprocess.Popen(
                [*java, "kafka.Kafka", str(self.properties)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,  # own session and process group: no terminal signals
            )
        self.pid_file.write_text(f"{self.proc.pid}\n")
        try:
            self.wait(timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def wait(self, timeout: float = 90.0) -> LocalKafka:
        """Wait until the broker serves clients; raise with the log tail if it dies or times out."""
        deadline = time.monotonic() + max(timeout, 1.0)
        reason = "not probed"
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"Kafka exited with code {self.proc.returncode} before it was ready:\n"
                    f"{self.log_tail()}"
                )
            if self.proc is None and self.pid_file.exists() and self.running_pid() is None:
                raise RuntimeError(f"Kafka is not running from {self.data_dir}:\n{self.log_tail()}")
            ready, reason = probe(self.port, timeout=1.0)
            if ready:
                return self
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"Kafka did not become ready on {self.bootstrap} within {timeout:.0f}s "
                    f"(last probe: {reason}):\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for path in (self.stdout_file, self.log_file):
            if path.exists() and path.stat().st_size:
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path} (last {len(tail)} lines)\n" + "\n".join(tail))
        return "\n".join(parts) or f"(no log output in {self.log_dir})"

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the broker's pid, SIGKILL it after `timeout` seconds; remove the pid file."""
        pid = self.proc.pid if self.proc is not None else self.running_pid()
        if pid is not None and _alive(pid, self.proc):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and _alive(pid, self.proc):
                time.sleep(0.1)
            if _alive(pid, self.proc):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                while _alive(pid, self.proc):
                    time.sleep(0.05)
        if self.proc is not None:
            self.proc.wait()
            self.proc = None
        self.pid_file.unlink(missing_ok=True)
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _is_our_broker(pid: int, properties: Path) -> bool:
    """Alive, not a zombie, and running kafka.Kafka with this data dir's server.properties."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and b"kafka.Kafka" in cmdline and str(properties).encode() in cmdline


def _alive(pid: int, proc: subprocess.Popen[bytes] | None) -> bool:
    if proc is not None:
        return proc.poll() is None
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["up", "down", "status", "wait", "fetch"])
    parser.add_argument("--port", type=int, default=int(os.environ.get("KAFKA_PORT", "9092")))
    parser.add_argument(
        "--controller-port",
        type=int,
        default=int(os.environ.get("KAFKA_CONTROLLER_PORT", "9093")),
    )
    parser.add_argument(
        "--data-dir", default=os.environ.get("KAFKA_DATA_DIR") or str(cache_dir() / "kafka-data")
    )
    parser.add_argument(
        "--log-dir", default=os.environ.get("KAFKA_LOG_DIR"), help="broker logs (default: data dir)"
    )
    parser.add_argument(
        "--partitions", type=int, default=int(os.environ.get("KAFKA_NUM_PARTITIONS", "4"))
    )
    parser.add_argument("--heap", default=os.environ.get("KAFKA_HEAP", "512m"))
    parser.add_argument(
        "--timeout", type=float, default=float(os.environ.get("KAFKA_START_TIMEOUT", "90"))
    )
    parser.add_argument(
        "--secure",
        action="store_true",
        help="also TLS, mutual-TLS and SASL_SSL listeners (a fresh data dir); prints each "
        "one's client settings",
    )
    args = parser.parse_args(argv)
    if args.command == "fetch":
        print(ensure_jars())
        return 0
    kafka = LocalKafka(
        port=args.port,
        controller_port=args.controller_port,
        data_dir=args.data_dir,
        partitions=args.partitions,
        heap=args.heap,
        log_dir=args.log_dir,
        secure=args.secure,
    )
    pid = kafka.running_pid()
    if args.command == "status":
        if pid is None:
            print(f"kafka not running (data dir {kafka.data_dir})")
            return 1
        ready, reason = probe(kafka.port)
        state = "running" if ready else "running but not ready"
        print(f"kafka {state} at {kafka.bootstrap} (pid {pid}): {reason}")
        return 0 if ready else 1
    if args.command == "down":
        if pid is None:
            print("kafka is not running")
            return 0
        kafka.stop()
        print(f"kafka stopped (pid {pid})")
        return 0
    try:
        if args.command == "wait":
            kafka.wait(args.timeout)
            print(f"kafka ready at {kafka.bootstrap}")
            return 0
        if pid is not None:
            kafka.wait(args.timeout)
            print(f"kafka already running at {kafka.bootstrap} (pid {pid})")
            return 0
        kafka.start(args.timeout)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"kafka {kafka.version} up at {kafka.bootstrap} (pid {kafka.running_pid()}) "
        f"in {kafka.startup_seconds:.1f}s; data in {kafka.data_dir}, log {kafka.log_file}"
    )
    password = f"$(cat {kafka.tls_dir / 'sasl.password'})"  # not printed itself
    for listener in kafka.secure_ports:
        env = kafka.client_env(listener) | (
            {"KAFKA_SASL_PASSWORD": password} if "SASL" in listener else {}
        )
        print(f"  {listener}: " + " ".join(f"{k}={v}" for k, v in env.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
