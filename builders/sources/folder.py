"""A folder of images (local or a prefix on an object store), found by the row's image path or id."""

from __future__ import annotations

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
            return path.read_bytes()
        except FileNotFoundError:
            raise FetchError(f"missing file {ref}") from None
        except OSError as exc:
            raise FetchError(f"unreadable file {ref}: {exc.strerror or exc}") from None

    def close(self) -> None:
        pass
