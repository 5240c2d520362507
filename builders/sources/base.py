"""What an image source is: the plug-in point of ``input.images``.

A recipe's ``input.images`` lists sources, tried in order; the first that has a row's image serves it. Each is
a :class:`Source` of one kind, chosen by its location in one place (:func:`builders.sources.source_for`: by
suffix or scheme). Indexed kinds (archives, URL lists) are indexed once, by the main process, when the build
starts (``index-*.parquet`` in the work folder), and ingest joins those indexes onto the rows: each row carries,
per source, where its image sits (offset and size in an archive, its URL in a list). A unit therefore opens no
index and looks up nothing: it reads its own rows' byte ranges, so its cost does not grow with the archives'
member counts.

A fetch returns bytes, None when the source does not have the row's image, or raises :class:`FetchError`
with a reason that goes into the rejection record; it never returns a default.

A new kind subclasses :class:`Source` (``kind``, ``matches``, ``exists``, ``reader`` and, when indexed,
``build_index``) and registers through the entry point group ``mp16_reason.sources`` (or
:func:`builders.sources.register`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import pyarrow as pa

from mp16_reason.storage import location

INDEX_SCHEMA = pa.schema(
    [("name", pa.string()), ("offset", pa.int64()), ("size", pa.int64()), ("method", pa.int64()), ("url", pa.string())]
)


class FetchError(Exception):
    """An image that could not be obtained; the message is the rejection reason."""


class SourceError(ValueError):
    """An image source that cannot be used at all (missing file, unknown layout)."""


class Reader(Protocol):
    """A unit's handle on one source: ``fetch`` the bytes of a row's image (None: not listed there). A unit
    calls ``fetch`` from several threads at once, and ``close`` once, when it is done."""

    def fetch(self, row: dict, ref: str) -> bytes | None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Source:
    """One entry of ``input.images``: its position in the list and its location (a path or a URL)."""

    position: int
    location: str

    kind: ClassVar[str] = ""
    indexed: ClassVar[bool] = True  # its index is joined onto the rows at ingest
    fields: ClassVar[tuple[str, ...]] = ("offset", "size", "method")  # what the index gives each row
    network: ClassVar[bool] = False  # it downloads: a unit gives it more threads
    by_file_name: ClassVar[bool] = False  # members also found by their name inside shared folders, or file name

    @classmethod
    def matches(cls, location: str) -> bool:
        """Whether a location is of this kind (by suffix or scheme)."""
        raise NotImplementedError

    @property
    def name(self) -> str:
        """What records say served an image: the kind and the file or folder name (no path, no credential)."""
        return Path(self.location.rstrip("/")).name

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}"

    def column(self, field: str) -> str:
        """The ingest column holding this source's ``field`` (offset, size, method, url) for each row."""
        return f"src{self.position}_{field}"

    def exists(self) -> bool:
        return location(self.location).is_file()

    def build_index(self) -> pa.Table:
        """Every member: name -> where it is (``INDEX_SCHEMA``). Indexed kinds only."""
        raise NotImplementedError

    def identity(self, work_dir: Any) -> dict:
        """The source by content (what the recipe hash covers): for an indexed kind, its index's member count and
        hash (:func:`builders.sources.index.indexed_identity`); for another, whatever names its content."""
        raise NotImplementedError

    def reader(self, urls: Any) -> Reader:
        """What a unit fetches this source's images with (``urls``: the unit's HTTP client, a
        :class:`builders.sources.http.HttpClient`)."""
        raise NotImplementedError
