"""`outreachctl rehearse`: what would the pipeline have done over the last days with
other rules or templates? (docs/rehearsal.md)

    outreachctl rehearse --from 7d [--until ISO] [--rules FILE] [--templates draft]
                         [--archive FILE] [--output text|json]
    outreachctl rehearse --export FILE [--until ISO]     the input, archived

The shop's retained input (commerce.*) is replayed on the event clock — in one process
(replay/, which `outreachctl rehearse` runs), or with --through-services by the four
services in an isolated namespace on the broker — with outbox senders, and the report
says whom it would have reached, what it would have held back, the storms, how that
differs from what was really sent, and sample messages. Nothing live is written.
Exit codes: 0 done; 1 failed; 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from common.logs import configure_logging
from services.outreach.config import Settings
from services.outreach.rehearsal import archive, report
from services.outreach.rehearsal.namespace import RulesError, read_rules
from services.outreach.rehearsal.run import Options, Replayer, rehearse

_AGO = re.compile(r"^(\d+(?:\.\d+)?)([dhm])$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def moment(value: str, now: datetime) -> datetime:
    """`7d`, `36h`, `90m` (ago) or an ISO 8601 moment (UTC if no offset)."""
    found = _AGO.match(value.strip())
    if found:
        return now - timedelta(**{_UNITS[found.group(2)]: float(found.group(1))})
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a moment: {value!r} (7d, 36h or ISO 8601)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def templates_wanted(value: str, *, live: bool) -> str:
    """--templates as run.Options takes it: none, all, or one draft's version id."""
    if value not in ("published", "draft") and not value.isdigit():
        raise ValueError(f"--templates takes published, draft or a version id, not {value!r}")
    if value != "published" and not live:
        raise ValueError("--templates needs the live studio's templates: not with --no-live")
    return {"published": "none", "draft": "all"}.get(value, value)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="outreachctl rehearse", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--from", dest="since", default="7d", help="start of the period (default 7d)")
    p.add_argument("--until", default=None, help="end of the period (default now)")
    p.add_argument("--rules", type=Path, help="KEY=VALUE rule settings to rehearse with")
    p.add_argument(
        "--templates", default="published",
        help="published (default), draft (every key's newest draft), or a draft's version id",
    )  # fmt: skip
    p.add_argument("--archive", type=Path, help="replay this archive, not the live topics")
    p.add_argument("--export", type=Path, help="archive the live input to FILE and stop")
    p.add_argument("--no-live", action="store_true", help="no live ledger to compare with")
    p.add_argument("--work-dir", type=Path, help="where its databases and logs go")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds it may take")
    p.add_argument(
        "--through-services", action="store_true",
        help="replay through the four services on the broker, not in one process",
    )  # fmt: skip
    p.add_argument("--output", choices=("text", "json"), default="text")
    return p


def main(argv: list[str] | None = None, replayer: Replayer | None = None) -> int:
    """The command; `replayer`: how to replay unless --through-services (None: through
    the services always)."""
    # Stopped (SIGTERM: a pod; SIGINT: Ctrl-C, the studio's interrupt), it still stops
    # its services and deletes its topics: the exit runs the rehearsal's clean-up. SIGINT
    # is set here because Python keeps an inherited SIG_IGN (a shell's background job, a
    # test runner's worker): the interrupt would go unheard.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    args = parser().parse_args(argv)
    settings = Settings()
    # Its result is stdout (a report, or one JSON document); what it logs goes to stderr.
    configure_logging("rehearsal", "WARNING", "console", stream="stderr")
    now = datetime.now(UTC)
    try:
        since = moment(args.since, now)
        until = moment(args.until, now) if args.until else now
        rules = read_rules(args.rules) if args.rules else {}
        drafts = templates_wanted(args.templates, live=not args.no_live)
        if args.work_dir and args.work_dir.exists() and any(args.work_dir.iterdir()):
            raise ValueError(f"{args.work_dir} is not empty: a rehearsal starts from nothing")
    except (argparse.ArgumentTypeError, RulesError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bootstrap, prefix = settings.kafka_bootstrap_servers, settings.topic_prefix
    if args.export:
        records = archive.read_broker(bootstrap, prefix, int(until.timestamp() * 1000))
        n = archive.write(args.export, records)
        print(f"archived {n} input records to {args.export}", file=sys.stderr)
        return 0
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="rehearsal-", dir=_runs(settings)))
    options = Options(
        bootstrap=bootstrap, since=since, until=until, work=work, prefix=prefix,
        archive=args.archive, rules=rules, drafts=drafts, timeout_s=args.timeout,
        live_database_url=None if args.no_live else settings.db_url(),
        partitions=settings.topic_partitions,
        replayer=None if args.through_services else replayer,
        progress=lambda line: print(f"rehearsal: {line}", file=sys.stderr, flush=True),
    )  # fmt: skip
    try:
        found = rehearse(options)
    except KeyboardInterrupt:  # its clean-up has run (the finally clauses on the way)
        print("error: the rehearsal was interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # said plainly, whatever it was: Kafka, a database, a service
        print(f"error: the rehearsal failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(found.as_json(), indent=2, default=str))
    else:
        print(report.as_text(found))
    return 0


def _runs(settings: Settings) -> Path:
    path = settings.data_dir / "rehearsals"
    path.mkdir(parents=True, exist_ok=True)
    return path


if __name__ == "__main__":
    sys.exit(main())
