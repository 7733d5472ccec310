"""The survey's one-click page (docs/conversations.md, "Asking how we did"): a signed
link per score opens a page in the customer's language with that score chosen, and the
answer counts when they send it (a link scanner that opens every link answers nothing).
No sign-in: the link's token names the message that asked."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from aiohttp import web

from services.outreach.conversations import Inbound
from services.outreach.domain import surveys

if TYPE_CHECKING:
    from services.outreach.bootstrap import Outreach

STYLE = (
    "font-family:Helvetica,Arial,sans-serif;max-width:520px;margin:40px auto;"
    "padding:0 16px;color:#222;line-height:1.5"
)


def _page(lang: str, title: str, body: str) -> web.Response:
    return web.Response(
        text=f"<!doctype html><html lang='{lang}'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{html.escape(title)}</title></head><body style='{STYLE}'>"
        f"<h1 style='font-size:22px'>{html.escape(title)}</h1>{body}</body></html>",
        content_type="text/html",
    )


class SurveyPage:
    def __init__(self, outreach: Outreach) -> None:
        self.outreach = outreach

    async def answer(self, request: web.Request) -> web.Response:
        form = await request.post() if request.method == "POST" else request.query
        token, score_text = str(form.get("token", "")), str(form.get("score", ""))
        case = surveys.read_link(token, self.outreach.delivery.links.unsubscribe_secret)
        row = await self.outreach.ledger.get(case[1]) if case else None
        locale = row.locale if row is not None else None
        text = surveys.page_text(locale)
        lang = (locale or "en").split("-")[0]
        score = int(score_text) if score_text in ("1", "2", "3", "4", "5") else None
        if row is None or case is None or case[0] != row.customer_id or score is None:
            return _page(lang, text["title"], f"<p>{html.escape(text['invalid'])}</p>")
        if request.method == "GET":
            choices = "".join(
                f"<label style='margin-right:14px'><input type='radio' name='score' value='{n}'"
                f"{' checked' if n == score else ''}> {n}</label>"
                for n in surveys.SCORES
            )
            form_html = (
                f"<form method='post'><p>{html.escape(text['ask'])}</p><p>{choices}</p>"
                f"<input type='hidden' name='token' value='{html.escape(token)}'>"
                f"<button type='submit'>{html.escape(text['send'])}</button></form>"
            )
            return _page(lang, text["title"], form_html)
        received = await self.outreach.conversations.receive(
            Inbound(
                channel="web",
                address="",
                text=str(score),
                provider_id=f"survey-page:{row.decision_id}",  # one answer per message
                received_at=self.outreach.wall.now(),
                decision_id=row.decision_id,
            )
        )
        given = received.reply.survey_score if received.reply else score
        thanks = text["thanks"].format(score=given)
        return _page(lang, text["title"], f"<p>{html.escape(thanks)}</p>")


def routes(outreach: Outreach) -> list[web.RouteDef]:
    page = SurveyPage(outreach)
    return [web.get("/survey", page.answer), web.post("/survey", page.answer)]
