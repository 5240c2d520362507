"""What a curation filter is: a settings model (its section of ``curation:``) and a check over one image's
answers that says why the image is dropped, or nothing.

A filter sees an :class:`Answers`: the record being filled, the LVLM teachers' answers (parsed or not), the
coordinate teachers' ones, the failures, the candidates whose reasoning may be chosen (a filter may narrow
them), and the image's bytes on demand. The :class:`~builders.curation.curator.Curator` runs the filters in
order and stops at the first that drops the image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from builders.spec import Spec
from mp16_reason.schema import Sample, TeacherAnswer

if TYPE_CHECKING:
    from builders.teachers.base import TeacherFailure


@dataclass
class Answers:
    record: Sample
    answers: list[TeacherAnswer]  # the LVLM teachers', parsed or not
    coords: list[TeacherAnswer]  # the coordinate teachers' parsed ones (GeoCLIP)
    failures: list[TeacherFailure]
    jpeg: Callable[[], bytes]
    coordinate_teachers: frozenset[str] = frozenset()
    candidates: list[TeacherAnswer] = field(default_factory=list)  # whose reasoning may be chosen
    chosen: TeacherAnswer | None = None  # set by a filter that chooses the reasoning (grounding)

    @property
    def parsed(self) -> list[TeacherAnswer]:
        return [a for a in self.answers if a.parsed]

    @property
    def judges(self) -> list[TeacherAnswer]:
        return [a for a in self.parsed if a.localizable is not None and a.localizability is not None]


class FilterSettings(Spec):
    """Every filter can be switched off."""

    enabled: bool = True


class Filter:
    """``stage`` names it in rejections; ``check`` returns the reason an image is dropped, or None."""

    stage: ClassVar[str] = ""
    settings_class: ClassVar[type[FilterSettings]] = FilterSettings  # a shipped filter's section of ``curation:``

    def __init__(self, settings: FilterSettings, curation) -> None:
        self.settings, self.curation = settings, curation  # its own section, and the whole of ``curation:``

    def applies(self, a: Answers) -> bool:
        return self.settings.enabled

    def check(self, a: Answers) -> str | None:
        raise NotImplementedError


def place(a: TeacherAnswer) -> str:
    return ", ".join(p for p in (a.city, a.country) if p) or "no place"
