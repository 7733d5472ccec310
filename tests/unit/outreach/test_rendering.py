"""Rendering: locale and time-zone formatting, strictness, escaping, the sandbox, and the
studio's validation."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from services.outreach.domain.rendering import (
    Problem,
    RenderError,
    TemplateSource,
    locale_chain,
    render,
    validate_template,
)
from services.outreach.domain.samples import sample_contexts


def sms(text: str, kind: str = "delivery_late") -> TemplateSource:
    return TemplateSource(kind, "sms", "en", 1, None, None, text)


def email(subject: str, html: str, text: str = "Hi", kind: str = "delivery_late") -> TemplateSource:
    return TemplateSource(kind, "email", "en", 1, subject, html, text)


def text_of(template: str, locale: str = "en", timezone: str = "Europe/Berlin", **ctx) -> str:
    return render(sms(template), ctx, locale=locale, timezone=timezone).text


THURSDAY_NOON = datetime(2026, 3, 12, 11, 0, tzinfo=UTC)


# --- formatting in the customer's locale and time zone ---------------------------------


@pytest.mark.parametrize(
    ("locale", "expected"),
    [
        ("en-GB", "Thursday, 12 March 2026"),
        ("en", "Thursday, March 12, 2026"),
        ("de", "Donnerstag, 12. März 2026"),
        ("de-AT", "Donnerstag, 12. März 2026"),
        ("fr", "jeudi 12 mars 2026"),
    ],
)
def test_date_is_written_in_the_customers_language(locale, expected):
    assert text_of("{{ d | date }}", locale, d=THURSDAY_NOON) == expected


def test_date_is_the_day_in_the_customers_time_zone_not_in_utc():
    late_evening_utc = datetime(2026, 3, 12, 23, 30, tzinfo=UTC)
    assert text_of("{{ d | date }}", "en-GB", "Europe/Berlin", d=late_evening_utc) == (
        "Friday, 13 March 2026"
    )
    assert text_of("{{ d | date }}", "en-GB", "America/New_York", d=late_evening_utc) == (
        "Thursday, 12 March 2026"
    )


def test_times_follow_daylight_saving_time_in_the_customers_zone():
    before = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)  # Berlin switches at 01:00 UTC
    after = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    assert text_of("{{ d | time }}", "de", "Europe/Berlin", d=before) == "01:30"
    assert text_of("{{ d | time }}", "de", "Europe/Berlin", d=after) == "03:30"
    autumn = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # 02:30 CEST, then 02:30 CET again
    assert text_of("{{ d | time }}", "de", "Europe/Berlin", d=autumn) == "02:30"
    assert text_of("{{ d | datetime('short') }}", "en-US", "America/New_York", d=after) == (
        "3/28/26, 9:30 PM"  # SMS: the narrow no-break space becomes a space
    )


def test_date_accepts_iso_strings_plain_dates_and_named_formats():
    assert text_of("{{ d | date('long') }}", "de", d="2026-03-12T11:00:00+00:00") == (
        "12. März 2026"
    )
    assert text_of("{{ d | date('medium') }}", "en-GB", d=date(2026, 3, 12)) == "12 Mar 2026"


def test_money_discount_and_days_are_localised():
    assert (
        text_of("{{ '89.9' | money('EUR') }}", "de") == "89,90 €"
    )  # (in SMS the no-break space is a space)
    assert text_of("{{ '89.9' | money('EUR') }}", "en") == "€89.90"
    offer = {"kind": "percent", "value": "15"}
    assert text_of("{{ o | discount }}", "en", o=offer) == "15%"
    assert text_of("{{ o | discount }}", "fr", o=offer) == "15 %"  # SMS: plain space
    amount = {"kind": "amount", "value": "10", "currency": "EUR"}
    assert text_of("{{ o | discount }}", "en", o=amount) == "€10.00"
    assert text_of("{{ n | days }}", "de", n=2) == "2 Tage"
    assert text_of("{{ n | days }}", "fr", n=1) == "1 jour"


def test_a_remedy_in_a_few_words_in_the_customers_language():
    code = {"kind": "percent", "value": "10", "code": "SORRY-AAAA-BBBB"}
    assert text_of("{{ o | remedy }}", "en", o=code) == "10% off: SORRY-AAAA-BBBB"
    assert text_of("{{ o | remedy }}", "de", o=code) == "10 % Rabatt: SORRY-AAAA-BBBB"
    shipping = {"kind": "free_shipping", "code": "SORRY-CCCC-DDDD"}
    assert text_of("{{ o | remedy }}", "fr", o=shipping) == (
        "Livraison offerte sur votre prochaine commande : SORRY-CCCC-DDDD"
    )
    credit = {"kind": "credit", "value": "15.00", "currency": "EUR"}
    assert text_of("{{ o | remedy }}", "en", o=credit) == "€15.00 credit added to your account."
    reship = {"kind": "expedited_reship"}
    assert text_of("{{ o | remedy }}", "nl", o=reship) == "We're sending a replacement by express."


def test_unknown_locale_and_time_zone_fall_back_instead_of_failing():
    assert text_of("{{ d | date }}", "xx-YY", "Not/AZone", d=THURSDAY_NOON) == (
        "Thursday, March 12, 2026"
    )
    assert text_of("{{ d | date }}", "de-XX", d=THURSDAY_NOON) == "Donnerstag, 12. März 2026"


def test_money_without_a_currency_is_a_render_error_naming_it():
    with pytest.raises(RenderError, match="currency"):
        text_of("{{ '5' | money(c) }}", c=None)


@pytest.mark.parametrize(
    ("locale", "chain"),
    [
        ("de-AT", ["de-AT", "de", "en"]),
        ("de_AT", ["de-AT", "de", "en"]),
        ("de", ["de", "en"]),
        ("en-GB", ["en-GB", "en"]),
        ("en", ["en"]),
        ("", ["en"]),
    ],
)
def test_locale_fallback_chain_is_exact_then_base_language_then_english(locale, chain):
    assert locale_chain(locale) == chain


# --- strictness and failures -------------------------------------------------------------


def test_an_undefined_variable_is_an_error_naming_it_never_an_empty_string():
    with pytest.raises(RenderError) as exc:
        text_of("Hello\n{{ customer.first_name }}\n{{ custmer.first_name }}", customer={})
    assert exc.value.kind == "undefined"
    assert "first_name" in exc.value.reason
    with pytest.raises(RenderError) as exc:
        text_of("Hello\nthere\n{{ custmer }}")
    assert "custmer" in exc.value.reason and exc.value.line == 3


def test_a_field_of_an_empty_value_says_to_guard_it():
    with pytest.raises(RenderError, match="guard"):
        text_of("{{ order.order_id }}", order=None)


def test_syntax_errors_carry_the_line():
    with pytest.raises(RenderError) as exc:
        render(
            email("Hi", "<p>one</p>\n<p>{% if x %}two</p>"),
            {"x": 1},
            locale="en",
            timezone="UTC",
        )
    assert exc.value.kind == "syntax" and exc.value.part == "html" and exc.value.line == 2


def test_a_failing_part_gives_no_partial_output():
    template = email("Fine {{ name }}", "<p>{{ name }}</p>", "{{ missing }}")
    with pytest.raises(RenderError) as exc:
        render(template, {"name": "Ada"}, locale="en", timezone="UTC")
    assert exc.value.part == "text"


def test_empty_subject_or_message_is_an_error():
    with pytest.raises(RenderError, match="empty"):
        render(email("{{ '' }}", "<p>x</p>"), {}, locale="en", timezone="UTC")
    with pytest.raises(RenderError, match="empty"):
        render(sms("{% if false %}x{% endif %}"), {}, locale="en", timezone="UTC")


# --- escaping and the sandbox -----------------------------------------------------------


def test_a_name_with_markup_is_escaped_in_html_but_not_in_text_or_subject():
    name = "<script>alert(1)</script>"
    rendered = render(
        email("Hi {{ n }}", '<p title="{{ n }}">{{ n }}</p>', "Hi {{ n }}"),
        {"n": name},
        locale="en",
        timezone="UTC",
    )
    assert "<script>" not in rendered.html and "&lt;script&gt;" in rendered.html
    assert rendered.text == f"Hi {name}" and rendered.subject == f"Hi {name}"


def test_untrusted_links_never_become_javascript_hrefs():
    rendered = render(
        email("Hi", '<a href="{{ u | safe_url }}">x</a>'),
        {"u": "javascript:alert(1)"},
        locale="en",
        timezone="UTC",
    )
    assert 'href="#"' in rendered.html


# The known sandbox escapes: tests/security/test_sandbox_escapes.py.


def test_html_env_escapes_and_text_env_does_not_for_the_same_source():
    ctx = {"x": "Fish & Chips"}
    rendered = render(
        email("{{ x }}", "<p>{{ x }}</p>", "{{ x }}"), ctx, locale="en", timezone="UTC"
    )
    assert rendered.html == "<p>Fish &amp; Chips</p>" and rendered.text == "Fish & Chips"


def test_conditional_paragraphs_leave_no_empty_paragraphs_or_blank_runs():
    html = "<p>a</p>\n<p>{% if x %}b{% endif %}</p>\n<p>c</p>"
    text = "a\n\n{% if x %}b{% endif %}\n\n\nc"
    rendered = render(email("s", html, text), {"x": False}, locale="en", timezone="UTC")
    assert rendered.html == "<p>a</p>\n<p>c</p>"
    assert rendered.text == "a\n\nc"


def test_sms_gets_its_segments_and_loses_babels_non_breaking_spaces():
    rendered = render(sms("{{ '10' | money('EUR') }} off"), {}, locale="de", timezone="UTC")
    assert rendered.text == "10,00 € off"
    assert rendered.segments is not None and rendered.segments.encoding == "GSM-7"


# --- validation for the studio -------------------------------------------------------------


def codes(problems: list[Problem]) -> set[tuple[str, str]]:
    return {(p.severity, p.code) for p in problems}


SAMPLES = sample_contexts("delivery_late")


def test_validation_reports_syntax_errors_with_their_line_and_stops_there():
    problems = validate_template(sms("line one\n{{ order.order_id "), SAMPLES)
    assert [(p.code, p.line) for p in problems] == [("syntax", 2)]


def test_validation_finds_unknown_variables_and_fields_even_in_branches_no_sample_takes():
    template = sms(
        "{{ custmer.first_name }}{% if false %}{{ order.trackng_url }}{% endif %}"
        "{% for item in order.items %}{{ item.name }}{% endfor %}"
    )
    problems = validate_template(template, SAMPLES)
    messages = {p.message for p in problems if p.code == "unknown_variable"}
    assert messages == {"unknown variable 'custmer'", "'order' has no field 'trackng_url'"}


def test_validation_reports_sandbox_violations_and_unknown_filters():
    problems = validate_template(sms("{{ '{0.__class__}'.format(order) }}"), SAMPLES)
    assert ("error", "sandbox") in codes(problems)
    problems = validate_template(sms("{{ order.placed_at | weekday }}"), SAMPLES)
    assert ("error", "syntax") in codes(problems)


def test_validation_reports_render_failures_with_the_sample_that_failed():
    returner = sample_contexts("serial_returns")
    problems = validate_template(sms("{{ order.order_id }}", kind="serial_returns"), returner)
    failing = [p for p in problems if p.code == "undefined"]
    assert failing and failing[0].sample == "serial returner with an offer"


def test_marketing_email_without_unsubscribe_link_is_an_error_service_email_a_warning():
    marketing = validate_template(
        email("Hello", "<p>Hi</p>", kind="churn_risk"), sample_contexts("churn_risk")
    )
    assert ("error", "unsubscribe_missing") in codes(marketing)
    service = validate_template(email("Hello", "<p>Hi</p>"), SAMPLES)
    assert ("warning", "unsubscribe_missing") in codes(service)
    fine = validate_template(
        email("Hello", '<a href="{{ links.unsubscribe_url }}">x</a>', kind="churn_risk"),
        sample_contexts("churn_risk"),
    )
    assert fine == []


def test_long_subjects_and_long_sms_are_warnings_ucs2_is_a_note():
    long_subject = email("x" * 79, '<a href="{{ links.unsubscribe_url }}">u</a>')
    assert codes(validate_template(long_subject, SAMPLES)) == {("warning", "subject_too_long")}
    long_sms = sms("y" * 500)
    assert codes(validate_template(long_sms, SAMPLES)) == {("warning", "sms_segments")}
    unicode_sms = sms("Ça va ? Reçu 🙂")
    found = validate_template(unicode_sms, SAMPLES)
    assert codes(found) == {("info", "ucs2")} and "'ç' '🙂'" in found[0].message
