"""The outcome report where people read it — the studio's Outcomes page over HTTP and
`outreachctl outcomes` — on SQLite and PostgreSQL: forty customers decided a hundred
days ago, half of them held out, the treated ones ordering again more often. Only what the
page and the command show is checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from decimal import Decimal

import pytest

from common.clock import wall_now
from services.outreach.adapters.conversations import HandoffStore, ReplyStore
from services.outreach.adapters.db import create_engine, create_schema, session_factory
from services.outreach.adapters.ledger import Delivery, Ledger
from services.outreach.adapters.outcomes import OutcomeStore
from services.outreach.adapters.render_pool import InlineRenderer
from services.outreach.adapters.templates import TemplateStore
from services.outreach.config import Settings
from services.outreach.domain.outcomes import Decided, Fact
from services.outreach.studio.accounts import Accounts
from services.outreach.studio.context import Studio
from services.outreach.studio.security import LoginThrottle
from tests.integration.outreach.test_conversation_view import as_role, page

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def decision(n: int, control: bool, at) -> Delivery:
    arm = {
        "experiment": "apology-effect", "subject": "intent:apology", "control_share": 0.5,
        "arm": "control" if control else "treatment", "effect": "withheld" if control else None,
    }  # fmt: skip
    return Delivery(
        decision_id=f"d-{n}", request_id=f"r-{n}", customer_id=f"c-{n:02d}", order_id=f"o-{n}",
        cause_type="incident", cause_id=f"i-{n}", cause_kind="delivery_late", intent="apology",
        message_kind="delivery_late", severity="warning", category="service",
        status="suppressed" if control else "sent", reason="holdout" if control else None,
        rule="", decided_at=at, updated_at=at, attempts=0, revision=1, request={},
        experiments=[arm],
    )  # fmt: skip


@pytest.fixture
async def world(database_url, tmp_path):
    engine = create_engine(database_url)
    await create_schema(engine)
    sessions = session_factory(engine)
    at = wall_now() - timedelta(days=100)
    rows = [decision(n, n % 2 == 0, at) for n in range(40)]
    async with sessions() as s, s.begin():
        s.add_all(rows)
    store = OutcomeStore(sessions)
    for row in rows:  # as the worker records them when it decides
        await store.expose(
            Decided(row.decision_id, row.customer_id, row.order_id, row.decided_at,
                    row.message_kind, row.intent, row.status, row.experiments)
        )  # fmt: skip
    for n in range(40):  # 15 of 20 treated customers order again, 5 of 20 held out
        if (n % 2 == 1 and n < 30) or (n % 2 == 0 and n < 10):
            await store.record(
                Fact(f"e-{n}", f"c-{n:02d}", f"new-{n}", at + timedelta(days=3), "order",
                     Decimal("40.00"), "EUR")
            )  # fmt: skip
    settings = Settings(data_dir=tmp_path, database_url=database_url)
    studio = Studio(
        settings=settings, store=TemplateStore(sessions, renderer=InlineRenderer()),
        ledger=Ledger(sessions), accounts=Accounts(sessions), senders={},
        throttle=LoginThrottle(5, 300), renderer=InlineRenderer(),
        replies=ReplyStore(sessions), handoffs=HandoffStore(sessions),
    )  # fmt: skip
    yield studio, database_url
    await engine.dispose()


async def test_the_page_compares_the_arms_for_every_role(world):
    studio, _ = world
    viewer = await as_role(studio, "viewer")
    try:
        html = await page(viewer, "/outcomes?days=180")
        assert "apology-effect" in html and "intent:apology" in html
        assert "20 customers in control, 20 in treatment" in html
        assert "75.0 %" in html and "25.0 %" in html  # ordered again within 30 days
        assert "+50.0 pt" in html and "better" in html
        assert "c-01" not in html  # counts, never a customer
        assert (await viewer.get("/outcomes?days=7")).status == 400
        assert (await viewer.get("/outcomes?experiment=nope")).status == 404
        one = await page(viewer, "/outcomes?experiment=apology-effect")
        assert "apology-effect" in one
        empty = await page(viewer, "/outcomes?days=90")  # decided 100 days ago: not in it
        assert "Outcome facts are kept" not in empty
        assert "Outcome facts are kept 180 days" in await page(viewer, "/outcomes?days=365")
        assert "No experiment covered a decision" in empty
    finally:
        await viewer.close()


def test_outreachctl_outcomes_prints_the_same_report(world):
    _, database_url = world
    env = {**os.environ, "OUTREACH_DATABASE_URL": database_url}
    done = subprocess.run(
        [sys.executable, "-m", "common.cli", "outcomes", "--output", "json"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    (group,) = report["experiments"]
    repeat = next(o for o in group["outcomes"] if o["metric"] == "repeat_30")
    assert (repeat["control"], repeat["treatment"]) == (0.25, 0.75)
    assert repeat["verdict"] == "better" and report["currency"] == "EUR"
    text = subprocess.run(
        [sys.executable, "-m", "common.cli", "outcomes", "--experiment", "apology-effect"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert "apology-effect (intent:apology): 20 control, 20 treatment customers" in text.stdout
