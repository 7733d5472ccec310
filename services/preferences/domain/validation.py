"""Validation of contact data: precise reasons, never a silently stored bad value."""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from babel import Locale, UnknownLocaleError
from email_validator import EmailNotValidError, validate_email

_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class FieldViolation(ValueError):
    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


def phone(value: str, field: str = "phone") -> str:
    try:
        parsed = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException as exc:
        raise FieldViolation(field, f"not an E.164 phone number ({exc})") from exc
    if not value.startswith("+") or not phonenumbers.is_valid_number(parsed):
        raise FieldViolation(field, "not a valid E.164 phone number")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def email(value: str, field: str = "email") -> str:
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise FieldViolation(field, f"not a valid email address ({exc})") from exc


def time_zone(value: str, field: str = "timezone") -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise FieldViolation(field, f"unknown IANA time zone {value!r}") from exc
    return value


def locale(value: str, field: str = "locale") -> str:
    try:
        parsed = Locale.parse(value.replace("-", "_"))
    except (UnknownLocaleError, ValueError) as exc:
        raise FieldViolation(field, f"not a BCP 47 locale known to CLDR: {value!r}") from exc
    return str(parsed).replace("_", "-")


def hhmm(value: str, field: str) -> time:
    match = _HHMM.match(value)
    if match is None:
        raise FieldViolation(field, "quiet hours must be HH:MM (00:00-23:59)")
    return time(int(match.group(1)), int(match.group(2)))


CLOCK_SKEW = timedelta(minutes=5)  # how far ahead of ours another system's clock may be
EVIDENCE_MAX = 2_000  # characters of evidence kept with a consent record


def occurred_at(value: datetime, now: datetime, field: str = "occurred_at") -> datetime:
    """When a consent or opt-out happened: not in the future (beyond clock skew) — a
    record dated ahead would otherwise claim to be newer than what comes after it."""
    if value - now > CLOCK_SKEW:
        raise FieldViolation(
            field, f"is in the future ({value.isoformat()}; now is {now.isoformat()})"
        )
    return value


def evidence(value: str, field: str = "evidence") -> str:
    if len(value) > EVIDENCE_MAX:
        raise FieldViolation(field, f"at most {EVIDENCE_MAX:,} characters ({len(value):,} given)")
    return value
