"""Every shipped template renders for every sample case, in every language; SMS fit in
two segments; HTML escapes what customers typed."""

from __future__ import annotations

import pytest

from services.outreach.adapters.templates import default_templates
from services.outreach.domain.rendering import RenderError, TemplateSource, render
from services.outreach.domain.samples import sample_contexts

TEMPLATES = default_templates()
KINDS = sorted({t[0] for t in TEMPLATES})


def test_every_kind_has_every_channel_in_english_german_and_french():
    keys = {(k, c, loc) for k, c, loc, *_ in TEMPLATES}
    for kind in KINDS:
        for channel in ("email", "sms", "whatsapp"):
            for locale in ("en", "de", "fr"):
                assert (kind, channel, locale) in keys
    assert len(KINDS) == 14


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: f"{t[0]}.{t[1]}.{t[2]}")
def test_renders_for_every_sample_case(template):
    kind, channel, locale, subject, html, text = template
    source = TemplateSource(kind, channel, locale, 1, subject, html, text)
    for name, context in sample_contexts(kind).items():
        rendered = render(source, context, locale=locale, timezone="Europe/Berlin")
        if channel == "email":
            assert (
                (rendered.subject and "unsubscribe" in rendered.html.lower())
                or "abmelden" in rendered.html.lower()
                or "désabonner" in rendered.html.lower()
            )
            assert context["customer"]["first_name"] in rendered.text, name
        else:
            assert rendered.segments.segments <= 2, (name, rendered.segments, rendered.text)


def test_a_name_with_markup_is_escaped_in_html():
    kind, channel, locale, subject, html, text = next(
        t for t in TEMPLATES if t[:3] == ("delivery_late", "email", "en")
    )
    context = sample_contexts("delivery_late")["delay of 2 days"]
    context["customer"]["first_name"] = "<script>alert(1)</script>"
    rendered = render(
        TemplateSource(kind, channel, locale, 1, subject, html, text),
        context,
        locale="en",
        timezone="UTC",
    )
    assert "<script>" not in rendered.html and "&lt;script&gt;" in rendered.html


@pytest.mark.parametrize(
    "payload",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ '{0.__class__}'.format(customer) }}",
        "{{ '{x.__class__}'.format_map({'x': customer}) }}",
        "{{ (customer|attr('__class__')) }}",
        "{% set f = '{0.__class__.__init__.__globals__}'.format %}{{ f(customer) }}",
        "{{ '{0.__class__}'|attr('format')(customer) }}",
    ],
)
def test_known_sandbox_escapes_are_refused(payload):
    source = TemplateSource("x", "sms", "en", 1, None, None, payload)
    with pytest.raises(RenderError, match=r"not allowed|unsafe"):
        render(
            source, sample_contexts("delivery_late")["delay of 2 days"], locale="en", timezone="UTC"
        )
