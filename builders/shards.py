"""Shards: fold committed units, in input order, into size-bounded WebDataset tars.

Ingest sorts the rows into their shuffled order, so units arrive already in shard order and the fold can run
while later units are still being prepared: a duplicate image is one whose content hash an earlier row had,
and a shard is closed as soon as its next sample would not fit. Everything the fold decides depends on the
units alone, so a resumed build makes the same decisions; a shard already on disk (written whole, then
renamed) is kept and not rewritten.

The fold runs in a process of its own (:class:`ShardProcess`), beside the workers that prepare images.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from mp16_reason.atomic import HashingFile, remove_stale
from mp16_reason.hub import DEFAULT_CONFIG
from mp16_reason.storage import Location, location

from .units import REJECTION_WORK_SCHEMA, curated_path, read_unit, unit_path, write_atomic

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


def import_webdataset() -> Any:
    """webdataset, without torch unless this process already has it.

    webdataset imports torch, when it is installed, only to base its loader classes on torch's (2-3 s of CPU
    and ~300 MB); its TarWriter never uses them. Only the shard process calls this, and it only writes tars.
    """
    if "webdataset" in sys.modules or "torch" in sys.modules:
        import webdataset

        return webdataset
    sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` raises ModuleNotFoundError
    try:
        import webdataset
    finally:
        del sys.modules["torch"]
    return webdataset


class _Shard:
    def __init__(self, out: Location, path: str, split: str, config: str, wds: Any) -> None:
        self.final = out / path
        self.entry: dict[str, Any] = {"path": path, "split": split, "samples": 0}
        if config != DEFAULT_CONFIG:
            self.entry["config"] = config
        self.fill = 0
        self.writer = None
        if not self.final.exists():  # else complete from an earlier run: its bytes are already these
            self.file = ExitStack()  # the shard stays open across many units; close() commits it
            self.hashed = HashingFile(self.file.enter_context(self.final.commit()))
            self.writer = wds.TarWriter(self.hashed, user="mp16", group="mp16", mtime=TAR_MTIME)

    def add(self, key: str, jpg: Any, js: bytes, tar_bytes: int) -> None:
        self.entry["samples"] += 1
        self.fill += tar_bytes
        if self.writer is not None:
            self.writer.write({"__key__": key, "jpg": jpg, "json": js})

    def close(self) -> dict[str, Any]:
        if self.writer is None:
            self.entry.update(bytes=self.final.size(), sha256=file_sha256(self.final))
            return self.entry
        self.writer.close()
        self.file.close()  # flush, fsync, rename into place (or complete the upload)
        self.entry.update(bytes=self.hashed.size, sha256=self.hashed.sha256.hexdigest())
        return self.entry


FOLD_REJECTED = "fold-rejected.parquet"  # in the work folder: the units' rejections and the duplicates


class ShardFold:
    """Takes units in order (:meth:`add`); :meth:`finish` closes the last shards, writes the rejection records
    found in the units (dedup included) to ``FOLD_REJECTED`` in the work folder, and returns one manifest entry
    per shard. Rejections stay Arrow columns all the way: millions of dead links cost what their parquet does.

    Rows of the default config reconcile with the input (each is written or rejected); rows of another config
    (the localizability one) are a second view of the same images.
    """

    def __init__(self, out: str | Path | Location, work: str | Path | Location, max_bytes: int, curated: bool) -> None:
        self.out, self.work, self.max_bytes, self.curated = location(out), location(work), max_bytes, curated
        self.wds = import_webdataset()
        self.rejected: list[pa.Table] = []
        self.duplicates: list[dict] = []
        self.entries: list[dict] = []
        self.seen: dict[tuple[str, str], str] = {}
        self.open: dict[tuple[str, str], _Shard] = {}
        self.count: dict[tuple[str, str], int] = {}
        data = self.out / "data"
        if data.local is not None and data.local.is_dir():  # half-written shards of an interrupted run
            for folder in [data.local, *(p for p in data.local.iterdir() if p.is_dir())]:
                remove_stale(folder)

    def add(self, unit: int) -> int:
        """Fold one unit in; returns its number of input rows (rows of the default config)."""
        prepared = unit_path(self.work, unit)
        if self.curated:
            final = read_unit(curated_path(self.work, unit), [*META, "json", "pos", "config"])
            jpgs = read_unit(prepared, ["jpg"]).column("jpg")
            image_of = final.column("pos").to_pylist()
            configs = final.column("config").to_pylist()
        else:
            final = read_unit(prepared, [*META, "json", "jpg"])
            jpgs = final.column("jpg")
            image_of = range(final.num_rows)
            configs = [DEFAULT_CONFIG] * final.num_rows
        jsons = final.column("json")
        ok = pc.equal(final.column("status"), "ok")
        if not pc.all(ok).as_py():
            self.rejected.append(final.filter(pc.invert(ok)).select(["row", "id", "stage", "reason"]))
        keep = ok.to_numpy(zero_copy_only=False)
        columns = [final.column(c).to_pylist() for c in ("row", "id", "split", "sha256", "tar_bytes")]
        for k, (row, sid, split, sha, nbytes) in enumerate(zip(*columns)):
            if not keep[k]:
                continue
            config = configs[k]
            if (config, sha) in self.seen:
                if config == DEFAULT_CONFIG:  # a duplicate is recorded once, under the default config
                    reason = f"exact duplicate image of id {self.seen[(config, sha)]!r}"
                    self.duplicates.append({"row": row, "id": sid, "stage": "dedup", "reason": reason})
                continue
            self.seen[(config, sha)] = sid
            shard = self._shard_for(config, split, nbytes)
            shard.add(sample_key(sid), jpgs[image_of[k]].as_py(), jsons[k].as_py(), nbytes)
        return configs.count(DEFAULT_CONFIG)

    def _shard_for(self, config: str, split: str, nbytes: int) -> _Shard:
        group = (config, split)
        shard = self.open.get(group)
        if shard is None or tar_file_bytes(shard.fill + nbytes) > self.max_bytes:
            if shard is not None:
                self.entries.append(shard.close())
            n = self.count.get(group, 0)
            self.count[group] = n + 1
            folder = "data" if config == DEFAULT_CONFIG else f"data/{config}"
            (self.out / folder).mkdir()
            shard = self.open[group] = _Shard(self.out, f"{folder}/{split}-{n:06d}.tar", split, config, self.wds)
        return shard

    def finish(self) -> list[dict]:
        self.entries.extend(shard.close() for shard in self.open.values())
        self.open.clear()
        tables = [t.cast(REJECTION_WORK_SCHEMA) for t in self.rejected]
        tables.append(pa.Table.from_pylist(self.duplicates, schema=REJECTION_WORK_SCHEMA))
        write_atomic(pa.concat_tables(tables), self.work / FOLD_REJECTED)
        return sorted(self.entries, key=lambda e: e["path"])


def _shard_process_main(todo, results, out: str, work: str, max_bytes: int, curated: bool, env: dict) -> None:
    """The shard process: fold each unit index it is sent (None ends), reporting rows as it goes. It holds
    only the reading end of ``todo``, so if the build is killed the next read fails and it exits."""
    from .distributor import take_environment

    take_environment(env)
    unit = None

    def next_unit() -> int | None:
        try:
            return todo.recv()
        except EOFError:  # the build is gone; its half-written shards are removed by the next run
            raise SystemExit(0) from None

    try:
        fold = ShardFold(out, work, max_bytes, curated)
        while (unit := next_unit()) is not None:
            results.send(("rows", fold.add(unit)))
        results.send(("done", fold.finish()))
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

    def __init__(self, out: Location, work: Location, max_bytes: int, curated: bool) -> None:
        from .distributor import process_context

        ctx = process_context()
        child_todo, self._todo = ctx.Pipe(duplex=False)
        self._results, child_results = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(
            target=_shard_process_main,
            args=(child_todo, child_results, str(out), str(work), max_bytes, curated, dict(os.environ)),
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
            n += self._receive()
        return n

    def finish(self, progress: Any = None) -> list[dict]:
        """Wait for the fold to take in every unit sent (``progress``, a tqdm bar, counts the rows); returns
        the shard entries (the rejections are in ``FOLD_REJECTED``)."""
        self._send(None)
        while self._done is None:
            n = self._receive()
            if progress is not None:
                progress.update(n)
        return self._done

    def _send(self, unit: int | None) -> None:
        try:
            self._todo.send(unit)
        except BrokenPipeError:
            self._proc.join(5)
            raise ShardProcessError(f"the shard process died (exit code {self._proc.exitcode})") from None

    def _receive(self) -> int:
        """Wait for the child's next message; returns the rows it reports."""
        try:
            kind, *payload = self._results.recv()
        except EOFError:
            raise ShardProcessError(f"the shard process died (exit code {self._proc.exitcode})") from None
        if kind == "error":
            raise ShardProcessError(payload[0])
        if kind == "done":
            self._done = payload[0]
            return 0
        return payload[0]
