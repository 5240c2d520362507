"""Shards: fold committed units, in input order, into WebDataset tars of equal sample counts.

Ingest sorts the rows into their shuffled order, so units arrive already in shard order and the fold can
decide while later units are still being prepared: a duplicate image is one whose content hash an earlier
row had. Once every unit is in, each split's shards are planned (equal counts, within ``max_bytes``, a
multiple of ``multiple_of``: readers that divide it all get equal shares) and the units are streamed into
them. Everything the fold decides depends on the units alone, so a resumed build makes the same decisions; a
shard already on disk (written whole, then renamed) is kept and not rewritten.

The fold runs in a process of its own (:class:`ShardProcess`), beside the workers that prepare images; once
they are done, on a local disk, forks of it share the writing (:func:`shard_writers`), and each unit's pages
leave the page cache once every writer has read it (:class:`_Forget`), so that the shards are written into
them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import sys
import tarfile
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from builders.plane.firstseen import FirstSeen
from builders.threads import Behind
from builders.workfolder import (
    FOLD_REJECTED,
    REJECTION_WORK_SCHEMA,
    binary_views,
    curated_path,
    drop_cached,
    read_unit,
    unit_path,
    write_atomic,
)
from mp16_reason.atomic import remove_stale, start_writeback
from mp16_reason.manifest import DEFAULT_CONFIG, SHARD_FOLDERS, config_folder
from mp16_reason.storage import Location, location

TAR_MTIME = 0  # fixed member times keep shards byte-identical across runs
TAR_RECORD = 10240  # tarfile pads an archive to whole records of 20 blocks
META = ["row", "id", "status", "stage", "reason", "split", "sha256", "tar_bytes"]


def tar_file_bytes(member_bytes: int) -> int:
    """Size of a tar file whose members take ``member_bytes``: plus two zero blocks, padded to a record."""
    return -(-(member_bytes + 1024) // TAR_RECORD) * TAR_RECORD


def sample_key(sample_id: str) -> str:
    """A dot-free, unique shard key for an id (webdataset splits keys at the first dot)."""
    readable = re.sub(r"[^A-Za-z0-9_-]+", "_", sample_id)[-80:].strip("_") or "sample"
    return f"{readable}_{hashlib.blake2b(sample_id.encode(), digest_size=4).hexdigest()}"


def file_sha256(path: Location) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class TarWriter:
    """WebDataset samples written straight into a tar file: the bytes webdataset's ``TarWriter`` writes for
    them (tarfile's pax format, which is plain ustar headers for short ASCII names; members in extension order,
    mode 0444, a fixed owner and time), for a fraction of the CPU. Its stream mode moves each image through
    10 KB chunks, several copies and calls a chunk; here a member is a header, its data as it is (any buffer:
    an Arrow value is never copied into ``bytes``) and padding.

    Headers differ only in name and size, so each is a copy of one made by ``tarfile`` with those two fields
    and the checksum (the sum of the header's bytes) put in; ``tarfile`` makes the rare one whose name or size
    needs an extended header (its checksum alone, a sum over a tuple of 504 ints, cost ~20 µs a member).
    """

    def __init__(self, fh, owner: str = "mp16", mtime: int = TAR_MTIME) -> None:
        self.fh, self.owner, self.mtime, self.offset = fh, owner, mtime, 0
        self.template = self._tarfile_header("", 0)
        # tarfile's checksum: the header's bytes summed, its own 8 bytes counted as spaces; here without the
        # name (empty, zeros) and size fields, which each header adds
        self.base_sum = 8 * 32 + sum(self.template[:124]) + sum(self.template[136:148]) + sum(self.template[156:])

    def _tarfile_header(self, name: str, size: int) -> bytes:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, self.mtime, 0o444
        info.uname = info.gname = self.owner
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")

    def header(self, name: str, size: int) -> bytes:
        encoded = name.encode("utf-8", "surrogateescape")
        if len(encoded) > 100 or not encoded.isascii() or size >= 8**11:  # pax records needed
            return self._tarfile_header(name, size)
        digits = b"%011o\0" % size
        header = bytearray(self.template)
        header[: len(encoded)] = encoded
        header[124:136] = digits
        checksum = self.base_sum + sum(encoded) + sum(digits)
        header[148:155] = b"%06o\0" % checksum
        return bytes(header)

    def write(self, key: str, members: dict[str, Any]) -> None:
        parts = []
        for ext in sorted(members):
            data = memoryview(members[ext])
            header, pad = self.header(f"{key}.{ext}", data.nbytes), -data.nbytes % tarfile.BLOCKSIZE
            parts += (header, data, tarfile.NUL * pad)
            self.offset += len(header) + data.nbytes + pad
        self.fh.writelines(parts)

    def close(self) -> None:
        """The end: two zero blocks, then zeros to a whole record (as tarfile ends an archive)."""
        size = tar_file_bytes(self.offset)
        self.fh.writelines([tarfile.NUL * (size - self.offset)])
        self.offset = size


class _Later:
    """A file whose bytes are hashed on one :class:`~builders.threads.Behind` thread and written on another,
    each in order. Both let go of the GIL while they work, so they overlap the shard process's own thread.

    Parts are handed over ``batch_bytes`` at a time, not a sample at a time: each hand-over costs two queue
    operations and a thread's wake-up, which at 20,000 a build kept the threads waiting on one another. A local
    file (``local``) has its writeback started after each batch, so that its commit's fsync has little left to
    wait for (:func:`~mp16_reason.atomic.start_writeback`)."""

    def __init__(self, fh, hasher: Behind, behind: Behind, local: bool, batch_bytes: int = 4 << 20) -> None:
        self.fh, self.sha256, self.hasher, self.behind = fh, hashlib.sha256(), hasher, behind
        self.batch_bytes, self.parts, self.pending = batch_bytes, [], 0
        self.fd = fh.fileno() if local else None

    def writelines(self, parts: list) -> None:
        self.parts += parts
        self.pending += sum(memoryview(p).nbytes for p in parts)
        if self.pending >= self.batch_bytes:
            self.flush()

    def flush(self) -> None:
        if self.parts:
            self.hasher(self._hash, self.parts)
            self.behind(self._write, self.parts)
            self.parts, self.pending = [], 0

    def _write(self, parts: list) -> None:
        self.fh.writelines(parts)
        if self.fd is not None:
            start_writeback(self.fd)

    def _hash(self, parts: list) -> None:
        for data in parts:
            self.sha256.update(data)


class _Shard:
    """One shard. Its bytes are hashed on the fold's ``hasher`` thread and written on its ``behind`` thread
    (hashing and writes let go of the GIL), so they overlap each other, the reading of units and the tar
    headers, and it is committed (fsync, rename) on its ``committer`` thread, so the disk's flush overlaps the
    next shard's writing. Its entry is complete once ``hasher`` has caught up, its file once ``behind`` and
    ``committer`` have."""

    def __init__(self, out: Location, path: str, split: str, config: str, threads: _Threads) -> None:
        self.final, self.threads = out / path, threads
        self.entry: dict[str, Any] = {"path": path, "split": split, "samples": 0}
        if config != DEFAULT_CONFIG:
            self.entry["config"] = config
        self.writer = None
        if not self.final.exists():  # else complete from an earlier run: its bytes are already these
            self.file = ExitStack()  # the shard stays open across many units; close() commits it
            fh = self.file.enter_context(self.final.commit())
            self.later = _Later(fh, threads.hasher, threads.behind, self.final.local is not None)
            self.writer = TarWriter(self.later)

    def add(self, key: str, jpg: Any, js: bytes) -> None:
        self.entry["samples"] += 1
        if self.writer is not None:
            self.writer.write(key, {"jpg": jpg, "json": js})

    def close(self) -> dict[str, Any]:
        if self.writer is None:
            self.entry.update(bytes=self.final.size(), sha256=file_sha256(self.final))
            return self.entry
        self.writer.close()
        self.later.flush()
        self.entry["bytes"] = self.writer.offset
        self.threads.hasher(lambda: self.entry.update(sha256=self.later.sha256.hexdigest()))
        # flush, fsync, rename into place (or complete the upload), once every byte is written
        self.threads.behind(self.threads.committer, self.file.close)
        return self.entry


class _Threads:
    """The fold's three writing threads (see :class:`_Shard`)."""

    def __init__(self) -> None:
        # a few batches in flight each: they hold views of the units' mapped files
        self.hasher, self.behind, self.committer = Behind(depth=8), Behind(depth=8), Behind()

    def close(self) -> None:
        """Wait for every hash, write and commit asked for so far."""
        self.hasher.close()
        self.behind.close()
        self.committer.close()


def plan_counts(sizes: np.ndarray, max_bytes: int, multiple_of: int) -> list[int]:
    """Sample counts of one split's shards, in order: equal to within one, as few shards as keep each under
    ``max_bytes``, and a multiple of ``multiple_of`` once the split holds that many samples (so that any
    number of readers dividing it, GPUs x DataLoader workers, gets the same number of shards and samples).

    ``sizes`` are the samples' bytes in a tar, in shard order. A shard may exceed ``max_bytes`` only when one
    sample alone does."""
    n = len(sizes)
    if not n:
        return []
    ends = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
    step = multiple_of if n >= multiple_of > 1 else 1
    k = max(1, -(-tar_file_bytes(int(ends[-1])) // max_bytes))
    k = min(n, -(-k // step) * step)
    while True:
        counts = (n // k + _spread(k, n % k)).tolist()
        bounds = np.concatenate([[0], np.cumsum(counts)])
        biggest = int(np.max(ends[bounds[1:]] - ends[bounds[:-1]]))
        if tar_file_bytes(biggest) <= max_bytes or k == n:
            return counts
        k = min(n, k + step)


BALANCED_READERS = (2, 3, 4)  # reader counts whose shares of a split are kept within one sample


def _spread(k: int, extra: int) -> np.ndarray:
    """Which of ``k`` shards hold one sample more (``extra`` of them, as 0/1): placed so that 2, 3 or 4 readers
    get the same number of samples to within one, whether each takes a contiguous block of shards (as
    ``datasets.distributed.split_dataset_by_node`` does) or every r-th shard (as ``webdataset.split_by_node``
    does). Evenly spaced first; where that leaves a reader two samples behind, a seeded local search moves
    extras until none is (it keeps the best placement found if it cannot reach that)."""
    chosen = np.zeros(k, np.int64)
    if not 0 < extra < k:
        return chosen + (extra == k)
    chosen[(np.arange(extra) * k) // extra] = 1
    readers = [w for w in BALANCED_READERS if k % w == 0 and w < k]
    groups = [np.arange(k) % w for w in readers] + [np.arange(k) * w // k for w in readers]

    def imbalance(x: np.ndarray) -> int:
        return sum(max(0, int(np.ptp(np.bincount(g, weights=x, minlength=g.max() + 1))) - 1) for g in groups)

    best, best_cost = chosen.copy(), imbalance(chosen)
    for restart in range(20):
        if not best_cost:
            break
        rng = np.random.default_rng([k, extra, restart])
        x = best.copy() if restart == 0 else rng.permutation(best)
        cost = imbalance(x)
        for _ in range(3000):
            i, j = rng.choice(np.flatnonzero(x == 1)), rng.choice(np.flatnonzero(x == 0))
            x[i], x[j] = 0, 1
            moved = imbalance(x)
            if moved <= cost:
                cost = moved
                if not cost:
                    break
            else:
                x[i], x[j] = 1, 0
        if cost < best_cost:
            best, best_cost = x.copy(), cost
    return best


HASH_COLUMNS = ["split", "sha256", "author", "phash", "dhash"]
HASHES = "hashes.parquet"
HASHES_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("split", pa.string()),
        ("sha256", pa.string()),
        ("author", pa.string()),
        ("phash", pa.binary()),
        ("dhash", pa.binary()),
    ]
)


def local_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and ``taskset`` narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def shard_writers(n_shards: int, workers: int) -> int:
    """How many processes write the shards at a build's end: one per worker the build ran, as far as this
    machine has the cores (a Ray build's workers may be elsewhere), at least two (as on two cores, where two
    took 0.75-0.85 s for what took one 1.3-1.4 s), and never more than there are shards. At MP16-Pro's size
    the shards are ~400 GB written and hashed after the last unit, ~0.5 GB/s a writer: two writers would leave
    every other core idle for minutes."""
    return max(1, min(n_shards, max(2, min(workers, local_cores()))))


def with_split(js: bytes, split: str) -> bytes:
    """A record's JSON with its split set (split.group_by may move a sample); unchanged when it is already."""
    from mp16_reason.schema import from_json_bytes, to_json_bytes

    sample = from_json_bytes(js)
    return js if sample.split == split else to_json_bytes(sample.model_copy(update={"split": split}))


HASH_ROWS = 1 << 14  # samples a row group of hashes.parquet: ~4 MB held at most


class HashesWriter:
    """``hashes.parquet``: every published sample's id, split, sha256, author and window hashes, what
    ``mp16-reason audit`` reads instead of the images. Written as the shard pass goes, a row group every
    :data:`HASH_ROWS` samples, and committed by :meth:`close` (:meth:`abort` leaves nothing): holding them all until
    the end took ~0.26 KB a sample in Arrow tables, 1.2 GB at MP16-Pro's size."""

    def __init__(self, out: Location) -> None:
        self._stack = ExitStack()
        path = self._stack.enter_context((out / HASHES).commit_path())
        self._writer = self._stack.enter_context(pq.ParquetWriter(str(path), HASHES_SCHEMA))
        self._parts, self._held = [], 0

    def append(self, table: pa.Table) -> None:
        self._parts.append(table.cast(HASHES_SCHEMA))
        self._held += table.num_rows
        if self._held >= HASH_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._parts:
            self._writer.write_table(pa.concat_tables(self._parts), row_group_size=HASH_ROWS)
            self._parts, self._held = [], 0

    def close(self) -> None:
        self._flush()
        self._stack.close()  # the writer's footer, then the commit

    def abort(self) -> None:
        """Close without committing (called while an error is handled): the temporary goes."""
        self._stack.__exit__(*sys.exc_info())


class ShardFold:
    """Takes units in order (:meth:`add`); :meth:`finish` writes the shards, writes the rejection records found
    in the units (dedup included) to ``FOLD_REJECTED`` in the work folder, and returns one manifest entry per
    shard. Rejections stay Arrow columns all the way: millions of dead links cost what their parquet does.

    Two passes. While units arrive, only their small columns are read: which rows are kept (duplicates are
    decided here, in input order), in which config and split, and their size. :meth:`finish` then knows each
    split's samples and plans its shards (:func:`plan_counts`: equal counts within ``max_bytes``), and streams
    the units once more, in order, into them. A shard already on disk (written whole, then renamed) is kept.

    Rows of the default config reconcile with the input (each is written or rejected); rows of another config
    (the localizability one) are a second view of the same images.
    """

    def __init__(
        self,
        out: str | Path | Location,
        work: str | Path | Location,
        max_bytes: int,
        curated: bool,
        multiple_of: int = 24,
        workers: int = 2,
    ) -> None:
        self.out, self.work, self.max_bytes, self.curated = location(out), location(work), max_bytes, curated
        self.multiple_of, self.workers = multiple_of, workers
        self.rejected: list[pa.Table] = []
        self.duplicates: list[dict] = []
        # config -> every image taken, by its SHA-256, and the id that had it first: the fold's one record of
        # every sample, ~36 bytes a sample and its id
        self.seen: dict[str, FirstSeen] = {}
        # (config, split) -> per unit, (unit, the kept rows' positions in it, their sizes)
        self.kept: dict[tuple[str, str], list[tuple[int, np.ndarray, np.ndarray]]] = {}
        self.units: list[int] = []
        from builders.plane.groups import read_groups

        self.groups = read_groups(self.work)  # row -> split, with split.group_by
        for name in SHARD_FOLDERS:  # half-written shards of a stopped run
            folder = (self.out / name).local
            if folder is not None and folder.is_dir():
                remove_stale(folder)

    def forget(self, unit: int) -> None:
        """Drop a unit's cached pages: the fold has read it for the last time."""
        drop_cached(unit_path(self.work, unit))
        if self.curated:
            drop_cached(curated_path(self.work, unit))

    def _rows(self, unit: int, columns: list[str]) -> pa.Table:
        if self.curated:
            return read_unit(curated_path(self.work, unit), columns)
        return read_unit(unit_path(self.work, unit), [c for c in columns if c not in ("pos", "config")])

    def add(self, unit: int) -> int:
        """Take in one unit's small columns; returns its number of input rows (rows of the default config)."""
        final = self._rows(unit, [*META, "config"])
        configs = final.column("config").to_pylist() if self.curated else [DEFAULT_CONFIG] * final.num_rows
        ok = pc.equal(final.column("status"), "ok")
        if not pc.all(ok).as_py():
            self.rejected.append(final.filter(pc.invert(ok)).select(["row", "id", "stage", "reason"]))
        keep = ok.to_numpy(zero_copy_only=False)
        row_numbers, ids, splits, shas, tar_bytes = (
            final.column(c).to_pylist() for c in ("row", "id", "split", "sha256", "tar_bytes")
        )
        by_config: dict[str, list[int]] = {}
        for k in np.flatnonzero(keep).tolist():
            by_config.setdefault(configs[k], []).append(k)
        picked: dict[tuple[str, str], list[tuple[int, int]]] = {}
        for config, taken in by_config.items():
            seen = self.seen.get(config)
            if seen is None:
                seen = self.seen[config] = FirstSeen()
            firsts = seen.take([bytes.fromhex(shas[k]) for k in taken], [ids[k] for k in taken])
            for k, first in zip(taken, firsts):
                if first is not None:
                    if config == DEFAULT_CONFIG:  # a duplicate is recorded once, under the default config
                        reason = f"exact duplicate image of id {first!r}"
                        self.duplicates.append(
                            {"row": row_numbers[k], "id": ids[k], "stage": "dedup", "reason": reason}
                        )
                    continue
                split = self.groups[row_numbers[k]] if self.groups is not None else splits[k]
                picked.setdefault((config, split), []).append((k, tar_bytes[k]))
        for group, rows in picked.items():
            at, sizes = zip(*rows)
            self.kept.setdefault(group, []).append((unit, np.array(at, np.int32), np.array(sizes, np.int64)))
        self.units.append(unit)
        return configs.count(DEFAULT_CONFIG)

    def finish(self, progress=None, parts: int | None = None) -> list[dict]:
        """Plan every split's shards and write them, one pass over the units; ``progress`` (a callable) is told
        how many samples were written as it goes.

        On a local disk (Linux) the shards are written by :func:`shard_writers` processes, this one and forks
        of it, part ``p`` of ``parts`` taking the shards numbered ``p`` modulo ``parts`` in each split
        (``parts=1`` writes them all here). This last stretch is the build's alone (the workers are done), and
        in one process its hashing, tar headers and writes take the GIL in turn: 10,000 MP-16-shaped photos
        (850 MB) took 1.3-1.4 s in one, 0.75-0.85 s in two. On object storage the one process writes them all
        (a fork would share its connections)."""
        plans = {
            group: plan_counts(np.concatenate([s for _, _, s in kept]), self.max_bytes, self.multiple_of)
            for group, kept in self.kept.items()
        }
        if parts is None:  # a fork without exec: Linux only (macOS's system libraries are not safe to fork)
            forks = sys.platform.startswith("linux") and self.out.local is not None
            parts = shard_writers(sum(map(len, plans.values())), self.workers) if forks else 1
        helpers: list[_Helper] = []
        for part in range(1, parts):
            helpers.append(_Helper(self, plans, part, parts, tuple(helpers)))
        forget = _Forget(self, helpers)
        hashes: HashesWriter | None = None

        def told(n: int) -> None:
            for helper in helpers:
                helper.poll(progress)
            if progress is not None:
                progress(n)

        try:
            hashes = HashesWriter(self.out)
            entries = self._write(plans, 0, parts, told, hashes, forget.passed)
            entries += _results(helpers, progress)
        except BaseException:
            for helper in helpers:  # no writer outlives the fold; its half-written shard goes at the next run
                helper.stop()
            if hashes is not None:
                hashes.abort()
            raise
        hashes.close()
        tables = [t.cast(REJECTION_WORK_SCHEMA) for t in self.rejected]
        tables.append(pa.Table.from_pylist(self.duplicates, schema=REJECTION_WORK_SCHEMA))
        write_atomic(pa.concat_tables(tables), self.work / FOLD_REJECTED)
        return sorted(entries, key=lambda e: e["path"])

    def _write(
        self,
        plans: dict,
        part: int,
        parts: int,
        progress,
        hashes: HashesWriter | None,
        passed: Callable[[int], None] | None = None,
    ) -> list[dict]:
        """Write the shards whose number within their split is ``part`` modulo ``parts``, streaming the units
        once, in order; with ``hashes``, also collect every published sample's hashes there."""
        self.threads = _Threads()
        writers = {group: _GroupWriter(self, group) for group in plans}
        ends = {group: np.cumsum(counts) for group, counts in plans.items()}  # each shard's last sample, + 1
        by_unit: dict[int, list[tuple[tuple[str, str], np.ndarray]]] = {}
        for group, group_parts in self.kept.items():
            for unit, at, _ in group_parts:
                by_unit.setdefault(unit, []).append((group, at))
        try:
            entries = self._write_units(by_unit, ends, part, parts, progress, writers, hashes, passed)
        finally:
            self.threads.close()  # every shard hashed, written and committed (or, on an error, what was asked)
        return entries

    def _write_units(
        self, by_unit: dict, ends: dict, part: int, parts: int, progress, writers: dict, hashes, passed
    ) -> list:
        """The pass over the units of :meth:`_write`; returns the entries of the shards written. ``passed`` is
        told each unit's position in the pass once its samples are handed to the writing threads."""
        met = dict.fromkeys(ends, 0)  # samples of each group before this unit
        for i, unit in enumerate(self.units):
            chosen = []
            for group, at in by_unit.get(unit, []):
                shard = np.searchsorted(ends[group], np.arange(met[group], met[group] + len(at)), side="right")
                met[group] += len(at)
                mine = shard % parts == part
                chosen.append((group, at, at[mine].tolist(), shard[mine].tolist()))
            # nothing kept here, or nothing for this writer (the hashes are the first writer's): skipped
            if chosen and (hashes is not None or any(ks for _, _, ks, _ in chosen)):
                self._write_unit(unit, chosen, progress, writers, hashes)
            if passed is not None:
                passed(i)
        return [e for w in writers.values() for e in w.close()]

    def _write_unit(self, unit: int, chosen: list, progress, writers: dict, hashes) -> None:
        """One unit's samples into the shards ``chosen`` for them (and its hashes, with ``hashes``)."""
        columns = ["row", "id", "json", *HASH_COLUMNS]
        final = self._rows(unit, [*columns, "pos"] if self.curated else [*columns, "jpg"])
        jpgs = read_unit(unit_path(self.work, unit), ["jpg"]).column("jpg") if self.curated else final["jpg"]
        image_of = final.column("pos").to_pylist() if self.curated else None
        images = binary_views(jpgs)
        ids, jsons = final.column("id").to_pylist(), final.column("json").to_pylist()
        for group, at, ks, shards in chosen:
            split = group[1]
            for k, shard in zip(ks, shards):
                jpg = images[image_of[k] if image_of is not None else k]
                js = jsons[k]
                if self.groups is not None:
                    js = with_split(js, split)
                writers[group].add(shard, ids[k], jpg, js)
            if hashes is not None and group[0] == DEFAULT_CONFIG:
                taken = final.select(["id", *HASH_COLUMNS]).take(pa.array(at))
                if self.groups is not None:
                    taken = taken.set_column(1, "split", pa.array([split] * len(at), pa.string()))
                hashes.append(taken)
            if progress is not None:
                progress(len(ks))


UNITS_IN_FLIGHT = 2  # units behind a writer whose images its threads may still be writing


class _Forget:
    """Drops each unit's cached pages (:func:`~builders.workfolder.drop_cached`) once every writer has passed
    it: read for the last time, its pages then hold the shards' bytes. Without this the page cache grows by a
    build's units and then by its shards too, and fresh pages are dear in a virtual machine that hands freed
    memory back to its host (~3 ms of CPU a MB written into them, against ~0.35 ms into pages just freed:
    benchmarks/README.md). A unit goes ``UNITS_IN_FLIGHT`` units behind the slowest writer: the kernel keeps
    pages still mapped, and a writer's threads may still hold views of the last few units."""

    def __init__(self, fold: ShardFold, helpers: list[_Helper]) -> None:
        self.fold, self.helpers, self.at, self.next = fold, helpers, -1, 0
        for helper in helpers:
            helper.moved = self.check

    def passed(self, position: int) -> None:
        """This process has handed the unit at ``position`` (in the pass) to its threads."""
        self.at = position
        self.check()

    def check(self) -> None:
        behind = min([self.at, *(h.at for h in self.helpers)]) - UNITS_IN_FLIGHT
        while self.next <= behind:
            self.fold.forget(self.fold.units[self.next])
            self.next += 1


class _Helper:
    """A fork of the shard process that writes part ``part`` of ``parts`` of the shards (:meth:`ShardFold._write`)
    and sends back its progress and entries. It stops with an error at its next unit if this process is gone
    (its pipe is broken), so it never outlives a killed build by more than a unit. ``earlier`` are the helpers
    forked before it, whose pipes' reading ends it closes: a pipe breaks only once no reader holds it."""

    def __init__(self, fold: ShardFold, plans: dict, part: int, parts: int, earlier: Sequence[_Helper] = ()) -> None:
        import multiprocessing.connection as mpc

        self.conn, child = mpc.Pipe(duplex=False)
        self.pid = os.fork()
        if self.pid == 0:  # the child: write, report, exit without running this process's cleanup
            self.conn.close()
            for helper in earlier:
                helper.conn.close()
            code = 0
            try:
                written, passed = (lambda n: child.send(("written", n))), (lambda i: child.send(("at", i)))
                entries = fold._write(plans, part, parts, written, None, passed)
                child.send(("done", entries))
            except BaseException as exc:  # reported to the parent, which raises it
                code = 1
                with contextlib.suppress(Exception):
                    child.send(("error", f"{type(exc).__name__}: {exc}"))
            finally:
                os._exit(code)
        child.close()
        self.name = f"shard writer {part + 1} of {parts}"
        self.entries: list[dict] | None = None
        self.reaped = False
        self.at = -1  # the last unit (its position in the pass) the helper has handed to its threads
        self.moved: Callable[[], None] | None = None  # told when ``at`` changes

    def poll(self, progress) -> None:
        """Pass on the progress reported so far (does not wait)."""
        while self.entries is None and self.conn.poll():
            self._receive(progress)

    def take(self, progress) -> bool:
        """Receive the helper's next message (waiting for it) unless its entries are in (:meth:`poll` may have
        taken them); True once they are, and it is reaped."""
        if self.entries is None:
            self._receive(progress)
        if self.entries is None:
            return False
        self._reap()
        return True

    def stop(self) -> None:
        """End the helper now (if it has not ended) and reap it."""
        if not self.reaped:  # a reaped pid may already be another process's
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        if not self.reaped:
            os.waitpid(self.pid, 0)
            self.reaped = True
        self.conn.close()

    def _receive(self, progress) -> None:
        try:
            kind, payload = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"{self.name} died") from None
        if kind == "error":
            raise RuntimeError(f"{self.name} failed: {payload}")
        if kind == "done":
            self.entries = payload
        elif kind == "at":
            self.at = payload
            if self.moved is not None:
                self.moved()
        elif progress is not None:
            progress(payload)


def _results(helpers: list[_Helper], progress) -> list[dict]:
    """Every helper's entries, each message taken as it comes: waiting on one helper while another's pipe
    filled up with progress would hold that one up."""
    import multiprocessing.connection as mpc

    entries: list[dict] = []
    waiting = {helper.conn: helper for helper in helpers}
    while waiting:
        # a helper that has sent its entries has exited: its pipe is at its end, so ready too
        for conn in mpc.wait(list(waiting)):
            helper = waiting[conn]
            if helper.take(progress):
                del waiting[conn]
                entries += helper.entries
    return entries


class _GroupWriter:
    """One config and split's shards, filled in order; a writer of one part of them skips the others'."""

    def __init__(self, fold: ShardFold, group: tuple[str, str]) -> None:
        self.fold = fold
        self.config, self.split = group
        self.folder = config_folder(self.config)
        self.index = -1
        self.shard: _Shard | None = None
        self.entries: list[dict] = []

    def add(self, index: int, sample_id: str, jpg: Any, js: bytes) -> None:
        """Add a sample to shard ``index`` (in order: a later shard's first sample closes the one before)."""
        if index != self.index:
            if self.shard is not None:
                self.entries.append(self.shard.close())
            path = f"{self.folder}/{self.split}-{index:06d}.tar"
            (self.fold.out / self.folder).mkdir()
            fold = self.fold
            self.shard = _Shard(fold.out, path, self.split, self.config, fold.threads)
            self.index = index
        self.shard.add(sample_key(sample_id), jpg, js)

    def close(self) -> list[dict]:
        if self.shard is not None:
            self.entries.append(self.shard.close())
            self.shard = None
        return self.entries


def _shard_process_main(
    todo, results, out: str, work: str, max_bytes: int, multiple_of: int, curated: bool, workers: int, env: dict
) -> None:
    """The shard process: fold each unit index it is sent (None ends), reporting rows as it goes, then write
    the shards, reporting samples. It holds only the reading end of ``todo``, so if the build is killed the
    next read fails and it exits."""
    from builders.plane.distributor import take_environment

    take_environment(env)
    unit = None

    def next_unit() -> int | None:
        try:
            return todo.recv()
        except EOFError:  # the build is gone; its half-written shards are removed by the next run
            raise SystemExit(0) from None

    try:
        fold = ShardFold(out, work, max_bytes, curated, multiple_of, workers)
        while (unit := next_unit()) is not None:
            results.send(("rows", fold.add(unit)))
        unit = None
        results.send(("done", fold.finish(progress=lambda n: results.send(("written", n)))))
    except Exception as exc:
        where = "" if unit is None else f" at unit {unit} ({unit_path(work, unit).relative_to(location(out))})"
        fix = "" if unit is None else ". If a rerun fails the same way, delete that unit's files to redo it"
        results.send(("error", f"writing shards failed{where}: {type(exc).__name__}: {str(exc).rstrip('.')}{fix}"))
    finally:
        results.close()


class ShardProcessError(RuntimeError):
    pass


class ShardProcess:
    """A :class:`ShardFold` in a child process. ``add(unit)`` sends it a committed unit (in order), ``rows()``
    says how many rows it has folded since the last call, and ``finish()`` waits for the fold's result.
    Leaving the ``with`` block on an error stops the child; its half-written shard is removed on the next run.
    """

    def __init__(
        self, out: Location, work: Location, max_bytes: int, multiple_of: int, workers: int, curated: bool
    ) -> None:
        from builders.plane.distributor import process_context

        ctx = process_context()
        env = dict(os.environ)
        child_todo, self._todo = ctx.Pipe(duplex=False)
        self._results, child_results = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(
            target=_shard_process_main,
            args=(child_todo, child_results, str(out), str(work), max_bytes, multiple_of, curated, workers, env),
            name="mp16-reason-shards",
            daemon=True,
        )
        self._proc.start()
        child_todo.close()
        child_results.close()
        self._done: list[dict] | None = None

    def __enter__(self) -> ShardProcess:
        return self

    def __exit__(self, *exc) -> None:
        if self._proc.is_alive():
            self._proc.terminate()
        self._proc.join()
        self._todo.close()
        self._results.close()

    def add(self, unit: int) -> int:
        """Send a committed unit; returns the rows folded since the last call. Reading as we send keeps
        either pipe from filling while the other side waits on it."""
        self._send(unit)
        return self.rows()

    def rows(self) -> int:
        """Rows folded since the last call (does not wait)."""
        n = 0
        while self._done is None and self._results.poll():
            n += self._receive()[1]
        return n

    def finish(self, rows: Any = None, written: Any = None) -> list[dict]:
        """Wait for the fold to take in every unit sent and to write the shards (tqdm bars: ``rows`` counts the
        rows folded, ``written`` the samples written); returns the shard entries (the rejections are in
        ``FOLD_REJECTED``)."""
        self._send(None)
        while self._done is None:
            kind, n = self._receive()
            bar = rows if kind == "rows" else written if kind == "written" else None
            if bar is not None:
                bar.update(n)
        return self._done

    def _send(self, unit: int | None) -> None:
        try:
            self._todo.send(unit)
        except BrokenPipeError:
            self._proc.join(5)
            raise ShardProcessError(f"the shard process died (exit code {self._proc.exitcode})") from None

    def _receive(self) -> tuple[str, int]:
        """Wait for the child's next message: ``("rows" | "written", count)``, or ("done", 0)."""
        try:
            kind, *payload = self._results.recv()
        except EOFError:
            raise ShardProcessError(f"the shard process died (exit code {self._proc.exitcode})") from None
        if kind == "error":
            raise ShardProcessError(payload[0])
        if kind == "done":
            self._done = payload[0]
            return kind, 0
        return kind, payload[0]
