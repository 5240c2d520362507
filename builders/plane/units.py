"""One unit of work: fetch, prepare and geocode a slice of rows, then commit the result atomically.

A unit's output is a single Arrow IPC file holding, for every row of the slice, either the prepared sample
(``jpg`` and ``json`` bytes) or the stage and reason of its rejection. The file appears only when complete
(write to a temporary name, fsync, rename), so a killed build never leaves half a unit behind.
"""

from __future__ import annotations

import functools
import json
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq

from builders.plane.images import ImageRejected, PreparedImage, keep_image_memory, prepare
from builders.plane.split import assign_split
from builders.recipe import Recipe
from builders.sources import Fetcher, FetchError, Source, UrlSource, image_sources
from mp16_reason.gazetteer import default_gazetteer
from mp16_reason.schema import BuildInfo, Entity, ImageInfo, Sample, SourceLabels, TeacherAnswer, to_json_bytes
from mp16_reason.schema import ImageSource as SchemaImageSource
from mp16_reason.schema import Source as RecordSource
from mp16_reason.storage import Location, location

T = TypeVar("T")
R = TypeVar("R")

LABEL_COLUMNS = tuple(SourceLabels.model_fields)  # the input's own labels, kept as label_* columns
REJECTION_SCHEMA = pa.schema(
    [("row", pa.int64()), ("id", pa.string()), ("stage", pa.string()), ("reason", pa.string())]
)
# In memory, stage and reason are dictionary-encoded: millions of rows rejected for one reason (dead links, no
# image in any source) then cost a few bytes each; the published rejections.parquet has plain strings.
REJECTION_WORK_SCHEMA = pa.schema(
    [("row", pa.int64()), ("id", pa.string()), ("stage", pa.dictionary(pa.int32(), pa.string())),
     ("reason", pa.dictionary(pa.int32(), pa.string()))]
)  # fmt: skip
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
    ]
)


def tar_member_bytes(*sizes: int) -> int:
    """Bytes the members take in a tar: a 512-byte header each, data padded to 512."""
    return sum(512 + -(-n // 512) * 512 for n in sizes)


@dataclass(frozen=True)
class UnitTask:
    """Unit ``index`` is row group ``index`` of ``ingest.parquet`` (written with one group per unit)."""

    index: int
    recipe: dict
    recipe_sha256: str
    work_dir: str


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
        self.rows: list[tuple] = []
        self.ok = self.total = 0

    def __enter__(self) -> UnitWriter:
        self._commit = self.path.commit_path()
        self._writer = pa.ipc.new_file(str(self._commit.__enter__()), UNIT_SCHEMA)
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

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._flush()
        self._writer.close()
        self._commit.__exit__(exc_type, exc, tb)


def _binary(values: tuple[bytes | None, ...]) -> pa.Array:
    """A binary array from bytes (None: null), by one join: ~12x less CPU than ``pa.array`` for images."""
    sizes = np.fromiter((len(v) if v is not None else 0 for v in values), np.int64, len(values))
    offsets = np.zeros(len(values) + 1, np.int32)
    np.cumsum(sizes, out=offsets[1:])
    valid = [v is not None for v in values]
    mask = None if all(valid) else pa.array(valid).buffers()[1]
    data = b"".join(v for v in values if v is not None)
    return pa.Array.from_buffers(pa.binary(), len(values), [mask, pa.py_buffer(offsets), pa.py_buffer(data)],
                                 null_count=valid.count(False))  # fmt: skip


def read_unit(path: Path | Location, columns: list[str] | None = None) -> pa.Table:
    """A unit file: through a memory map on a local disk, read whole from an object store."""
    path = location(path)
    if path.local is not None:
        return feather.read_table(str(path.local), columns=columns, memory_map=True)
    return feather.read_table(pa.BufferReader(path.read_bytes()), columns=columns)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int) -> Iterator[R]:
    """``fn`` over ``items`` on ``threads`` threads, results in input order, at most ``2 * threads`` in flight.

    Unlike ``Executor.map`` it does not submit everything at once, so a unit never holds all its raw images.
    """
    window = 2 * threads
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


RELEASE_TEACHER = "globe-release"
PREPARE_THREADS = 2  # image decoding threads per worker process


def with_release_answer(sample: Sample, row: dict) -> None:
    """A release row's record, in place: its reasoning verbatim, its entities, its answer as the one teacher
    answer (origin ``release``), and localizable (the release holds only curated, localizable images)."""
    entities = [Entity(text=e["text"], category=e["category"]) for e in json.loads(row["entities"])]
    sample.reasoning, sample.entities, sample.localizable = row["response"], entities, True
    sample.teachers = [
        TeacherAnswer(
            teacher=RELEASE_TEACHER,
            model="GLOBE release",
            parsed=True,
            localizable=True,
            reasoning=row["response"],
            entities=[e.model_copy() for e in entities],
            country=row["answer_country"],
            city=row["answer_city"],
            origin="release",
        )
    ]


def release_curator(recipe: Recipe):
    """Curation for release rows: ground truth and grounding as the recipe sets them; localizability is not
    judged (the release has no scores) and agreement needs a second answer."""
    from builders.curation.curator import Curator

    spec = recipe.curation.model_copy(deep=True)
    spec.localizability.enabled = False
    return Curator(spec, n_teachers=1)


def _ingest_file(work_dir: str) -> pq.ParquetFile:
    """The committed ``ingest.parquet``, opened once per worker process: its footer, one row group per unit
    and thousands of them at MP16-Pro's size, takes tens of ms to parse, which each unit would otherwise pay.
    Keyed by the file's size and time: a rewritten file is opened again."""
    path = location(work_dir) / "ingest.parquet"
    return _open_ingest(path, path.stamp())


@functools.lru_cache(maxsize=2)
def _open_ingest(path: Location, stamp: str) -> pq.ParquetFile:
    return pq.ParquetFile(str(path.local) if path.local is not None else path.open())


def process_unit(task: UnitTask) -> tuple[int, int, int]:
    """Do one unit; returns ``(index, n_ok, n_rejected)``. Idempotent: a committed unit is not redone."""
    out = unit_path(task.work_dir, task.index)
    if out.exists():
        meta = read_unit(out, ["status"]).column("status").to_pylist()
        return task.index, meta.count("ok"), len(meta) - meta.count("ok")
    recipe = Recipe.model_validate(task.recipe)
    keep_image_memory()  # here, not at import: this runs in every worker, whichever distributor started it
    rows = _ingest_file(task.work_dir).read_row_group(task.index).to_pylist()
    net = recipe.fetch
    sources = image_sources(recipe.input.images)
    urls = UrlSource(net.timeout_s, net.retries, net.backoff_s, net.threads, tuple(net.placeholder_urls))
    fetcher = Fetcher(sources, urls, frozenset(h.lower() for h in net.reject_sha256))

    spec = recipe.image

    def fetch(row: dict) -> tuple[bytes, Source | None] | tuple[str, str]:
        """The image's bytes and the source that served them, or ``("fetch", reason)``. Runs on a thread."""
        ref = (row["image"] or row["id"]) if sources else (row["image"] or row["url"] or row["id"])
        try:
            return fetcher.fetch(row, ref)
        except FetchError as exc:
            return "fetch", str(exc)

    def prepare_fetched(got: tuple) -> tuple[PreparedImage, Source | None] | tuple[str, str]:
        """The prepared image and its source, or ``(stage, reason)``. Runs on a thread: Pillow releases the
        GIL while it decodes and encodes."""
        if isinstance(got[0], str):
            return got
        data, source = got
        try:
            img = prepare(
                data, spec.max_pixels, spec.jpeg_quality, spec.max_source_pixels, spec.min_side, spec.resample,
                spec.reencode,
            )  # fmt: skip
        except ImageRejected as exc:
            return "image", str(exc)
        return img, source

    # Downloads wait on the network and get fetch.threads; decoding is CPU work and gets two threads: more
    # would only trade the GIL back and forth (16 decoding threads cost ~12 % more CPU an image).
    threads = net.threads if not sources or any(s.network for s in sources) else 4
    release = recipe.input.format == "globe-release"
    curator = release_curator(recipe) if release and recipe.input.curate else None
    gaz = default_gazetteer()  # once per worker process, not per unit
    # One dict a row, made once: a DataFrame row lookup per image costs more than the rest of its record.
    places = gaz.reverse_batch([r["lat"] for r in rows], [r["lon"] for r in rows]).to_dict("records")
    build = BuildInfo(version=recipe.version, recipe_sha256=task.recipe_sha256)

    def emit(
        row: dict,
        status: str,
        stage: str = "",
        reason: str = "",
        split: str = "",
        sha: str = "",
        jpg: bytes | None = None,
        js: bytes | None = None,
    ) -> None:
        size = tar_member_bytes(len(jpg), len(js)) if jpg is not None and js is not None else 0
        sink.add((row["row"], row["id"], status, stage, reason, split, sha, jpg, js, size))

    with UnitWriter(out) as sink:  # rows go to disk as they are ready
        prepared = ordered_map(prepare_fetched, ordered_map(fetch, rows, threads), PREPARE_THREADS)
        for i, (row, got) in enumerate(zip(rows, prepared)):
            if isinstance(got[0], str):
                emit(row, "rejected", *got)
                continue
            img, served_by = got
            place = places[i]
            if not place["country"]:
                emit(
                    row,
                    "rejected",
                    "geocode",
                    f"no populated place within {gaz.country_max_km:g} km of ({row['lat']:.5f}, {row['lon']:.5f})",
                )
                continue
            has_city = bool(place["city"])
            split = assign_split(
                row["id"],
                f"{place['country_code']}:{place['geonames_id']}" if has_city else "",
                recipe.split.test_fraction,
                recipe.split.seed,
                recipe.split.hold_out_cities,
            )
            sample = Sample(
                id=row["id"],
                lat=row["lat"],
                lon=row["lon"],
                country=place["country"],
                country_code=place["country_code"],
                admin1=place["admin1"],
                city=place["city"],
                continent=place["continent"],
                geonames_id=int(place["geonames_id"]) if has_city else None,
                city_distance_km=round(float(place["city_distance_km"]), 3) if has_city else None,
                source=RecordSource(
                    dataset=recipe.input.dataset,
                    url=row.get(served_by.column("url")) or row["url"] if served_by else row["url"] or row["image"],
                    author=row["author"],
                    license=row["license"],
                    labels=SourceLabels(**{c: row[f"label_{c}"] for c in LABEL_COLUMNS}),
                    image_source=SchemaImageSource(kind=served_by.kind, name=served_by.name)
                    if served_by
                    else SchemaImageSource(kind="url"),
                ),
                image=ImageInfo(
                    width=img.width,
                    height=img.height,
                    orig_width=img.orig_width,
                    orig_height=img.orig_height,
                    orig_format=img.orig_format,
                    sha256=img.sha256,
                    reencoded=img.reencoded,
                ),
                split=split,
                build=build,
            )
            if release and row.get("response"):
                with_release_answer(sample, row)
                if curator is not None:
                    decision = curator.curate(sample, lambda jpg=img.jpeg: jpg, sample.teachers, [])
                    if not decision.kept:
                        emit(row, "rejected", decision.stage, decision.reason)
                        continue
                    decision.record.build.prompt_version = sample.build.prompt_version  # not our prompt's reasoning
                    sample = decision.record
            emit(row, "ok", split=split, sha=img.sha256, jpg=img.jpeg, js=to_json_bytes(sample))
    fetcher.close()
    return task.index, sink.ok, sink.total - sink.ok
