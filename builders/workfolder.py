"""A build's work folder, in one place: where each file lives, what its columns are, and how it is written
(committed atomically, locally or on the build's object store) and read.

``.work/`` holds ``recipe.json``; ``ingest.parquet`` (the rows, one row group per unit) and
``ingest-rejected.parquet``; ``index-*.parquet`` (image sources' indexes); ``units/unit-NNNNNN.arrow`` (each
unit's prepared rows); ``curated/unit-NNNNNN.arrow`` (after the teacher stage); ``fold-rejected.parquet``
(the shard fold's rejections); ``batches/<teacher>/`` (Batch API state).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq

from mp16_reason.atomic import start_writeback
from mp16_reason.schema import SourceLabels
from mp16_reason.storage import Location, location

RECIPE = "recipe.json"
INGEST = "ingest.parquet"
# the input's own labels, which ingest keeps as label_* columns of INGEST for the units' records
LABEL_COLUMNS = tuple(SourceLabels.model_fields)
INGEST_REJECTED = "ingest-rejected.parquet"
FOLD_REJECTED = "fold-rejected.parquet"  # the units' rejections and the duplicates, as the shard fold found them

REJECTION_SCHEMA = pa.schema(
    [("row", pa.int64()), ("id", pa.string()), ("stage", pa.string()), ("reason", pa.string())]
)
# In memory, stage and reason are dictionary-encoded: millions of rows rejected for one reason (dead links, no
# image in any source) then cost a few bytes each; the published rejections.parquet has plain strings.
REJECTION_WORK_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("id", pa.string()),
        ("stage", pa.dictionary(pa.int32(), pa.string())),
        ("reason", pa.dictionary(pa.int32(), pa.string())),
    ]
)
UNIT_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("id", pa.string()),
        ("status", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("split", pa.string()),
        ("sha256", pa.string()),
        ("jpg", pa.binary()),
        ("json", pa.binary()),
        ("tar_bytes", pa.int64()),
        ("split_key", pa.string()),  # what decided the split (the city or the id): split.group_by joins on it
        ("author", pa.string()),
        ("phash", pa.binary()),  # the image's window hashes (builders.audit.hashes)
        ("dhash", pa.binary()),
    ]
)


def tar_member_bytes(*sizes: int) -> int:
    """Bytes the members take in a tar: a 512-byte header each, data padded to 512."""
    return sum(512 + -(-n // 512) * 512 for n in sizes)


def unit_path(work_dir: str | Path | Location, index: int) -> Location:
    return location(work_dir) / "units" / f"unit-{index:06d}.arrow"


def curated_path(work_dir: str | Path | Location, index: int) -> Location:
    """A unit after the teacher stage: its rows' records and answers, pointing at the prepared unit's images."""
    return location(work_dir) / "curated" / f"unit-{index:06d}.arrow"


def write_atomic(table: pa.Table, path: Path | Location, row_group_size: int | None = None, **options) -> None:
    """A parquet file, committed atomically (locally or on the build's object store)."""
    with location(path).commit_path() as tmp:  # a path: Arrow writes it without holding the GIL
        pq.write_table(table, str(tmp), row_group_size=row_group_size, **options)


def write_unit(table: pa.Table, path: Path | Location) -> None:
    """A unit's rows as an uncompressed Arrow IPC file, committed atomically.

    Units are scratch files read back whole, once or twice, by this build: IPC costs a quarter of parquet's
    CPU to write (JPEG bytes do not compress anyway) and is read through a memory map without decoding.
    """
    with location(path).commit_path() as tmp:
        feather.write_feather(table, str(tmp), compression="uncompressed")


class UnitWriter:
    """A unit's rows written as they are ready, a small record batch at a time, into an uncompressed Arrow
    IPC file committed atomically on a clean exit: a worker holds a few images, not its whole unit."""

    def __init__(self, path: Path | Location, batch_rows: int = 32) -> None:
        self.path, self.batch_rows = location(path), batch_rows
        self.local = self.path.local is not None
        self.rows: list[tuple] = []
        self.ok = self.total = 0

    def __enter__(self) -> UnitWriter:
        self._commit = self.path.commit_path()
        self._file = pa.OSFile(str(self._commit.__enter__()), "wb")
        self._writer = pa.ipc.new_file(self._file, UNIT_SCHEMA)
        return self

    def add(self, values: tuple) -> None:
        self.rows.append(values)
        self.total += 1
        self.ok += values[2] == "ok"
        if len(self.rows) >= self.batch_rows:
            self._flush()

    def _flush(self) -> None:
        if self.rows:
            columns = list(zip(*self.rows))
            arrays = [
                _binary(c) if f.type == pa.binary() else pa.array(c, f.type) for c, f in zip(columns, UNIT_SCHEMA)
            ]
            self._writer.write_batch(pa.record_batch(arrays, schema=UNIT_SCHEMA))
            self.rows = []
            if self.local:  # the disk takes the unit as it is written: the commit's fsync,
                start_writeback(self._file.fileno())  # which the worker waits for, has the last batch left

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._flush()
        try:
            self._writer.close()
        finally:
            self._file.close()
        self._commit.__exit__(exc_type, exc, tb)


def _binary(values: tuple[bytes | None, ...]) -> pa.Array:
    """A binary array from bytes (None: null), by one join: ~12x less CPU than ``pa.array`` for images."""
    sizes = np.fromiter((len(v) if v is not None else 0 for v in values), np.int64, len(values))
    offsets = np.zeros(len(values) + 1, np.int32)
    np.cumsum(sizes, out=offsets[1:])
    valid = [v is not None for v in values]
    mask = None if all(valid) else pa.array(valid).buffers()[1]
    data = b"".join(v for v in values if v is not None)
    return pa.Array.from_buffers(
        pa.binary(), len(values), [mask, pa.py_buffer(offsets), pa.py_buffer(data)], null_count=valid.count(False)
    )


def binary_views(column: pa.ChunkedArray) -> list[memoryview]:
    """A binary column's values as views of its buffers (a unit's images: nothing is copied), one a row, null
    rows as empty views: the reading side of :func:`_binary`, far cheaper than a scalar a row
    (``column[k].as_buffer()``)."""
    views: list[memoryview] = []
    for chunk in column.chunks:
        n = len(chunk)
        if not n:
            continue
        offsets = np.frombuffer(chunk.buffers()[1], np.int32)[chunk.offset : chunk.offset + n + 1].tolist()
        data = memoryview(chunk.buffers()[2] or b"")
        views += [data[a:b] for a, b in itertools.pairwise(offsets)]
    return views


def drop_cached(path: Path | Location) -> None:
    """Let the kernel drop a local file's cached pages: a unit read for the last time. Its pages (written and
    fsynced by a worker, so clean) then serve the next writes, where the page cache would otherwise grow by a
    whole build's units before it gives any back. Pages still mapped are kept; on object storage, on a
    platform without ``posix_fadvise`` or when the file is gone this does nothing."""
    local = location(path).local
    if local is None or not hasattr(os, "posix_fadvise"):
        return
    try:
        fd = os.open(local, os.O_RDONLY)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_unit(path: Path | Location, columns: list[str] | None = None) -> pa.Table:
    """A unit file: through a memory map on a local disk, read whole from an object store.

    Columns are picked from the whole table: mapping every column costs nothing, where Arrow's own column
    selection reads the picked ones batch by batch (~15 ms a unit instead of ~1)."""
    path = location(path)
    if path.local is not None:
        table = feather.read_table(str(path.local), memory_map=True)
    else:
        table = feather.read_table(pa.BufferReader(path.read_bytes()))
    return table if columns is None else table.select(columns)
