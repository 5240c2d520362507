"""Reading a model's answer: ``<think>…</think><answer>country: X\ncity: Y</answer>``, optionally with
``lat:``/``lon:`` lines.

Two readers: :func:`parse_answer` (ours: labels in any case, brackets and trailing dots stripped, coordinates
read) and :func:`official_extract` (the released evaluation's rule, kept for exact reproduction: the first
``<answer>`` block or, without one, the whole text; lower-case labels; values lower-cased).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_THINK = re.compile(r"<think>(.*?)</think>", re.S | re.I)
_FIELD = {name: re.compile(rf"^\W*{name}\W*:\s*(.+)$", re.I | re.M) for name in ("country", "city")}
_LATITUDE = re.compile(r"^\W*(?:latitude|lat)\W*:\s*(.+)$", re.I | re.M)
_LONGITUDE = re.compile(r"^\W*(?:longitude|lon|lng)\W*:\s*(.+)$", re.I | re.M)
_COORDS = re.compile(r"^\W*coordinates?\W*:\s*\(?\s*(-?\d+(?:\.\d+)?)\s*[,;\s]\s*(-?\d+(?:\.\d+)?)", re.I | re.M)
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
    block = _ANSWER.search(text)
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


def official_extract(text: str | None) -> tuple[str, str]:
    """``(country, city)`` exactly as the released GLOBE evaluation reads them."""
    if not text:
        return "", ""
    block = re.search(r"<answer>(.*?)</answer>", text, re.S)
    body = block.group(1).strip() if block else text
    country = re.search(r"country:\s*([^\n]+)", body)
    city = re.search(r"city:\s*([^\n]+)", body)
    return (
        country.group(1).strip().lower() if country else "",
        city.group(1).strip().lower() if city else "",
    )
