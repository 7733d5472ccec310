"""The studio's pure functions: template status, filters, variables, preview, diff."""

from __future__ import annotations

from datetime import UTC, datetime

from services.outreach.adapters.render_pool import InlineRenderer
from services.outreach.domain.rendering import TemplateSource
from services.outreach.studio.catalog import (
    VersionInfo,
    filter_rows,
    preview,
    side_by_side,
    template_rows,
    variables_for,
)

AT = datetime(2026, 11, 1, tzinfo=UTC)


def info(kind, channel, locale, version, status, author="system"):
    return VersionInfo(kind, channel, locale, version, status, author, AT)


def test_a_translation_nobody_wrote_is_listed_as_missing():
    rows = template_rows(
        [
            info("delivery_late", "sms", "en", 1, "published"),
            info("delivery_late", "sms", "de", 1, "published"),
            info("delivery_late", "email", "en", 1, "published"),
        ],
        kinds=["delivery_late"],
        channels=["email", "sms"],
    )
    status = {(r.channel, r.locale): r.status for r in rows}
    assert status == {
        ("email", "en"): "published",
        ("email", "de"): "missing",
        ("sms", "en"): "published",
        ("sms", "de"): "published",
    }
    assert [r.locale for r in rows[:2]] == ["en", "de"]  # English first


def test_status_names_what_serves_and_a_newer_draft():
    rows = template_rows(
        [
            info("refund_late", "sms", "fr", 1, "published"),
            info("refund_late", "sms", "fr", 2, "draft", "camille"),
            info("refund_late", "email", "fr", 1, "draft", "camille"),
        ],
        kinds=["refund_late"],
        channels=["email", "sms"],
    )
    sms = next(r for r in rows if r.channel == "sms")
    assert (sms.status, sms.published_version, sms.latest_version) == ("published", 1, 2)
    assert sms.has_newer_draft and sms.editor == "camille"
    email = next(r for r in rows if r.channel == "email")
    assert email.status == "draft" and email.published_version is None


def test_filters_combine_search_status_channel_and_locale():
    rows = template_rows(
        [
            info("refund_late", "sms", "fr", 1, "published"),
            info("refund_late", "sms", "fr", 2, "draft", "camille"),
            info("delivery_late", "sms", "en", 1, "published"),
        ],
        kinds=["refund_late", "delivery_late"],
        channels=["sms"],
    )
    assert [r.key for r in filter_rows(rows, query="camille")] == ["refund_late/sms/fr"]
    assert [r.key for r in filter_rows(rows, status="draft")] == ["refund_late/sms/fr"]
    assert {r.key for r in filter_rows(rows, status="missing")} == {
        "refund_late/sms/en",
        "delivery_late/sms/fr",
    }
    assert [r.key for r in filter_rows(rows, query="late", locale="en", channel="sms")] == [
        "refund_late/sms/en",
        "delivery_late/sms/en",
    ]


def test_variables_carry_a_type_and_an_example():
    found = {v.name: v for v in variables_for("serial_returns")}
    assert found["customer.first_name"].type == "text"
    assert found["order.promised_delivery_by"].type == "date-time"
    assert found["offer.code"].example.startswith(("SORRY", "THANKS"))
    assert any(name.startswith("item.sku") for name in found)


INLINE = InlineRenderer()


async def test_preview_renders_the_chosen_case_and_reports_every_problem():
    source = TemplateSource(
        "awaiting_pickup", "sms", "en", 0, None, None, "Hi {{ customer.first_name }} 😀"
    )
    shown = await preview(source, "lost parcel with an offer", INLINE)
    assert shown.text == "Hi Jürgen 😀"
    assert (shown.encoding, shown.segments) == ("UCS-2", 1)
    assert shown.can_publish
    assert [p.code for p in shown.problems] == ["ucs2"]

    broken = await preview(
        TemplateSource("awaiting_pickup", "sms", "en", 0, None, None, "{{ order.nope }"),
        None,
        INLINE,
    )
    assert not broken.can_publish
    assert broken.problems[0].code == "syntax" and broken.problems[0].line == 1


async def test_preview_refuses_a_sandbox_escape():
    source = TemplateSource(
        "awaiting_pickup", "sms", "en", 0, None, None, "{{ ''.__class__.__mro__ }}"
    )
    shown = await preview(source, None, INLINE)
    assert not shown.can_publish
    assert shown.text is None and shown.error


def test_side_by_side_aligns_changed_lines():
    rows = side_by_side("a\nb\nc", "a\nB\nc\nd")
    assert [(r.tag, r.left, r.right) for r in rows] == [
        ("equal", "a", "a"),
        ("replace", "b", "B"),
        ("equal", "c", "c"),
        ("insert", "", "d"),
    ]
    assert rows[3].left_no is None and rows[3].right_no == 4
