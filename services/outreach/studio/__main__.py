"""The template studio: serve it, or manage its users.

    python -m services.outreach.studio                      serve on OUTREACH_STUDIO_PORT
    python -m services.outreach.studio users add NAME --role admin   (asks for a password)
    python -m services.outreach.studio users add NAME --role editor --password-stdin
    python -m services.outreach.studio users set NAME [--role R] [--password-stdin]
                                                         [--disable | --enable]
    python -m services.outreach.studio users list
    python -m services.outreach.studio templates export [--out FILE] [--drafts]
    python -m services.outreach.studio templates import FILE --as NAME [--publish]
                                                         [--message M] [--dry-run]

There is no default account: the first admin is created with `users add`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from common.clock import wall_now
from common.logs import configure_logging, get_logger
from common.ops_http import Heartbeat, OpsServer
from common.periodic import every
from services.outreach.adapters import ledger as _ledger  # noqa: F401 - registers tables
from services.outreach.adapters.conversations import HandoffStore, ReplyStore
from services.outreach.adapters.db import create_engine, create_schema, session_factory
from services.outreach.adapters.ledger import Ledger
from services.outreach.adapters.outcomes import OutcomeStore
from services.outreach.adapters.templates import TemplateStore
from services.outreach.bootstrap import build_senders
from services.outreach.config import Settings
from services.outreach.outcome_report import build as outcome_report
from services.outreach.studio.accounts import (
    EDIT,
    PUBLISH,
    ROLES,
    AccountError,
    Accounts,
    allowed,
    roles_with,
)
from services.outreach.studio.app import create_app
from services.outreach.studio.context import Studio
from services.outreach.studio.security import LoginThrottle
from services.outreach.studio.transfer import (
    ImportReport,
    TransferError,
    export_document,
    import_document,
    parse_document,
)

log = get_logger(__name__)


def build_studio(settings: Settings) -> tuple[Studio, object]:
    engine = create_engine(settings.db_url())
    sessions = session_factory(engine)
    renderer = settings.render_pool()
    studio = Studio(
        settings=settings,
        store=TemplateStore(sessions, renderer=renderer),
        renderer=renderer,
        ledger=Ledger(sessions),
        accounts=Accounts(
            sessions, session_lifetime=timedelta(hours=settings.studio_session_hours)
        ),
        senders=build_senders(settings),
        throttle=LoginThrottle(settings.studio_login_attempts, settings.studio_login_window_s),
        replies=ReplyStore(sessions),
        handoffs=HandoffStore(sessions),
    )
    return studio, engine


def outcome_gauges(studio: Studio) -> Callable[[], Awaitable[None]]:
    """The business dashboard's gauges: the outcome report of the customers exposed in
    the last 180 days (their 90-day outcomes once 90 days have passed)."""

    async def export_now() -> None:
        now = wall_now()
        store = OutcomeStore(studio.accounts.sessions)
        since = now - timedelta(days=180)
        outcome_report.export(await outcome_report.build(store, since=since, until=now, now=now))

    return export_now


async def serve(settings: Settings) -> None:
    studio, engine = build_studio(settings)
    await create_schema(engine)  # type: ignore[arg-type]
    await studio.store.seed_defaults()
    await studio.renderer.start()
    heartbeat = Heartbeat()

    async def database() -> bool:
        return await studio.store.revision() >= 0

    # /metrics and the probes on the ops port (OUTREACH_STUDIO_OPS_PORT), which the chart
    # does not expose through the Ingress; the studio's own port answers health only.
    ops = OpsServer(settings.http_host, settings.studio_ops_port, heartbeat, {"database": database})
    await ops.start()
    app = create_app(studio, ops.add_health_to)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.studio_port)
    await site.start()
    await studio.rehearser.start()
    stop = asyncio.Event()
    gauges = asyncio.create_task(
        every(stop, settings.outcomes_refresh_s, outcome_gauges(studio), "outcome_gauges")
    )
    log.info(
        "studio_started",
        url=f"http://{settings.http_host}:{settings.studio_port}/",
        users=len(await studio.accounts.users()),
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            heartbeat.beat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=5)
    finally:
        stop.set()
        gauges.cancel()
        await runner.cleanup()
        await studio.rehearser.stop()  # interrupts a running rehearsal, fails its row
        await ops.stop()
        await studio.renderer.stop()
        await engine.dispose()  # type: ignore[attr-defined]
        log.info("studio_stopped")


def _password(args: argparse.Namespace, *, required: bool) -> str | None:
    if args.password_stdin:
        value = sys.stdin.readline().rstrip("\n")
        if not value:
            raise AccountError("no password on standard input")
        return value
    if not required:
        return None
    if not sys.stdin.isatty():
        raise AccountError("no terminal to ask for a password: use --password-stdin")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Again: "):
        raise AccountError("the two passwords differ")
    return first


async def users(settings: Settings, args: argparse.Namespace) -> int:
    studio, engine = build_studio(settings)
    await create_schema(engine)  # type: ignore[arg-type]
    accounts = studio.accounts
    try:
        if args.action == "list":
            for user in await accounts.users():
                state = "disabled" if user.disabled else "active"
                login = user.last_login_at.isoformat() if user.last_login_at else "never"
                kind = "local" if user.password_hash else "sso"
                print(f"{user.username}\t{user.role}\t{state}\t{kind}\tlast sign-in {login}")
        elif args.action == "add":
            await accounts.create_user(args.name, _password(args, required=True), args.role)
            print(f"user {args.name} created with role {args.role}")
        elif args.action == "set":
            disabled = True if args.disable else (False if args.enable else None)
            await accounts.update_user(
                args.name,
                role=args.role,
                password=_password(args, required=False),
                disabled=disabled,
            )
            print(f"user {args.name} changed")
    except AccountError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        await engine.dispose()  # type: ignore[attr-defined]
    return 0


async def export_templates(settings: Settings, *, drafts: bool) -> dict[str, Any]:
    studio, engine = build_studio(settings)
    await create_schema(engine)  # type: ignore[arg-type]
    await studio.store.seed_defaults()
    await studio.renderer.start()
    try:
        return export_document(await studio.store.all_versions(), drafts=drafts)
    finally:
        await engine.dispose()  # type: ignore[attr-defined]


async def import_templates(
    settings: Settings, args: argparse.Namespace, entries: list[dict[str, Any]]
) -> ImportReport:
    studio, engine = build_studio(settings)
    await create_schema(engine)  # type: ignore[arg-type]
    await studio.store.seed_defaults()
    await studio.renderer.start()
    try:
        user = next((u for u in await studio.accounts.users() if u.username == args.author), None)
        needed = PUBLISH if args.publish else EDIT
        if user is None or user.disabled or not allowed(user.role, needed):
            roles = " or ".join(roles_with(needed))
            raise TransferError(f"--as must name an active studio user who may {needed} ({roles})")
        return await import_document(
            studio.store,
            studio.accounts,
            entries,
            author=user.username,
            publish=args.publish,
            message=args.message,
            dry_run=args.dry_run,
        )
    finally:
        await engine.dispose()  # type: ignore[attr-defined]


def templates(settings: Settings, args: argparse.Namespace) -> int:
    try:
        if args.action == "export":
            doc = asyncio.run(export_templates(settings, drafts=args.drafts))
            text = json.dumps(doc, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
            if args.out in (None, "-"):
                sys.stdout.write(text)
            else:
                Path(args.out).write_text(text, encoding="utf-8")
                print(f"{len(doc['templates'])} template(s) written to {args.out}", file=sys.stderr)
            return 0
        raw = sys.stdin.read() if args.file == "-" else Path(args.file).read_text("utf-8")
        report = asyncio.run(import_templates(settings, args, parse_document(raw)))
    except (TransferError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    verb = "would be " if args.dry_run else ""
    print(f"{len(report.unchanged)} unchanged, {len(report.drafted)} {verb}saved as drafts, "
          f"{len(report.published)} {verb}published, {len(report.rejected)} rejected")  # fmt: skip
    for key, problems in sorted(report.rejected.items()):
        print(f"rejected {key}: " + "; ".join(problems), file=sys.stderr)
    return 0 if report.ok else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m services.outreach.studio", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="command")
    sub.add_parser("serve", help="serve the studio (the default)")
    u = sub.add_parser("users", help="manage studio users")
    usub = u.add_subparsers(dest="action", required=True)
    usub.add_parser("list", help="every user with role and state")
    add = usub.add_parser("add", help="create a user (asks for the password)")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, required=True)
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    change = usub.add_parser("set", help="change role, password or state")
    change.add_argument("name")
    change.add_argument("--role", choices=ROLES)
    change.add_argument("--password-stdin", action="store_true")
    state = change.add_mutually_exclusive_group()
    state.add_argument("--disable", action="store_true")
    state.add_argument("--enable", action="store_true")
    t = sub.add_parser("templates", help="export or import templates as one JSON document")
    tsub = t.add_subparsers(dest="action", required=True)
    exp = tsub.add_parser("export", help="the serving version of every template")
    exp.add_argument("--out", help="file to write (default: standard output)")
    exp.add_argument("--drafts", action="store_true", help="also the newest unpublished drafts")
    imp = tsub.add_parser("import", help="new drafts (or published versions) from an export")
    imp.add_argument("file", help="the export to read ('-' for standard input)")
    imp.add_argument("--as", dest="author", required=True, help="the studio user answerable")
    imp.add_argument("--publish", action="store_true", help="publish what passes the checks")
    imp.add_argument("--message", default="imported", help="the publish message")
    imp.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = Settings()
    configure_logging("outreach-studio", settings.log_level, settings.log_format)
    if args.command == "users":
        return asyncio.run(users(settings, args))
    if args.command == "templates":
        return templates(settings, args)
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
