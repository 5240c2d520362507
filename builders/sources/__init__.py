"""Image sources by kind, chosen in one place: :func:`source_for` gives a location its :class:`Source`.

Shipped kinds, tried in this order: ``tar`` (``.tar``), ``zip`` (``.zip``), ``urls`` (a ``.csv``/``.parquet``
list of id and URL) and ``folder`` (anything else). Kinds another package registers (entry point group
``mp16_reason.sources``, or :func:`register`) are tried first, so that a scheme of theirs is theirs.
"""

from __future__ import annotations

from builders.sources.archive import ArchiveReader, TarSource, ZipSource, tar_index, zip_index
from builders.sources.base import INDEX_SCHEMA, FetchError, Source, SourceError
from builders.sources.fetcher import Fetcher
from builders.sources.folder import FolderSource
from builders.sources.http import HttpClient
from builders.sources.index import index_path, join_sources, load_index, missing_reason
from builders.sources.urls import UrlListSource, url_index
from mp16_reason.plugins import Registry

ENTRY_POINTS = "mp16_reason.sources"
_BUILT_IN: list[type[Source]] = [TarSource, ZipSource, UrlListSource, FolderSource]


def _kind_of(kind: type[Source]) -> str:
    if not kind.kind:
        raise ValueError(f"{kind.__name__}: give it a kind, e.g. kind = 'gdrive'")
    return kind.kind


_ADDED: Registry[type[Source]] = Registry(ENTRY_POINTS, _kind_of)


def register(kind: type[Source]) -> type[Source]:
    """Make a kind of source known (usable as a class decorator); it is tried before the shipped kinds."""
    return _ADDED.register(kind)


def kinds() -> dict[str, type[Source]]:
    """Every kind by name, in the order locations are matched: registered ones, then the shipped ones."""
    return {**_ADDED.items(), **{k.kind: k for k in _BUILT_IN if k.kind not in _ADDED.items()}}


def source_for(location: str, position: int = 0) -> Source:
    """The source a location names: the first kind that claims it (by suffix or scheme)."""
    return next(k for k in kinds().values() if k.matches(location))(position, location)


def image_sources(locations: list[str]) -> list[Source]:
    """``input.images`` as sources; a source that is not there is an error naming the flag to fix."""
    sources = [source_for(loc, i) for i, loc in enumerate(locations)]
    for s in sources:
        if not s.exists():
            what = "folder" if not s.indexed else f"{s.kind} file"
            raise SourceError(f"image source {s.location} ({what}) does not exist; fix input.images or --images")
    return sources


__all__ = [
    "INDEX_SCHEMA",
    "ArchiveReader",
    "FetchError",
    "Fetcher",
    "FolderSource",
    "HttpClient",
    "Source",
    "SourceError",
    "TarSource",
    "UrlListSource",
    "ZipSource",
    "image_sources",
    "index_path",
    "join_sources",
    "kinds",
    "load_index",
    "missing_reason",
    "register",
    "source_for",
    "tar_index",
    "url_index",
    "zip_index",
]
