"""Asking how we did (services/outreach/domain/surveys.py): which messages ask, what a
reply's score is, the one-click links, and what an answer sets in motion."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.outreach.domain import conversations as talk
from services.outreach.domain import surveys
from services.outreach.domain.replies import Label, ReplyIntent, Tone
from services.outreach.domain.unsubscribe import token_for

NOW = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ("4", 4), (" 5 ", 5), ("1.", 1), ("3!", 3), ("4/5", 4), ("4 / 5", 4), ("5 stars", 5),
        ("2 Sterne", 2), ("4 von 5", 4), ("5 sur 5", 5), ("3 étoiles", 3), ("⭐⭐⭐⭐", 4),
        ("0", None), ("6", None), ("45", None), ("4 but late", None), ("", None),
        ("⭐⭐⭐⭐⭐⭐", None), ("order 4", None),
    ],
)  # fmt: skip
def test_a_reply_is_a_score_only_when_it_is_nothing_but_one(text, score):
    assert surveys.answer_of(text) == score


def test_a_customer_is_asked_at_most_once_in_the_quiet_days():
    policy = surveys.SurveyPolicy(quiet_days=30)
    kind = "post_incident_checkin"
    assert surveys.asks(policy, kind, NOW, [])
    assert not surveys.asks(policy, "delivery_late", NOW, [])
    assert not surveys.asks(policy, kind, NOW, [NOW - timedelta(days=29)])
    assert surveys.asks(policy, kind, NOW, [NOW - timedelta(days=31)])
    assert surveys.asks(surveys.SurveyPolicy(quiet_days=0), kind, NOW, [NOW])


def test_the_links_name_their_message_and_nothing_else_opens_them():
    links = surveys.links("https://o.example", "c-1", "dec_1", "secret")
    assert [link["score"] for link in links] == [1, 2, 3, 4, 5]
    token = links[3]["url"].split("token=")[1].split("&")[0]
    assert links[3]["url"].endswith("&score=4")
    assert surveys.read_link(token, "secret") == ("c-1", "dec_1")
    assert surveys.read_link(token, "another secret") is None
    # An unsubscribe link's token is no survey token (nor the other way round).
    assert surveys.read_link(token_for("c-1", "email", "dec_1", "secret"), "secret") is None


def answer(score: int) -> talk.Reply:
    label = Label(ReplyIntent.SURVEY_ANSWER, Tone.NEUTRAL, (f"{score}/5",), "de", "survey")
    answered = talk.Answered(
        decision_id="dec_1", customer_id="c-1", order_id="o-1", cause_type="checkin",
        cause_id="inc-1", cause_kind="delivery_late", message_kind="post_incident_checkin",
        locale="de-DE",
    )  # fmt: skip
    return talk.Reply("r-1", "c-1", "sms", NOW, str(score), label, None, answered, "de-DE", score)


def test_a_low_score_goes_to_a_person_and_the_event_carries_the_score():
    policy = talk.HandoffPolicy()
    assert talk.effects_of(answer(4), policy) == talk.Effects()
    assert talk.effects_of(answer(3), policy) == talk.Effects()
    low = talk.effects_of(answer(2), policy)
    assert low.handoff_reason == "survey:2" and low.handoff_id and low.opt_out is None
    assert talk.effects_of(answer(1), talk.HandoffPolicy(survey_below=0)).handoff_id is None
    assert talk.reply_event(answer(2), low)["survey_score"] == 2
    assert "in der Umfrage schlecht bewertet" in talk.summary(answer(2), 2, "de")
