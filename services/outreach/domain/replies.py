"""What a customer's reply says: keyword commands (STOP, START, HELP in every shipped
language), an explainable classifier of intent and tone, the signed reply-to address that
ties an email reply to the message it answers, and the reply text without the quoted
message below it. Pure: no I/O, no clock.

The classifier is a lexicon: for each shipped language, phrases that signal an intent or
a tone, each with a weight. A label names the words that decided it, so an agent or an
operator sees why a reply was read as a complaint. `ReplyClassifier` is the interface a
better model replaces it behind.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, Protocol

#: The languages the shipped templates are written in (services/outreach/templates).
LANGUAGES = ("en", "de", "fr")


class ReplyIntent(StrEnum):
    OPT_OUT = "opt_out"
    WRONG_CONTACT = "wrong_contact"
    WANTS_PERSON = "wants_person"
    COMPLAINT = "complaint"
    QUESTION = "question"
    THANKS = "thanks"
    SURVEY_ANSWER = "survey_answer"  # a score given to our survey (domain/surveys.py)
    OTHER = "other"


class Tone(StrEnum):
    ANGRY = "angry"
    NEUTRAL = "neutral"
    HAPPY = "happy"


Command = Literal["stop", "start", "help"]


def _set(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Carrier keywords (CTIA / Twilio's defaults) and their usual forms in each shipped
# language, compared without case, accents or punctuation. A command is the whole reply.
COMMANDS: dict[Command, frozenset[str]] = {
    "stop": _set(
        # en (Twilio's defaults and more), de, fr
        "stop stopall unsubscribe cancel end quit optout revoke "
        "stopp abmelden abbestellen austragen ende "
        "arret arreter desabonner desinscrire fin"
    ),
    "start": _set("start yes unstop subscribe anmelden weiter demarrer reprendre oui"),
    "help": _set("help info hilfe aide"),
}  # fmt: skip


def normalize(text: str) -> str:
    """Lower case, without accents (é → e, ß → ss), apostrophes as spaces."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return plain.replace("’", "'").replace("'", " ")


WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    return WORD.findall(normalize(text))


def command_of(text: str) -> Command | None:
    """The keyword command a reply is, if it is nothing but one (any shipped language):
    "Stop", "STOP." and "arrêt" are; "please stop the delay" is not (the classifier
    reads that)."""
    found = words(text)
    if len(found) == 1 or (len(found) == 2 and found[0] == found[1]):
        for command, keywords in COMMANDS.items():
            if found[0] in keywords:
                return command
    return None


ONE_LANGUAGE_KEYWORDS = {"hilfe": "de", "aide": "fr", "stopp": "de", "arret": "fr"}


def command_language(text: str) -> str | None:
    """The language a keyword command is in, when only one shipped language has it
    (HILFE: de, AIDE: fr): the language to answer a sender we cannot place in."""
    found = words(text)
    return (
        {"hilfe": "de", "aide": "fr", "stopp": "de", "arret": "fr"}.get(found[0]) if found else None
    )


@dataclass(frozen=True)
class Label:
    """What the classifier read: the intent and tone, the words that decided each, the
    language it matched in and which classifier (and version) read it."""

    intent: ReplyIntent
    tone: Tone
    evidence: tuple[str, ...]
    language: str
    classifier: str


class ReplyClassifier(Protocol):
    name: str

    def classify(self, text: str, language: str | None) -> Label: ...


# (phrase, weight) per intent per language. A phrase is matched on whole words of the
# normalized text; "*" at a word's end matches any ending ("refund*" → refunds).
Lexicon = dict[ReplyIntent | Tone, tuple[tuple[str, float], ...]]

LEXICONS: dict[str, Lexicon] = {
    "en": {
        ReplyIntent.OPT_OUT: (
            ("stop texting", 3), ("stop messaging", 3), ("stop sending", 3),
            ("stop emailing", 3), ("stop contacting", 3), ("unsubscribe", 3),
            ("remove me", 3), ("do not contact", 3), ("dont contact", 3), ("no more messages", 3),
            ("leave me alone", 2), ("opt out", 3), ("dont text", 3), ("do not text", 3),
        ),
        ReplyIntent.WRONG_CONTACT: (
            ("wrong number", 4), ("wrong person", 4), ("wrong address", 3),
            ("not me", 2), ("dont know you", 3), ("never ordered", 3), ("who is this", 2),
            ("not my order", 3),
        ),
        ReplyIntent.WANTS_PERSON: (
            ("speak to", 2), ("talk to", 2), ("a human", 3), ("a person", 3), ("real person", 4),
            ("an agent", 3), ("someone", 1), ("call me", 3), ("manager", 3),
            ("customer service", 2), ("representative", 3), ("phone me", 3),
        ),
        ReplyIntent.COMPLAINT: (
            ("complain*", 3), ("unacceptable", 3), ("terrible", 2), ("awful", 2), ("worst", 2),
            ("disappointed", 2), ("still waiting", 2), ("still not", 2), ("never arrived", 3),
            ("not arrived", 2), ("broken", 2), ("damaged", 2), ("refund", 1), ("again", 1),
            ("late again", 3), ("useless", 2), ("ridiculous", 2), ("poor service", 3),
            ("want my money", 3), ("money back", 3),
        ),
        ReplyIntent.QUESTION: (
            ("where", 2), ("when", 2), ("why", 1), ("how", 1), ("what", 1), ("can i", 2),
            ("could you", 2), ("is it", 1), ("will it", 2), ("tracking", 1), ("?", 2),
        ),
        ReplyIntent.THANKS: (
            ("thank*", 3), ("thx", 3), ("cheers", 2), ("appreciate*", 2), ("ty", 2),
        ),
        Tone.ANGRY: (
            ("unacceptable", 3), ("ridiculous", 3), ("furious", 3), ("angry", 3),
            ("disgrace*", 3), ("scam", 3), ("worst", 2), ("useless", 2), ("pathetic", 3),
            ("joke", 2), ("fed up", 3), ("sick of", 3), ("wtf", 3), ("damn", 2), ("shit", 3),
            ("!!", 2),
        ),
        Tone.HAPPY: (
            ("thank*", 2), ("great", 2), ("perfect", 2), ("love", 2), ("awesome", 2),
            ("happy", 2), ("lovely", 2), ("excellent", 2), ("well done", 2), ("wonderful", 2),
        ),
    },
    "de": {
        ReplyIntent.OPT_OUT: (
            ("keine nachrichten", 3), ("keine sms", 3), ("abmelden", 3), ("abbestellen", 3),
            ("nicht mehr kontaktieren", 3), ("nicht mehr schreiben", 3), ("austragen", 3),
            ("in ruhe lassen", 2), ("loschen sie meine", 2),
        ),
        ReplyIntent.WRONG_CONTACT: (
            ("falsche nummer", 4), ("falsche person", 4), ("falsche adresse", 3),
            ("nie bestellt", 3), ("wer ist da", 2), ("nicht meine bestellung", 3),
            ("kenne sie nicht", 3),
        ),
        ReplyIntent.WANTS_PERSON: (
            ("mitarbeiter", 3), ("einen menschen", 3), ("mit jemandem", 2), ("sprechen", 2),
            ("rufen sie mich", 3), ("ruckruf", 3), ("anrufen", 2), ("vorgesetzten", 3),
            ("kundenservice", 2), ("person sprechen", 4),
        ),
        ReplyIntent.COMPLAINT: (
            ("beschwerde", 3), ("beschweren", 3), ("unverschamt", 3), ("inakzeptabel", 3),
            ("enttauscht", 2), ("immer noch", 2), ("noch nicht", 2), ("nie angekommen", 3),
            ("nicht angekommen", 3), ("kaputt", 2), ("beschadigt", 2), ("erstattung", 1),
            ("schon wieder", 3), ("katastrophe", 3), ("geld zuruck", 3), ("schlecht*", 2),
        ),
        ReplyIntent.QUESTION: (
            ("wo", 2), ("wann", 2), ("warum", 1), ("wie", 1), ("was", 1), ("kann ich", 2),
            ("konnen sie", 2), ("ist es", 1), ("wird es", 2), ("sendungsverfolgung", 1), ("?", 2),
        ),
        ReplyIntent.THANKS: (("danke*", 3), ("vielen dank", 3), ("dankeschon", 3)),
        Tone.ANGRY: (
            ("unverschamt", 3), ("frechheit", 3), ("inakzeptabel", 3), ("katastrophe", 3),
            ("betrug", 3), ("wutend", 3), ("sauer", 2), ("lacherlich", 3), ("mist", 2),
            ("scheiss*", 3), ("reicht", 2), ("!!", 2),
        ),
        Tone.HAPPY: (
            ("danke*", 2), ("super", 2), ("toll", 2), ("perfekt", 2), ("prima", 2),
            ("wunderbar", 2), ("freue", 2), ("klasse", 2),
        ),
    },
    "fr": {
        ReplyIntent.OPT_OUT: (
            ("desabonner", 3), ("desinscri*", 3), ("plus de messages", 3), ("plus de sms", 3),
            ("ne me contactez plus", 3), ("arretez", 2), ("laissez moi tranquille", 2),
        ),
        ReplyIntent.WRONG_CONTACT: (
            ("mauvais numero", 4), ("mauvaise personne", 4), ("mauvaise adresse", 3),
            ("jamais commande", 3), ("qui est ce", 2), ("pas ma commande", 3),
            ("ne vous connais pas", 3),
        ),
        ReplyIntent.WANTS_PERSON: (
            ("parler a", 2), ("un conseiller", 3), ("une personne", 3), ("un humain", 3),
            ("appelez moi", 3), ("rappel*", 2), ("responsable", 3), ("service client", 2),
        ),
        ReplyIntent.COMPLAINT: (
            ("plainte", 3), ("reclamation", 3), ("inadmissible", 3), ("inacceptable", 3),
            ("decu*", 2), ("toujours pas", 3), ("jamais arrive*", 3), ("pas arrive*", 2),
            ("casse*", 2), ("endommage*", 2), ("rembourse*", 1), ("encore", 1),
            ("scandale*", 3), ("nul", 2),
        ),
        ReplyIntent.QUESTION: (
            ("ou", 1), ("quand", 2), ("pourquoi", 1), ("comment", 1), ("quoi", 1),
            ("est ce que", 2), ("pouvez vous", 2), ("puis je", 2), ("suivi", 1), ("?", 2),
        ),
        ReplyIntent.THANKS: (("merci*", 3),),
        Tone.ANGRY: (
            ("inadmissible", 3), ("scandale*", 3), ("honte*", 3), ("arnaque", 3),
            ("furieux", 3), ("furieuse", 3), ("nul", 2), ("ridicule", 3), ("marre", 3),
            ("merde", 3), ("!!", 2),
        ),
        Tone.HAPPY: (
            ("merci*", 2), ("parfait", 2), ("genial", 2), ("super", 2), ("top", 2),
            ("excellent", 2), ("ravi*", 2), ("content*", 2),
        ),
    },
}  # fmt: skip

#: When two intents score alike, the one a person must act on first wins.
PRECEDENCE = (
    ReplyIntent.OPT_OUT,
    ReplyIntent.WRONG_CONTACT,
    ReplyIntent.WANTS_PERSON,
    ReplyIntent.COMPLAINT,
    ReplyIntent.QUESTION,
    ReplyIntent.THANKS,
)
#: The least score an intent or a tone needs to be read at all.
THRESHOLD = 2.0
SHOUTED = re.compile(r"\b[A-ZÄÖÜÉÈÀ]{4,}\b")


def _matches(phrase: str, tokens: list[str], text: str) -> bool:
    if not phrase[0].isalnum():  # punctuation: counted on the raw text
        return phrase in text
    parts = phrase.split()
    for start in range(len(tokens) - len(parts) + 1):
        for offset, part in enumerate(parts):
            token = tokens[start + offset]
            if not (token.startswith(part[:-1]) if part.endswith("*") else token == part):
                break
        else:
            return True
    return False


def _scores(
    lexicon: Lexicon, tokens: list[str], text: str
) -> dict[ReplyIntent | Tone, tuple[float, list[str]]]:
    found: dict[ReplyIntent | Tone, tuple[float, list[str]]] = {}
    for label, phrases in lexicon.items():
        score, hits = 0.0, []
        for phrase, weight in phrases:
            if _matches(phrase, tokens, text):
                score += weight
                hits.append(phrase.rstrip("*"))
        if hits:
            found[label] = (score, hits)
    return found


# Short words of each language, to tell which one a reply is written in.
FUNCTION_WORDS: dict[str, frozenset[str]] = {
    "en": _set(
        "the and is are my me you your to it i was not of for this that have has where when "
        "please still no yes what why with"
    ),
    "de": _set(
        "der die das und ist sind mein meine mir ich sie ihr nicht wo wann bitte noch es "
        "ein eine mit schon auf war warum"
    ),
    "fr": _set(
        "le la les et est sont mon ma mes je vous pas ou quand merci de un une ne toujours "
        "colis avec ce cette"
    ),
}


def language_of(tokens: list[str], own: str) -> str:
    """The shipped language with the most of its short words in the reply; the
    customer's own language when none has more."""
    counts = {lang: sum(t in FUNCTION_WORDS[lang] for t in tokens) for lang in LANGUAGES}
    best = max(counts.values())
    if own in counts and counts[own] == best:
        return own
    return max(LANGUAGES, key=lambda lang: counts[lang])


class LexiconClassifier:
    """Weighted phrases per language (`LEXICONS`), read in the language the reply is
    written in (`language_of`). The intent is the one with the highest score at or above
    `THRESHOLD` (ties by `PRECEDENCE`); the tone is angry or happy when its phrases (and,
    for anger, shouting in capitals) reach the threshold. An angry question is a
    complaint."""

    name = "lexicon-v1"

    def classify(self, text: str, language: str | None) -> Label:
        tokens = words(text)
        own = (language or "en").split("-")[0].lower()
        lang = language_of(tokens, own)
        scores = _scores(LEXICONS[lang], tokens, normalize(text))
        intent, top = ReplyIntent.OTHER, 0.0
        for candidate in PRECEDENCE:
            score = scores.get(candidate, (0.0, []))[0]
            if score >= THRESHOLD and score > top:
                intent, top = candidate, score
        evidence = list(scores[intent][1]) if intent is not ReplyIntent.OTHER else []
        angry_score, angry_words = scores.get(Tone.ANGRY, (0.0, []))
        shouted = SHOUTED.findall(text)
        if len(shouted) >= 2:
            angry_score += 2.0
            angry_words = [*angry_words, "SHOUTING: " + " ".join(shouted[:3])]
        happy_score, happy_words = scores.get(Tone.HAPPY, (0.0, []))
        tone = Tone.NEUTRAL
        if angry_score >= THRESHOLD and angry_score >= happy_score:
            tone, evidence = Tone.ANGRY, evidence + angry_words
        elif happy_score >= THRESHOLD and intent is not ReplyIntent.COMPLAINT:
            tone, evidence = Tone.HAPPY, evidence + happy_words
        if tone is Tone.ANGRY and intent in (
            ReplyIntent.QUESTION,
            ReplyIntent.THANKS,
            ReplyIntent.OTHER,
        ):
            intent = ReplyIntent.COMPLAINT
        return Label(intent, tone, tuple(dict.fromkeys(evidence)), lang, self.name)


# --- email replies -------------------------------------------------------------------

REPLY_PREFIX = "reply-"
LOCAL_ID = re.compile(r"[a-z0-9_]{1,40}")
QUOTE_HEADER = re.compile(
    r"^\s*(on .{0,200} wrote:|am .{0,200} schrieb .{0,80}:|le .{0,200} a ecrit\s*:|"
    r"-{2,}\s*(original message|ursprungliche nachricht|message d.origine)\s*-{2,}|"
    r"(from|von|de)\s*:.*)\s*$",
    re.IGNORECASE,
)


def reply_address(decision_id: str, domain: str, secret: str) -> str:
    """The reply-to address of a message: its decision and a MAC, so a reply reaches
    the right conversation and an address cannot be made up for another one. Decision
    ids are lower case letters, digits and "_" (`decisions.decision_id_for`), at most 40
    of them: the local part stays within the 64 characters mail allows."""
    if not LOCAL_ID.fullmatch(decision_id):
        raise ValueError("a decision id that cannot be the local part of an address")
    return f"{REPLY_PREFIX}{decision_id}-{_mac(decision_id, secret)}@{domain}"


def read_reply_address(address: str, secret: str) -> str | None:
    """The decision id a reply-to address names, or None when the address is not one
    of ours (or altered)."""
    local = address.strip().strip("<>").split("@", 1)[0].lower()
    if not local.startswith(REPLY_PREFIX):
        return None
    decision_id, _, mac = local.removeprefix(REPLY_PREFIX).rpartition("-")
    if not LOCAL_ID.fullmatch(decision_id) or not hmac.compare_digest(
        _mac(decision_id, secret), mac
    ):
        return None
    return decision_id


def _mac(local: str, secret: str) -> str:
    return hmac.new(secret.encode(), b"reply\x1f" + local.encode(), hashlib.sha256).hexdigest()[:16]


def without_quote(text: str) -> str:
    """An email reply's own words: the text above the quoted message ("On … wrote:",
    "Am … schrieb …:", "Le … a écrit :", a forwarded header, "> " lines) and any
    signature after "-- "."""
    kept: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        plain = normalize(line)
        if line.startswith(">") or QUOTE_HEADER.match(plain) or line.rstrip() == "--":
            break
        kept.append(line)
    return "\n".join(kept).strip()


# --- HELP ----------------------------------------------------------------------------

HELP_TEXT = {
    "en": "{shop}: help at {url} or {phone}. Reply STOP to opt out.",
    "de": "{shop}: Hilfe unter {url} oder {phone}. Antworten Sie STOPP, um keine "
    "Nachrichten mehr zu erhalten.",
    "fr": "{shop} : aide sur {url} ou au {phone}. Répondez STOP pour ne plus recevoir de messages.",
}  # fmt: skip


def help_text(language: str | None, shop: str, url: str, phone: str) -> str:
    """The answer to HELP, in the customer's language (English when not shipped)."""
    lang = (language or "en").split("-")[0].lower()
    return HELP_TEXT.get(lang, HELP_TEXT["en"]).format(shop=shop, url=url, phone=phone)
