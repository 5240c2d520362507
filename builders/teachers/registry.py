"""Teacher kinds by name: the shipped ones, those other packages add by entry point (group
``mp16_reason.teachers``, naming a :class:`~builders.teachers.base.TeacherSettings` subclass), and those
:func:`register` adds in-process. A recipe's ``teachers:`` entry is read as the settings of its ``kind``."""

from __future__ import annotations

from typing import Any

from builders.teachers.base import TeacherSettings
from builders.teachers.geoclip import GeoclipTeacher
from builders.teachers.online import OpenAITeacher
from mp16_reason.plugins import Registry, kind_of

ENTRY_POINTS = "mp16_reason.teachers"
_KINDS: Registry[type[TeacherSettings]] = Registry(ENTRY_POINTS, kind_of, shipped=(OpenAITeacher, GeoclipTeacher))


def register(settings: type[TeacherSettings]) -> type[TeacherSettings]:
    """Make a kind known (usable as a class decorator); its ``kind`` field's default names it."""
    return _KINDS.register(settings)


def kinds() -> dict[str, type[TeacherSettings]]:
    """Every known kind: the shipped ones and those other packages register by entry point."""
    return _KINDS.items()


def settings_from(data: Any) -> TeacherSettings:
    """A recipe's teacher entry as the settings of its kind (``openai`` when it names none)."""
    if isinstance(data, TeacherSettings):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"a teacher is a mapping of settings, not {type(data).__name__}")
    kind = data.get("kind", "openai")
    known = kinds()
    if kind not in known:
        raise ValueError(f"unknown teacher kind {kind!r}; known kinds: {', '.join(sorted(known))}")
    return known[kind].model_validate({**data, "kind": kind})
