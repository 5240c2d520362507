"""4. ``geoclip``: with a coordinate teacher (``kind: geoclip``) and its checks on, GeoCLIP's point lies within
``max_km`` of the photo, and ``any``/``all`` LVLM teachers agree with it (coordinates within ``teacher_km``, or
the place the gazetteer gives the point, at ``level``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from builders.curation.filters.base import Answers, Filter, FilterSettings, place
from mp16_reason.distance import haversine_km
from mp16_reason.matching import city_match, country_match
from mp16_reason.schema import TeacherAnswer


class GeoclipSettings(FilterSettings):
    """Checks that use a coordinate teacher (``kind: geoclip``) when the recipe has one."""

    max_km: float | None = Field(
        default=None, gt=0, description="GeoCLIP's point must lie this close to the photo (none: not checked)"
    )
    teachers: Literal["off", "any", "all"] = Field(
        default="off", description="LVLM teachers whose answer must agree with GeoCLIP's point"
    )
    teacher_km: float = Field(default=25.0, gt=0, description="a teacher's coordinates this close to the point agree")
    level: Literal["country", "city"] = Field(
        default="city", description="or the teacher's place matches the geocoded place of GeoCLIP's point"
    )


class GeoclipFilter(Filter):
    stage = "geoclip"
    settings_class = GeoclipSettings  # its section of ``curation:``
    settings: GeoclipSettings

    def applies(self, a: Answers) -> bool:
        g = self.settings
        return g.enabled and bool(a.coordinate_teachers) and (g.max_km is not None or g.teachers != "off")

    def near_point(self, a: TeacherAnswer, point: TeacherAnswer) -> bool:
        g = self.settings
        near = a.lat is not None and a.lon is not None
        if near and float(haversine_km(a.lat, a.lon, point.lat, point.lon)) <= g.teacher_km:
            return True
        if not country_match(a.country, point.country):
            return False
        return g.level == "country" or city_match(a.city, point.city, point.country)

    def check(self, a: Answers) -> str | None:
        g = self.settings
        if not a.coords:
            said = "; ".join(str(f) for f in a.failures if f.teacher in a.coordinate_teachers)
            return f"no GeoCLIP answer ({said or 'none'})"
        point = a.coords[0]
        if g.max_km is not None:
            km = float(haversine_km(point.lat, point.lon, a.record.lat, a.record.lon))
            if km > g.max_km:
                return (
                    f"{point.teacher}'s point is {km:,.0f} km from the photo (> {g.max_km:g} km; "
                    f"confidence {point.confidence or 0:.2f})"
                )
        if g.teachers != "off":
            parsed = a.parsed
            agree = [t for t in parsed if self.near_point(t, point)]
            if not agree or (g.teachers == "all" and len(agree) < len(parsed)):
                said = "; ".join(f"{t.teacher}: {place(t)}" for t in parsed)
                return (
                    f"teachers disagree with {point.teacher}'s point ({place(point)}) at {g.level} level and "
                    f"beyond {g.teacher_km:g} km ({said}; require {g.teachers})"
                )
        return None
