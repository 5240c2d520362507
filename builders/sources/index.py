"""Source indexes: built once per build (in the main process), kept in the work folder, joined onto the rows."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from builders.sources.base import Source
from mp16_reason.storage import location


def index_path(source: Source, work_dir):
    """Where the source's index is kept: named by the file's location, size and time, so a moved or changed
    archive is indexed again, never mistaken for another."""
    where = location(source.location)
    name = where.url if where.remote else os.path.abspath(where.url)
    key = hashlib.sha1(f"{name}|{where.stamp()}".encode()).hexdigest()
    return location(work_dir) / f"index-{source.kind}-{key[:16]}.parquet"


def load_index(source: Source, work_dir) -> pa.Table:
    """The source's index, built on first use and kept in the work folder (resumed builds reuse it)."""
    path = index_path(source, work_dir)
    if not path.exists():
        table = source.build_index()
        table = table.filter(pc.invert(pc.is_null(table.column("name")))).filter(pc.not_equal(table.column("name"), ""))
        with path.commit_path() as tmp:
            pq.write_table(table, str(tmp))
    with path.open() as fh:
        return pq.read_table(fh)


def join_sources(refs: pa.Array, ids: pa.Array, sources: list[Source], work_dir: Path) -> dict[str, pa.Array]:
    """For each indexed source, the columns that say where each row's image sits in it (null: not there).

    Rows are looked up by their image reference (the image column, or the id with ``input.image_suffix``), and
    where that is not listed, by their bare id. In an archive, a member is also known by its name inside the
    folders all members share (``photos/2024/9e/13/1.jpg`` serves ``9e/13/1.jpg``), and by its file name alone
    when no other member has that file name (``photos/1.jpg`` serves ``9e/13/1.jpg``). A name listed twice in
    one source counts once (its first entry)."""
    columns: dict[str, pa.Array] = {}
    same = pc.all(pc.equal(refs, ids)).as_py() is not False
    for source in sources:
        if not source.indexed:
            continue
        index = load_index(source, work_dir)
        names = index.column("name").combine_chunks()
        # A set lookup, not a join: a hash table of the names only (first occurrence wins), a fraction of a
        # join's memory at millions of members, and the rows keep their order.
        where = pc.index_in(refs, value_set=names)
        if not same:
            where = pc.coalesce(where, pc.index_in(ids, value_set=names))
        if source.by_file_name and where.null_count and (prefix := _common_folder(names)):
            inside = pc.utf8_slice_codeunits(names, len(prefix))
            where = pc.coalesce(where, pc.index_in(refs, value_set=inside))
        if source.by_file_name and where.null_count:
            where = pc.coalesce(where, _by_file_name(refs, names))
        for field in source.fields:
            columns[source.column(field)] = index.column(field).take(where).combine_chunks()
        del names
    return columns


def _by_file_name(refs: pa.Array, names: pa.Array) -> pa.Array:
    """For each ref, the member whose file name (the part after the last ``/``) is the ref's own, when exactly
    one member has that file name; else null."""
    base = pc.replace_substring_regex(names, r"^.*/", "")
    counts = base.value_counts()
    unique = counts.field("values").filter(pc.equal(counts.field("counts"), 1))
    position = pc.index_in(base, value_set=unique)  # each name's rank among the unique file names, or null
    valid = pc.is_valid(position).to_numpy(zero_copy_only=False)
    member = np.empty(len(unique), dtype=np.int64)  # unique file name -> its member's position
    member[pc.drop_null(position).to_numpy()] = np.flatnonzero(valid)
    found = pc.index_in(pc.replace_substring_regex(refs, r"^.*/", ""), value_set=unique)
    return pa.array(member).take(found)


def _common_folder(names: pa.Array) -> str:
    """The folder every member sits under (``a/b/`` for ``a/b/x.jpg`` and ``a/b/c/y.jpg``), or ""."""
    if not len(names):
        return ""
    parts = names[0].as_py().split("/")[:-1]
    while parts:
        prefix = "/".join(parts) + "/"
        if pc.all(pc.starts_with(names, prefix)).as_py():
            return prefix
        parts.pop()
    return ""


def missing_reason(sources: list[Source]) -> str:
    return "no image in any source (tried: " + ", ".join(s.label for s in sources) + ")"


def indexed_identity(source: Source, work_dir) -> dict:
    """An indexed source by content: its index's member count and hash."""
    from builders.sources.identity import index_identity

    index = load_index(source, work_dir)
    return {"members": index.num_rows, "index_sha256": index_identity(index)}
