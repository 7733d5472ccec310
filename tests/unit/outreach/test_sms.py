"""SMS segments: GSM-7 with its extension table, UCS-2 in UTF-16 code units, and parts
that never split an escape sequence or a surrogate pair."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.outreach.domain.sms import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    count,
    split,
)

BASIC = st.sampled_from(sorted(GSM7_BASIC))
EXTENSION = st.sampled_from(sorted(GSM7_EXTENSION))
GSM_TEXT = st.text(alphabet=st.one_of(BASIC, EXTENSION), max_size=800)
ANY_TEXT = st.text(max_size=500)


@pytest.mark.parametrize(
    ("text", "encoding", "units", "segments"),
    [
        ("", "GSM-7", 0, 0),
        ("a" * 160, "GSM-7", 160, 1),
        ("a" * 161, "GSM-7", 161, 2),
        ("a" * 306, "GSM-7", 306, 2),
        ("a" * 307, "GSM-7", 307, 3),
        ("€" * 80, "GSM-7", 160, 1),  # the extension table counts double
        ("€" * 81, "GSM-7", 162, 2),
        ("Grüße aus München, Ihr Paket ist da.", "GSM-7", 36, 1),
        ("ç" * 70, "UCS-2", 70, 1),
        ("ç" * 71, "UCS-2", 71, 2),
        ("ç" * 134, "UCS-2", 134, 2),
        ("ç" * 135, "UCS-2", 135, 3),
        ("🙂" * 35, "UCS-2", 70, 1),  # a surrogate pair is two code units
        ("🙂" * 36, "UCS-2", 72, 2),
    ],
)
def test_known_lengths(text, encoding, units, segments):
    result = count(text)
    assert (result.encoding, result.units, result.segments) == (encoding, units, segments)


def test_an_escape_sequence_is_never_split_so_the_count_is_a_packing():
    text = "a" * 152 + "€" + "a" * 10  # 152 + 2 would straddle the 153-septet boundary
    parts = split(text)
    assert parts[0] == "a" * 152 and parts[1].startswith("€")
    assert count(text).segments == 2
    assert count("a" * 152 + "€" * 77 + "a").segments == 3  # 152 | € x76 (152) | € a


def test_one_character_outside_gsm_makes_everything_ucs2_and_is_named():
    result = count("Hello " * 20 + "’")
    assert result.encoding == "UCS-2" and result.non_gsm == ("’",)
    assert result.segments == math.ceil(121 / 67)


@given(GSM_TEXT)
def test_gsm_units_are_characters_plus_one_per_extension_character(text):
    result = count(text)
    assert result.encoding == "GSM-7"
    assert result.units == len(text) + sum(c in GSM7_EXTENSION for c in text)
    assert result.characters == len(text) and result.non_gsm == ()


@given(ANY_TEXT)
def test_ucs2_units_are_utf16_code_units(text):
    result = count(text)
    if result.encoding == "UCS-2":
        assert result.units == len(text.encode("utf-16-le")) // 2
        assert result.non_gsm and all(c in text for c in result.non_gsm)


@given(st.one_of(GSM_TEXT, ANY_TEXT))
def test_parts_rebuild_the_text_fit_their_segment_and_are_greedy(text):
    result = count(text)
    parts = split(text)
    assert "".join(parts) == text
    assert len(parts) == result.segments
    single, multi = (160, 153) if result.encoding == "GSM-7" else (70, 67)

    def units(s: str) -> int:
        if result.encoding == "GSM-7":
            return len(s) + sum(c in GSM7_EXTENSION for c in s)
        return len(s.encode("utf-16-le")) // 2

    if len(parts) <= 1:
        assert units(text) <= single
    else:
        assert units(text) > single
        assert all(units(p) <= multi for p in parts)
        # greedy: the next part's first character would not have fitted
        for part, following in itertools.pairwise(parts):
            assert units(part + following[0]) > multi
        assert math.ceil(result.units / multi) <= result.segments


@given(st.one_of(GSM_TEXT, ANY_TEXT), st.characters())
def test_appending_never_makes_a_message_shorter(text, extra):
    assert count(text + extra).segments >= count(text).segments
