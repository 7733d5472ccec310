"""The shipped default templates: every kind × channel × language, clean under the
studio's validation for every sample case and for the awkward variants (no carrier, no
tracking link, no new date, an amount offer, a check-in), SMS within two segments."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from services.outreach.adapters.templates import default_templates
from services.outreach.domain.rendering import (
    CHANNELS,
    MESSAGE_KINDS,
    REMEDY_PHRASES,
    TemplateSource,
    render,
    validate_template,
)
from services.outreach.domain.samples import sample_contexts

TEMPLATES = default_templates()
LANGUAGES = ("en", "de", "fr")


def cases(kind: str) -> dict[str, dict[str, Any]]:
    out = dict(sample_contexts(kind))
    if "delay of 2 days" not in out:  # a kind with cases of its own (a correction)
        return out
    base = out["delay of 2 days"]
    bare = copy.deepcopy(base)
    bare["order"].update(carrier=None, tracking_url=None, tracking_number=None)
    bare["order"].update(estimated_delivery_at=None, promised_delivery_by=None)
    bare["links"]["tracking_url"] = None
    bare["incident"].update(delay_days=None, substatus=None, status=None)
    out["no carrier, no tracking, no dates"] = bare
    amount = copy.deepcopy(out["lost parcel with an offer"])
    amount["offer"] = {**amount["offer"], "kind": "amount", "value": "12.50", "currency": "EUR"}
    amount["intent"] = "check_in"
    out["check-in with an amount offer"] = amount
    for substatus in ("damaged", "address_issue", "customs_hold", "weather_delay", "refused"):
        variant = copy.deepcopy(base)
        variant["incident"]["substatus"] = substatus
        out[f"carrier exception: {substatus}"] = variant
    nameless = copy.deepcopy(base)
    nameless["customer"]["first_name"] = ""
    out["no first name"] = nameless
    return out


def source(t) -> TemplateSource:
    return TemplateSource(t.message_kind, t.channel, t.locale, 1, t.subject, t.html, t.text)


def test_every_kind_has_every_channel_in_english_german_and_french():
    keys = {(t.message_kind, t.channel, t.locale) for t in TEMPLATES}
    assert keys == {(k, c, loc) for k in MESSAGE_KINDS for c in CHANNELS for loc in LANGUAGES}


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: ".".join(t[:3]))
def test_default_passes_validation_for_every_case_without_errors_or_warnings(template):
    problems = validate_template(source(template), cases(template.message_kind))
    assert [p for p in problems if p.severity != "info"] == []


@pytest.mark.parametrize(
    "template", [t for t in TEMPLATES if t.channel != "email"], ids=lambda t: ".".join(t[:3])
)
def test_sms_and_whatsapp_fit_two_segments_for_the_sample_cases(template):
    for name, context in sample_contexts(template.message_kind).items():
        rendered = render(source(template), context, locale=template.locale, timezone="UTC")
        assert rendered.segments is not None
        assert rendered.segments.segments <= 2, (name, rendered.segments, rendered.text)
        assert context["customer"]["first_name"] in rendered.text


@pytest.mark.parametrize(
    "template", [t for t in TEMPLATES if t.channel != "email"], ids=lambda t: ".".join(t[:3])
)
def test_sms_and_whatsapp_say_every_remedy_they_carry(template):
    """Whatever kind of message carries it, a remedy reaches the customer: a code is in
    the text, a credit its amount (docs/remedies.md)."""
    for name, context in sample_contexts(template.message_kind).items():
        offer = context["offer"]
        if not offer:
            continue
        rendered = render(source(template), context, locale=template.locale, timezone="UTC")
        if offer["code"]:
            assert offer["code"] in rendered.text, (name, rendered.text)
        elif offer["kind"] == "credit":
            assert "15" in rendered.text, (name, rendered.text)
        else:  # a replacement by express, said in the template's language
            said = REMEDY_PHRASES[template.locale.split("-")[0]][offer["kind"]]
            assert said in rendered.text, (name, rendered.text)


@pytest.mark.parametrize(
    "template", [t for t in TEMPLATES if t.channel == "email"], ids=lambda t: ".".join(t[:3])
)
def test_email_has_greeting_offer_contact_and_unsubscribe(template):
    for name, context in cases(template.message_kind).items():
        rendered = render(source(template), context, locale=template.locale, timezone="UTC")
        assert context["links"]["unsubscribe_url"] in rendered.html, name
        assert context["links"]["unsubscribe_url"] in rendered.text, name
        assert context["shop"]["support_phone"] in rendered.text, name
        if context["offer"] and context["offer"]["code"]:
            assert context["offer"]["code"] in rendered.text, name
            assert context["offer"]["code"] in rendered.html, name
        elif context["offer"]:  # store credit, a replacement: said without a code
            said = rendered.text.split(context["shop"]["support_phone"])[0]
            assert context["offer"]["kind"] != "credit" or "15" in said, name
        assert "<p></p>" not in rendered.html and "\n\n\n" not in rendered.text
        assert len(rendered.subject or "") <= 78


def test_new_date_is_in_the_customers_language_and_time_zone():
    t = next(t for t in TEMPLATES if t[:3] == ("delivery_late", "email", "de"))
    context = sample_contexts("delivery_late")["delay of 2 days"]
    rendered = render(source(t), context, locale="de-AT", timezone="Europe/Vienna")
    assert "Samstag, 7. März 2026" in rendered.text and "2 Tage später" in rendered.text
    assert "Hallo Ada," in rendered.text


def test_html_escapes_what_customers_and_carriers_typed():
    t = next(t for t in TEMPLATES if t[:3] == ("delivery_late", "email", "en"))
    context = copy.deepcopy(sample_contexts("delivery_late")["delay of 2 days"])
    context["customer"]["first_name"] = "<script>alert(1)</script>"
    context["links"]["tracking_url"] = "javascript:alert(2)"
    rendered = render(source(t), context, locale="en", timezone="UTC")
    assert "<script>" not in rendered.html and "&lt;script&gt;" in rendered.html
    assert "javascript:" not in rendered.html
