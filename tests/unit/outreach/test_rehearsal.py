"""The rehearsal's pure parts: the report, the rules file, the archive, the period."""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime, timedelta

import pytest

from services.outreach.rehearsal import archive, report
from services.outreach.rehearsal.__main__ import moment
from services.outreach.rehearsal.namespace import Namespace, RulesError, read_rules, uninterrupted
from services.outreach.rehearsal.report import Decision

T0 = datetime(2026, 3, 2, tzinfo=UTC)


def decision(customer: str, status: str = "sent", *, intent: str = "apology", hours: float = 1,
             reason: str | None = None, kind: str = "delivery_late", locale: str = "de-DE",
             text: str | None = "Hallo") -> Decision:  # fmt: skip
    return Decision(customer, intent, kind, "email", locale, status, reason,
                    T0 + timedelta(hours=hours), "Betreff", text)  # fmt: skip


def test_the_report_counts_customers_reached_what_was_held_back_and_the_difference():
    rehearsed = [
        decision("c-1"), decision("c-1", "scheduled", kind="shipment_stalled"),
        decision("c-2", intent="status_update", locale="en-GB", text="Hello"),
        decision("c-3", "suppressed", reason="frequency_cap"),
        decision("c-4", hours=-5),  # before the period
    ]  # fmt: skip
    live = [decision("c-1"), decision("c-9"), decision("c-8", "suppressed", reason="holdout")]
    found = report.build(rehearsed, since=T0, until=T0 + timedelta(days=1), live=live)
    assert (found.customers_reached, found.messages) == (2, 3)
    assert [(s.intent, s.locale, s.customers, s.messages) for s in found.segments] == [
        ("apology", "de", 1, 2), ("status_update", "en", 1, 1),
    ]  # fmt: skip
    assert found.suppressed == {"frequency_cap": 1}
    assert found.live is not None
    assert (found.live.only_rehearsed_ids, found.live.only_live_ids) == (["c-2"], ["c-9"])
    assert found.live.live == {"apology": 2}  # what left: the suppressed one did not
    assert [(s.message_kind, s.locale) for s in found.samples] == [
        ("delivery_late", "de"), ("delivery_late", "en"), ("shipment_stalled", "de"),
    ]  # fmt: skip
    named = Decision("c-5", "apology", "delivery_late", "sms", "fr-FR", "sent", None, T0,
                     None, "Bonjour Anne, votre commande… Annecy", first_name="Anne")  # fmt: skip
    (sample,) = report.samples([named])
    assert sample.text == "Bonjour [first name], votre commande… Annecy"  # the name only
    text = report.as_text(found)
    assert "customers reached: 2 (3 messages)" in text and "frequency_cap" in text


def test_a_rules_file_may_change_rules_and_nothing_else(tmp_path):
    rules = tmp_path / "rules.env"
    rules.write_text("# lower\nORDERS_WATCHER_STALL_HOURS = 24\n\nRISK_DETECTOR_CHECKIN_SCORE=60\n")
    assert read_rules(rules) == {
        "ORDERS_WATCHER_STALL_HOURS": "24", "RISK_DETECTOR_CHECKIN_SCORE": "60",
    }  # fmt: skip
    for line in ("OUTREACH_DATABASE_URL=postgresql://live", "TWILIO_AUTH_TOKEN=x",
                 "OUTREACH_TOPIC_PREFIX=", "KAFKA_BOOTSTRAP_SERVERS=x", "OUTREACH_CLOCK=wall",
                 "OUTREACH_TWILIO_ACCOUNT_SID=AC1", "OUTREACH_TRACING_ENABLED=true",
                 "ORDERS_WATCHER_STORE=rocksdb://", "OUTREACH_ZENDESK_SUBDOMAIN=shop",
                 "just words"):  # fmt: skip
        rules.write_text(line + "\n")
        with pytest.raises(RulesError):
            read_rules(rules)


def test_the_namespace_passes_on_the_cluster_and_nothing_live(tmp_path, monkeypatch):
    monkeypatch.setenv("OUTREACH_DATABASE_URL", "postgresql://live/outreach")
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "live-token")
    monkeypatch.setenv("SENDGRID_API_KEY", "SG.live")
    monkeypatch.setenv("OUTREACH_TOPIC_PREFIX", "prod.")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "cluster-secret")
    # The live rules are where it starts from; the rules to try go over them.
    monkeypatch.setenv("OUTREACH_CONSOLIDATE_S", "60")
    monkeypatch.setenv("ORDERS_WATCHER_STALL_HOURS", "72")
    monkeypatch.setenv("OUTREACH_SENDGRID_FROM_EMAIL", "care@shop.example")
    env = Namespace("broker:9093", tmp_path, {"ORDERS_WATCHER_STALL_HOURS": "24"}).env()
    assert env["OUTREACH_CONSOLIDATE_S"] == "60" and "OUTREACH_SENDGRID_FROM_EMAIL" not in env
    assert "OUTREACH_DATABASE_URL" not in env and "TWILIO_AUTH_TOKEN" not in env
    assert "SENDGRID_API_KEY" not in env
    assert env["OUTREACH_TOPIC_PREFIX"].startswith("rehearsal-")
    assert env["KAFKA_SASL_PASSWORD"] == "cluster-secret"
    assert (env["OUTREACH_CLOCK"], env["ORDERS_WATCHER_STALL_HOURS"]) == ("event", "24")


@pytest.mark.parametrize("name", ["input.jsonl", "input.jsonl.gz"])
def test_an_archive_keeps_every_record_as_it_was(tmp_path, name):
    records = [
        archive.Record("commerce.orders", b"o-1", b'{"id": 1}', 20, (("content-type", b"x"),)),
        archive.Record("commerce.customers", b"c-1", None, 10),  # a tombstone
        archive.Record("commerce.shipments", b"o-1", b"\xff not json", 20),
    ]
    assert archive.write(tmp_path / name, records) == 3
    assert list(archive.read(tmp_path / name)) == records
    assert [r.timestamp_ms for r in archive.in_story_order(records)] == [10, 20, 20]
    (tmp_path / "bad.jsonl").write_text('{"topic": "outreach.messages", "key": ""}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        list(archive.read(tmp_path / "bad.jsonl"))


def test_the_period_reads_days_ago_or_a_moment():
    now = datetime(2026, 3, 9, 12, tzinfo=UTC)
    assert moment("7d", now) == datetime(2026, 3, 2, 12, tzinfo=UTC)
    assert moment("36h", now) == datetime(2026, 3, 8, 0, tzinfo=UTC)
    assert moment("2026-03-01T00:00:00", now) == datetime(2026, 3, 1, tzinfo=UTC)


class Stopped(Exception):
    pass


def test_a_signal_during_the_clean_up_takes_effect_after_it():
    def stop(signum, frame):
        raise Stopped(signum)

    previous = signal.signal(signal.SIGTERM, stop)
    done = []
    try:
        with pytest.raises(Stopped), uninterrupted():
            os.kill(os.getpid(), signal.SIGTERM)
            done.append("after the signal")  # not cut short
            os.kill(os.getpid(), signal.SIGTERM)  # twice: still once after the block
        assert done == ["after the signal"]
        assert signal.getsignal(signal.SIGTERM) is stop  # the handler is back
        with uninterrupted():  # nothing came: nothing raised
            done.append("quiet")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert done == ["after the signal", "quiet"]
