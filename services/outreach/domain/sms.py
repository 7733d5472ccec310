"""SMS length: GSM-7 (with its extension table) or UCS-2, and the segments it takes.

GSM-7 carries 160 septets in one segment, 153 per segment once the message is split
(the rest is the concatenation header); characters of the extension table (€, [, ], {,
}, ~, ^, |, \\, form feed) take an escape septet too and are never split across two
segments. Any character outside both tables makes the whole message UCS-2: 70 UTF-16
code units in one segment, 67 per segment once split, and a surrogate pair (most
emoji) is never split either. That is why counting segments is a packing, not a
division.
"""

from __future__ import annotations

from dataclasses import dataclass

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡"
    "ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")

GSM7_SINGLE, GSM7_MULTI = 160, 153
UCS2_SINGLE, UCS2_MULTI = 70, 67


@dataclass(frozen=True)
class Segments:
    encoding: str  # GSM-7 | UCS-2
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    segments: int
    per_segment: int  # capacity of each segment at this length (160/153 or 70/67)
    characters: int = 0  # what a person counts: code points
    non_gsm: tuple[str, ...] = ()  # the characters that forced UCS-2, in order of appearance


def is_gsm7(text: str) -> bool:
    return all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text)


def _widths(text: str) -> tuple[str, list[int]]:
    if is_gsm7(text):
        return "GSM-7", [2 if c in GSM7_EXTENSION else 1 for c in text]
    return "UCS-2", [2 if ord(c) > 0xFFFF else 1 for c in text]


def split(text: str) -> list[str]:
    """The parts a phone receives: greedy packing, never splitting an escape sequence
    or a surrogate pair. One part when the text fits a single segment."""
    encoding, widths = _widths(text)
    single, multi = (GSM7_SINGLE, GSM7_MULTI) if encoding == "GSM-7" else (UCS2_SINGLE, UCS2_MULTI)
    if sum(widths) <= single:
        return [text] if text else []
    parts: list[str] = []
    start, used = 0, 0
    for i, width in enumerate(widths):
        if used + width > multi:
            parts.append(text[start:i])
            start, used = i, 0
        used += width
    parts.append(text[start:])
    return parts


def count(text: str) -> Segments:
    encoding, widths = _widths(text)
    units = sum(widths)
    single, multi = (GSM7_SINGLE, GSM7_MULTI) if encoding == "GSM-7" else (UCS2_SINGLE, UCS2_MULTI)
    non_gsm: tuple[str, ...] = ()
    if encoding == "UCS-2":
        non_gsm = tuple(
            dict.fromkeys(c for c in text if c not in GSM7_BASIC and c not in GSM7_EXTENSION)
        )
    parts = len(split(text))
    return Segments(
        encoding=encoding,
        units=units,
        segments=parts,
        per_segment=single if parts <= 1 else multi,
        characters=len(text),
        non_gsm=non_gsm,
    )
