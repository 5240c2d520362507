"""The answer's field parser is total: on generated answers (empty fields, missing lines, extra labels, unicode)
it agrees with a plain line-by-line reading."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from mp16_reason.answer import _clean, parse_answer

VALUES = st.one_of(st.just(""), st.text(alphabet="abc Éé北京 -.'", max_size=12), st.sampled_from(["lat: -50.94"]))
LABELS = st.sampled_from(["country", "city", "Country", "**City**", "- city", "region", "notes", "lat"])


def reference(body: str, name: str) -> str:
    """The first line whose label is ``name``: its value, cleaned; "" without one."""
    for line in body.split("\n"):
        label, sep, value = line.partition(":")
        if sep and re.sub(r"[^\w]", "", label).lower() == name:
            return _clean(value)
    return ""


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.tuples(LABELS, VALUES), max_size=6), crlf=st.booleans())
def test_country_and_city_read_as_a_plain_line_reading_does(lines, crlf):
    body = "\n".join(f"{label}: {value}" for label, value in lines)
    text = f"<think>why</think><answer>{body.replace(chr(10), chr(13) + chr(10)) if crlf else body}</answer>"
    answer = parse_answer(text)
    assert answer.country == reference(body, "country")
    assert answer.city == reference(body, "city")


def test_an_empty_city_line_is_empty_not_the_next_line():
    answer = parse_answer("<answer>country: Chile\ncity:\nlat: -50.94\nlon: -73.4</answer>")
    assert (answer.country, answer.city, answer.lat, answer.lon) == ("Chile", "", -50.94, -73.4)
