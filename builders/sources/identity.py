"""The content identity of one input: a file by size and sha256, an index (archive members, URL list) by the
sha256 of its columns, a folder by the sha256 of its listing. :mod:`builders.plane.identity` puts them together
for the recipe hash and the manifest."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa

from mp16_reason.storage import location

_CHUNK = 8 << 20


def file_identity(path: str | Path) -> dict:
    digest, size = hashlib.sha256(), 0
    with location(path).open("rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
            size += len(block)
    return {"bytes": size, "sha256": digest.hexdigest()}


def _hash_strings(digest, column: pa.ChunkedArray) -> None:
    """Feed the values of a string column (lengths, then UTF-8 bytes) to ``digest``, nulls as length -1."""
    for chunk in column.cast(pa.string()).chunks:
        offsets = np.frombuffer(chunk.buffers()[1], np.int32)[chunk.offset : chunk.offset + len(chunk) + 1]
        lengths = np.diff(offsets).astype(np.int64)
        if chunk.null_count:
            lengths[~chunk.is_valid().to_numpy(zero_copy_only=False)] = -1
        digest.update(lengths.astype("<i8").tobytes())
        digest.update(chunk.buffers()[2].to_pybytes()[offsets[0] : offsets[-1]] if len(chunk) else b"")


def index_identity(index: pa.Table) -> str:
    digest = hashlib.sha256()
    _hash_strings(digest, index.column("name"))
    for name in ("offset", "size", "method"):
        values = index.column(name).to_numpy(zero_copy_only=False)
        digest.update(np.nan_to_num(values.astype("float64"), nan=-1.0).astype("<i8").tobytes())
    _hash_strings(digest, index.column("url"))
    return digest.hexdigest()


def folder_identity(root: str | Path) -> dict:
    entries = sorted(location(root).walk_files())
    digest = hashlib.sha256("\n".join(f"{name}\t{size}" for name, size in entries).encode())
    return {"files": len(entries), "listing_sha256": digest.hexdigest()}
