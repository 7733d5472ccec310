"""Templates exported from one studio and imported into another, by the command line,
on SQLite and PostgreSQL: drafts or published, checked like the Publish button, audited,
and a second import of the same file changes nothing."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest

from services.outreach.adapters.db import create_engine, session_factory
from services.outreach.adapters.templates import TemplateStore
from services.outreach.config import Settings
from services.outreach.studio.__main__ import main as studio_cli
from services.outreach.studio.accounts import Accounts

pytestmark = pytest.mark.timeout(180)


def run(monkeypatch, database_url: str, tmp_path: Path, *args: str, stdin: str = "") -> int:
    monkeypatch.setenv("OUTREACH_DATABASE_URL", database_url)
    monkeypatch.setenv("OUTREACH_DATA_DIR", str(tmp_path))
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return studio_cli(list(args))


def serving(database_url: str, tmp_path: Path, key: tuple[str, str, str]):
    settings = Settings(database_url=database_url, data_dir=tmp_path)

    async def read():
        engine = create_engine(settings.db_url())
        try:
            versions = await TemplateStore(session_factory(engine)).versions(*key)
            accounts = Accounts(session_factory(engine))
            return versions, await accounts.audit_log()
        finally:
            await engine.dispose()

    return asyncio.run(read())


def test_export_edit_import_publish_and_import_again(monkeypatch, tmp_path, database_url, capsys):
    out = tmp_path / "templates.json"
    assert run(monkeypatch, database_url, tmp_path, "templates", "export", "--out", str(out)) == 0
    doc = json.loads(out.read_text())
    assert doc["format"] == "proactive-outreach/templates" and len(doc["templates"]) > 50
    entry = next(
        t
        for t in doc["templates"]
        if (t["message_kind"], t["channel"], t["locale"]) == ("delivery_late", "sms", "de")
    )
    assert entry["status"] == "published"

    # An editor may only draft; a publisher publishes what passes the checks.
    for name, role in (("eve", "editor"), ("pia", "publisher")):
        code = run(
            monkeypatch, database_url, tmp_path,
            "users", "add", name, "--role", role, "--password-stdin",
            stdin=f"{name}-correct-horse-9\n",
        )  # fmt: skip
        assert code == 0
    entry["text"] = "Hallo {{ customer.first_name }}, Ihr Paket kommt später. Entschuldigung!"
    broken = dict(entry, locale="fr", text="Bonjour {{ customer.shoe_size }}")
    doc["templates"] = [entry, broken, doc["templates"][0]]  # and one unchanged
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(doc))
    capsys.readouterr()

    args = ("templates", "import", str(edited), "--publish", "--message", "shorter apology")
    assert run(monkeypatch, database_url, tmp_path, *args, "--as", "eve") == 2  # not a publisher
    assert "who may publish (publisher or admin)" in capsys.readouterr().err
    assert run(monkeypatch, database_url, tmp_path, *args, "--as", "pia", "--dry-run") == 0
    assert "1 unchanged, 0 would be saved as drafts, 2 would be published" in (
        capsys.readouterr().out
    )
    versions, _ = serving(database_url, tmp_path, ("delivery_late", "sms", "de"))
    assert versions[-1].text != entry["text"]  # a dry run changes nothing

    assert run(monkeypatch, database_url, tmp_path, *args, "--as", "pia") == 1  # one rejected
    printed = capsys.readouterr()
    assert "1 unchanged, 0 saved as drafts, 1 published, 1 rejected" in printed.out
    assert "rejected delivery_late/sms/fr" in printed.err and "shoe_size" in printed.err
    versions, audit = serving(database_url, tmp_path, ("delivery_late", "sms", "de"))
    assert (versions[-1].status, versions[-1].author, versions[-1].text) == (
        "published",
        "pia",
        entry["text"],
    )
    assert versions[-1].message == "shorter apology"
    actions = [(a.actor, a.action, a.target) for a in audit]
    assert ("pia", "published", "delivery_late/sms/de") in actions
    french, _ = serving(database_url, tmp_path, ("delivery_late", "sms", "fr"))
    # kept as a draft to fix in the studio; the shipped French version still serves
    assert [v.status for v in french] == ["published", "draft"]

    count = len(versions)
    assert run(monkeypatch, database_url, tmp_path, *args, "--as", "pia") == 1
    assert "2 unchanged" in capsys.readouterr().out  # the same file again: nothing new
    versions, _ = serving(database_url, tmp_path, ("delivery_late", "sms", "de"))
    assert len(versions) == count


def test_a_file_that_is_not_an_export_is_refused_whole(monkeypatch, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    bad = tmp_path / "bad.json"
    entries = [{"message_kind": "nope", "channel": "fax"}]
    bad.write_text(
        json.dumps(
            {"format": "proactive-outreach/templates", "format_version": 1, "templates": entries}
        )
    )
    assert run(monkeypatch, url, tmp_path, "templates", "import", str(bad), "--as", "x") == 2
    err = capsys.readouterr().err
    assert "unknown message_kind 'nope'" in err and "unknown channel 'fax'" in err
    assert run(monkeypatch, url, tmp_path, "templates", "import", "-", "--as", "x", stdin="[") == 2
    assert "not JSON" in capsys.readouterr().err
