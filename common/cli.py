"""`outreachctl`: the operator's command line (topics, dead letters, explain).

outreachctl topics create            create every topic (partitions, retention, DLQs)
outreachctl deadletters list SERVICE  list dead letters with their reasons
outreachctl deadletters replay SERVICE [--offset N]   put them back on their topic
outreachctl deadletters purge SERVICE [--before-offset N] [--older-than-days D]
                                     [--customer ID] --yes
outreachctl templates export|import ...   the studio's templates as one JSON document
outreachctl sending status|pause|resume   the kill switch
outreachctl explain CUSTOMER_ID      why did (or didn't) we message this person?
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from common.settings import ServiceSettings
from common.topics import SERVICES, all_topics


def _settings() -> ServiceSettings:
    return ServiceSettings()


def cmd_topics_create(args: argparse.Namespace) -> int:
    from common.admin import ensure_topics

    settings = _settings()
    created = ensure_topics(
        settings.kafka_bootstrap_servers,
        all_topics(settings.topic_prefix, settings.topic_partitions),
    )
    print(f"{len(created)} topic(s) created" + (f": {', '.join(created)}" if created else ""))
    return 0


def _read_deadletters(service: str, limit: int) -> list[Any]:
    from kafka import KafkaConsumer, TopicPartition

    settings = _settings()
    topic = settings.topics.deadletter(service)
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
        enable_auto_commit=False,
        consumer_timeout_ms=2000,
    )
    partitions = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in partitions]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    records = []
    for record in consumer:
        records.append(record)
        if len(records) >= limit:
            break
    consumer.close()
    return records


def cmd_deadletters_list(args: argparse.Namespace) -> int:
    for record in _read_deadletters(args.service, args.limit):
        headers = {k: v.decode(errors="replace") for k, v in record.headers}
        print(
            f"{record.offset:>8}  {headers.get('dlq.original.topic', '?')}"
            f"[{headers.get('dlq.original.partition', '?')}]@"
            f"{headers.get('dlq.original.offset', '?')}  "
            f"{headers.get('dlq.reason.code', '?')}: {headers.get('dlq.reason', '')}"
        )
    return 0


def cmd_deadletters_show(args: argparse.Namespace) -> int:
    for record in _read_deadletters(args.service, 100_000):
        if record.offset == args.offset:
            headers = {k: v.decode(errors="replace") for k, v in record.headers}
            print(
                json.dumps(
                    {"headers": headers, "value": record.value.decode(errors="replace")}, indent=2
                )
            )
            return 0
    print(f"no dead letter at offset {args.offset}", file=sys.stderr)
    return 1


def cmd_deadletters_replay(args: argparse.Namespace) -> int:
    from kafka import KafkaProducer

    settings = _settings()
    producer = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers.split(","), acks="all"
    )
    count = 0
    for record in _read_deadletters(args.service, 100_000):
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
    print(f"replayed {count} dead letter(s)")
    return 0


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
    consumer = KafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            print(f"error: no topic {topic}", file=sys.stderr)
            return 1
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
        print("nothing to purge")
        return 0
    if not args.yes:
        print(f"would delete {count} dead letter(s) of {topic} for good; add --yes to do it")
        return 1
    admin = KafkaAdminClient(bootstrap_servers=servers)
    try:
        admin.delete_records(doomed, timeout_ms=30_000)
    finally:
        admin.close()
    print(f"purged {count} dead letter(s) of {topic}")
    return 0


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
    consumer = KafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, 0)
        if not consumer.partitions_for_topic(topic):
            print(f"error: no topic {topic}", file=sys.stderr)
            return 1
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        records: list[Any] = []
        deadline = time.monotonic() + 120
        while consumer.position(tp) < end and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(r for r in batch if r.offset < end)
    finally:
        consumer.close()
    theirs = [r for r in records if r.key == needle or needle in (r.value or b"")]
    if not theirs:
        print(f"no dead letter of {args.customer} in {topic}")
        return 0
    if not args.yes:
        print(f"would delete {len(theirs)} dead letter(s) of {args.customer}; add --yes")
        return 1
    producer = KafkaProducer(bootstrap_servers=servers, acks="all")
    try:
        for r in records:
            if r not in theirs:
                producer.send(topic, key=r.key, value=r.value, headers=list(r.headers or []))
        producer.flush()
    finally:
        producer.close()
    admin = KafkaAdminClient(bootstrap_servers=servers)
    try:
        admin.delete_records({tp: end}, timeout_ms=30_000)
    finally:
        admin.close()
    print(f"purged {len(theirs)} dead letter(s) of {args.customer} from {topic}")
    return 0


def _get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return {"error": f"HTTP {exc.code}", "body": exc.read().decode(errors="replace")}
    except OSError as exc:
        return {"error": str(exc)}


def cmd_explain(args: argparse.Namespace) -> int:
    risk = _get_json(f"{args.risk_url}/customers/{args.customer_id}/explain")
    outreach = _get_json(f"{args.outreach_url}/customers/{args.customer_id}/explain")
    print(
        json.dumps(
            {"customer_id": args.customer_id, "risk": risk, "outreach": outreach},
            indent=2,
            default=str,
        )
    )
    return 0


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
    print(f"paused: {paused}")
    if args.json:
        print(json.dumps(state, indent=2))
    return 0


def cmd_templates(args: argparse.Namespace) -> int:
    """Runs in the outreach studio's own command (its settings, its database)."""
    import subprocess

    command = [sys.executable, "-m", "services.outreach.studio", "templates", *args.rest]
    return subprocess.run(command, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="outreachctl",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    topics = sub.add_parser("topics").add_subparsers(dest="action", required=True)
    topics.add_parser("create").set_defaults(func=cmd_topics_create)
    _deadletter_commands(sub)
    tpl = sub.add_parser(
        "templates",
        help="export/import templates (see `outreachctl templates export|import --help`)",
        add_help=False,
    )
    tpl.add_argument("rest", nargs=argparse.REMAINDER)
    tpl.set_defaults(func=cmd_templates)
    explain = sub.add_parser("explain")
    explain.add_argument("customer_id")
    explain.add_argument("--risk-url", default="http://127.0.0.1:8082")
    explain.add_argument("--outreach-url", default="http://127.0.0.1:8083")
    explain.set_defaults(func=cmd_explain)
    _sending_commands(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


def _deadletter_commands(sub: Any) -> None:
    dl = sub.add_parser("deadletters").add_subparsers(dest="action", required=True)
    dl_list = dl.add_parser("list")
    dl_list.add_argument("service", choices=SERVICES)
    dl_list.add_argument("--limit", type=int, default=100)
    dl_list.set_defaults(func=cmd_deadletters_list)
    dl_show = dl.add_parser("show")
    dl_show.add_argument("service", choices=SERVICES)
    dl_show.add_argument("offset", type=int)
    dl_show.set_defaults(func=cmd_deadletters_show)
    dl_replay = dl.add_parser("replay")
    dl_replay.add_argument("service", choices=SERVICES)
    dl_replay.add_argument("--offset", type=int, default=None)
    dl_replay.set_defaults(func=cmd_deadletters_replay)
    dl_purge = dl.add_parser("purge", help="delete dead letters for good (asks for --yes)")
    dl_purge.add_argument("service", choices=SERVICES)
    dl_purge.add_argument("--before-offset", type=int, help="only those before this offset")
    dl_purge.add_argument("--older-than-days", type=float, help="only those older than this")
    dl_purge.add_argument("--customer", help="only those about this customer (an erasure)")
    dl_purge.add_argument("--yes", action="store_true", help="really delete them")
    dl_purge.set_defaults(func=cmd_deadletters_purge)


def _sending_commands(sub: Any) -> None:
    send = sub.add_parser(
        "sending", help="the kill switch: pause or resume sending (all, or one intent)"
    )
    send_sub = send.add_subparsers(dest="action", required=True)
    for action in ("status", "pause", "resume"):
        cmd = send_sub.add_parser(action)
        cmd.add_argument("--outreach-url", default="http://127.0.0.1:8083")
        cmd.add_argument("--json", action="store_true", help="print the whole state")
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


if __name__ == "__main__":
    sys.exit(main())
