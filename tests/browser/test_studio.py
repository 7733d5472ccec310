"""The template studio in a real headless Chromium: sign-in, editing with live preview,
validation, publish, history and rollback, roles, CSRF, the sandbox, test sends."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.browser.conftest import PASSWORDS, StudioProcess, screenshot, sign_in
from tests.conftest import wait_for

pytestmark = pytest.mark.browser

PICKUP_SMS = "/templates/awaiting_pickup/sms/en"


def replace_in_editor(page: Any, field_id: str, text: str) -> None:
    """Type into the CodeMirror editor that stands for textarea #field_id."""
    content = page.locator(f'.cm-editor[data-for="{field_id}"] .cm-content')
    content.click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    content.press_sequentially(text, delay=0)


def preview_text(page: Any) -> str:
    return str(page.locator("#pv-text").inner_text())


def wait_preview(page: Any, contains: str) -> None:
    page.wait_for_function(
        "s => document.getElementById('pv-text').textContent.includes(s)", arg=contains
    )


def test_sign_in_edit_preview_validate_publish_roll_back(page, studio: StudioProcess):
    page.goto(f"{studio.url}/templates")
    assert "/login" in page.url
    page.get_by_label("User name").fill("ada")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    assert "Wrong user name or password" in page.locator("#login-error").inner_text()
    screenshot(page, "01-sign-in")

    sign_in(page, studio, "ada")
    assert page.locator("text=missing").count() >= 1  # the summary names missing ones
    page.get_by_label("Search").fill("awaiting_pickup")
    page.get_by_label("Channel").select_option("sms")
    page.get_by_role("button", name="Filter").click()
    rows = page.locator("table.templates tbody tr")
    assert rows.count() == 3  # en, de, fr
    screenshot(page, "02-template-list")

    page.get_by_role("link", name="awaiting_pickup").first.click()
    page.wait_for_url(re.compile(r"/templates/awaiting_pickup/sms/(en|de|fr)$"))
    page.goto(f"{studio.url}{PICKUP_SMS}")
    page.wait_for_selector('.cm-editor[data-for="text"]')  # the real code editor is on
    assert "Ada" in preview_text(page)

    replace_in_editor(
        page,
        "text",
        "Hi {{ customer.first_name }}, parcel {{ order.order_id }} waits at the pickup point.",
    )
    wait_preview(page, "Hi Ada, parcel ord-2026-004217 waits")
    assert re.search(r"GSM-7 · 1 segment\b", page.locator("#pv-count").inner_text())
    page.get_by_label("Sample case").select_option("lost parcel with an offer")
    wait_preview(page, "Hi Jürgen")
    screenshot(page, "03-editor-sms-preview")

    # An unknown variable: named with its line, and publishing is refused.
    replace_in_editor(page, "text", "Hi {{ customer.shoe_size }}, your parcel waits.")
    page.wait_for_selector("#publishable[data-ok=no]")
    problems = page.locator("#problems").inner_text()
    assert "shoe_size" in problems and "line 1" in problems
    page.get_by_role("button", name="Publish", exact=True).click()
    assert "Not published" in page.locator("#publish-problems").inner_text()
    assert "shoe_size" in page.locator("#publish-problems").inner_text()
    screenshot(page, "04-validation-error")

    replace_in_editor(
        page, "text", "Hi {{ customer.first_name }}, parcel {{ order.order_id }} waits!"
    )
    page.wait_for_selector("#publishable[data-ok=yes]")
    page.get_by_label("Note for the history").fill("shorter pickup text")
    page.get_by_role("button", name="Publish", exact=True).click()
    assert "Published" in page.locator(".flash").inner_text()
    versions = page.locator(".version-list li")
    assert "published" in versions.first.inner_text() and "ada" in versions.first.inner_text()

    page.get_by_role("link", name="History and changes").click()
    assert page.locator("table.diff td.ins").count() >= 1
    assert "waits!" in page.locator("table.diff td.ins").first.inner_text()
    screenshot(page, "05-history-diff", full_page=True)

    page.get_by_role("button", name="Roll back to v1").click()
    assert "Rolled back" in page.locator(".flash").inner_text()
    assert "about 7 days" in preview_text(page)  # the shipped text serves again
    page.goto(f"{studio.url}/audit")
    log = page.locator("table").inner_text()
    for action in ("signed_in", "draft_saved", "published", "rolled_back"):
        assert action in log
    screenshot(page, "06-audit-log")


def test_email_preview_is_sandboxed_and_shows_text_and_subject(page, studio: StudioProcess):
    sign_in(page, studio, "eve", "/templates/delivery_late/email/de")
    assert (
        "Ada" in page.locator("#pv-subject").inner_text()
        or page.locator("#pv-subject").inner_text()
    )
    frame = page.locator("#pv-html")
    assert frame.get_attribute("sandbox") == ""  # no scripts, no same-origin
    assert "Ada" in page.frame_locator("#pv-html").locator("body").inner_text()
    assert "ord-2026-004217" in page.locator("#pv-text").inner_text()
    # an editor may save a draft but not publish
    assert page.get_by_role("button", name="Publish", exact=True).count() == 0
    page.get_by_label("Subject").fill("Entschuldigung: {{ order.order_id }} kommt später")
    page.wait_for_function(
        "() => document.getElementById('pv-subject').textContent.includes('kommt später')"
    )
    page.get_by_role("button", name="Save draft").click()
    assert "Draft saved" in page.locator(".flash").inner_text()
    screenshot(page, "07-editor-email")


def test_viewer_cannot_edit(page, studio: StudioProcess):
    sign_in(page, studio, "vic", PICKUP_SMS)
    assert page.get_by_role("button", name="Save draft").count() == 0
    assert page.get_by_role("button", name="Publish", exact=True).count() == 0
    assert page.locator("#text").get_attribute("readonly") is not None
    csrf = page.locator('meta[name="csrf-token"]').get_attribute("content")
    response = page.request.post(
        f"{studio.url}{PICKUP_SMS}",
        form={"csrf_token": csrf, "text": "viewer was here", "action": "save"},
        max_redirects=0,
    )
    assert response.status == 403
    page.goto(f"{studio.url}{PICKUP_SMS}/history")
    assert "viewer was here" not in page.content()


def seed_conversation(studio: StudioProcess) -> None:
    """A customer's angry reply and its hand-off, solved, in the studio's database (as
    the worker keeps them: services/outreach/adapters/conversations.py)."""
    import asyncio
    import concurrent.futures
    from datetime import UTC, datetime

    from services.outreach.adapters.conversations import HandoffStore, ReplyRow, ReplyStore
    from services.outreach.adapters.db import create_engine, session_factory
    from services.outreach.config import Settings

    at = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)

    async def seed() -> None:
        engine = create_engine(Settings(data_dir=studio.data_dir).db_url())
        sessions = session_factory(engine)
        try:
            await ReplyStore(sessions).record(ReplyRow(
                reply_id="rep-1", customer_id="c-kim", channel="sms", received_at=at,
                text="Wo bleibt mein Paket?! Das ist eine Frechheit", locale="de-DE",
                intent="complaint", tone="angry", evidence=["frechheit"], language="de",
                classifier="lexicon-v1", handoff_id="ho-1", done=True, scrubbed=False,
            ))  # fmt: skip
            handoffs = HandoffStore(sessions)
            await handoffs.requested(
                "ho-1", "c-kim", requested_at=at, trigger="reply", order_ids=["o-7"],
                reasons=[{"code": "reply_tone_angry", "detail": "frechheit"}],
                summary="Kim complains (angry) about order o-7.",
                summary_local="Kim beschwert sich (verärgert) über Bestellung o-7.",
            )  # fmt: skip
            await handoffs.resolved("ho-1", "c-kim", outcome="solved", resolved_at=at,
                                    agent="Alex", ticket_id="42")  # fmt: skip
        finally:
            await engine.dispose()

    # Playwright's sync API keeps an event loop running in this thread: seed in another.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, seed()).result(timeout=60)


def test_a_support_lead_reads_the_conversation_a_viewer_sees_it_masked(page, studio: StudioProcess):
    seed_conversation(studio)
    sign_in(page, studio, "sam", "/conversations")
    page.get_by_role("link", name="c-kim").click()
    page.wait_for_url(f"{studio.url}/conversations/c-kim")
    text = page.locator("main").inner_text()
    assert "Das ist eine Frechheit" in text and "beschwert sich" in text
    assert "complaint, angry" in text and "solved" in text
    assert page.get_by_role("link", name="Conversations").count() == 1
    assert page.get_by_role("button", name="Save draft").count() == 0  # no template work
    screenshot(page, "11-conversation-support", full_page=True)

    page.context.clear_cookies()
    sign_in(page, studio, "vic", "/conversations/c-kim")
    text = page.locator("main").inner_text()
    assert "complaint, angry" in text and "solved" in text and "frechheit" in text
    assert "Das ist eine" not in text and "beschwert sich" not in text
    assert "hidden for your role" in text
    screenshot(page, "12-conversation-viewer", full_page=True)


def test_a_forged_form_post_without_csrf_token_is_refused(page, studio: StudioProcess):
    sign_in(page, studio, "ada", PICKUP_SMS)
    before = page.locator(".version-list li").count()
    forged = page.request.post(
        f"{studio.url}{PICKUP_SMS}",
        form={"text": "forged", "action": "publish"},
        max_redirects=0,
    )
    assert forged.status == 403
    wrong = page.request.post(
        f"{studio.url}{PICKUP_SMS}",
        form={"csrf_token": "x" * 43, "text": "forged", "action": "publish"},
        max_redirects=0,
    )
    assert wrong.status == 403
    page.reload()
    assert page.locator(".version-list li").count() == before
    # A cross-site page cannot post with the session either: the cookie is SameSite=Lax
    # and the token is unknown to it.
    cookie = next(c for c in page.context.cookies() if c["name"] == "studio_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"


@pytest.mark.parametrize(
    "payload",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    ],
)
def test_template_injection_is_refused(page, studio: StudioProcess, payload: str):
    sign_in(page, studio, "ada", "/templates/delivery_failed/sms/fr")
    replace_in_editor(page, "text", payload)
    page.wait_for_selector("#publishable[data-ok=no]")
    assert "uid=" not in page.content()
    assert "subclasses" not in preview_text(page)
    page.get_by_role("button", name="Publish", exact=True).click()
    assert "Not published" in page.locator("#publish-problems").inner_text()
    assert "uid=" not in page.content()


def test_test_send_goes_through_the_provider_marked_as_a_test(
    page, studio: StudioProcess, providers
):
    sendgrid, twilio = providers
    sign_in(page, studio, "eve", "/templates/awaiting_pickup/email/en")
    page.get_by_label("Email address").fill("eve@shop.example")
    page.get_by_role("button", name="Send test").click()
    assert "Test message sent" in page.locator(".flash").inner_text()
    sent = wait_for(lambda: sendgrid.messages, timeout=15, message="the test at SendGrid")
    body = str(sent[-1])
    assert "[TEST]" in body and "eve@shop.example" in body

    page.goto(f"{studio.url}/templates/awaiting_pickup/sms/en")
    page.get_by_label("Phone number").fill("not a number")
    page.get_by_role("button", name="Send test").click()
    assert "country code" in page.locator("#send-error").inner_text()
    page.get_by_label("Phone number").fill("+44 7911 123456")
    page.get_by_role("button", name="Send test").click()
    assert "Test message sent" in page.locator(".flash").inner_text()
    sms = wait_for(lambda: twilio.messages, timeout=15, message="the test at Twilio")
    assert "[TEST]" in str(sms[-1])

    page.goto(f"{studio.url}/outbox")
    tests = page.locator("table").last.inner_text()
    assert "awaiting_pickup/email/en" in tests and "eve" in tests
    assert "eve@shop.example" not in tests  # addresses are masked
    screenshot(page, "08-outbox")


def test_every_control_has_a_label_and_the_narrow_window_works(page, studio: StudioProcess):
    sign_in(page, studio, "ada", "/templates/delivery_late/email/en")
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll(
                'input:not([type=hidden]), select, textarea, button')]
            .filter(el => !el.hidden && el.offsetParent !== null)
            .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                          && !el.textContent.trim())
            .map(el => el.outerHTML.slice(0, 80))"""
    )
    assert unlabelled == []
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{studio.url}/templates/awaiting_pickup/sms/de")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1
    screenshot(page, "09-narrow-window", full_page=True)


def test_sign_in_is_rate_limited(page, studio: StudioProcess):
    for _ in range(3):  # OUTREACH_STUDIO_LOGIN_ATTEMPTS=3 in this studio
        page.goto(f"{studio.url}/login")
        page.get_by_label("User name").fill("vic")
        page.get_by_label("Password").fill("wrong password here")
        page.get_by_role("button", name="Sign in").click()
    page.get_by_label("User name").fill("vic")
    page.get_by_label("Password").fill(PASSWORDS["vic"][1])
    page.get_by_role("button", name="Sign in").click()
    assert "Too many failed sign-ins" in page.locator("#login-error").inner_text()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def test_metrics_are_served_on_the_ops_port_only(studio: StudioProcess):
    """The studio process as deployed: its public port answers health and sends /metrics
    to the sign-in page; the ops port (not behind the Ingress) serves the metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{studio.ops_port}/metrics", timeout=5) as r:
        assert "outreach_studio_actions_total" in r.read().decode()
    with urllib.request.urlopen(f"{studio.url}/livez", timeout=5) as r:
        assert r.status == 200
    opener = urllib.request.build_opener(_NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as refused:
        opener.open(f"{studio.url}/metrics", timeout=5)
    assert refused.value.code == 303
    assert refused.value.headers["Location"].startswith("/login")
