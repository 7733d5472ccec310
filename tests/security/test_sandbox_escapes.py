"""The known ways out of a Jinja sandbox, tried the way production renders: in the
render pool's processes (workers, studio previews, test sends) and through publish
validation. Each one is a RenderError said for the marketer; nothing runs, nothing of
the process (its environment, its modules) reaches the output, the context is not
changed, and the pool serves the next message."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.outreach.adapters.db import create_engine, create_schema, session_factory
from services.outreach.adapters.render_pool import RenderPool
from services.outreach.adapters.templates import PublishRejected, TemplateStore
from services.outreach.domain.rendering import RenderError, TemplateSource, render
from services.outreach.domain.samples import sample_contexts

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# Published escapes of Jinja's sandbox (and the classic payloads of template injection),
# as of December 2026.
SANDBOX_ESCAPES = {
    "dunder attribute": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "CVE-2016-10745 str.format": "{{ '{0.__class__.__init__.__globals__}'.format(c) }}",
    "CVE-2019-10906 str.format_map": "{{ '{x.__class__}'.format_map({'x': c}) }}",
    "CVE-2024-56326 indirect format": (
        "{% set f = '{0.__class__.__init__.__globals__}'.format %}{{ f(c) }}"
    ),
    "CVE-2024-56326 format through a list": (
        "{% set fs = ['{0.__class__}'.format] %}{{ fs[0](c) }}"
    ),
    "CVE-2025-27516 attr filter to format": "{{ '{0.__class__}'|attr('format')(c) }}",
    "attr filter to dunder": "{{ c|attr('__class__') }}",
    "map to a dunder attribute": "{{ [c]|map(attribute='__class__')|list }}",
    "globals of a helper": "{{ cycler.__init__.__globals__ }}",
    "os through a helper's globals": "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "globals of namespace": "{{ namespace.__init__.__globals__ }}",
    "the template's own context": "{{ self._TemplateReference__context }}",
    "subclasses in a loop": (
        "{% for k in [].__class__.__base__.__subclasses__() %}{{ k }}{% endfor %}"
    ),
    "mutating a dict": "{{ c.update({'x': 1}) }}",
    "memory bomb": "{{ 'x' * 1000000000 }}",
}
# What must never reach an output: the process's secrets and the Python internals.
LEAKS = ("<class", "<module", "<built-in", "__builtins__", "posix", "uid=")


def sms(text: str) -> TemplateSource:
    return TemplateSource("awaiting_pickup", "sms", "en", 0, None, None, text)


@pytest.fixture
async def pool(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[RenderPool]:
    # A secret in the environment the pool's processes inherit: an escape would show it.
    monkeypatch.setenv("OUTREACH_ESCAPE_CANARY", "s3cr3t-canary")
    renderer = RenderPool(processes=1, timeout_s=2.0, memory_mb=384)
    await renderer.start()
    yield renderer
    await renderer.stop()


@pytest.mark.parametrize("payload", SANDBOX_ESCAPES.values(), ids=SANDBOX_ESCAPES.keys())
def test_an_escape_is_a_render_error_and_executes_nothing(payload):
    context = {"c": {"first_name": "Ada"}}
    with pytest.raises(RenderError) as failed:
        render(sms(payload), context, locale="en", timezone="UTC")
    assert failed.value.kind in {"sandbox", "undefined"}, failed.value
    assert not any(leak in str(failed.value) for leak in LEAKS), failed.value
    assert context == {"c": {"first_name": "Ada"}}


@pytest.mark.parametrize("payload", SANDBOX_ESCAPES.values(), ids=SANDBOX_ESCAPES.keys())
async def test_an_escape_fails_in_the_render_pool_too(pool, payload):
    context = {"c": {"first_name": "Ada"}}
    with pytest.raises(RenderError) as failed:
        await pool.render(sms(payload), context, locale="en", timezone="UTC")
    said = f"{failed.value} {failed.value.reason}"
    assert not any(leak in said for leak in LEAKS) and "canary" not in said, said
    fine = await pool.render(sms("Hi {{ c.first_name }}"), context, locale="en", timezone="UTC")
    assert fine.text == "Hi Ada"


async def test_publishing_an_escape_is_refused_with_its_line(pool, tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'o.db'}")
    await create_schema(engine)
    store = TemplateStore(session_factory(engine), renderer=pool)
    try:
        await store.seed_defaults()
        for name, payload in SANDBOX_ESCAPES.items():
            draft = await store.save_draft(
                "awaiting_pickup", "sms", "en",
                subject=None, html=None, text=f"Hi\n{payload}", author="mallory",
            )  # fmt: skip
            with pytest.raises(PublishRejected) as refused:
                await store.publish(
                    draft.id,
                    author="mallory",
                    message=name,
                    samples=sample_contexts("awaiting_pickup"),
                )
            assert refused.value.problems, name
            assert (await store.get(draft.id)).status == "draft", name
    finally:
        await engine.dispose()
