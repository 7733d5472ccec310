#!/usr/bin/env python3
"""A real single-node Apache Kafka broker (KRaft, broker+controller) on 127.0.0.1.

No Docker: the broker's jars come from Maven Central (once, cached outside the repo in
$OUTREACH_CACHE_DIR, default ~/.cache/proactive-outreach), storage is formatted with
kafka.tools.StorageTool, and the JVM runs detached with its pid in a file.

    python deploy/kafka/local_kafka.py up [--port 9092]   start (idempotent) and wait
    python deploy/kafka/local_kafka.py down                stop by pid
    python deploy/kafka/local_kafka.py status

Tests use the class: LocalKafka(port=0, data_dir=tmp).start() ... .stop().
Standard library only, so it runs before any virtualenv exists.
"""

from __future__ import annotations

import argparse
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
from pathlib import Path

KAFKA_VERSION = "4.1.1"
HERE = Path(__file__).resolve().parent


def cache_dir() -> Path:
    return Path(os.environ.get("OUTREACH_CACHE_DIR", Path.home() / ".cache" / "proactive-outreach"))


def libs_dir() -> Path:
    return cache_dir() / f"kafka-{KAFKA_VERSION}" / "libs"


def ensure_jars() -> Path:
    """Fetch the broker jars with Maven once; later calls find the marker and return."""
    libs = libs_dir()
    marker = libs / ".complete"
    if marker.exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError("Maven (mvn) is needed to fetch the Kafka jars: apt-get install maven")
    libs.mkdir(parents=True, exist_ok=True)
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(HERE / "pom.xml"),
        f"-Dkafka.version={KAFKA_VERSION}",
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={libs}",
    ]
    result = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"fetching Kafka {KAFKA_VERSION} jars failed:\n{result.stdout}\n{result.stderr}"
        )
    if not any(libs.glob("kafka_2.13-*.jar")):
        raise RuntimeError(f"no kafka_2.13 jar in {libs} after mvn")
    marker.write_text(KAFKA_VERSION)
    return libs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def api_versions_ok(port: int, timeout: float = 2.0) -> bool:
    """Send a real Kafka ApiVersions v0 request and check the broker answers error 0."""
    correlation = 7
    client = b"outreach-probe"
    body = struct.pack(">hhih", 18, 0, correlation, len(client)) + client
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(struct.pack(">i", len(body)) + body)
            size = struct.unpack(">i", _recv(s, 4))[0]
            reply = _recv(s, size)
    except OSError:
        return False
    got_correlation, error = struct.unpack(">ih", reply[:6])
    return got_correlation == correlation and error == 0


def _recv(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise OSError("connection closed")
        data += chunk
    return data


LOG4J2 = """status = warn
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
"""


class LocalKafka:
    def __init__(
        self,
        port: int = 9092,
        controller_port: int = 0,
        data_dir: str | None = None,
        partitions: int = 4,
        heap: str = "512m",
    ) -> None:
        self.port = port or free_port()
        self.controller_port = controller_port or free_port()
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="outreach-kafka-"))
        self.partitions = partitions
        self.heap = heap
        self.pid_file = self.data_dir / "kafka.pid"
        self.log_file = self.data_dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def running_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except OSError:
            return None
        return pid

    def _write_config(self) -> Path:
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        props = self.data_dir / "server.properties"
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    f"log.dirs={logs}",
                    f"num.partitions={self.partitions}",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=8",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "min.insync.replicas=1",
                    "default.replication.factor=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=true",
                    "log.retention.hours=168",
                    "log.segment.bytes=67108864",
                    "",
                ]
            )
        )
        (self.data_dir / "log4j2.properties").write_text(LOG4J2.format(log=self.log_file))
        return props

    def start(self, timeout: float = 90.0) -> LocalKafka:
        if self.running_pid() is not None and api_versions_ok(self.port):
            return self
        libs = ensure_jars()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self._write_config()
        java = shutil.which("java") or "java"
        classpath = f"{libs}/*"
        jvm = [
            java,
            f"-Xmx{self.heap}",
            f"-Xms{self.heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp",
            classpath,
        ]
        if not (self.data_dir / "logs" / "meta.properties").exists():
            cluster_id = str(uuid.uuid4().hex[:22])
            fmt = subprocess.run(
                jvm
                + [
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id,
                    "-c",
                    str(props),
                    "--ignore-formatted",
                ],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
            )
            if fmt.returncode != 0:
                raise RuntimeError(f"formatting KRaft storage failed:\n{fmt.stdout}{fmt.stderr}")
        out = open(self.data_dir / "stdout.log", "ab")  # noqa: SIM115 - owned by the broker
        self.proc = subprocess.Popen(
            jvm + ["kafka.Kafka", str(props)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid_file.write_text(str(self.proc.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Kafka exited with {self.proc.returncode}:\n{self.log_tail()}")
            if api_versions_ok(self.port, timeout=1.0):
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(
            f"Kafka did not answer on {self.bootstrap} within {timeout}s:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 40) -> str:
        text = ""
        for path in (self.data_dir / "stdout.log", self.log_file):
            if path.exists():
                text += "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text

    def stop(self, timeout: float = 20.0) -> None:
        pid = self.proc.pid if self.proc is not None else self.running_pid()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pid = None
        if pid is not None:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and _alive(pid, self.proc):
                time.sleep(0.1)
            if _alive(pid, self.proc):
                os.kill(pid, signal.SIGKILL)
            if self.proc is not None:
                self.proc.wait()
        self.pid_file.unlink(missing_ok=True)
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def _alive(pid: int, proc: subprocess.Popen[bytes] | None) -> bool:
    if proc is not None:
        return proc.poll() is None
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["up", "down", "status", "fetch"])
    parser.add_argument("--port", type=int, default=int(os.environ.get("KAFKA_PORT", "9092")))
    parser.add_argument(
        "--controller-port", type=int, default=int(os.environ.get("KAFKA_CONTROLLER_PORT", "9093"))
    )
    parser.add_argument("--data-dir", default=str(cache_dir() / "kafka-data"))
    args = parser.parse_args(argv)
    kafka = LocalKafka(port=args.port, controller_port=args.controller_port, data_dir=args.data_dir)
    if args.command == "fetch":
        print(ensure_jars())
        return 0
    if args.command == "status":
        pid = kafka.running_pid()
        up = pid is not None and api_versions_ok(args.port)
        print(f"kafka {'running' if up else 'not running'}" + (f" (pid {pid})" if pid else ""))
        return 0 if up else 1
    if args.command == "down":
        if kafka.running_pid() is None:
            print("kafka is not running")
            return 0
        kafka.stop()
        print("kafka stopped")
        return 0
    if kafka.running_pid() is not None and api_versions_ok(args.port):
        print(f"kafka already running at {kafka.bootstrap} (pid {kafka.running_pid()})")
        return 0
    started = time.monotonic()
    kafka.start()
    print(
        f"kafka {KAFKA_VERSION} up at {kafka.bootstrap} (pid {kafka.running_pid()}) "
        f"in {time.monotonic() - started:.1f}s; data in {kafka.data_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
