"""What the shop's other systems and its customers tell preferences during a run, over
its public gRPC API (with the write token): quiet hours, channel order, WhatsApp
consent, and — while messages are under way — opt-outs and withdrawn marketing consent.
Each change returns the wall time preferences acknowledged it: from then on, the checker
allows no message that contradicts it."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import grpc
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from common.proto.outreach.preferences.v1 import preferences_pb2 as pb
from common.proto.outreach.preferences.v1 import preferences_pb2_grpc
from tests.chaos.workload import Customer

CHANNELS = {"email": pb.CHANNEL_EMAIL, "sms": pb.CHANNEL_SMS, "whatsapp": pb.CHANNEL_WHATSAPP}


class PreferencesAdmin:
    def __init__(self, target: str, token: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.stub = preferences_pb2_grpc.PreferencesServiceStub(self.channel)  # type: ignore[no-untyped-call]
        self.auth = [("authorization", f"Bearer {token}")]

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: str, request: object, attempts: int = 180) -> object:
        """One write, retried while preferences is away (down, restarting)."""
        for attempt in range(attempts):
            try:
                return getattr(self.stub, method)(request, metadata=self.auth, timeout=5)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == attempts - 1:  # type: ignore[attr-defined]
                    raise
                time.sleep(0.5)
        raise AssertionError("unreachable")

    def knows(self, customer_id: str) -> bool:
        try:
            self.stub.GetPreferences(
                pb.GetPreferencesRequest(customer_id=customer_id), metadata=self.auth, timeout=5
            )
            return True
        except grpc.RpcError:
            return False

    def configure(self, customer: Customer) -> None:
        """Quiet hours and channel order as the customer chose them."""
        paths = []
        prefs = pb.Preferences(customer_id=customer.customer_id)
        if customer.quiet != ("21:00", "08:00"):
            prefs.quiet_hours.start, prefs.quiet_hours.end = customer.quiet
            paths.append("quiet_hours")
        if customer.channel == "whatsapp":
            prefs.channel_order.extend([pb.CHANNEL_WHATSAPP, pb.CHANNEL_SMS, pb.CHANNEL_EMAIL])
            paths.append("channel_order")
            self._consent(customer.customer_id, "whatsapp", "service", True)
        if paths:
            self._call(
                "UpdatePreferences",
                pb.UpdatePreferencesRequest(preferences=prefs, update_mask=FieldMask(paths=paths)),
            )

    def opt_out(self, customer: Customer, channel: str) -> float:
        self._call(
            "SetOptOut",
            pb.SetOptOutRequest(
                customer_id=customer.customer_id,
                channel=CHANNELS[channel],  # type: ignore[arg-type]
                opted_out=True,
                source="preference_center",
                occurred_at=_now(),
            ),
        )
        return time.time()

    def withdraw_marketing(self, customer: Customer) -> float:
        self._consent(customer.customer_id, None, "marketing", False)
        return time.time()

    def _consent(self, customer_id: str, channel: str | None, category: str, granted: bool) -> None:
        consent = pb.Consent(
            channel=CHANNELS[channel] if channel else pb.CHANNEL_UNSPECIFIED,  # type: ignore[arg-type]
            category=pb.CATEGORY_MARKETING if category == "marketing" else pb.CATEGORY_SERVICE,
            granted=granted,
            source="preference_center",
            occurred_at=_now(),
        )
        self._call(
            "RecordConsent", pb.RecordConsentRequest(customer_id=customer_id, consent=consent)
        )


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(datetime.now(UTC))
    return stamp
