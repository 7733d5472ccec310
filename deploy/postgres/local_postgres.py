#!/usr/bin/env python3
"""A throwaway PostgreSQL server on 127.0.0.1 for the test suite (standard library only).

    python deploy/postgres/local_postgres.py up|down|status [--port 55432] [--data-dir DIR]

Uses the Debian server binaries (`apt-get install postgresql`; /usr/lib/postgresql/*/bin).
PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres` system
user (created by the Debian package) and commands run through `runuser`.
"""

from __future__ import annotations

import argparse
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        raise RuntimeError(f"PostgreSQL's {name} not found: apt-get install postgresql")
    return candidates[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalPostgres:
    def __init__(self, port: int = 0, data_dir: str | None = None, database: str = "outreach"):
        self.port = port or _free_port()
        self._own_dir = data_dir is None
        self.base = Path(data_dir or tempfile.mkdtemp(prefix="outreach-pg-"))
        self.data = self.base / "data"
        self.socket_dir = self.base / "run"
        self.database = database
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def _run(self, args: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        if os.geteuid() == 0:
            args = ["runuser", "-u", "postgres", "--", *args]
        return subprocess.run(
            args, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=check
        )

    def _chown(self) -> None:
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            for path in (self.base, self.data, self.socket_dir):
                path.mkdir(parents=True, exist_ok=True)
                os.chown(path, pw.pw_uid, pw.pw_gid)

    def start(self, timeout: float = 60.0) -> LocalPostgres:
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)
        self._chown()
        if not (self.data / "PG_VERSION").exists():
            self._run(
                [
                    _bin("initdb"),
                    "-D",
                    str(self.data),
                    "-A",
                    "trust",
                    "-U",
                    self.user,
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            )
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.socket_dir} -c fsync=off "
            f"-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        result = self._run(
            [
                _bin("pg_ctl"),
                "-D",
                str(self.data),
                "-o",
                options,
                "-l",
                str(self.base / "postgres.log"),
                "-w",
                "-t",
                str(int(timeout)),
                "start",
            ],
            check=False,
        )
        if result.returncode != 0:
            log = self.base / "postgres.log"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {result.stderr}\n{tail}")
        created = self._run(
            [
                _bin("psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-d",
                "postgres",
                "-tAc",
                f"SELECT 1 FROM pg_database WHERE datname='{self.database}'",
            ]
        )
        if created.stdout.strip() != "1":
            self._run(
                [
                    _bin("createdb"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-U",
                    self.user,
                    self.database,
                ]
            )
        return self

    def create_database(self, name: str) -> str:
        self._run(
            [_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name]
        )
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        pid_file = self.data / "postmaster.pid"
        if pid_file.exists():
            result = self._run(
                [_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"], check=False
            )
            if result.returncode != 0:
                pid = int(pid_file.read_text().splitlines()[0])
                os.kill(pid, signal.SIGKILL)
        if self._own_dir:
            shutil.rmtree(self.base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--port", type=int, default=55432)
    cache = Path(
        os.environ.get("OUTREACH_CACHE_DIR", Path.home() / ".cache" / "proactive-outreach")
    )
    parser.add_argument("--data-dir", default=str(cache / "postgres"))
    args = parser.parse_args(argv)
    pg = LocalPostgres(port=args.port, data_dir=args.data_dir)
    running = (pg.data / "postmaster.pid").exists()
    if args.command == "status":
        print("postgres running" if running else "postgres not running")
        return 0 if running else 1
    if args.command == "down":
        pg.stop()
        print("postgres stopped")
        return 0
    if not running:
        started = time.monotonic()
        pg.start()
        print(f"postgres up at {pg.url} in {time.monotonic() - started:.1f}s")
    else:
        print(f"postgres already running at {pg.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
