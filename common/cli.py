"""`outreachctl`: the operator's command line (topics, dead letters, explain).

outreachctl topics create            create every topic (partitions, retention, DLQs)
outreachctl deadletters list SERVICE  list dead letters with their reasons
outreachctl deadletters replay SERVICE [--offset N]   put them back on their topic
outreachctl explain CUSTOMER_ID      why did (or didn't) we message this person?
"""

from __future__ import annotations

import argparse
import json
import sys
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="outreachctl",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    topics = sub.add_parser("topics").add_subparsers(dest="action", required=True)
    topics.add_parser("create").set_defaults(func=cmd_topics_create)
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
    explain = sub.add_parser("explain")
    explain.add_argument("customer_id")
    explain.add_argument("--risk-url", default="http://127.0.0.1:8082")
    explain.add_argument("--outreach-url", default="http://127.0.0.1:8083")
    explain.set_defaults(func=cmd_explain)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
