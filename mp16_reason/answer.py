"""Reading a model's answer: ``<think>…</think><answer>country: X\ncity: Y</answer>``, optionally with
``lat:``/``lon:`` lines.

Three readers:

- :func:`parse_answer`, ours: labels in any case, brackets and trailing dots stripped, coordinates read;
- :func:`official_reward_extract`, the released accuracy *reward*'s: only inside the first ``<answer>`` block
  (no block: nothing), lower-case labels, values lower-cased;
- :func:`official_eval_extract`, the released *evaluation*'s: the same, but without a block the whole text is
  read.

The released code reads answers these two different ways; each is kept so that training and evaluation
reproduce it exactly.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_OPEN_ANSWER = re.compile(r"<answer>(.*)", re.S | re.I)
_THINK = re.compile(r"<think>(.*?)</think>", re.S | re.I)
# Each field is read from its own line: [^\w\n] and [ \t] never cross a line, so an empty "city:" is empty, not
# the line after it.
_FIELD = {name: re.compile(rf"^[^\w\n]*{name}[^\w\n]*:[ \t]*([^\n]*)$", re.I | re.M) for name in ("country", "city")}
_LATITUDE = re.compile(r"^[^\w\n]*(?:latitude|lat)[^\w\n]*:[ \t]*([^\n]*)$", re.I | re.M)
_LONGITUDE = re.compile(r"^[^\w\n]*(?:longitude|lon|lng)[^\w\n]*:[ \t]*([^\n]*)$", re.I | re.M)
_COORDS = re.compile(
    r"^[^\w\n]*coordinates?[^\w\n]*:[ \t]*\(?[ \t]*(-?\d+(?:\.\d+)?)[ \t]*[,; \t][ \t]*(-?\d+(?:\.\d+)?)", re.I | re.M
)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_PLACEHOLDER = {"unknown", "n/a", "none", "not sure", "unsure", "-", "?", "country name", "city name"}


@dataclass(frozen=True)
class Answer:
    country: str
    city: str
    lat: float | None
    lon: float | None
    think: str
    tagged: bool  # an <answer> block was present

    @property
    def parsed(self) -> bool:
        """Whether the text named a place at all (country, city or coordinates)."""
        return bool(self.country or self.city or self.lat is not None)


def _clean(value: str) -> str:
    value = value.strip().strip("*_`\"' ").rstrip(".;,").strip()
    value = value.strip("[]()").strip()
    return "" if value.lower() in _PLACEHOLDER else value


def _number(text: str | None, limit: float) -> float | None:
    if not text:
        return None
    found = _NUMBER.search(text)
    if not found:
        return None
    value = float(found.group())
    if re.search(r"\b[SW]\b|°\s*[SW]", text.upper()) and value > 0:
        value = -value  # "33.9 S", "151.2° W"
    return value if math.isfinite(value) and abs(value) <= limit else None


def parse_answer(text: str | None) -> Answer:
    text = text or ""
    block = _ANSWER.search(text) or _OPEN_ANSWER.search(text)  # an unclosed block: cut off by the token limit
    body = block.group(1) if block else text
    think = _THINK.search(text)

    def field(name: str) -> str:
        found = _FIELD[name].search(body)
        return _clean(found.group(1)) if found else ""

    lat_m, lon_m, both = _LATITUDE.search(body), _LONGITUDE.search(body), _COORDS.search(body)
    lat = _number(lat_m.group(1) if lat_m else None, 90.0)
    lon = _number(lon_m.group(1) if lon_m else None, 180.0)
    if (lat is None or lon is None) and both:
        lat, lon = _number(both.group(1), 90.0), _number(both.group(2), 180.0)
    if lat is None or lon is None:
        lat = lon = None
    return Answer(field("country"), field("city"), lat, lon, think.group(1).strip() if think else "", bool(block))


def answer_location(ans: Answer) -> tuple[float, float, str] | None:
    """Where an answer puts the photo: ``(lat, lon, source)``, source being "coordinates" (given by the model),
    "city" or "country" (the offline forward geocoder; a country alone gives its capital); None without one."""
    if ans.lat is not None and ans.lon is not None:
        return ans.lat, ans.lon, "coordinates"
    if ans.city or ans.country:
        from mp16_reason.gazetteer import forward_geocode

        match = forward_geocode(ans.city or None, ans.country or None)
        if match is not None:
            return match.lat, match.lon, match.level
    return None


def completion_text(completion: Any) -> str:
    """The text of a completion, conversational or plain."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion:
        content = completion[-1].get("content", "")
        if isinstance(content, list):  # content parts
            return "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return str(content)
    return ""


def official_reward_extract(text: str | None) -> tuple[str, str]:
    """``(country, city)`` exactly as the released GLOBE accuracy reward reads them: ``("", "")`` without an
    ``<answer>…</answer>`` block."""
    block = re.search(r"<answer>(.*?)</answer>", text or "", re.S)
    return _official_fields(block.group(1).strip() if block else "")


def official_eval_extract(text: str | None) -> tuple[str, str]:
    """``(country, city)`` exactly as the released GLOBE evaluation reads them: without an
    ``<answer>…</answer>`` block, from the whole text."""
    if not text:
        return "", ""
    block = re.search(r"<answer>(.*?)</answer>", text, re.S)
    return _official_fields(block.group(1).strip() if block else text)


def _official_fields(body: str) -> tuple[str, str]:
    country = re.search(r"country:\s*([^\n]+)", body)
    city = re.search(r"city:\s*([^\n]+)", body)
    return (
        country.group(1).strip().lower() if country else "",
        city.group(1).strip().lower() if city else "",
    )
