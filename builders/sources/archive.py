"""Uncompressed tar and zip archives, read member by member by byte range (no extraction)."""

from __future__ import annotations

import os
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import pyarrow as pa

from builders.sources.base import INDEX_SCHEMA, FetchError, Source
from builders.sources.index import indexed_identity
from mp16_reason.storage import location


def _junk(name: str) -> bool:
    """Files archivers add beside the images: macOS's resource forks and folder settings, Windows' thumbnails."""
    base = name.rsplit("/", 1)[-1]
    return name.startswith("__MACOSX/") or "/__MACOSX/" in name or base.startswith("._") or base in _JUNK_NAMES


_JUNK_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})


def tar_index(path: str | Path) -> pa.Table:
    """Member name -> data offset and size, from one pass over the tar's headers (uncompressed tars only:
    random access needs them)."""
    names, offsets, sizes = [], [], []
    source = location(path)
    # Seeking from header to header: remotely through the file's read-ahead cache, a few large ranged reads.
    tar_args = {"name": str(source.local)} if source.local else {"fileobj": source.open(block_size=8 << 20)}
    with tarfile.open(mode="r:", **tar_args) as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            if member.isfile() and not _junk(name):
                names.append(name)
                offsets.append(member.offset_data)
                sizes.append(member.size)

    return pa.table(
        {
            "name": names,
            "offset": offsets,
            "size": sizes,
            "method": [0] * len(names),
            "url": pa.nulls(len(names), pa.string()),
        },
        schema=INDEX_SCHEMA,
    )


def zip_index(path: str | Path) -> pa.Table:
    """Member name -> local header offset, compressed size and method, from the central directory."""
    with zipfile.ZipFile(location(path).source()) as zf:
        infos = [i for i in zf.infolist() if not i.is_dir() and not _junk(i.filename)]
    names = [i.filename for i in infos]
    return pa.table(
        {
            "name": names,
            "offset": [i.header_offset for i in infos],
            "size": [i.compress_size for i in infos],
            "method": [i.compress_type for i in infos],
            "url": pa.nulls(len(infos), pa.string()),
        },
        schema=INDEX_SCHEMA,
    )


class ArchiveReader:
    """Byte ranges of one archive, read with ``os.pread`` (no shared file position: safe across threads)."""

    def __init__(self, path: str | Path, kind: str) -> None:
        self.path, self.kind = str(path), kind
        self.remote = location(path) if location(path).remote else None
        self._fd: int | None = None

    def _read(self, size: int, offset: int) -> bytes:
        if self.remote is not None:  # a ranged GET
            try:
                return self.remote.read_range(offset, size)
            except OSError as exc:
                raise FetchError(f"unreadable {self.kind} member at offset {offset}: {exc}") from None
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return os.pread(self._fd, size, offset)

    def fetch(self, ref: str, offset: int, size: int, method: int) -> bytes:
        if self.kind == "zip":
            header = self._read(30, offset)
            if len(header) < 30 or header[:4] != b"PK\x03\x04":
                raise FetchError(f"unreadable zip member {ref}: no local header at offset {offset}")
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            offset += 30 + name_len + extra_len
        data = self._read(size, offset)
        if len(data) != size:
            raise FetchError(f"unreadable {self.kind} member {ref}: {len(data)} of {size} bytes (archive truncated?)")
        if self.kind == "zip" and method == zipfile.ZIP_DEFLATED:
            try:
                return zlib.decompress(data, -15)
            except zlib.error as exc:
                raise FetchError(f"unreadable zip member {ref}: {exc}") from None
        if self.kind == "zip" and method != zipfile.ZIP_STORED:
            raise FetchError(f"zip member {ref} uses compression method {method}; only stored and deflate are read")
        return data

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class TarSource(Source):
    """An uncompressed tar (MP16-Pro's ``mp-16-images.tar``): random access needs it uncompressed."""

    kind = "tar"
    by_file_name = True

    @classmethod
    def matches(cls, location: str) -> bool:
        return location.lower().rstrip("/").endswith(".tar")

    def identity(self, work_dir) -> dict:
        return indexed_identity(self, work_dir)

    def build_index(self) -> pa.Table:
        return tar_index(self.location)

    def reader(self, urls) -> _ArchiveRows:
        return _ArchiveRows(self, ArchiveReader(self.location, self.kind))


class ZipSource(Source):
    """A zip, stored or deflated members, read through its central directory."""

    kind = "zip"
    by_file_name = True

    @classmethod
    def matches(cls, location: str) -> bool:
        return location.lower().rstrip("/").endswith(".zip")

    def identity(self, work_dir) -> dict:
        return indexed_identity(self, work_dir)

    def build_index(self) -> pa.Table:
        return zip_index(self.location)

    def reader(self, urls) -> _ArchiveRows:
        return _ArchiveRows(self, ArchiveReader(self.location, self.kind))


class _ArchiveRows:
    """A unit's reads of one archive: the row's offset, size and method, from the joined index."""

    def __init__(self, source: Source, archive: ArchiveReader) -> None:
        self.source, self.archive = source, archive

    def fetch(self, row: dict, ref: str) -> bytes | None:
        offset = row.get(self.source.column("offset"))
        if offset is None:
            return None
        return self.archive.fetch(ref, offset, row[self.source.column("size")], row[self.source.column("method")])

    def close(self) -> None:
        self.archive.close()
