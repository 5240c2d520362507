"""A unit's view of its image sources: the first that has a row's image serves it."""

from __future__ import annotations

import hashlib

from builders.sources.base import FetchError, Source
from builders.sources.http import HttpClient
from builders.sources.index import missing_reason


class Fetcher:
    """Tries the sources that list a row's image in the recipe's order, and says which served it.

    ``fetch(row, ref)`` returns ``(bytes, source)``, ``source`` being the :class:`Source` that served it
    (None: the row's own URL), or raises :class:`FetchError` naming every source that had the image and why it
    failed."""

    def __init__(self, sources: list[Source], urls: HttpClient, reject_sha256: frozenset[str] = frozenset()):
        self.sources, self.urls, self.reject_sha256 = sources, urls, reject_sha256
        self.readers = {s.position: s.reader(urls) for s in sources}

    def _one(self, source: Source | None, row: dict, ref: str) -> bytes | None:
        """The bytes from ``source``, None when it does not list the row's image."""
        if source is None:
            return self.urls.fetch(ref)
        return self.readers[source.position].fetch(row, ref)

    def fetch(self, row: dict, ref: str) -> tuple[bytes, Source | None]:
        tried: list[tuple[str, str]] = []
        for source in self.sources or [None]:
            label = source.label if source else "url"
            try:
                data = self._one(source, row, ref)
            except FetchError as exc:
                tried.append((label, str(exc)))
                continue
            if data is None:
                continue  # not listed there
            if self.reject_sha256 and hashlib.sha256(data).hexdigest() in self.reject_sha256:
                tried.append((label, "Flickr placeholder (sha256 in fetch.reject_sha256)"))
            else:
                return data, source
        if not tried:
            raise FetchError(missing_reason(self.sources))
        if len(self.sources) <= 1:
            raise FetchError(tried[0][1])
        # The reason first, so that rejections group by it; then the source that gave it.
        raise FetchError("; ".join(f"{why} [{label}]" for label, why in tried))

    def close(self) -> None:
        for reader in self.readers.values():
            reader.close()
