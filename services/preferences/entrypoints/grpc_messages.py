"""The gRPC messages of outreach.preferences.v1 from and to the domain's objects, and
the INVALID_ARGUMENT details (google.rpc.BadRequest) a refused request carries."""

from __future__ import annotations

from datetime import UTC, time

from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from common.proto.outreach.preferences.v1 import preferences_pb2 as pb
from services.preferences.domain.model import Customer, Plan, marketing_opt_in
from services.preferences.domain.validation import FieldViolation

CHANNEL_NAMES = {pb.CHANNEL_EMAIL: "email", pb.CHANNEL_SMS: "sms", pb.CHANNEL_WHATSAPP: "whatsapp"}

CHANNEL_ENUMS = {v: k for k, v in CHANNEL_NAMES.items()}

CATEGORY_NAMES = {pb.CATEGORY_SERVICE: "service", pb.CATEGORY_MARKETING: "marketing"}


def _hhmm(t: time) -> str:
    return f"{t.hour:02d}:{t.minute:02d}"


def plan_message(plan: Plan) -> pb.ContactPlan:
    return pb.ContactPlan(
        customer_id=plan.customer_id,
        known=plan.known,
        first_name=plan.first_name,
        locale=plan.locale,
        time_zone=plan.time_zone,
        quiet_hours=pb.QuietHours(start=_hhmm(plan.quiet_start), end=_hhmm(plan.quiet_end)),
        marketing_opt_in=plan.marketing_opt_in,
        version=plan.version,
        channels=[
            pb.ChannelOption(
                channel=CHANNEL_ENUMS[c.channel],
                address=c.address,
                usable=c.usable,
                reason=c.reason,
            )
            for c in plan.channels
        ],
    )


def preferences_message(c: Customer) -> pb.Preferences:
    message = pb.Preferences(
        customer_id=c.customer_id,
        first_name=c.first_name,
        last_name=c.last_name or "",
        email=c.email or "",
        phone=c.phone or "",
        locale=c.locale,
        time_zone=c.time_zone,
        quiet_hours=pb.QuietHours(start=_hhmm(c.quiet_start), end=_hhmm(c.quiet_end)),
        channel_order=[CHANNEL_ENUMS[ch] for ch in c.channel_order if ch in CHANNEL_ENUMS],
        marketing_opt_in=marketing_opt_in(c),
        version=c.version,
    )
    from services.preferences.domain.model import opted_out

    message.opted_out.extend(CHANNEL_ENUMS[ch] for ch in opted_out(c))
    for r in c.consents:
        consent = message.consent_history.add(
            channel=CHANNEL_ENUMS.get(r.channel or "", pb.CHANNEL_UNSPECIFIED),
            category=pb.CATEGORY_MARKETING if r.category == "marketing" else pb.CATEGORY_SERVICE,
            granted=r.granted,
            source=r.source,
            evidence=r.evidence,
        )
        consent.occurred_at.FromDatetime(r.occurred_at.astimezone(UTC).replace(tzinfo=None))
    return message


def bad_request(*violations: FieldViolation) -> status_pb2.Status:
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in violations
            ]
        )
    )
    return status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT,
        message="; ".join(str(v) for v in violations),
        details=[detail],
    )


__all__ = [
    "CATEGORY_NAMES",
    "CHANNEL_ENUMS",
    "CHANNEL_NAMES",
    "bad_request",
    "plan_message",
    "preferences_message",
]
