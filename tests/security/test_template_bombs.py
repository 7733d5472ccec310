"""Template bombs: nothing a marketer types can take a worker or the studio down.

Every bomb of the corpus fails as a RenderError with a reason — from the sandbox's
bounds (loops, string building, widths, nesting) or from the render pool's hard limits
(time, memory) — while the event loop of the process that asked keeps turning: a health
probe would be answered within a second throughout. Publishing and rolling back refuse
them; a worker serving a bomb falls back to the last version that renders."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from services.outreach.adapters.db import create_engine, create_schema, session_factory
from services.outreach.adapters.render_pool import RenderPool
from services.outreach.adapters.templates import PublishRejected, TemplateCache, TemplateStore
from services.outreach.domain.rendering import RenderError, TemplateSource
from services.outreach.domain.samples import sample_contexts
from tests.integration.outreach import test_delivery
from tests.outreach_requests import NOON, request

outreach = test_delivery.outreach  # a real outreach build, on SQLite and PostgreSQL

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
TIME_LIMIT_S = 1.5

# What a marketer could type (found by trying, December 2026), each one a way to take
# a process's CPU or memory.
BOMBS = {
    "nested loops, 2×10⁷ steps": (
        "{% for i in range(10000) %}{% for j in range(2000) %}{% endfor %}{% endfor %}x"
    ),
    "heavy filters in a loop": "{% for i in range(10000) %}{{ range(100000)|sum }}{% endfor %}",
    "doubling a string with ~": (
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}"
        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}"
    ),
    "doubling a string with +": (
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}"
        "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}"
    ),
    "doubling in a recursive macro": (
        "{% macro d(s, n) %}{% if n %}{{ d(s ~ s, n - 1) }}{% else %}{{ s|length }}"
        "{% endif %}{% endmacro %}{{ d('x', 40) }}"
    ),
    "center(10**9)": "{{ 'x'|center(10**9) }}",
    "str.ljust(10**9)": "{{ 'x'.ljust(10**9) }}",
    "format width": "{{ '{:>1000000000}'.format('x') }}",
    "format_map width": "{{ '{a:>1000000000}'.format_map({'a': 1}) }}",
    "printf width": "{{ '%1000000000s' % 'x' }}",
    "format filter width": "{{ '%1000000000s'|format('x') }}",
    "replace that grows": "{{ ('x' * 100000)|replace('x', 'xx' * 1000) }}",
    "join of a huge list": "{{ (['x' * 100000] * 100000)|join }}",
    "indent(10**9)": "{{ 'a\nb'|indent(10**9) }}",
    "lipsum": "{{ lipsum(n=1000000) }}",
    "a macro calling itself": "{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}{{ m(0) }}",
    "5,000 nested parentheses": "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}",
    "a megabyte of output": "{% for i in range(10000) %}{{ 'x' * 1000 }}{% endfor %}",
    "repetition": "{{ 'x' * 1000000000 }}",
    "exponent": "{{ 9 ** 9 ** 9 }}",
}


def sms(text: str, version: int = 0) -> TemplateSource:
    return TemplateSource("awaiting_pickup", "sms", "en", version, None, None, text)


@pytest.fixture
async def pool() -> AsyncIterator[RenderPool]:
    renderer = RenderPool(processes=2, timeout_s=TIME_LIMIT_S, memory_mb=384)
    await renderer.start()
    yield renderer
    await renderer.stop()


class LoopWatch:
    """The longest the event loop went without turning (what a health probe would wait)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LoopWatch:
        async def watch() -> None:
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.01)
                now = time.monotonic()
                self.worst = max(self.worst, now - last)
                last = now

        self._task = asyncio.create_task(watch())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()


@pytest.mark.parametrize("bomb", BOMBS.values(), ids=BOMBS.keys())
async def test_a_bomb_fails_with_a_reason_and_the_event_loop_keeps_turning(pool, bomb):
    context = sample_contexts("awaiting_pickup")["delay of 2 days"]
    started = time.monotonic()
    async with LoopWatch() as watch:
        with pytest.raises(RenderError) as failed:
            await pool.render(sms(bomb), context, locale="en", timezone="UTC")
    assert failed.value.reason  # said for the marketer, not a traceback
    assert time.monotonic() - started < TIME_LIMIT_S + 2
    assert watch.worst < 1.0, f"the event loop stood still for {watch.worst:.2f} s"
    # The pool serves the next message as if nothing happened.
    fine = await pool.render(
        sms("Hi {{ customer.first_name }}"), context, locale="en", timezone="UTC"
    )
    assert fine.text == "Hi Ada"


async def test_publish_and_rollback_refuse_a_bomb(pool, tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'o.db'}")
    await create_schema(engine)
    store = TemplateStore(session_factory(engine), renderer=pool)
    try:
        await store.seed_defaults()
        key = ("awaiting_pickup", "sms", "en")
        for bomb in (BOMBS["heavy filters in a loop"], BOMBS["5,000 nested parentheses"]):
            draft = await store.save_draft(*key, subject=None, html=None, text=bomb, author="mia")
            with pytest.raises(PublishRejected):
                await store.publish(
                    draft.id, author="mia", message="", samples=sample_contexts(key[0])
                )
        # A bomb published before these checks existed (no samples): rolling back to it
        # runs the same checks as a publish.
        old = await store.save_draft(
            *key, subject=None, html=None, text=BOMBS["heavy filters in a loop"], author="mia"
        )
        await store.publish(old.id, author="mia", message="")
        fixed = await store.save_draft(
            *key, subject=None, html=None, text="Hi {{ customer.first_name }}", author="mia"
        )
        await store.publish(fixed.id, author="mia", message="", samples=sample_contexts(key[0]))
        with pytest.raises(PublishRejected):
            await store.rollback(*key, old.version, author="lea")
    finally:
        await engine.dispose()


async def test_a_worker_serving_a_bomb_falls_back_to_the_last_version_that_renders(pool, tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'o.db'}")
    await create_schema(engine)
    store = TemplateStore(session_factory(engine), renderer=pool)
    try:
        await store.seed_defaults()
        key = ("awaiting_pickup", "sms", "en")
        bomb = await store.save_draft(
            *key, subject=None, html=None, text=BOMBS["heavy filters in a loop"], author="mia"
        )
        await store.publish(bomb.id, author="mia", message="")  # no checks: it serves
        cache = TemplateCache(store, refresh_s=0)
        context = sample_contexts("awaiting_pickup")["delay of 2 days"]
        async with LoopWatch() as watch:
            good = await cache.last_good(*key, context, timezone="UTC", renderer=pool)
        assert good.template.version == 1 and "Ada" in good.rendered.text
        assert [(t.version, e.kind) for t, e in good.failures] == [(bomb.version, "sandbox")]
        assert watch.worst < 1.0
    finally:
        await engine.dispose()


async def test_a_template_that_needs_too_much_memory_is_stopped_by_the_process_limit():
    """Past the sandbox's size checks, many medium strings kept alive at once: the
    process's address-space limit ends it, not the machine's memory."""
    pool = RenderPool(processes=1, timeout_s=10, memory_mb=256)
    hog = (
        "{% set ns = namespace(keep=[]) %}{% for i in range(3000) %}"
        "{% set ns.keep = ns.keep + [('x' * 90000) ~ i] %}{% endfor %}{{ ns.keep|length }}"
    )
    try:
        with pytest.raises(RenderError, match="too much memory"):
            await pool.render(sms(hog), {}, locale="en", timezone="UTC")
        fine = await pool.render(sms("ok {{ 1 + 1 }}"), {}, locale="en", timezone="UTC")
        assert fine.text == "ok 2"
    finally:
        await pool.stop()


async def test_the_time_limit_is_the_templates_not_the_workers_start():
    """A worker's imports take far longer than a render (half a second idle, seconds on a
    loaded machine): a tight limit still renders a plain template, first and after a
    replaced worker — the clock starts at the request."""
    pool = RenderPool(processes=1, timeout_s=0.2)
    try:
        fine = await pool.render(sms("ok {{ 1 + 1 }}"), {}, locale="de", timezone="UTC")
        with pytest.raises(RenderError, match=r"longer than 0\.2 s"):
            await pool.render(sms(BOMBS["heavy filters in a loop"]), {}, locale="en",
                              timezone="UTC")  # fmt: skip
        again = await pool.render(sms("ok {{ 2 + 2 }}"), {}, locale="fr", timezone="UTC")
        assert (fine.text, again.text) == ("ok 2", "ok 4")
    finally:
        await pool.stop()


async def test_a_message_whose_newest_template_is_a_bomb_goes_with_the_last_good_one(
    outreach, sendgrid_double
):
    """The whole send path (the render pool of a real outreach build): the bomb is
    skipped, the message goes with version 1, and the decision records both."""
    store = outreach.templates
    key = ("delivery_late", "email", "de")
    current = (await store.versions(*key))[-1]
    bomb = await store.save_draft(
        *key,
        subject=current.subject,
        html=current.html,
        text=BOMBS["heavy filters in a loop"],
        author="mia",
    )
    await store.publish(bomb.id, author="mia", message="")  # no checks: it serves
    await outreach.template_cache.refresh(force=True)
    async with LoopWatch() as watch:
        await outreach.delivery.on_request(request(), NOON)
    row = await outreach.ledger.by_request("req-1")
    assert (row.status, row.template_version) == ("sent", current.version)
    sending = [e for e in await outreach.ledger.events_of(row.decision_id) if e.status == "sending"]
    assert sending[0].payload["template_skipped"] == [bomb.version]
    assert len(sendgrid_double.messages) == 1
    assert watch.worst < 1.0
