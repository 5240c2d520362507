"""The curation filters, in the order the curator runs them (each a settings model and a check).

The shipped filters have their own sections of ``curation:``. Filters another package adds run before them
(``run: first``) or after them (``run: last``, the default), in the order the recipe lists them under
``curation.filters``, each entry picked by its ``kind``; the package
names its settings class (an :class:`AddedFilter` with a ``filter`` class) in the entry point group
``mp16_reason.filters``, or calls :func:`register` in-process.
"""

from typing import Any, ClassVar, Literal

from pydantic import Field, model_serializer

from builders.curation.filters.agreement import AgreementFilter, AgreementSettings
from builders.curation.filters.base import Answers, Filter, FilterSettings
from builders.curation.filters.geoclip import GeoclipFilter, GeoclipSettings
from builders.curation.filters.ground_truth import GroundTruthFilter, GroundTruthSettings
from builders.curation.filters.grounding import GroundingFilter, GroundingSettings
from builders.curation.filters.localizability import LocalizabilityFilter, LocalizabilitySettings
from mp16_reason.plugins import Registry, kind_of

# (section of ``curation:``, filter) in the order they run. A shipped filter is its module and a line here: the
# recipe's ``curation:`` gains its section (its ``settings_class``) from this list.
ORDER: tuple[tuple[str, type[Filter]], ...] = (
    ("localizability", LocalizabilityFilter),
    ("ground_truth", GroundTruthFilter),
    ("agreement", AgreementFilter),
    ("geoclip", GeoclipFilter),
    ("grounding", GroundingFilter),
)

ENTRY_POINTS = "mp16_reason.filters"


class AddedFilter(FilterSettings):
    """The settings of a filter another package adds: ``kind`` (its ``Literal`` default names it) picks the
    class, ``filter`` is the :class:`Filter` that checks."""

    kind: str
    run: Literal["first", "last"] = Field(
        default="last", description="before the shipped filters (a cheap check on the image), or after them"
    )
    filter: ClassVar[type[Filter]]

    @model_serializer(mode="wrap")
    def _with_kind(self, handler: Any) -> Any:
        data = handler(self)  # its kind is always written: it is what reads the entry back
        return {"kind": self.kind, **data} if isinstance(data, dict) else data


def _kind_of(settings: type[AddedFilter]) -> str:
    if not isinstance(getattr(settings, "filter", None), type) or not issubclass(settings.filter, Filter):
        raise ValueError(f"{settings.__name__}: set filter = the Filter class that checks")
    return kind_of(settings)


_KINDS: Registry[type[AddedFilter]] = Registry(ENTRY_POINTS, _kind_of)


def register(settings: type[AddedFilter]) -> type[AddedFilter]:
    """Make a filter kind known (usable as a class decorator)."""
    return _KINDS.register(settings)


def kinds() -> dict[str, type[AddedFilter]]:
    """The filter kinds other packages add (entry points are read once)."""
    return _KINDS.items()


def added_from(data: Any) -> AddedFilter:
    """One ``curation.filters`` entry as the settings of its kind."""
    if isinstance(data, AddedFilter):
        return data
    if not isinstance(data, dict) or "kind" not in data:
        raise ValueError("each curation.filters entry is a mapping with a kind, e.g. {kind: my-filter}")
    known = kinds()
    if data["kind"] not in known:
        have = ", ".join(sorted(known)) or "none installed"
        raise ValueError(
            f"unknown curation filter kind {data['kind']!r} (known: {have}); a package adds one through the entry "
            f"point group {ENTRY_POINTS}"
        )
    return known[data["kind"]].model_validate(data)


__all__ = [
    "ENTRY_POINTS",
    "ORDER",
    "AddedFilter",
    "AgreementFilter",
    "AgreementSettings",
    "Answers",
    "Filter",
    "FilterSettings",
    "GeoclipFilter",
    "GeoclipSettings",
    "GroundTruthFilter",
    "GroundTruthSettings",
    "GroundingFilter",
    "GroundingSettings",
    "LocalizabilityFilter",
    "LocalizabilitySettings",
    "added_from",
    "kinds",
    "register",
]
