"""Crash-safe file writes (a file appears complete under its name, or not at all), and hashing in passing."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A hidden temporary path beside ``path`` for a writer that opens files itself (pyarrow's native I/O);
    on success it is fsynced and renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The pid makes it this process's own: one left behind by a killed run never renames another's file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Write to a hidden temporary beside ``path``; fsync and rename it into place only on success."""
    with atomic_path(path) as tmp, open(tmp, mode) as fh:
        yield fh
        fh.flush()


def remove_stale(folder: str | Path) -> None:
    """Delete the temporaries that a killed run left in ``folder`` (their files are redone, never resumed)."""
    for stale in Path(folder).glob(".*.tmp"):
        stale.unlink(missing_ok=True)


class HashingFile:
    """A file wrapper that hashes and counts the bytes read or written through it: a file is hashed in the
    same pass that writes or checks it, never read back for that alone."""

    def __init__(self, fh) -> None:
        self.fh, self.sha256, self.size = fh, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.sha256.update(data)
        self.size += len(data)
        return data

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.fh.write(data)

    def writelines(self, parts) -> None:
        for data in parts:
            self.write(data)
