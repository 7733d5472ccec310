"""The studio's "Rehearse this draft" on the real broker (docs/studio.md, "Rehearsals"):
a live stack has run a shop's days; an editor saves a draft of the late-delivery email
with a sentence of its own and rehearses it on the last week over HTTP, as the browser
would (the form with its CSRF token). The studio runs `outreachctl rehearse` for that
draft; its page follows the run until the report is there, whose delivery_late sample
carries the draft's sentence — and the draft is still a draft, no customer got it, and
a viewer's page shows the totals without the message."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from contextlib import closing
from datetime import UTC, datetime, timedelta
from html import unescape
from http.cookiejar import CookieJar

import pytest

from tests.conftest import wait_for
from tests.doubles.twilio import provider_env
from tests.e2e import test_walking_skeleton as skeleton
from tests.e2e.stack import PIPELINE, ROOT, Shop, Stack
from tests.e2e.test_rehearsal import story

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

SENTENCE = "REHEARSED-7Q: we are walking your parcel over ourselves."
EMAIL = "/templates/delivery_late/email/en"
PASSWORD = "a long enough password"


@pytest.fixture
def live(kafka_bootstrap, topic_prefix, tmp_path, twilio_double, sendgrid_double, monkeypatch):
    """The pipeline and the studio; the shop's story of last week (the studio rehearses
    the last N days of the wall clock: the story's hours count from eight days ago,
    at its usual hour of the day)."""
    last_week = (datetime.now(UTC) - timedelta(days=6)).replace(hour=8, minute=0, second=0,
                                                                microsecond=0)  # fmt: skip
    monkeypatch.setattr(skeleton, "T0", last_week)
    stack = Stack(kafka_bootstrap, topic_prefix, tmp_path / "live",
                  extra_env=provider_env(twilio_double, sendgrid_double))  # fmt: skip
    try:
        stack.start(*PIPELINE, "studio")
        yield stack
    finally:
        stack.stop()


class Client:
    """A person's browser, as far as the studio's forms go: its cookies, the pages."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))

    def get(self, path: str) -> str:
        with self.opener.open(self.url + path, timeout=10) as response:
            return str(response.read().decode())

    def post(self, path: str, form: dict[str, str]) -> tuple[str, str]:
        """The form sent (redirects followed): where it ended and that page."""
        data = urllib.parse.urlencode(form).encode()
        with self.opener.open(self.url + path, data=data, timeout=10) as response:
            return response.url, str(response.read().decode())

    def sign_in(self, user: str) -> None:
        token = csrf(self.get("/login"))
        where, _ = self.post("/login", {"csrf_token": token, "username": user,
                                        "password": PASSWORD, "next": "/templates"})  # fmt: skip
        assert where.endswith("/templates"), where


def csrf(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page[:500]
    return found.group(1)


def add_user(stack: Stack, name: str, role: str) -> None:
    added = subprocess.run(
        [sys.executable, "-m", "services.outreach.studio", "users", "add", name, "--role", role,
         "--password-stdin"],
        env=stack.env(), cwd=ROOT, input=PASSWORD, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr


def database(stack: Stack) -> sqlite3.Connection:
    return sqlite3.connect(stack.data_dir / "outreach" / "outreach.db")


def save_draft(editor: Client, stack: Stack) -> int:
    """The published English delay email with SENTENCE in both parts, saved as a draft:
    its version number."""
    with closing(database(stack)) as db:
        subject, html, text = db.execute(
            "SELECT subject, html, text FROM template_versions WHERE message_kind = "
            "'delivery_late' AND channel = 'email' AND locale = 'en' AND status = 'published'"
        ).fetchone()
    token = csrf(editor.get(EMAIL))
    html = html.replace("</body>", f"<p>{SENTENCE}</p></body>") if "</body>" in html else (
        html + f"<p>{SENTENCE}</p>"
    )  # fmt: skip
    where, _ = editor.post(EMAIL, {"csrf_token": token, "subject": subject, "html": html,
                                   "text": f"{SENTENCE}\n\n{text}", "action": "save"})  # fmt: skip
    found = re.search(r"version=(\d+)&flash=saved", where)
    assert found, where
    return int(found.group(1))


def rehearsal_page(client: Client, path: str, within_s: float) -> str:
    """The rehearsal's page once it is done (it fails the test if the run failed)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        page = client.get(path)
        state = re.search(r'id="rehearsal-status">(\w+)<', page)
        assert state, page[:1000]
        if state.group(1) == "failed":
            raise AssertionError(unescape(page.split('id="rehearsal-error">')[1][:3000]))
        if state.group(1) == "done":
            return page
        assert '<meta http-equiv="refresh"' in page  # the page follows the run itself
        time.sleep(1)
    raise AssertionError(f"the rehearsal was not done within {within_s} s")


def test_an_editor_rehearses_a_draft_and_reads_its_message_in_the_report(
    live, kafka_bootstrap, topic_prefix, sendgrid_double
):
    shop = Shop(kafka_bootstrap, topic_prefix)
    try:
        story(shop)
    finally:
        shop.close()
    wait_for(lambda: sendgrid_double.messages, timeout=90, message="Ben's apology")
    add_user(live, "ed", "editor")
    add_user(live, "vic", "viewer")
    editor = Client(f"http://127.0.0.1:{live.ports['studio']}")
    editor.sign_in("ed")
    version = save_draft(editor, live)

    page = editor.get(f"{EMAIL}?version={version}")
    assert "Rehearse this draft on the last N days" in page
    started = time.monotonic()
    where, _ = editor.post(f"{EMAIL}/versions/{version}/rehearse",
                           {"csrf_token": csrf(page), "days": "7"})  # fmt: skip
    path = urllib.parse.urlsplit(where).path
    assert re.fullmatch(r"/rehearsals/\d+", path), where
    report = unescape(rehearsal_page(editor, path, within_s=150))
    print(f"rehearsal asked → report: {time.monotonic() - started:.1f} s")

    samples = report.split("What they would have read", 1)[1]
    first = samples.split("<article", 2)[1]  # the draft's own kind comes first
    assert (
        "delivery_late · email · en" in first
        and SENTENCE in first
        and "Hello [first name]," in first
    )
    assert re.search(r"<strong>1</strong> customer,", report), report  # Ben, as live
    with closing(database(live)) as db:
        status = db.execute(
            "SELECT status FROM template_versions WHERE message_kind = 'delivery_late' AND "
            "channel = 'email' AND locale = 'en' AND version = ?",
            (version,),
        ).fetchone()[0]
        audited = db.execute(
            "SELECT actor, target FROM studio_audit WHERE action = 'rehearsal_started'"
        ).fetchall()
    assert status == "draft"  # rehearsed, not published
    assert audited == [("ed", "delivery_late/email/en")]
    assert not any(SENTENCE in str(m) for m in sendgrid_double.messages)  # nobody got it
    assert not (live.data_dir / "rehearsals" / path.rsplit("/", 1)[1]).exists()

    viewer = Client(editor.url)
    viewer.sign_in("vic")
    seen = unescape(viewer.get(path))
    assert re.search(r"<strong>1</strong> customer,", seen)
    assert SENTENCE not in seen and "your role (viewer) sees whom and how many" in seen
