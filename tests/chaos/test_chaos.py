"""A representative subset of the fault matrix, in `make test`: answers lost after the
provider took the message, three sweepers racing for every row in doubt, a SIGKILL at
two failpoints of the send path (tests/e2e/test_outreach_crash.py kills at the other
three), and preferences down for 8 s. Each runs the whole
system (four services as processes, the real broker, PostgreSQL) and is judged by the
checker from outside effects only. `make chaos` runs the whole matrix."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from tests.chaos.scenarios import SUBSET, Infra, matrix, run
from tests.chaos.world import Databases

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]


@pytest.fixture
def infra(kafka_bootstrap: str, postgres_server_url: str, tmp_path: Path) -> Infra:
    def databases() -> Databases:
        urls = []
        with psycopg.connect(postgres_server_url, autocommit=True) as conn:
            for kind in ("o", "p"):
                name = f"{kind}_{uuid.uuid4().hex[:10]}"
                conn.execute(f'CREATE DATABASE "{name}"')
                urls.append(postgres_server_url.rsplit("/", 1)[0] + "/" + name)
        return Databases(*urls)

    return Infra(kafka_bootstrap, databases, tmp_path)


@pytest.mark.parametrize("name", sorted(SUBSET))
def test_exactly_one_right_message_under_the_fault(infra: Infra, name: str) -> None:
    scenario = next(s for s in matrix(infra) if s.name == name)
    verdict = run(replace(scenario, **SUBSET[name]), infra)
    assert verdict.ok, "\n".join(
        [f"{name}: {verdict.outcomes}", *verdict.notes]  # what was violated, and how
    )
    assert verdict.accepted > 0 and verdict.decisions >= scenario.size // 2
