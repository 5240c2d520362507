"""2. ``ground-truth``: a teacher's country (and city, at ``level: city``) matches the gazetteer's labels with
the alias-aware rule, or its coordinates fall within ``max_km`` of the photo; ``require: any`` or ``all``.
The teachers that match are the only candidates for the sample's reasoning."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from builders.curation.filters.base import Answers, Filter, FilterSettings, place
from mp16_reason.distance import haversine_km
from mp16_reason.matching import city_match, country_match
from mp16_reason.schema import Sample, TeacherAnswer


class GroundTruthSettings(FilterSettings):
    level: Literal["country", "city"] = "city"
    max_km: float = Field(default=25.0, gt=0, description="a teacher's coordinates this close to the truth agree")
    require: Literal["all", "any"] = Field(default="any", description="teachers that must agree with the truth")


class GroundTruthFilter(Filter):
    stage = "ground-truth"
    settings_class = GroundTruthSettings  # its section of ``curation:``
    settings: GroundTruthSettings

    def matches(self, a: TeacherAnswer, s: Sample) -> bool:
        near = a.lat is not None and a.lon is not None
        if near and float(haversine_km(a.lat, a.lon, s.lat, s.lon)) <= self.settings.max_km:
            return True
        if not country_match(a.country, s.country):
            return False
        return self.settings.level == "country" or city_match(a.city, s.city, s.country)

    def check(self, a: Answers) -> str | None:
        parsed, record, s = a.parsed, a.record, self.settings
        agree = [t for t in parsed if self.matches(t, record)]
        if not agree or (s.require == "all" and len(agree) < len(parsed)):
            said = "; ".join(f"{t.teacher}: {place(t)}" for t in parsed)
            return (
                f"teachers disagree with the truth {record.city or '?'}, {record.country} at {s.level} level "
                f"({said}; require {s.require})"
            )
        a.candidates = agree
        return None
