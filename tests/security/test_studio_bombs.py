"""The studio under a template bomb: a viewer's preview of a runaway draft does not
freeze the studio for everyone, and a draft too deeply nested to parse is saved with
its problem shown — not a 500 that breaks the editor page for every user."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.outreach.adapters.render_pool import RenderPool
from tests.integration.outreach.test_studio_http import SMS, csrf_of, make_client, sign_in
from tests.security.test_template_bombs import BOMBS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
__all__ = ["make_client"]  # the studio fixture, on SQLite and PostgreSQL


async def test_a_bomb_previewed_leaves_the_studio_answering_within_a_second(make_client):
    pool = RenderPool(processes=2, timeout_s=1.5, memory_mb=384)
    await pool.start()
    try:
        client, studio, _ = await make_client(renderer=pool)
        await sign_in(client, studio, "vic", "viewer")
        page = await client.get(SMS)
        headers = {"X-CSRF-Token": csrf_of(await page.text())}
        body = {
            "kind": "awaiting_pickup",
            "channel": "sms",
            "locale": "en",
            "text": BOMBS["heavy filters in a loop"],
        }
        bomb = asyncio.create_task(client.post("/api/preview", json=body, headers=headers))
        slowest = 0.0
        while not bomb.done():
            started = time.monotonic()
            assert (await client.get("/login")).status in (200, 303)
            slowest = max(slowest, time.monotonic() - started)
            await asyncio.sleep(0.05)
        answer = await bomb
        assert answer.status == 200
        shown = await answer.json()
        assert shown["text"] is None and "longer than" in shown["error"]
        assert not shown["can_publish"]
        assert slowest < 1.0, f"a page took {slowest:.2f} s while the bomb rendered"
    finally:
        await pool.stop()


async def test_a_draft_nested_too_deeply_is_saved_with_its_problem_and_the_page_works(
    make_client,
):
    client, studio, _ = await make_client()
    await sign_in(client, studio, "eda", "editor")
    page = await client.get(SMS)
    nested = BOMBS["5,000 nested parentheses"]
    saved = await client.post(
        SMS,
        data={"csrf_token": csrf_of(await page.text()), "text": nested, "action": "save"},
        allow_redirects=False,
    )
    assert saved.status == 303, await saved.text()
    assert "saved_with_errors" in saved.headers["Location"]
    editor = await client.get(saved.headers["Location"])
    assert editor.status == 200
    assert "nests too deeply" in await editor.text()
