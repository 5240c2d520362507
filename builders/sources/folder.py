"""A folder of images (local or a prefix on an object store), found by the row's image path or id."""

from __future__ import annotations

import stat
from pathlib import Path

from builders.sources.base import FetchError, Source
from mp16_reason.storage import location


class FolderSource(Source):
    """Any location no other kind claims. Not indexed: a unit probes the folder for each row's file."""

    kind = "folder"
    indexed = False
    fields = ()

    @classmethod
    def matches(cls, location: str) -> bool:
        return True

    def exists(self) -> bool:
        return location(self.location).is_dir()

    def identity(self, work_dir) -> dict:
        from builders.sources.identity import folder_identity

        return folder_identity(self.location)

    def reader(self, urls) -> FolderReader:
        return FolderReader(self.location)


class FolderReader:
    def __init__(self, root: str | Path) -> None:
        self.prefix = location(root)
        if not self.prefix.is_dir():
            raise FileNotFoundError(f"image folder {self.prefix} does not exist")
        self.root = self.prefix.local

    def fetch(self, row: dict, ref: str) -> bytes:
        if "\0" in ref or any(0xD800 <= ord(c) <= 0xDFFF for c in ref):
            # No file system holds such a name; the row is rejected, never the build stopped.
            raise FetchError(
                f"image path {ref.encode('utf-8', 'backslashreplace')!r} holds a NUL byte or bytes "
                "that are not UTF-8; fix that row's path"
            )
        if self.root is None:  # a prefix on an object store
            if ".." in ref.split("/"):
                raise FetchError(f"image path {ref!r} leaves the image folder")
            try:
                return (self.prefix / ref).read_bytes()
            except FileNotFoundError:
                raise FetchError(f"missing file {ref}") from None
        path = (self.root / ref).resolve()
        if self.root.resolve() not in path.parents:
            raise FetchError(f"image path {ref!r} leaves the image folder")
        try:
            if not stat.S_ISREG(path.stat().st_mode):  # a FIFO would block the read forever, a device never end
                raise FetchError(f"not a regular file {ref} (a FIFO, socket or device)")
            return path.read_bytes()
        except FileNotFoundError:
            raise FetchError(f"missing file {ref}") from None
        except OSError as exc:
            raise FetchError(f"unreadable file {ref}: {exc.strerror or exc}") from None

    def close(self) -> None:
        pass
