"""The template store on SQLite: seeding, drafts, publishing, rollback, the locale
fallback, the last version that renders, and the cache's hot reload."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from services.outreach.adapters.db import create_engine, create_schema, session_factory
from services.outreach.adapters.render_pool import InlineRenderer
from services.outreach.adapters.templates import (
    PublishRejected,
    TemplateCache,
    TemplateStore,
    default_templates,
)
from services.outreach.domain.rendering import RenderError
from services.outreach.domain.samples import sample_contexts

KEY = ("delivery_late", "sms", "de")
CONTEXT = sample_contexts("delivery_late")["delay of 2 days"]


@pytest.fixture
async def store(tmp_path) -> AsyncIterator[TemplateStore]:
    engine = create_engine(f"sqlite:///{tmp_path / 'outreach.db'}")
    await create_schema(engine)
    yield TemplateStore(session_factory(engine))
    await engine.dispose()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_seeding_publishes_every_default_as_version_1_by_system_once(store):
    assert await store.seed_defaults() == len(default_templates())
    assert await store.seed_defaults() == 0
    versions = await store.versions(*KEY)
    assert [(v.version, v.status, v.author) for v in versions] == [(1, "published", "system")]


async def test_seeding_never_overwrites_a_key_a_person_has_edited(store):
    await store.seed_defaults()
    draft = await store.save_draft(*KEY, subject=None, html=None, text="Hallo", author="mia")
    await store.publish(draft.id, author="mia", message="kürzer")
    async with store.sessions() as s, s.begin():  # pretend the shipped default changed
        v1 = (await store.versions(*KEY))[0]
        row = await s.get(type(v1), v1.id)
        row.text = "old wording"
    assert await store.seed_defaults() == 0
    assert [v.text for v in await store.versions(*KEY)][-1] == "Hallo"


async def test_seeding_upgrades_untouched_defaults_to_the_new_shipped_wording(store):
    await store.seed_defaults()
    v1 = (await store.versions(*KEY))[0]
    async with store.sessions() as s, s.begin():
        row = await s.get(type(v1), v1.id)
        row.text = "old wording"
    assert await store.seed_defaults() == 1
    latest = await store.latest_published(*KEY)
    assert latest is not None and latest.version == 2 and latest.text != "old wording"


async def test_drafts_do_not_serve_until_published_and_every_published_version_is_kept(store):
    await store.seed_defaults()
    draft = await store.save_draft(
        *KEY, subject=None, html=None, text="v2 {{ customer.first_name }}", author="mia"
    )
    assert (await store.latest_published(*KEY)).version == 1
    await store.publish(draft.id, author="lea", message="friendlier")
    latest = await store.latest_published(*KEY)
    assert latest is not None and latest.version == 2
    versions = await store.versions(*KEY)
    assert [(v.version, v.status) for v in versions] == [(1, "published"), (2, "published")]
    assert versions[1].author == "lea" and versions[1].message == "friendlier"


async def test_rollback_publishes_a_copy_as_a_new_version(store):
    await store.seed_defaults()
    original = await store.latest_published(*KEY)
    draft = await store.save_draft(*KEY, subject=None, html=None, text="v2", author="mia")
    await store.publish(draft.id, author="mia", message="")
    rolled = await store.rollback(*KEY, 1, author="lea")
    assert rolled.version == 3 and rolled.status == "published"
    assert rolled.message == "rollback to version 1"
    latest = await store.latest_published(*KEY)
    assert latest is not None and (latest.version, latest.text) == (3, original.text)
    with pytest.raises(KeyError):
        await store.rollback(*KEY, 99, author="lea")


async def test_archiving_the_newest_lets_the_previous_one_serve(store):
    await store.seed_defaults()
    draft = await store.save_draft(*KEY, subject=None, html=None, text="v2", author="mia")
    await store.publish(draft.id, author="mia", message="")
    await store.archive(draft.id)
    assert (await store.latest_published(*KEY)).version == 1


async def test_locale_fallback_exact_then_language_then_english(store):
    await store.seed_defaults()
    assert (await store.latest_published("delivery_late", "sms", "de-AT")).locale == "de"
    assert (await store.latest_published("delivery_late", "sms", "es-ES")).locale == "en"
    draft = await store.save_draft(
        "delivery_late", "sms", "de-AT", subject=None, html=None, text="Servus", author="mia"
    )
    await store.publish(draft.id, author="mia", message="")
    assert (await store.latest_published("delivery_late", "sms", "de-AT")).text == "Servus"
    assert await store.latest_published("no_such_kind", "sms", "de") is None


async def test_publishing_with_samples_refuses_a_broken_version(store):
    draft = await store.save_draft(
        *KEY, subject=None, html=None, text="{{ order.trackng_url }}", author="mia"
    )
    with pytest.raises(PublishRejected) as exc:
        await store.publish(
            draft.id, author="mia", message="", samples=sample_contexts("delivery_late")
        )
    assert "trackng_url" in str(exc.value)
    assert (await store.get(draft.id)).status == "draft"


async def test_cache_picks_up_a_published_version_after_the_refresh_interval(store):
    await store.seed_defaults()
    clock = FakeClock()
    cache = TemplateCache(store, refresh_s=2.0, clock=clock)
    assert (await cache.latest_published(*KEY)).version == 1
    draft = await store.save_draft(*KEY, subject=None, html=None, text="neu", author="mia")
    await store.publish(draft.id, author="mia", message="")
    clock.now += 1.0
    assert (await cache.latest_published(*KEY)).version == 1  # not asked again yet
    clock.now += 1.5
    assert (await cache.latest_published(*KEY)).version == 2
    reloads = cache.reloads
    clock.now += 5
    await cache.refresh()
    assert cache.reloads == reloads  # revision unchanged: nothing reloaded


async def test_last_good_skips_a_published_version_that_fails_to_render(store):
    await store.seed_defaults()
    draft = await store.save_draft(*KEY, subject=None, html=None, text="{{ 1 / 0 }}", author="mia")
    await store.publish(draft.id, author="mia", message="oops")
    cache = TemplateCache(store, refresh_s=0)
    good = await cache.last_good(*KEY, CONTEXT, timezone="Europe/Berlin", renderer=InlineRenderer())
    assert good.template.version == 1 and "Ada" in good.rendered.text
    assert [(t.version, e.kind) for t, e in good.failures] == [(2, "value")]


async def test_last_good_raises_when_nothing_renders_or_nothing_exists(store):
    cache = TemplateCache(store, refresh_s=0)
    with pytest.raises(RenderError, match="no published template"):
        await cache.last_good(*KEY, CONTEXT, timezone="UTC", renderer=InlineRenderer())
    draft = await store.save_draft(*KEY, subject=None, html=None, text="{{ nope }}", author="mia")
    await store.publish(draft.id, author="mia", message="")
    with pytest.raises(RenderError, match="nope"):
        await cache.last_good(*KEY, CONTEXT, timezone="UTC", renderer=InlineRenderer())


async def test_cache_keeps_serving_when_the_database_is_unreadable(store):
    await store.seed_defaults()
    cache = TemplateCache(store, refresh_s=0)
    await cache.refresh(force=True)

    async def broken() -> int:
        raise OSError("database gone")

    store.revision = broken  # type: ignore[method-assign]
    assert (await cache.latest_published(*KEY)).version == 1


async def test_revision_moves_with_every_change(store):
    r0 = await store.revision()
    await store.seed_defaults()
    r1 = await store.revision()
    draft = await store.save_draft(*KEY, subject=None, html=None, text="x", author="mia")
    r2 = await store.revision()
    await store.publish(draft.id, author="mia", message="")
    r3 = await store.revision()
    await store.archive(draft.id)
    r4 = await store.revision()
    assert r0 < r1 < r2 < r3 < r4


def test_store_uses_aware_times():
    assert TemplateStore(None).now().tzinfo is UTC  # type: ignore[arg-type]
    assert isinstance(TemplateStore(None).now(), datetime)  # type: ignore[arg-type]
