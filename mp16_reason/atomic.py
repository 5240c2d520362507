"""Crash-safe file writes (a file appears complete under its name, or not at all), and hashing in passing."""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import sys
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


SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writing the range's dirty pages, wait for nothing


@functools.cache
def _sync_file_range():
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # a libc without it
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return call


def start_writeback(fd: int) -> bool:
    """Start writing a file's dirty pages to disk now, without waiting; whether the kernel took the request
    (Linux only; elsewhere, or for what is not a file on a disk, nothing happens and the fsync does it all).

    A file written whole and then fsynced is only then handed to the disk, and the fsync waits for all of it:
    24 files of 36 MB, each fsynced as it was finished, took 1.0-7.8 s here. Called as the bytes are written,
    the disk takes them meanwhile and the fsync waits for the last few: 0.54-0.59 s. It guarantees nothing;
    the fsync still does."""
    call = _sync_file_range()
    return call is not None and call(fd, 0, 0, SYNC_FILE_RANGE_WRITE) == 0  # 0, 0: the whole file


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
