"""The studio's Remedies page over HTTP, on SQLite and PostgreSQL: every role sees the
policy and the period's spending; an admin saves a version (refused, with the reason on
the page, when it cannot be used), publishes it and rolls back, each in the audit; a
publisher may not. Only what the pages show and the stores hold are checked."""

from __future__ import annotations

import json
import re
from decimal import Decimal

import pytest

from common.clock import wall_now
from services.outreach.adapters.conversations import HandoffStore, ReplyStore
from services.outreach.adapters.db import create_engine, create_schema, session_factory
from services.outreach.adapters.ledger import Ledger
from services.outreach.adapters.render_pool import InlineRenderer
from services.outreach.adapters.templates import TemplateStore
from services.outreach.config import Settings
from services.outreach.domain.remedies import Facts
from services.outreach.studio.accounts import Accounts
from services.outreach.studio.context import Studio
from services.outreach.studio.security import LoginThrottle
from tests.integration.outreach.test_conversation_view import as_role, page
from tests.integration.outreach.test_studio_http import csrf_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
POLICY = {
    "currency": "EUR",
    "budget": {"period": "month", "cap": "250"},
    "rules": [{"intents": ["apology"], "offer": ["amount:10"]}],
}


@pytest.fixture
async def studio(database_url, tmp_path):
    engine = create_engine(database_url)
    await create_schema(engine)
    sessions = session_factory(engine)
    store = TemplateStore(sessions, renderer=InlineRenderer())
    found = Studio(
        settings=Settings(data_dir=tmp_path), store=store,
        ledger=Ledger(sessions), accounts=Accounts(sessions), senders={},
        throttle=LoginThrottle(5, 300), renderer=InlineRenderer(),
        replies=ReplyStore(sessions), handoffs=HandoffStore(sessions),
    )  # fmt: skip
    yield found
    await engine.dispose()


async def test_an_admin_saves_publishes_and_rolls_back_the_policy(studio):
    admin = await as_role(studio, "admin")
    publisher = await as_role(studio, "publisher")
    try:
        html = await page(admin, "/remedies")
        assert "the default: no version published yet" in html and "no cap" in html
        token = csrf_of(html)
        bad = await admin.post("/remedies", data={"csrf_token": token, "document": "{"})
        assert bad.status == 422 and "Not JSON" in await bad.text()
        wrong = json.dumps({**POLICY, "rules": [{"offer": ["cashback:5"]}]})
        refused = await admin.post("/remedies", data={"csrf_token": token, "document": wrong})
        assert refused.status == 422 and "rules[1].offer" in await refused.text()
        for note in ("ten euros off", "twenty"):
            doc = POLICY if note == "ten euros off" else {**POLICY, "budget": {"cap": "500"}}
            saved = await admin.post(
                "/remedies",
                data={"csrf_token": token, "document": json.dumps(doc), "note": note},
                allow_redirects=False,
            )
            assert saved.status == 303
        for version in (1, 2, 1):  # publish one, the other, then roll back to the first
            done = await admin.post(
                f"/remedies/versions/{version}/publish", data={"csrf_token": token},
                allow_redirects=False,
            )  # fmt: skip
            assert done.status == 303, re.findall(r"Not published[^<]*", await done.text())
        html = await page(admin, "/remedies")
        assert "(version 1)" in html and "250" in html
        audit = [(e.action, e.target) for e in await studio.accounts.audit_log()]
        assert ("published_remedy_policy", "v1") in audit and ("saved_remedy_policy", "v2") in audit
        _, policy = await studio.remedies.policy()
        assert policy.cap == Decimal("250")

        mine = csrf_of(await page(publisher, "/remedies"))
        forbidden = await publisher.post(
            "/remedies", data={"csrf_token": mine, "document": json.dumps(POLICY)}
        )
        assert forbidden.status == 403
        facts = Facts("delivery_late", "apology", "warning", None, None, Decimal("60"), "EUR")
        await studio.remedies.grant("dec-1", "c-1", None, facts, wall_now(), "secret")
        shown = await page(publisher, "/remedies")  # every role sees the spending
        assert re.search(r"Spent 10(\.00)? EUR of 250", shown)
        assert "Save as a draft" not in shown
    finally:
        await admin.close()
        await publisher.close()


async def test_a_policy_whose_remedy_a_serving_template_cannot_say_is_not_published(studio):
    """An SMS a person edited before remedies could be anything but codes: a policy that
    gives a replacement by express is refused until that template says it."""
    await studio.store.seed_defaults()
    old = (
        "{{ shop.name }}: order {{ order.order_id }} is late."
        "{% if offer %} {{ offer | discount }} off: {{ offer.code }}{% endif %}"
    )
    draft = await studio.store.save_draft(
        "delivery_late", "sms", "en", subject=None, html=None, text=old, author="editor-1"
    )
    await studio.store.publish(draft.id, author="editor-1", message="our own words")
    reship = {"costs": {"expedited_reship": "12"},
              "rules": [{"kinds": ["delivery_late"], "offer": ["expedited_reship"]}]}  # fmt: skip
    version = await studio.remedies.save_draft(reship, "admin-1", "", wall_now())
    admin = await as_role(studio, "admin")
    try:
        token = csrf_of(await page(admin, "/remedies"))
        refused = await admin.post(
            f"/remedies/versions/{version}/publish", data={"csrf_token": token}
        )
        text = await refused.text()
        assert (
            refused.status == 409 and "delivery_late.sms.en v2 cannot say expedited_reship" in text
        )
        missing = await admin.post(
            "/remedies/versions/99999999999/publish", data={"csrf_token": token}
        )
        assert missing.status == 404
        says_it = old.replace(
            "{{ offer | discount }} off: {{ offer.code }}", "{{ offer | remedy }}"
        )
        fixed = await studio.store.save_draft(
            "delivery_late", "sms", "en", subject=None, html=None, text=says_it, author="editor-1"
        )
        await studio.store.publish(fixed.id, author="editor-1", message="says every remedy")
        done = await admin.post(
            f"/remedies/versions/{version}/publish", data={"csrf_token": token},
            allow_redirects=False,
        )  # fmt: skip
        assert done.status == 303, re.findall(r"Not published[^<]*", await done.text())
    finally:
        await admin.close()
