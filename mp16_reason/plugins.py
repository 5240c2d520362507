"""Named things of one kind (teachers, image sources, curation filters, rewards): the shipped ones, those
registered in-process, and those other packages add through an entry point group. Entry points are read once, on
first use, so an installed package's additions are there without an import of it."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """``name_of`` gives an item's own name and raises ``ValueError`` for one that cannot be used (items without
    a name of their own leave it out and are registered with one). ``adopt`` turns an entry point into its name
    and item; by default the object it names, under that object's own name. ``shipped`` are the project's own
    (a mapping when they carry no name); a shipped name keeps its meaning, and an entry point that reuses one is
    left out with a warning."""

    def __init__(
        self,
        group: str,
        name_of: Callable[[T], str] | None = None,
        shipped: Mapping[str, T] | Iterable[T] = (),
        adopt: Callable[[EntryPoint], tuple[str, T]] | None = None,
    ) -> None:
        self.group = group
        self._name_of = name_of
        self._adopt = adopt or self._adopt_object
        self._items: dict[str, T] = {}
        for name, item in shipped.items() if isinstance(shipped, Mapping) else ((None, i) for i in shipped):
            self.register(item, name)
        self._shipped = frozenset(self._items)
        self._loaded = False

    def register(self, item: T, name: str | None = None) -> T:
        """Make ``item`` known, under ``name`` or its own; returns it, so it also serves as a class decorator."""
        if name is None:
            if self._name_of is None:
                raise ValueError(f"{self.group}: give the name it is known by")
            name = self._name_of(item)
        self._items[name] = item
        return item

    def items(self) -> dict[str, T]:
        """Every known item by name, in the order they became known."""
        if not self._loaded:
            self._loaded = True
            for point in entry_points(group=self.group):
                name, item = self._adopt(point)
                if name in self._shipped:
                    warnings.warn(
                        f"{point.value} (entry point {self.group}) reuses the shipped name {name!r}: "
                        "left out; give it a name of its own",
                        stacklevel=2,
                    )
                else:
                    self.register(item, name)
        return self._items

    def _adopt_object(self, point: EntryPoint) -> tuple[str, T]:
        item = point.load()
        return (self._name_of(item) if self._name_of else point.name), item


def kind_of(settings: Any) -> str:
    """A settings class's kind: the default of its ``kind`` field, which is what a recipe entry writes."""
    fields = getattr(settings, "model_fields", {})
    kind = fields["kind"].default if "kind" in fields else None
    if not isinstance(kind, str) or not kind:
        name = getattr(settings, "__name__", repr(settings))
        raise ValueError(f"{name}: give its kind field a default, e.g. kind: Literal['mine'] = 'mine'")
    return kind
