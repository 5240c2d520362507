"""The build recipe: every setting of `mp16-reason build`, from a YAML file with CLI overrides."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mp16_reason.schema import SCHEMA_VERSION

from .images import ResampleFilter

# The Qwen2.5-VL recipe of 1280 visual tokens of 28x28 pixels: ~1 MP, about 1000x1000.
QWEN25VL_MAX_PIXELS = 1280 * 28 * 28


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputSpec(_Spec):
    metadata: str = Field(description="CSV or parquet with one row per image")
    format: Literal["auto", "mp16pro", "globe", "plain"] = Field(
        default="auto", description="column layout; auto detects MP16-Pro, the GLOBE test CSV and plain id/lat/lon"
    )
    columns: dict[str, str] = Field(
        default_factory=dict, description="our field -> your column, e.g. {id: photo_id, lat: latitude}"
    )
    images: str | None = Field(default=None, description="a folder or a .tar of images; omit when rows carry URLs")
    image_suffix: str = Field(default="", description="appended to ids to find files, e.g. '.jpg' for GLOBE CSVs")
    dataset: str = Field(default="MP-16", description="recorded as source.dataset")


class ImageSpec(_Spec):
    max_pixels: int = Field(default=QWEN25VL_MAX_PIXELS, gt=0, description="resize budget (width x height)")
    jpeg_quality: int = Field(default=90, ge=1, le=100)
    max_source_pixels: int = Field(default=100_000_000, gt=0, description="larger sources are decompression bombs")
    min_side: int = Field(default=28, ge=1, description="smaller images are rejected")
    resample: ResampleFilter = Field(
        default="box",
        description="downscaling filter; box averages each output pixel's area (OpenCV's INTER_AREA) and is fastest",
    )


class FetchSpec(_Spec):
    timeout_s: float = 10.0
    retries: int = Field(default=3, ge=0)
    backoff_s: float = 0.5
    threads: int = Field(default=16, ge=1, description="concurrent downloads per worker")


class SplitSpec(_Spec):
    test_fraction: float = Field(default=0.1, ge=0.0, le=1.0)
    hold_out_cities: bool = Field(default=False, description="put whole cities in test, never in train")
    seed: str = "mp16-reason"


class ShardSpec(_Spec):
    max_bytes: int = Field(default=1_000_000_000, gt=0, description="upper bound of a shard's size")
    seed: str = Field(default="mp16-reason", description="seed of the deterministic pre-shuffle")


class Recipe(_Spec):
    version: str = Field(default="0.1.0", description="dataset version written into every record")
    input: InputSpec
    image: ImageSpec = Field(default_factory=ImageSpec)
    fetch: FetchSpec = Field(default_factory=FetchSpec)
    split: SplitSpec = Field(default_factory=SplitSpec)
    shards: ShardSpec = Field(default_factory=ShardSpec)
    unit_size: int = Field(default=1000, ge=1, description="rows per unit of work (the resume granularity)")
    limit: int | None = Field(default=None, ge=1, description="use only the first N rows of the metadata")
    # How the build runs; these do not change its output and are left out of the recipe hash.
    out: str = "mp16-reason-build"
    workers: int = Field(default=2, ge=1)
    distributor: Literal["local", "ray"] = "local"

    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset({"out", "workers", "distributor"})

    def output_dict(self) -> dict[str, Any]:
        """Every setting that changes the output (what the recipe hash covers)."""
        data = self.model_dump(mode="json", exclude=set(self.RUNTIME_FIELDS))
        data["schema_version"] = SCHEMA_VERSION
        return data

    def sha256(self) -> str:
        blob = json.dumps(self.output_dict(), sort_keys=True, separators=(",", ":")).encode()
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
        for key in ("metadata", "images"):
            if inp.get(key) and "://" not in inp[key] and not Path(inp[key]).is_absolute():
                inp[key] = str(base / inp[key])
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
