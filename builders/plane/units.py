"""One unit of work: fetch, prepare and geocode a slice of rows, then commit the result atomically.

A unit's output is a single Arrow IPC file holding, for every row of the slice, either the prepared sample
(``jpg`` and ``json`` bytes) or the stage and reason of its rejection. The file appears only when complete
(write to a temporary name, fsync, rename), so a killed build never leaves half a unit behind.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow.parquet as pq
from threadpoolctl import threadpool_limits

from builders.audit import hashes
from builders.plane.images import ImageRejected, PreparedImage, add_hashes, keep_image_memory, prepare
from builders.plane.split import split_key, split_of
from builders.recipe import Recipe
from builders.sources import Fetcher, FetchError, HttpClient, Source, image_sources
from builders.threads import ordered_map
from builders.workfolder import (
    INGEST,
    LABEL_COLUMNS,
    UnitWriter,
    read_unit,
    tar_member_bytes,
    unit_path,
)
from mp16_reason.gazetteer import default_gazetteer
from mp16_reason.schema import BuildInfo, Entity, ImageInfo, Sample, SourceLabels, TeacherAnswer, to_json_bytes
from mp16_reason.schema import ImageSource as SchemaImageSource
from mp16_reason.schema import Source as RecordSource
from mp16_reason.storage import Location, location

if TYPE_CHECKING:
    from builders.plane.tasks import UnitTask


RELEASE_TEACHER = "globe-release"
PREPARE_THREADS = 2  # image decoding threads per worker process


@functools.cache
def one_blas_thread() -> None:
    """BLAS on one thread in this worker (once per process). The hashes' products are small; a threaded BLAS
    keeps its threads spinning between them, which doubled a worker's CPU per image at 16 images a batch, and
    the workers already take every core."""
    threadpool_limits(1, user_api="blas")


def with_hashes(items: Iterable[Prepared | Rejected]) -> Iterator[Prepared | Rejected]:
    """The prepared images with their window hashes, taken a batch at a time (:data:`hashes.BATCH`), in order."""
    items = iter(items)
    while batch := list(itertools.islice(items, hashes.BATCH)):
        add_hashes([got.image for got in batch if isinstance(got, Prepared)])
        yield from batch


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
    path = location(work_dir) / INGEST
    return _open_ingest(path, path.stamp())


@functools.lru_cache(maxsize=2)
def _open_ingest(path: Location, stamp: str) -> pq.ParquetFile:
    return pq.ParquetFile(str(path.local) if path.local is not None else path.open())


@dataclass(frozen=True)
class Rejected:
    """A row that goes no further: the stage that stopped it and why (the rejection record)."""

    stage: str
    reason: str


@dataclass(frozen=True)
class Fetched:
    data: bytes
    source: Source | None  # None: the row's own URL


@dataclass(frozen=True)
class Prepared:
    image: PreparedImage
    source: Source | None


class Stages:
    """One unit's stages, in order, each taking the previous stage's value and returning the next, or a
    :class:`Rejected`: fetch -> prepare -> geocode -> split -> record. Fetch and prepare run on threads."""

    def __init__(self, recipe: Recipe, recipe_sha256: str) -> None:
        self.recipe = recipe
        net = recipe.fetch
        self.sources = image_sources(recipe.input.images)
        urls = HttpClient(net.timeout_s, net.retries, net.backoff_s, net.threads, tuple(net.placeholder_urls))
        self.fetcher = Fetcher(self.sources, urls, frozenset(h.lower() for h in net.reject_sha256))
        self.gaz = default_gazetteer()  # once per worker process, not per unit
        self.build = BuildInfo(version=recipe.version, recipe_sha256=recipe_sha256)
        release = recipe.input.format == "globe-release"
        self.release = release
        self.curator = release_curator(recipe) if release and recipe.input.curate else None

    def fetch(self, row: dict) -> Fetched | Rejected:
        """The image's bytes and the source that served them."""
        ref = row["image"] or (row["id"] if self.sources else row["url"] or row["id"])
        try:
            return Fetched(*self.fetcher.fetch(row, ref))
        except FetchError as exc:
            return Rejected("fetch", str(exc))

    def prepare(self, got: Fetched | Rejected) -> Prepared | Rejected:
        """Decoded, checked, converted, resized and encoded (Pillow lets go of the GIL meanwhile)."""
        if isinstance(got, Rejected):
            return got
        spec = self.recipe.image
        try:
            img = prepare(
                got.data,
                spec.max_pixels,
                spec.jpeg_quality,
                spec.max_source_pixels,
                spec.min_side,
                spec.resample,
                spec.reencode,
            )
        except ImageRejected as exc:
            return Rejected("image", str(exc))
        return Prepared(img, got.source)

    def geocode(self, row: dict, place: dict) -> dict | Rejected:
        """The gazetteer's labels of the row's point (looked up for the whole unit at once)."""
        if not place["country"]:
            where = f"({row['lat']:.5f}, {row['lon']:.5f})"
            return Rejected("geocode", f"no populated place within {self.gaz.country_max_km:g} km of {where}")
        return place

    def split(self, row: dict, place: dict) -> tuple[str, str]:
        """The split and the key that decided it."""
        s = self.recipe.split
        city = f"{place['country_code']}:{place['geonames_id']}" if place["city"] else ""
        key = split_key(row["id"], city, s.hold_out_cities)
        return split_of(key, s.test_fraction, s.seed), key

    def record(self, row: dict, place: dict, prepared: Prepared, split: str) -> Sample | Rejected:
        """The sample's record; a release row gets its reasoning and answer (and curation, when asked)."""
        img, served_by = prepared.image, prepared.source
        has_city = bool(place["city"])
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
                dataset=self.recipe.input.dataset,
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
                phash=img.phash[:8].hex(),
            ),
            split=split,
            build=self.build,
        )
        if self.release and row.get("response"):
            with_release_answer(sample, row)
            if self.curator is not None:
                decision = self.curator.curate(sample, lambda jpg=img.jpeg: jpg, sample.teachers, [])
                if not decision.kept:
                    return Rejected(decision.stage, decision.reason)
                decision.record.build.prompt_version = sample.build.prompt_version  # not our prompt's reasoning
                sample = decision.record
        return sample

    def close(self) -> None:
        self.fetcher.close()


def process_unit(task: UnitTask) -> tuple[int, int, int]:
    """Do one unit; returns ``(index, n_ok, n_rejected)``. Idempotent: a committed unit is not redone."""
    out = unit_path(task.work_dir, task.index)
    if out.exists():
        meta = read_unit(out, ["status"]).column("status").to_pylist()
        return task.index, meta.count("ok"), len(meta) - meta.count("ok")
    recipe = Recipe.model_validate(task.recipe)
    keep_image_memory()  # here, not at import: this runs in every worker, whichever distributor started it
    one_blas_thread()
    rows = _ingest_file(task.work_dir).read_row_group(task.index).to_pylist()
    stages = Stages(recipe, task.recipe_sha256)
    # One dict a row, made once: a DataFrame row lookup per image costs more than the rest of its record.
    places = stages.gaz.reverse_records([r["lat"] for r in rows], [r["lon"] for r in rows])
    # Downloads wait on the network and get fetch.threads; decoding is CPU work and gets two threads: more
    # would only trade the GIL back and forth (16 decoding threads cost ~12 % more CPU an image).
    threads = recipe.fetch.threads if not stages.sources or any(s.network for s in stages.sources) else 4
    with UnitWriter(out) as sink:  # rows go to disk as they are ready
        prepared = ordered_map(stages.prepare, ordered_map(stages.fetch, rows, threads), PREPARE_THREADS)
        for row, got, place in zip(rows, with_hashes(prepared), places):
            outcome = got if isinstance(got, Rejected) else stages.geocode(row, place)
            if not isinstance(outcome, Rejected):
                split, key = stages.split(row, outcome)
                outcome = stages.record(row, outcome, got, split)
            if isinstance(outcome, Rejected):
                sink.add(
                    (
                        row["row"],
                        row["id"],
                        "rejected",
                        outcome.stage,
                        outcome.reason,
                        "",
                        "",
                        None,
                        None,
                        0,
                        None,
                        None,
                        None,
                        None,
                    )
                )
                continue
            img = got.image
            jpg, js = img.jpeg, to_json_bytes(outcome)
            size = tar_member_bytes(len(jpg), len(js))
            sink.add(
                (
                    row["row"],
                    row["id"],
                    "ok",
                    "",
                    "",
                    split,
                    img.sha256,
                    jpg,
                    js,
                    size,
                    key,
                    row["author"],
                    img.phash,
                    img.dhash,
                )
            )
    stages.close()
    return task.index, sink.ok, sink.total - sink.ok
