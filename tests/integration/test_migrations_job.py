"""The migrations Job's commands: `python -m services.outreach.migrate` and
`python -m services.preferences.migrate`, started together twice each (a Job and the
replicas at once), on a fresh PostgreSQL database and on SQLite files. Each exits 0 and
leaves the database at its newest revision; the log names no credentials."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
ROOT = Path(__file__).resolve().parents[2]


def heads(service: str) -> set[str]:
    """The newest revision(s) of a service's migrations, read from its versions."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(ROOT / "services" / service / "migrations"))
    return set(ScriptDirectory.from_config(config).get_heads())


def run_together(env: dict[str, str]) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", f"services.{service}.migrate"],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for service in ("outreach", "preferences", "outreach", "preferences")
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=150)
        assert proc.returncode == 0, out[-2000:]
        assert '"migrated"' in out
        assert "secret-pw" not in out  # the URL's password never reaches the log


def fresh_database(server_url: str, name: str) -> str:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + "/" + name


def test_on_postgresql(postgres_server_url: str) -> None:
    suffix = uuid.uuid4().hex[:10]
    urls = {
        service: fresh_database(postgres_server_url, f"m_{service[:4]}_{suffix}")
        for service in ("outreach", "preferences")
    }
    # With a password in the URL (the local server trusts loopback and ignores it).
    env = {
        f"{service.upper()}_DATABASE_URL": url.replace("://postgres@", "://postgres:secret-pw@")
        for service, url in urls.items()
    }
    assert all("secret-pw" in url for url in env.values())
    run_together(env)
    for service, url in urls.items():
        with psycopg.connect(url) as conn:
            found = {row[0] for row in conn.execute("SELECT version_num FROM alembic_version")}
        assert found == heads(service), service


def test_on_sqlite_files(tmp_path: Path) -> None:
    outreach_db, preferences_db = tmp_path / "outreach.db", tmp_path / "preferences.db"
    run_together(
        {
            "OUTREACH_DATABASE_URL": f"sqlite:///{outreach_db}",
            "PREFERENCES_DATABASE_URL": f"sqlite:///{preferences_db}",
            "OUTREACH_DATA_DIR": str(tmp_path),
        }
    )
    import sqlite3

    for service, path in (("outreach", outreach_db), ("preferences", preferences_db)):
        with sqlite3.connect(path) as conn:
            found = {row[0] for row in conn.execute("SELECT version_num FROM alembic_version")}
        assert found == heads(service), service
