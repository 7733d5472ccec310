"""`outreachctl`: the operator's command line (topics, dead letters, explain).

outreachctl topics create            create every topic (partitions, retention, DLQs)
outreachctl deadletters list SERVICE  list dead letters with their reasons
outreachctl deadletters show SERVICE OFFSET   one dead letter: headers and bytes
outreachctl deadletters replay SERVICE [--offset N]   put them back on their topic
outreachctl deadletters purge SERVICE [--before-offset N] [--older-than-days D]
                                     [--customer ID] --yes
outreachctl templates export|import ...   the studio's templates as one JSON document
outreachctl sending status|pause|resume   the kill switch
outreachctl explain CUSTOMER_ID      why did (or didn't) we message this person?
outreachctl rehearse --from 7d [--rules FILE] [--templates draft]   what other rules or
                                     templates would have done (nothing live is written)
outreachctl outcomes [--since 180d] [--experiment NAME]   what each experiment's arms did
                                     for their customers (orders, returns, contacts, ...)

Every command but templates takes --output text|json (json: one JSON document on
stdout, nothing else). Exit codes: 0 done; 1 failed or refused (a missing topic, nothing at
that offset, a purge without --yes, a service that did not answer); 2 a usage error;
3 partly done (explain: one of the two services did not answer).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from common import kafka_security
from common.logs import configure_logging
from common.settings import ServiceSettings
from common.topic_reader import records_to_end
from common.topics import SERVICES, all_topics

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3


def _settings() -> ServiceSettings:
    return ServiceSettings()


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """Print the command's result: `data` as JSON with --output json, else `text`."""
    if getattr(args, "output", "text") == "json":
        print(json.dumps(data, indent=2, default=str))
    elif text:
        print(text)


def _failed(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_FAILED


def cmd_topics_create(args: argparse.Namespace) -> int:
    from common.admin import ensure_topics

    settings = _settings()
    created = ensure_topics(
        settings.kafka_bootstrap_servers,
        all_topics(settings.topic_prefix, settings.topic_partitions),
    )
    text = f"{len(created)} topic(s) created" + (f": {', '.join(created)}" if created else "")
    _emit(args, {"created": list(created)}, text)
    return EXIT_OK


def _deadletter_topic(service: str) -> str:
    return _settings().topics.deadletter(service)


READ_TIMEOUT_S = 60.0  # to read a dead-letter topic to its end


def _read_deadletters(service: str, limit: int) -> list[Any] | None:
    """The first `limit` dead letters of `service`, read up to the topic's end as it is
    when asked (common/topic_reader.py); None if its topic does not exist. Raises
    TimeoutError if the end is not reached within READ_TIMEOUT_S."""
    from kafka import KafkaConsumer, TopicPartition

    settings = _settings()
    topic = settings.topics.deadletter(service)
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
        enable_auto_commit=False,
        **kafka_security.client_options(),
    )
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            return None
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        return list(itertools.islice(records_to_end(consumer, tps, READ_TIMEOUT_S), limit))
    finally:
        consumer.close()


def _described(record: Any) -> dict[str, Any]:
    headers = {k: v.decode(errors="replace") for k, v in record.headers}
    return {
        "offset": record.offset,
        "timestamp_ms": record.timestamp,
        "original": {
            "topic": headers.get("dlq.original.topic"),
            "partition": headers.get("dlq.original.partition"),
            "offset": headers.get("dlq.original.offset"),
        },
        "code": headers.get("dlq.reason.code"),
        "reason": headers.get("dlq.reason", ""),
    }


def cmd_deadletters_list(args: argparse.Namespace) -> int:
    records = _read_deadletters(args.service, args.limit)
    if records is None:
        return _failed(f"no topic {_deadletter_topic(args.service)}")
    listed = [_described(r) for r in records]
    lines = [
        f"{d['offset']:>8}  {d['original']['topic'] or '?'}[{d['original']['partition'] or '?'}]@"
        f"{d['original']['offset'] or '?'}  {d['code'] or '?'}: {d['reason']}"
        for d in listed
    ]
    _emit(args, listed, "\n".join(lines) or f"no dead letters in {_deadletter_topic(args.service)}")
    return EXIT_OK


def cmd_deadletters_show(args: argparse.Namespace) -> int:
    records = _read_deadletters(args.service, 100_000)
    if records is None:
        return _failed(f"no topic {_deadletter_topic(args.service)}")
    for record in records:
        if record.offset == args.offset:
            headers = {k: v.decode(errors="replace") for k, v in record.headers}
            found = {
                "offset": record.offset,
                "headers": headers,
                "value": record.value.decode(errors="replace"),
            }
            _emit(args, found, json.dumps(found, indent=2))
            return EXIT_OK
    return _failed(f"no dead letter at offset {args.offset}")


def cmd_deadletters_replay(args: argparse.Namespace) -> int:
    from kafka import KafkaProducer

    settings = _settings()
    producer = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
        acks="all",
        **kafka_security.client_options(),
    )
    records = _read_deadletters(args.service, 100_000)
    if records is None:
        return _failed(f"no topic {_deadletter_topic(args.service)}")
    count = 0
    for record in records:
        if args.offset is not None and record.offset != args.offset:
            continue
        headers = dict(record.headers)
        topic = headers.get("dlq.original.topic", b"").decode()
        if not topic:
            continue
        kept = [(k, v) for k, v in record.headers if not k.startswith("dlq.")]
        kept.append(("dlq.replayed_from", str(record.offset).encode()))
        producer.send(topic, key=record.key, value=record.value, headers=kept)
        count += 1
    producer.flush()
    _emit(args, {"replayed": count}, f"replayed {count} dead letter(s)")
    if args.offset is not None and count == 0:
        return _failed(f"no dead letter at offset {args.offset}")
    return EXIT_OK


def cmd_deadletters_purge(args: argparse.Namespace) -> int:
    """Delete dead letters for good (Kafka DeleteRecords): all of them, those before an
    offset (e.g. the ones just replayed), or those older than some days; with
    `--customer`, only those about one customer (an erasure)."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.admin import KafkaAdminClient

    if args.customer:
        return _purge_customer(args)
    settings = _settings()
    servers = settings.kafka_bootstrap_servers.split(",")
    topic = settings.topics.deadletter(args.service)
    consumer = KafkaConsumer(
        bootstrap_servers=servers, enable_auto_commit=False, **kafka_security.client_options()
    )
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            return _failed(f"no topic {topic}")
        start, end = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
        cut = dict(end)
        if args.before_offset is not None:
            cut = {tp: min(args.before_offset, end[tp]) for tp in tps}
        if args.older_than_days is not None:
            moment_ms = int((time.time() - args.older_than_days * 86400) * 1000)
            found = consumer.offsets_for_times(dict.fromkeys(tps, moment_ms))
            cut = {tp: min(cut[tp], found[tp].offset if found[tp] else end[tp]) for tp in tps}
    finally:
        consumer.close()
    doomed = {tp: cut[tp] for tp in tps if cut[tp] > start[tp]}
    count = sum(cut[tp] - start[tp] for tp in doomed)
    if not doomed:
        _emit(args, {"topic": topic, "purged": 0}, "nothing to purge")
        return EXIT_OK
    if not args.yes:
        text = f"would delete {count} dead letter(s) of {topic} for good; add --yes to do it"
        _emit(args, {"topic": topic, "would_purge": count}, text)
        return EXIT_FAILED
    admin = KafkaAdminClient(bootstrap_servers=servers, **kafka_security.client_options())
    try:
        admin.delete_records(doomed, timeout_ms=30_000)
    finally:
        admin.close()
    _emit(args, {"topic": topic, "purged": count}, f"purged {count} dead letter(s) of {topic}")
    return EXIT_OK


def _purge_customer(args: argparse.Namespace) -> int:
    """Remove one customer's dead letters (an erasure): a dead-letter topic has one
    partition and Kafka deletes records only up to an offset, so the others are written
    again after the end, in their order, and everything before is deleted. A dead letter
    is the customer's when its key is the customer id or its bytes name it."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import KafkaAdminClient

    settings = _settings()
    servers = settings.kafka_bootstrap_servers.split(",")
    topic = settings.topics.deadletter(args.service)
    needle = args.customer.encode()
    consumer = KafkaConsumer(
        bootstrap_servers=servers, enable_auto_commit=False, **kafka_security.client_options()
    )
    try:
        tp = TopicPartition(topic, 0)
        if not consumer.partitions_for_topic(topic):
            return _failed(f"no topic {topic}")
        # All of it, or TimeoutError: what is deleted up to `end` must have been read.
        records = list(records_to_end(consumer, [tp], 120))
        end = records[-1].offset + 1 if records else 0
    finally:
        consumer.close()
    theirs = [r for r in records if r.key == needle or needle in (r.value or b"")]
    if not theirs:
        _emit(args, {"topic": topic, "purged": 0}, f"no dead letter of {args.customer} in {topic}")
        return EXIT_OK
    if not args.yes:
        text = f"would delete {len(theirs)} dead letter(s) of {args.customer}; add --yes"
        _emit(args, {"topic": topic, "would_purge": len(theirs)}, text)
        return EXIT_FAILED
    producer = KafkaProducer(
        bootstrap_servers=servers, acks="all", **kafka_security.client_options()
    )
    try:
        for r in records:
            if r not in theirs:
                producer.send(topic, key=r.key, value=r.value, headers=list(r.headers or []))
        producer.flush()
    finally:
        producer.close()
    admin = KafkaAdminClient(bootstrap_servers=servers, **kafka_security.client_options())
    try:
        admin.delete_records({tp: end}, timeout_ms=30_000)
    finally:
        admin.close()
    text = f"purged {len(theirs)} dead letter(s) of {args.customer} from {topic}"
    _emit(args, {"topic": topic, "purged": len(theirs)}, text)
    return EXIT_OK


def _get_json(url: str) -> tuple[bool, Any]:
    """(answered, the JSON document or what went wrong)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return True, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        return False, {"error": f"HTTP {exc.code}", "body": body}
    except (OSError, ValueError) as exc:
        return False, {"error": str(exc)}


def cmd_explain(args: argparse.Namespace) -> int:
    """Both services' explanations in one document; each part that did not come says why
    (an `error`), and the exit code says how many did (0 both, 3 one, 1 none)."""
    risk_ok, risk = _get_json(f"{args.risk_url}/customers/{args.customer_id}/explain")
    outreach_ok, outreach = _get_json(f"{args.outreach_url}/customers/{args.customer_id}/explain")
    document = {"customer_id": args.customer_id, "risk": risk, "outreach": outreach}
    print(json.dumps(document, indent=2, default=str))
    for name, ok, part in (("risk_detector", risk_ok, risk), ("outreach", outreach_ok, outreach)):
        if not ok:
            print(f"error: {name} did not answer: {part['error']}", file=sys.stderr)
    answered = int(risk_ok) + int(outreach_ok)
    return {2: EXIT_OK, 1: EXIT_PARTIAL}.get(answered, EXIT_FAILED)


def _operator_request(url: str, body: dict[str, Any] | None = None) -> Any:
    """GET (or POST a JSON body to) an operator endpoint with OUTREACH_OPERATOR_TOKEN."""
    import os

    headers = {"Content-Type": "application/json"}
    token = os.environ.get("OUTREACH_OPERATOR_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"error: HTTP {exc.code}: {exc.read().decode(errors='replace')}") from None
    except OSError as exc:
        raise SystemExit(f"error: outreach not reachable at {url}: {exc}") from None


def _actor(args: argparse.Namespace) -> str:
    import getpass

    return str(args.actor or getpass.getuser())


def cmd_sending(args: argparse.Namespace) -> int:
    base = f"{args.outreach_url}/ops/sending"
    if args.action == "status":
        state = _operator_request(base)
    elif args.action == "pause":
        state = _operator_request(
            f"{base}/pause", {"scope": args.scope, "reason": args.reason, "actor": _actor(args)}
        )
    else:
        state = _operator_request(
            f"{base}/resume",
            {"scope": args.scope, "ramp_minutes": args.ramp_minutes, "actor": _actor(args)},
        )
    paused = ", ".join(f"{p['scope']} (since {p['changed_at']}, {p['actor']}: {p['reason']})"
                       for p in state["paused"]) or "nothing"  # fmt: skip
    if args.json:
        args.output = "json"
    _emit(args, state, f"paused: {paused}")
    return EXIT_OK


def cmd_templates(args: argparse.Namespace) -> int:
    """Runs in the outreach studio's own command (its settings, its database)."""
    import subprocess

    command = [sys.executable, "-m", "services.outreach.studio", "templates", *args.rest]
    return subprocess.run(command, check=False).returncode


def cmd_outcomes(args: argparse.Namespace) -> int:
    """Runs in outreach's own command (its settings, its database)."""
    import subprocess

    command = [sys.executable, "-m", "services.outreach.outcome_report", *args.rest]
    return subprocess.run(command, check=False).returncode


def cmd_rehearse(args: argparse.Namespace) -> int:
    """Becomes outreach's own command (its settings: the cluster, the live database):
    replaced, not a child, so that Ctrl-C reaches the rehearsal itself, which then stops
    what it started."""
    import os

    command = [sys.executable, "-m", "replay", *args.rest]
    os.execv(sys.executable, command)


def _output_option() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--output",
        choices=("text", "json"),
        default="text",
        help="text for people (default), json for scripts: one document on stdout",
    )
    return parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="outreachctl",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    out = _output_option()
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    topics = sub.add_parser("topics", help="the Kafka topics every service needs")
    topics_sub = topics.add_subparsers(dest="action", required=True, metavar="ACTION")
    topics_sub.add_parser(
        "create",
        parents=[out],
        help="create every topic that is missing (partitions, retention, dead letters)",
    ).set_defaults(func=cmd_topics_create)
    _deadletter_commands(sub, out)
    _forwarding_commands(sub)
    explain = sub.add_parser(
        "explain",
        parents=[out],
        help="why did (or didn't) we message this person: risk_detector's and outreach's "
        "account of the customer, as one JSON document",
    )
    explain.add_argument("customer_id", help="the shop's customer id")
    explain.add_argument(
        "--risk-url", default="http://127.0.0.1:8082", help="risk_detector's HTTP address"
    )
    explain.add_argument(
        "--outreach-url", default="http://127.0.0.1:8083", help="outreach's HTTP address"
    )
    explain.set_defaults(func=cmd_explain)
    _sending_commands(sub, out)
    given = sys.argv[1:] if argv is None else argv
    forwarded = {"rehearse": cmd_rehearse, "outcomes": cmd_outcomes}
    if given[:1] and given[0] in forwarded:  # its options are its own (argparse takes them)
        return forwarded[given[0]](argparse.Namespace(rest=given[1:]))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (kafka_security.KafkaAccessDenied, TimeoutError) as exc:
        print(f"outreachctl: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _forwarding_commands(sub: Any) -> None:
    """The commands that run one of outreach's own (its settings, its database): their
    options are theirs (`outreachctl <command> --help`)."""
    forwarded = (
        ("templates", cmd_templates, "export/import templates", "the studio command's"),
        ("rehearse", cmd_rehearse, "the last days again with other rules or templates",
         "the rehearsal's"),
        ("outcomes", cmd_outcomes, "each experiment's control and treatment compared on what"
         " became of their customers", "the report's"),
    )  # fmt: skip
    for name, func, text, whose in forwarded:
        cmd = sub.add_parser(name, help=f"{text} (`outreachctl {name} --help`)", add_help=False)
        cmd.add_argument("rest", nargs=argparse.REMAINDER, help=f"{whose} arguments")
        cmd.set_defaults(func=func)


def _deadletter_commands(sub: Any, out: argparse.ArgumentParser) -> None:
    group = sub.add_parser("deadletters", help="what a service could not process, and why")
    dl = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    service = {"choices": SERVICES, "help": "whose dead letters: " + ", ".join(SERVICES)}
    dl_list = dl.add_parser("list", parents=[out], help="list dead letters with their reasons")
    dl_list.add_argument("service", **service)
    dl_list.add_argument("--limit", type=int, default=100, help="at most this many (100)")
    dl_list.set_defaults(func=cmd_deadletters_list)
    dl_show = dl.add_parser(
        "show", parents=[out], help="one dead letter: its headers and original bytes"
    )
    dl_show.add_argument("service", **service)
    dl_show.add_argument("offset", type=int, help="its offset (from `list`)")
    dl_show.set_defaults(func=cmd_deadletters_show)
    dl_replay = dl.add_parser(
        "replay",
        parents=[out],
        help="put dead letters back on their original topic (every handler dedupes by id)",
    )
    dl_replay.add_argument("service", **service)
    dl_replay.add_argument(
        "--offset", type=int, default=None, help="only the one at this offset (default: all)"
    )
    dl_replay.set_defaults(func=cmd_deadletters_replay)
    dl_purge = dl.add_parser(
        "purge", parents=[out], help="delete dead letters for good (asks for --yes)"
    )
    dl_purge.add_argument("service", **service)
    dl_purge.add_argument("--before-offset", type=int, help="only those before this offset")
    dl_purge.add_argument("--older-than-days", type=float, help="only those older than this")
    dl_purge.add_argument("--customer", help="only those about this customer (an erasure)")
    dl_purge.add_argument("--yes", action="store_true", help="really delete them")
    dl_purge.set_defaults(func=cmd_deadletters_purge)


def _sending_commands(sub: Any, out: argparse.ArgumentParser) -> None:
    send = sub.add_parser(
        "sending", help="the kill switch: pause or resume sending (all, or one intent)"
    )
    send_sub = send.add_subparsers(dest="action", required=True, metavar="ACTION")
    helps = {
        "status": "what is paused, since when, by whom and why",
        "pause": "hold every new decision (of one intent, or all) until resumed",
        "resume": "release what a pause held, gradually over a ramp",
    }
    for action, text in helps.items():
        cmd = send_sub.add_parser(action, parents=[out], help=text)
        cmd.add_argument(
            "--outreach-url", default="http://127.0.0.1:8083", help="outreach's HTTP address"
        )
        cmd.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # --output json
        if action != "status":
            cmd.add_argument(
                "--intent",
                dest="scope",
                default="all",
                choices=["all", "apology", "status_update", "check_in"],
                help="pause/resume one intent only (default: all sending)",
            )
            cmd.add_argument("--actor", help="who (default: your user name)")
        if action == "pause":
            cmd.add_argument("--reason", required=True, help="why: shown to everyone, audited")
        if action == "resume":
            cmd.add_argument(
                "--ramp-minutes",
                type=float,
                default=None,
                help="release the held backlog over this long (default: the worker's setting)",
            )
        cmd.set_defaults(func=cmd_sending)


def run() -> int:
    """The `outreachctl` command. Its stdout is its result (a table, JSON): what the
    code it runs logs goes to stderr, for people (LOG_LEVEL; warnings by default). The
    forwarded commands set up their own."""
    configure_logging("outreachctl", os.environ.get("LOG_LEVEL", "WARNING"), "console",
                      stream="stderr")  # fmt: skip
    return main()


if __name__ == "__main__":
    sys.exit(run())
