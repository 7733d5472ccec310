"""Consolidation (domain/consolidation.py): which messages merge, which one carries the
others, what the carrier keeps of them, and the line naming each."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.outreach.domain.consolidation import Pending, also_items, line, plan

AT = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def pending(did, customer="c-1", severity="warning", intent="apology", minutes=0, **kw):
    values = dict(
        decision_id=did, customer_id=customer, category="service", channel="sms",
        cause_type="incident", cause_kind="delivery_late", order_id=f"o-{did}",
        severity=severity, intent=intent, decided_at=AT + timedelta(minutes=minutes),
    )  # fmt: skip
    return Pending(**(values | kw))


def test_one_customers_messages_merge_into_the_most_urgent():
    merges = plan([
        pending("a", minutes=0),
        pending("b", severity="critical", minutes=5),
        pending("c", intent="status_update", severity="critical", minutes=1),
        pending("d", minutes=2),
    ])  # fmt: skip
    (merge,) = merges
    assert merge.carrier.decision_id == "b"  # critical, and an apology before an update
    assert [p.decision_id for p in merge.merged] == ["a", "c", "d"]  # oldest first


def test_what_does_not_merge_goes_on_its_own():
    alone = [
        pending("a"),
        pending("b", customer="c-2"),  # another customer
        pending("c", channel="email"),  # another channel
        pending("d", category="marketing"),  # another category
        pending("e", cause_type="correction"),  # a correction
        pending("f", intent="check_in"),  # a check-in
        pending("g", channel=None),  # held before a channel was chosen
    ]
    assert plan(alone) == []
    (merge,) = plan([*alone, pending("h", minutes=3)])
    assert (merge.carrier.decision_id, [p.decision_id for p in merge.merged]) == ("a", ["h"])


def test_the_carrier_keeps_what_it_carries_once():
    first = also_items([pending("b"), pending("c")])
    assert [(i["decision_id"], i["order_id"], i["kind"]) for i in first] == [
        ("b", "o-b", "delivery_late"), ("c", "o-c", "delivery_late"),
    ]  # fmt: skip
    again = also_items([pending("c"), pending("d")], first)
    assert [i["decision_id"] for i in again] == ["b", "c", "d"]


def test_each_carried_incident_is_named_in_the_customers_language():
    assert line("delivery_late", "o-2", "de-AT") == "Bestellung o-2 ist verspätet"
    assert line("shipment_stalled", "o-2", "fr") == (
        "un colis de la commande o-2 n'a pas bougé depuis un moment"
    )
    assert line("something_new", "o-2", "pt-BR") == "there is news about order o-2"


def test_every_incident_kind_has_its_line_in_every_shipped_language():
    from common.schemas import IncidentKind
    from services.outreach.domain.consolidation import LINES

    for lines in LINES.values():
        assert {k.value for k in IncidentKind} <= set(lines), sorted(set(lines))
