"""The build recipe: every setting of `mp16-reason build`, from a YAML file with CLI overrides."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import Field, SerializeAsAny, ValidationError, create_model, field_validator, model_validator

from builders.curation.filters import ORDER, AddedFilter
from builders.spec import ResampleFilter, Spec
from builders.teachers.base import TeacherSettings
from mp16_reason.schema import SCHEMA_VERSION

# The Qwen2.5-VL recipe of 1280 visual tokens of 28x28 pixels: ~1 MP, about 1000x1000.
QWEN25VL_MAX_PIXELS = 1280 * 28 * 28


_Spec = Spec


class InputSpec(_Spec):
    metadata: str = Field(description="CSV or parquet with one row per image")
    format: Literal["auto", "mp16pro", "globe", "plain", "globe-release", "globe-release-test"] = Field(
        default="auto",
        description="column layout; auto detects MP16-Pro, the GLOBE test CSV and plain id/lat/lon; globe-release: "
        "the official MP16-Reason training CSV (response, solution and entities required), turned into records as "
        "it is; globe-release-test: the official test CSV (IMG_ID, LAT, LON, city, country)",
    )

    @property
    def release(self) -> bool:
        """The official release's files (train or test): the card reports their completeness."""
        return self.format in ("globe-release", "globe-release-test")

    columns: dict[str, str] = Field(
        default_factory=dict, description="our field -> your column, e.g. {id: photo_id, lat: latitude}"
    )
    images: list[str] = Field(
        default_factory=list,
        description="image sources, tried in order: folders, .tar and .zip archives, .csv URL lists (id, url); "
        "none: the rows' own URLs",
    )
    join: list[str] = Field(
        default_factory=list,
        description="metadata files joined by id for the coordinates the main file lacks (e.g. MP16-Pro's CSV)",
    )
    curate: bool = Field(
        default=False,
        description="globe-release rows through curation's ground-truth and grounding filters (off: the release "
        "is already curated)",
    )
    image_suffix: str = Field(default="", description="appended to ids to find files, e.g. '.jpg' for GLOBE CSVs")
    encoding: str | None = Field(
        default=None,
        description="the metadata CSV's text encoding (e.g. latin-1, cp1252, utf-16); default: UTF-8, or what a "
        "byte-order mark says",
    )
    dataset: str = Field(default="MP-16", description="recorded as source.dataset")

    @field_validator("images", "join", mode="before")
    @classmethod
    def _as_list(cls, v: Any) -> Any:
        return [] if v is None else [v] if isinstance(v, str) else v


class ImageSpec(_Spec):
    max_pixels: int = Field(default=QWEN25VL_MAX_PIXELS, gt=0, description="resize budget (width x height)")
    jpeg_quality: int = Field(default=90, ge=1, le=100)
    max_source_pixels: int = Field(default=100_000_000, gt=0, description="larger sources are decompression bombs")
    min_side: int = Field(default=28, ge=1, description="smaller images are rejected")
    resample: ResampleFilter = Field(
        default="box",
        description="downscaling filter; box averages each output pixel's area (OpenCV's INTER_AREA) and is fastest",
    )
    reencode: Literal["if-needed", "always"] = Field(
        default="if-needed",
        description="if-needed: a JPEG that fits the budget and needs no conversion keeps its image data as is; "
        "always: decode and encode every image",
    )


class FetchSpec(_Spec):
    timeout_s: float = 10.0
    retries: int = Field(default=3, ge=0)
    backoff_s: float = 0.5
    threads: int = Field(default=16, ge=1, description="concurrent downloads per worker")
    placeholder_urls: list[str] = Field(
        default_factory=lambda: ["*/photo_unavailable*"],
        description="a download redirected to a URL matching one of these patterns is a dead photo's placeholder",
    )
    reject_sha256: list[str] = Field(
        default_factory=list, description="images with these content hashes are placeholders, never published"
    )


class SplitSpec(_Spec):
    test_fraction: float = Field(default=0.1, ge=0.0, le=1.0)
    hold_out_cities: bool = Field(default=False, description="put whole cities in test, never in train")
    seed: str = "mp16-reason"
    group_by: list[Literal["near_duplicate", "author"]] = Field(
        default_factory=list,
        description="keep each group wholly in one split: near_duplicate (near twins, by the audit's hashes and "
        "thresholds) and author (a photographer's photos), on top of hold_out_cities' cities",
    )


class AuditSpec(_Spec):
    """What counts as a near duplicate (``mp16-reason audit`` and ``split.group_by``): a whole image within
    ``max_phash`` bits of a window of the other (pHash) and within ``max_dhash`` bits there by dHash too."""

    max_phash: int = Field(default=10, ge=0, le=32)
    max_dhash: int = Field(default=12, ge=0, le=32)


class ShardSpec(_Spec):
    max_bytes: int = Field(default=1_000_000_000, gt=0, description="upper bound of a shard's size")
    multiple_of: int = Field(
        default=24,
        ge=1,
        description="a split's shards, of equal sample counts, number a multiple of this once the split has that "
        "many samples: 24 divides evenly over 1, 2, 3, 4, 6, 8, 12 and 24 readers (GPUs x DataLoader workers)",
    )
    seed: str = Field(default="mp16-reason", description="seed of the deterministic pre-shuffle")


class DistillSpec(_Spec):
    cache: str | None = Field(default=None, description="reply cache (SQLite); default under $MP16_REASON_CACHE")
    import_cache: str | None = Field(default=None, description="a JSON Lines export to add to the cache first")
    offline: bool = Field(default=False, description="send nothing: replies missing from the cache are quarantined")


class _CurationBase(_Spec):
    min_teachers: int | None = Field(
        default=None, ge=1, description="parsed answers an image needs (default: every teacher's)"
    )
    filters: list[SerializeAsAny[AddedFilter]] = Field(
        default_factory=list,
        description="filters other packages add (entry point group mp16_reason.filters), each entry picked by its "
        "kind, run in this order before (run: first) or after (run: last) the shipped ones",
    )

    @field_validator("filters", mode="before")
    @classmethod
    def _filter_kinds(cls, value: Any) -> Any:
        from builders.curation.filters import added_from

        return [added_from(f) for f in value] if isinstance(value, list) else value


# ``curation:``: the settings above, and a section for each shipped filter, in the order they run (made from
# builders.curation.filters.ORDER, so a shipped filter needs no edit here).
CurationSpec = create_model(
    "CurationSpec",
    __base__=_CurationBase,
    **{section: (f.settings_class, Field(default_factory=f.settings_class)) for section, f in ORDER},
)


class RaySpec(_Spec):
    """Unit tasks on a Ray cluster (``distributor: ray``). ``RAY_ADDRESS`` joins a running cluster."""

    num_cpus: float = Field(default=1.0, gt=0, description="CPUs each unit task reserves")
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="custom resources each unit task needs, e.g. {image_worker: 1} to run units only on nodes "
        "started with --resources '{\"image_worker\": 4}'",
    )
    max_retries: int = Field(default=3, ge=0, description="reruns of a unit whose worker or node died, or that raised")


class Recipe(_Spec):
    version: str = Field(default="0.1.0", description="dataset version written into every record")
    input: InputSpec
    image: ImageSpec = Field(default_factory=ImageSpec)
    fetch: FetchSpec = Field(default_factory=FetchSpec)
    split: SplitSpec = Field(default_factory=SplitSpec)
    shards: ShardSpec = Field(default_factory=ShardSpec)
    unit_size: int = Field(default=1000, ge=1, description="rows per unit of work (the resume granularity)")
    limit: int | None = Field(default=None, ge=1, description="use only the first N rows of the metadata")
    teachers: list[SerializeAsAny[TeacherSettings]] = Field(
        default_factory=list,
        description="teachers, each of a kind (openai: an LVLM endpoint, the default; geoclip: GeoCLIP in-process; "
        "or a kind another package registers); none: no reasoning stage",
    )
    curation: CurationSpec = Field(default_factory=CurationSpec)
    audit: AuditSpec = Field(default_factory=AuditSpec)
    distill: DistillSpec = Field(default_factory=DistillSpec)
    # How the build runs; these do not change its output and are left out of the recipe hash.
    out: str = "mp16-reason-build"
    workers: int = Field(default=2, ge=1)
    distributor: Literal["local", "ray"] = "local"
    ray: RaySpec = Field(default_factory=RaySpec)

    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset({"out", "workers", "distributor", "ray", "distill"})

    @field_validator("teachers", mode="before")
    @classmethod
    def _teacher_kinds(cls, value: Any) -> Any:
        """Each entry as the settings of its kind: a union discriminated by ``kind`` over the registered kinds."""
        from builders.teachers.registry import settings_from

        return [settings_from(t) for t in value] if isinstance(value, list) else value

    @model_validator(mode="after")
    def _unique_teachers(self) -> Recipe:
        names = [t.name for t in self.teachers]
        if len(set(names)) != len(names):
            raise ValueError(f"teacher names must be unique, got {names}")
        lvlms = [t for t in self.teachers if t.reasons]
        if self.curation.min_teachers and self.curation.min_teachers > len(lvlms):
            raise ValueError(f"curation.min_teachers is {self.curation.min_teachers} but there are {len(lvlms)} LVLMs")
        return self

    def output_dict(self, inputs: dict | None = None) -> dict[str, Any]:
        """Every setting that changes the output (what the recipe hash covers). With ``inputs`` (the content
        identities of :mod:`builders.plane.identity`), the inputs are named by content, not by location: the same
        bytes anywhere hash alike."""
        data = self.model_dump(mode="json", exclude=set(self.RUNTIME_FIELDS))
        if inputs is not None:
            data["input"].update(inputs)
        data["teachers"] = [{"name": t.name, "model": t.model, **t.request_params()} for t in self.teachers]
        if not self.split.group_by:
            data.pop("audit")  # its thresholds change the output only through split.group_by
        if "curation" in data and not data["curation"]["filters"]:
            del data["curation"]["filters"]  # absent, not empty: recipes from before added filters hash alike
        if not self.teachers:  # a data-plane build: curation settings do not apply
            if not self.input.curate:
                data.pop("curation")
            data.pop("teachers")
        data["schema_version"] = SCHEMA_VERSION
        return data

    def sha256(self, inputs: dict | None = None) -> str:
        blob = json.dumps(self.output_dict(inputs), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()


class RecipeError(ValueError):
    pass


def load_recipe(path: str | Path | None, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read a YAML recipe and apply dotted overrides such as ``{"image.jpeg_quality": 85}``."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise RecipeError(f"recipe {p} does not exist; see builders/recipes/ for examples")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise RecipeError(f"recipe {p} must be a YAML mapping, got {type(data).__name__}")
        base = p.resolve().parent  # relative paths in a recipe are relative to the recipe
        inp = data.get("input") or {}

        def local(value: str) -> str:
            return value if "://" in value or Path(value).is_absolute() else str(base / value)

        if inp.get("metadata"):
            inp["metadata"] = local(inp["metadata"])
        for key in ("images", "join"):
            if isinstance(inp.get(key), str):
                inp[key] = [inp[key]]
            if inp.get(key):
                inp[key] = [local(v) for v in inp[key]]
        distill = data.get("distill") or {}
        for key in ("cache", "import_cache"):
            if distill.get(key) and not Path(distill[key]).expanduser().is_absolute():
                distill[key] = str(base / distill[key])
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise RecipeError(f"invalid recipe{f' {path}' if path else ''}: {problems}") from None
