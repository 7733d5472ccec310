"""The studio's storms page over HTTP, on SQLite and PostgreSQL: a hub outage counted by
the storm store (3 incidents in 600 s make a storm, from 5 on its messages wait) holds
the messages of four customers in the ledger, one of them with two orders. The list
shows the storm awaiting, first; its page shows the held messages by segment, each with
a sample of the one message its customer will get; a publisher approves it with an
English and a German note, changes the note, holds and cancels it; editors and viewers
look but may not decide; what cannot be done is said, never a 500; first names are
shown only to roles allowed personal data. Only what the pages show and what the stores
hold are checked."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from aiohttp.test_utils import TestClient

from services.outreach.adapters.conversations import HandoffStore, ReplyStore
from services.outreach.adapters.db import create_engine, create_schema, session_factory
from services.outreach.adapters.ledger import Delivery, Ledger
from services.outreach.adapters.render_pool import InlineRenderer
from services.outreach.adapters.storms import StormStore
from services.outreach.adapters.templates import TemplateStore
from services.outreach.config import Settings
from services.outreach.domain.storms import NOTE_MAX, Storm, StormPolicy
from services.outreach.studio.accounts import Accounts
from services.outreach.studio.context import Studio
from services.outreach.studio.security import LoginThrottle
from tests.integration.outreach.test_conversation_view import as_role, page
from tests.integration.outreach.test_studio_http import csrf_of
from tests.outreach_requests import NOON, request

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

HUB = "hub:dhl@Leipzig"
# (customer, order); c-01 has two parcels at the hub; c-02's message left before the
# storm was big enough to wait.
PARCELS = [("c-01", "o-1"), ("c-01", "o-2"), ("c-02", "o-3"), ("c-03", "o-4"),
           ("c-04", "o-5"), ("c-05", "o-6")]  # fmt: skip
CUSTOMERS = {  # channel, locale, first name
    "c-01": ("email", "de-DE", "Greta"),
    "c-02": ("email", "en-GB", "Oliver"),
    "c-03": ("sms", "en-GB", "Priya"),
    "c-04": ("sms", "fr-FR", "Amélie"),
    "c-05": ("email", "en-GB", "Maeve"),
}
NOTES = {
    "en": "The DHL hub in Leipzig was closed by a power cut. DHL expects to catch up by Friday.",
    "de": "Das DHL-Zentrum Leipzig war wegen eines Stromausfalls geschlossen.",
}


def held_row(customer: str, order: str, n: int, storm_id: str, status: str = "scheduled"):
    """The ledger's message about a parcel: held with the storm (scheduled, no time), or
    gone before it waited (`status`), named in it either way."""
    channel, locale, name = CUSTOMERS[customer]
    at = NOON + timedelta(seconds=n)
    data = request(f"req-{order}", kind="carrier_exception", cause=f"inc-{order}",
                   customer=customer, at=at).data  # fmt: skip
    data["order_id"] = order
    data["context"]["order"]["order_id"] = order
    address = f"{customer}@example.com" if channel == "email" else f"+49151000{customer[-2:]}"
    return Delivery(
        decision_id=f"d-{order}", request_id=f"req-{order}", customer_id=customer,
        order_id=order, cause_type="incident", cause_id=f"inc-{order}",
        cause_kind="carrier_exception", intent="apology", message_kind="carrier_exception",
        severity="warning", category="service", status=status, rule="storm: held",
        channel=channel, address=address, locale=locale, time_zone="Europe/Berlin",
        send_at=None, decided_at=at, updated_at=at, sent_at=at if status == "sent" else None,
        attempts=0, revision=1, request={**data, "first_name": name}, storm_id=storm_id,
    )  # fmt: skip


@pytest.fixture
async def world(database_url, tmp_path):
    """A studio on a database where a hub outage holds messages; (studio, the hub's
    storm)."""
    engine = create_engine(database_url)
    await create_schema(engine)
    sessions = session_factory(engine)
    settings = Settings(data_dir=tmp_path, storm_rate="3/600", storm_approval_size=5)
    studio = Studio(
        settings=settings, store=TemplateStore(sessions, renderer=InlineRenderer()),
        ledger=Ledger(sessions), accounts=Accounts(sessions), senders={},
        throttle=LoginThrottle(5, 300), renderer=InlineRenderer(),
        replies=ReplyStore(sessions), handoffs=HandoffStore(sessions),
    )  # fmt: skip
    await studio.store.seed_defaults()
    storms = StormStore(sessions, StormPolicy(3, timedelta(seconds=600), 5, timedelta(minutes=30)))
    for n, (customer, order) in enumerate(PARCELS):
        await storms.record(HUB, incident_id=f"inc-{order}", customer_id=customer,
                            order_id=order, kind="carrier_exception",
                            at=NOON + timedelta(seconds=n))  # fmt: skip
    # Later, at another hub, a small storm that flows: listed after the one that waits.
    for n in range(3):
        await storms.record("hub:ups@Kassel", incident_id=f"inc-k{n}", customer_id=f"k-{n}",
                            order_id=f"ok-{n}", kind="carrier_exception",
                            at=NOON + timedelta(hours=1, seconds=n))  # fmt: skip
    (hub,) = [s for s in await storms.recent() if s.scope == HUB]
    assert (hub.state, hub.size) == ("awaiting", 6)
    rows = [
        held_row(customer, order, n, hub.storm_id, "sent" if customer == "c-02" else "scheduled")
        for n, (customer, order) in enumerate(PARCELS)
    ]
    async with sessions() as s, s.begin():
        s.add_all(rows)
    clients: list[TestClient] = []

    async def signed_in(role: str) -> TestClient:
        clients.append(await as_role(studio, role))
        return clients[-1]

    yield studio, hub, signed_in
    for client in clients:
        await client.close()
    await engine.dispose()


def sample_of(html: str, customer: str) -> str:
    """The sample of the segment whose sample is `customer`'s message."""
    (found,) = [a for a in html.split("<article")[1:] if f"Sample for customer {customer}:" in a]
    return found.split("</article>")[0]


async def decide(client: TestClient, storm: Storm, **form: str):
    html = await page(client, f"/storms/{storm.storm_id}")
    return await client.post(
        f"/storms/{storm.storm_id}",
        data={"csrf_token": csrf_of(html), **form},
        allow_redirects=False,
    )


async def test_the_list_and_a_storm_as_everyone_sees_it_and_a_publisher_approves(world):
    studio, hub, signed_in = world
    viewer, editor, publisher = [await signed_in(r) for r in ("viewer", "editor", "publisher")]

    listed = await page(viewer, "/storms")
    assert re.search(r'<a href="/storms"[^>]*>Storms</a>', listed)  # in the navigation
    rows = re.findall(r"<tr>.*?</tr>", listed, re.S)
    (mine,) = [r for r in rows if f'href="/storms/{hub.storm_id}"' in r]
    assert "dhl at Leipzig" in mine and "awaiting" in mine
    assert "<td>6</td>" in mine and "<td>5</td>" in mine  # 6 incidents, 5 messages held
    assert listed.index("dhl at Leipzig") < listed.index("ups at Kassel")  # awaiting first

    shown = await page(viewer, f"/storms/{hub.storm_id}")
    for segment in ("email · de-DE", "sms · en-GB", "sms · fr-FR", "email · en-GB"):
        assert f"carrier_exception · {segment}" in shown, segment
    assert "1 customer, 2 messages" in shown  # c-01's two parcels: one segment
    assert "5 held, 1 sent" in shown and 'Customers <span class="sub">5</span>' in shown
    greta = sample_of(shown, "c-01")
    assert "about orders o-1, o-2" in greta
    # The rendered message itself names both: its own order, and the other under `also`.
    assert "Neuigkeiten zu Ihrer Bestellung o-1" in greta
    assert "meldet ein Problem mit Bestellung o-2" in greta
    assert "Hallo [first name]," in greta  # a viewer sees no first name
    for name in ("Greta", "Oliver", "Priya", "Amélie", "Maeve"):
        assert name not in shown, name
    assert 'name="action"' not in shown  # no forms for a viewer
    assert re.search(r"c-01</a></td>\s*<td>o-1, o-2</td>", shown)  # the customers' orders

    # Editors and viewers may look, not decide (with their own valid form tokens).
    for client in (editor, viewer):
        refused = await decide(client, hub, action="approve", note_en="no")
        assert refused.status == 403
    assert (await studio.storms.get(hub.storm_id)).state == "awaiting"

    approved = await decide(
        publisher, hub, action="approve", note_en=NOTES["en"], note_de=NOTES["de"], note_fr=" "
    )
    assert approved.status == 303
    assert approved.headers["Location"] == f"/storms/{hub.storm_id}?flash=storm_approved"
    storm = await studio.storms.get(hub.storm_id)
    assert (storm.state, storm.decided_by, dict(storm.notes)) == ("approved", "publisher-1", NOTES)
    (entry,) = await studio.storms.log(hub.storm_id)
    assert (entry.actor, entry.action, entry.before, entry.after, dict(entry.notes)) == (
        "publisher-1", "approve", "awaiting", "approved", NOTES,
    )  # fmt: skip
    (audit,) = [a for a in await studio.accounts.audit_log() if a.action.startswith("storm_")]
    assert (audit.actor, audit.action, audit.target) == ("publisher-1", "storm_approved",
                                                         hub.storm_id)  # fmt: skip
    assert audit.detail["notes"] == NOTES and audit.detail["state"] == "approved"

    after = await page(viewer, f"/storms/{hub.storm_id}")
    assert "publisher-1" in after and "awaiting → approved" in after and NOTES["de"] in after
    assert NOTES["de"] in sample_of(after, "c-01")  # each customer's note in their language
    assert NOTES["en"] in sample_of(after, "c-03") and NOTES["en"] in sample_of(after, "c-05")
    french = sample_of(after, "c-04")
    assert NOTES["en"] not in french and NOTES["de"] not in french  # no French note: none
    listed = await page(publisher, "/storms?flash=storm_approved")
    (mine,) = [r for r in re.findall(r"<tr>.*?</tr>", listed, re.S) if hub.storm_id in r]
    assert "approved" in mine and "publisher-1" in mine


async def test_a_publisher_changes_the_note_holds_and_cancels_and_is_told_what_cannot_be(world):
    studio, hub, signed_in = world
    publisher, admin = await signed_in("publisher"), await signed_in("admin")

    too_long = await decide(publisher, hub, action="note", note_en="x" * (NOTE_MAX + 1))
    assert too_long.status == 422 and "longer than 500 characters" in await too_long.text()
    unknown = await decide(publisher, hub, action="explode")
    assert unknown.status == 422 and "choose to approve" in await unknown.text()
    assert await studio.storms.log(hub.storm_id) == []

    noted = await decide(publisher, hub, action="note", note_en=NOTES["en"])
    assert noted.status == 303
    storm = await studio.storms.get(hub.storm_id)
    assert (storm.state, dict(storm.notes)) == ("awaiting", {"en": NOTES["en"]})
    held = await decide(publisher, hub, action="hold", reason="waiting for DHL's statement")
    assert held.status == 303 and (await studio.storms.get(hub.storm_id)).state == "held"
    no_reason = await decide(publisher, hub, action="cancel", reason="  ")
    assert no_reason.status == 422 and "say why" in await no_reason.text()
    cancelled = await decide(publisher, hub, action="cancel", reason="DHL writes to everyone")
    assert cancelled.status == 303
    assert (await studio.storms.get(hub.storm_id)).state == "cancelled"

    again = await decide(publisher, hub, action="cancel", reason="once more")
    assert again.status == 409
    text = await again.text()
    assert "Not done: a cancelled storm cannot be given" in text
    assert "nothing more to decide" in text
    approve = await decide(publisher, hub, action="approve", note_en="go")
    assert approve.status == 409 and "cannot be given" in await approve.text()
    log = await studio.storms.log(hub.storm_id)
    assert [(e.action, e.after, e.reason) for e in log] == [
        ("note", "awaiting", ""),
        ("hold", "held", "waiting for DHL's statement"),
        ("cancel", "cancelled", "DHL writes to everyone"),
    ]
    audit = [(a.actor, a.action, a.target) for a in await studio.accounts.audit_log()]
    for action in ("storm_note", "storm_held", "storm_cancelled"):
        assert ("publisher-1", action, hub.storm_id) in audit, action
    assert ("publisher-1", "storm_approved", hub.storm_id) not in audit

    # An admin, allowed personal data, sees the customers' first names (and is audited).
    full = await page(admin, f"/storms/{hub.storm_id}")
    assert "Hallo Greta," in sample_of(full, "c-01") and "[first name]" not in full
    audit = [(a.actor, a.action, a.target) for a in await studio.accounts.audit_log()]
    assert ("admin-1", "viewed_storm", hub.storm_id) in audit
    assert ("publisher-1", "viewed_storm", hub.storm_id) not in audit
    missing = await admin.get("/storms/st-nothing")
    assert missing.status == 404
