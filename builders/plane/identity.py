"""What a build's inputs are, by content: the same bytes at another path, bucket or machine are the same input.

The recipe hash covers these identities, never locations, so a rebuild anywhere can be compared with a
published manifest shard by shard. The manifest records each input's identity next to its location:

- a metadata or join file: its size and sha256;
- an archive or URL list: its kind, member count and the sha256 of its index (names, offsets, sizes, URLs);
- a folder: the sha256 of its listing (relative names and sizes).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa

from builders.sources import image_sources
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


def input_identities(spec, work_dir: Path) -> dict:
    """``{"metadata": …, "join": […], "images": […]}``: identities, with each input's location beside it
    (locations are left out of the recipe hash; see :func:`content_only`)."""
    images = []
    for source in image_sources(spec.images):
        images.append({"kind": source.kind, "location": source.location, **source.identity(work_dir)})
    return {
        "metadata": {"location": spec.metadata, **file_identity(spec.metadata)},
        "join": [{"location": p, **file_identity(p)} for p in spec.join],
        "images": images,
    }


def published(identities: dict) -> dict:
    """The identities as the manifest publishes them: a local input named by its file or folder name (no local
    path leaves the machine), a URL as it is; beside each, its content identity."""
    from mp16_reason.storage import is_url

    def name(entry: dict) -> dict:
        where = entry["location"]
        return {**entry, "location": where if is_url(where) else location(where).name}

    return {
        "metadata": name(identities["metadata"]),
        "join": [name(e) for e in identities["join"]],
        "images": [name(e) for e in identities["images"]],
    }


def content_only(identities: dict) -> dict:
    """The identities without their locations: what the recipe hash covers."""

    def strip(entry: dict) -> dict:
        return {k: v for k, v in entry.items() if k != "location"}

    return {
        "metadata": strip(identities["metadata"]),
        "join": [strip(e) for e in identities["join"]],
        "images": [strip(e) for e in identities["images"]],
    }
