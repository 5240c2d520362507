"""The content identity of one input: a file by size and sha256, an index (archive members, URL list) by the
sha256 of its columns, a folder by the sha256 of its listing. :mod:`builders.plane.identity` puts them together
for the recipe hash and the manifest."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa

from builders.stops import BuildWarning
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


# What a folder of images holds beside them and no metadata row means: hidden and system files (.DS_Store, macOS's
# ._* twins, Thumbs.db), notes, the metadata CSV itself. They appear and vanish (a Finder window, a copy) and must
# not make a resume "a different recipe".
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jxl", ""}
)
SYSTEM_FILES = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r"})


def used(name: str) -> bool:
    """Whether a file of an image folder can be an image a row names (and so counts in the folder's identity)."""
    parts = name.replace("\\", "/").split("/")
    if any(p.startswith(".") or p == "__MACOSX" for p in parts) or parts[-1].lower() in SYSTEM_FILES:
        return False
    return PurePosixPath(parts[-1].lower()).suffix in IMAGE_SUFFIXES


def folder_identity(root: str | Path) -> dict:
    """The folder by the names and sizes of the images it holds (see :func:`used`); special files (FIFOs,
    sockets, devices) are skipped, with a warning that counts them."""
    special: list[str] = []
    entries = sorted(e for e in location(root).walk_files(special) if used(e[0]))
    if special:
        warnings.warn(
            f"image folder {root}: skipped {len(special):,} special file(s) (a FIFO, socket or device), e.g. "
            f"{special[0]}; a row naming one is rejected",
            BuildWarning,
            stacklevel=2,
        )
    # surrogateescape: a file name that is not UTF-8 (an old camera's, a Windows copy) is hashed as its bytes
    listing = "\n".join(f"{name}\t{size}" for name, size in entries).encode("utf-8", "surrogateescape")
    return {"files": len(entries), "listing_sha256": hashlib.sha256(listing).hexdigest()}
