"""``split.group_by``: whole groups of photos in one split, so that no test photo has a near twin, or a photo of
the same author, in train.

After every unit is prepared, the samples are joined into groups: those sharing a split key (the city, with
``hold_out_cities``), and, as ``group_by`` asks, those that are near duplicates of one another (the window
hashes of :mod:`builders.audit.search`, or the same bytes) and those of the same author. A group's split is
the one its smallest split key draws (:func:`builders.plane.split.split_of`), so it depends on the inputs alone:
not on the order of rows, units or workers. ``.work/groups.parquet`` holds each sample's row and split; the
shard writer puts every sample in its group's split and writes the split into its record.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from builders.audit.hashes import N_WINDOWS
from builders.plane.split import split_of
from builders.recipe import Recipe
from builders.workfolder import read_unit, unit_path, write_atomic
from mp16_reason.storage import Location

GROUPS = "groups.parquet"
GROUP_SCHEMA = pa.schema([("row", pa.int64()), ("split", pa.string()), ("group_size", pa.int64())])


def _edges_of_key(keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each member of a key's group linked to the group's first member (empty keys join nothing)."""
    first: dict[str, int] = {}
    a, b = [], []
    for i, k in enumerate(keys):
        if not k:
            continue
        j = first.setdefault(k, i)
        if j != i:
            a.append(j)
            b.append(i)
    return np.array(a, np.int64), np.array(b, np.int64)


def regroup(recipe: Recipe, work: Location, n_units: int, progress: bool = True, log=print) -> dict[str, int]:
    """Write ``groups.parquet`` for the prepared units; returns counts for the build's summary."""
    from builders.audit import search

    columns = ["row", "status", "split_key", "author", "sha256", "phash", "dhash"]
    table = pa.concat_tables([read_unit(unit_path(work, i), columns) for i in range(n_units)])
    table = table.filter(pc.equal(table.column("status"), "ok"))
    rows = table.column("row").to_numpy()
    keys = table.column("split_key").to_pylist()
    n = len(rows)
    edges = [_edges_of_key(keys)]
    by = recipe.split.group_by
    if "author" in by:
        edges.append(_edges_of_key([a or "" for a in table.column("author").to_pylist()]))
    near = 0
    if "near_duplicate" in by:
        edges.append(_edges_of_key(table.column("sha256").to_pylist()))
        blob = b"".join(table.column("phash").to_pylist())
        phash = np.frombuffer(blob, ">u8").astype(np.uint64).reshape(n, N_WINDOWS)
        dhash = np.frombuffer(b"".join(table.column("dhash").to_pylist()), ">u8").astype(np.uint64)
        found = search.within(
            phash, dhash.reshape(n, N_WINDOWS), recipe.audit.max_phash, recipe.audit.max_dhash, progress=progress
        )
        edges.append((found.a, found.b))
        near = len(found)
    a = np.concatenate([e[0] for e in edges]) if n else np.empty(0, np.int64)
    b = np.concatenate([e[1] for e in edges]) if n else np.empty(0, np.int64)
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    n_groups, label = connected_components(graph, directed=False)
    # The group's split is drawn from its smallest key: the same whatever the order of the rows.
    smallest: dict[int, str] = {}
    for g, k in zip(label.tolist(), keys):
        smallest[g] = min(smallest.get(g, k), k)
    sizes = np.bincount(label, minlength=n_groups)
    s = recipe.split
    split = [split_of(smallest[g], s.test_fraction, s.seed) for g in label.tolist()]
    write_atomic(
        pa.table({"row": rows, "split": split, "group_size": sizes[label]}, schema=GROUP_SCHEMA), work / GROUPS
    )
    joined = int((sizes > 1).sum())
    if progress:
        log(
            f"split.group_by {list(by)}: {n:,} samples in {n_groups:,} groups ({joined:,} of several; "
            f"{near:,} near-duplicate pairs)"
        )
    return {"samples": n, "groups": int(n_groups), "joined_groups": joined, "near_pairs": near}


def read_groups(work: Location) -> dict[int, str] | None:
    """row -> split, when ``split.group_by`` regrouped this build."""
    import pyarrow.parquet as pq

    path = work / GROUPS
    if not path.exists():
        return None
    with path.open() as fh:
        t = pq.read_table(fh, columns=["row", "split"])
    return dict(zip(t.column("row").to_pylist(), t.column("split").to_pylist()))
