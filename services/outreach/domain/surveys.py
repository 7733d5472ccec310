"""Asking how we did: a one-question CSAT survey (1 poor … 5 excellent) in the check-in
that follows an incident once the order has arrived, answered by a reply ("4", "4/5",
"⭐⭐⭐⭐") or on a one-click page (a signed link per score, no sign-in); at most one survey
per customer per `quiet_days`. Pure: docs/conversations.md ("Asking how we did")."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from services.outreach.domain.unsubscribe import read_token, token_for

SCORES = (1, 2, 3, 4, 5)
#: The token's "channel": a survey link cannot be used as an unsubscribe link, or back.
PURPOSE = "survey"
ANSWER = re.compile(
    r"^\s*([1-5])\s*(?:/\s*5|von\s*5|sur\s*5|of\s*5|stars?|sterne?|etoiles?)?\s*[.!]*\s*$",
    re.IGNORECASE,
)
STAR = "⭐"
#: The kinds whose shipped copy asks how we did (their templates show `survey`).
DEFAULT_KINDS = frozenset({"post_incident_checkin"})


@dataclass(frozen=True)
class SurveyPolicy:
    """Which message kinds ask (`OUTREACH_SURVEY_KINDS`) and how often a customer may
    be asked (`OUTREACH_SURVEY_QUIET_DAYS`)."""

    kinds: frozenset[str] = DEFAULT_KINDS
    quiet_days: float = 30.0


def asks(policy: SurveyPolicy, kind: str, now: datetime, asked: Iterable[datetime]) -> bool:
    """Whether a message of `kind` decided at `now` carries the survey, given when the
    customer was last sent a message of a survey kind (`asked`)."""
    if kind not in policy.kinds:
        return False
    quiet = timedelta(days=policy.quiet_days)
    return not any(timedelta(0) <= now - at < quiet for at in asked)


def answer_of(text: str) -> int | None:
    """The score a reply gives, if it is nothing but a score."""
    stripped = text.strip()
    if stripped and set(stripped) == {STAR} and len(stripped) <= 5:
        return len(stripped)
    found = ANSWER.match(stripped.replace("é", "e").replace("É", "E"))
    return int(found.group(1)) if found else None


def links(base_url: str, customer_id: str, decision_id: str, secret: str) -> list[dict[str, Any]]:
    """The one-click links of a message's survey, one per score (the template context's
    `survey.links`)."""
    token = token_for(customer_id, PURPOSE, decision_id, secret)
    return [{"score": n, "url": f"{base_url}/survey?token={token}&score={n}"} for n in SCORES]


def read_link(token: str, secret: str) -> tuple[str, str] | None:
    """(customer id, decision id) of a survey link's token, or None when not ours."""
    found = read_token(token, secret)
    if found is None or found[1] != PURPOSE:
        return None
    return found[0], found[2]


# The one-click page, in the customer's language.
PAGE = {
    "en": {
        "title": "How did we do?",
        "ask": "How happy are you with how we handled your order? 1 is poor, 5 is excellent.",
        "send": "Send",
        "thanks": "Thank you! You rated us {score} out of 5.",
        "invalid": "This link is not valid.",
    },
    "de": {
        "title": "Wie war es mit uns?",
        "ask": "Wie zufrieden sind Sie damit, wie wir Ihre Bestellung betreut haben? "
        "1 ist schlecht, 5 ist ausgezeichnet.",
        "send": "Senden",
        "thanks": "Vielen Dank! Sie haben uns mit {score} von 5 bewertet.",
        "invalid": "Dieser Link ist nicht gültig.",
    },
    "fr": {
        "title": "Comment avons-nous fait ?",
        "ask": "Êtes-vous satisfait de la façon dont nous avons traité votre commande ? "
        "1 : mauvais, 5 : excellent.",
        "send": "Envoyer",
        "thanks": "Merci ! Vous nous avez donné {score} sur 5.",
        "invalid": "Ce lien n'est pas valide.",
    },
}  # fmt: skip


def page_text(locale: str | None) -> dict[str, str]:
    lang = (locale or "en").split("-")[0].lower()
    return PAGE.get(lang, PAGE["en"])
