"""The template store on SQLite and on a real PostgreSQL: seeding twice at once,
publishing, rollback and the cache's reload, as workers see them."""

from __future__ import annotations

import asyncio

import pytest

from services.outreach.adapters.db import create_engine, create_schema, session_factory
from services.outreach.adapters.render_pool import InlineRenderer
from services.outreach.adapters.templates import TemplateCache, TemplateStore, default_templates
from services.outreach.domain.samples import sample_contexts

pytestmark = pytest.mark.integration

KEY = ("delivery_late", "email", "fr")


async def test_two_workers_seeding_at_once_publish_each_default_exactly_once(database_url):
    engine = create_engine(database_url)
    await create_schema(engine)
    try:
        stores = [TemplateStore(session_factory(engine)) for _ in range(2)]
        added = await asyncio.gather(*(s.seed_defaults() for s in stores))
        assert sum(added) == len(default_templates())
        published = await stores[0].published()
        assert len(published) == len(default_templates())
    finally:
        await engine.dispose()


async def test_publish_and_rollback_reach_a_second_workers_cache(database_url):
    engine = create_engine(database_url)
    await create_schema(engine)
    try:
        studio = TemplateStore(session_factory(engine))
        worker = TemplateCache(TemplateStore(session_factory(engine)), refresh_s=0)
        await studio.seed_defaults()
        context = sample_contexts("delivery_late")["delay of 2 days"]
        first = await worker.last_good(
            *KEY, context, timezone="Europe/Paris", renderer=InlineRenderer()
        )
        assert first.template.version == 1 and "samedi 7 mars 2026" in first.rendered.text
        v1 = (await studio.versions(*KEY))[0]
        draft = await studio.save_draft(
            *KEY,
            subject="Retard : {{ order.order_id }}",
            html=v1.html,
            text=v1.text,
            author="camille",
        )
        await studio.publish(
            draft.id, author="camille", message="plus court", samples=sample_contexts(KEY[0])
        )
        second = await worker.last_good(
            *KEY, context, timezone="Europe/Paris", renderer=InlineRenderer()
        )
        assert (second.template.version, second.rendered.subject) == (
            2,
            "Retard : ord-2026-004217",
        )
        await studio.rollback(*KEY, 1, author="camille")
        third = await worker.last_good(
            *KEY, context, timezone="Europe/Paris", renderer=InlineRenderer()
        )
        assert third.template.version == 3 and third.rendered.subject == first.rendered.subject
    finally:
        await engine.dispose()
