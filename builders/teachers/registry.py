"""Teacher kinds by name: the shipped ones, those other packages add by entry point (group
``mp16_reason.teachers``, naming a :class:`~builders.teachers.base.TeacherSettings` subclass), and those
:func:`register` adds in-process. A recipe's ``teachers:`` entry is read as the settings of its ``kind``."""

from __future__ import annotations

from typing import Any

from builders.teachers.base import TeacherSettings
from builders.teachers.geoclip import GeoclipTeacher
from builders.teachers.online import OpenAITeacher

ENTRY_POINTS = "mp16_reason.teachers"
_KINDS: dict[str, type[TeacherSettings]] = {}
_loaded = False


def register(settings: type[TeacherSettings]) -> type[TeacherSettings]:
    """Make a kind known (usable as a class decorator); its ``kind`` field's default names it."""
    kind = settings.model_fields["kind"].default
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"{settings.__name__}: give its kind field a default, e.g. kind: Literal['mine'] = 'mine'")
    _KINDS[kind] = settings
    return settings


def kinds() -> dict[str, type[TeacherSettings]]:
    """Every known kind: the shipped ones and those other packages register by entry point."""
    global _loaded
    if not _loaded:
        _loaded = True
        from importlib.metadata import entry_points

        for shipped in (OpenAITeacher, GeoclipTeacher):
            register(shipped)
        for point in entry_points(group=ENTRY_POINTS):
            register(point.load())
    return _KINDS


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
