"""The MP16-Reason record: the one place that defines it.

Everything else is derived from the models below:

- the Python type (:class:`Sample` and its parts),
- the ``datasets.Features`` declared in the dataset card (:func:`features`),
- the JSON written into each shard (:func:`to_json_bytes`) and read back (:func:`from_json_bytes`),
- validation of a record (:func:`validate`),
- the JSON schema a teacher model must answer in (:func:`teacher_reply_schema`).

Typing rules that keep Arrow, the Hub viewer and ``load_dataset`` happy:

- every key is dot-free (webdataset splits sample keys at the first dot);
- text fields are never null: ``""`` means unknown; lists are never null: ``[]`` means none;
- numbers and booleans that can be unknown are nullable, and their declared type never changes, so a
  null in the first rows of a shard cannot turn a column into the ``null`` type.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# 1.4: image.phash, source.image_source.kind any kind a plug-in adds; 1.3: teachers[].confidence,
# teachers[].top_k, origin "local" (GeoCLIP); 1.2: source.image_source, image.reencoded, teachers[].origin
# "release"; 1.1: origin
SCHEMA_VERSION = "1.4"
PROMPT_VERSION_UNSET = ""

Latitude = Annotated[float, Field(ge=-90.0, le=90.0)]
Longitude = Annotated[float, Field(ge=-180.0, le=180.0)]
Score = Annotated[float, Field(ge=0.0, le=1.0)]
Count = Annotated[int, Field(ge=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Entity(_Model):
    """A visual cue named in the reasoning: ``text`` as written, its ``category``, and whether a
    segmentation model found it in the image (``grounded``; null until checked)."""

    text: str
    category: str = ""
    grounded: bool | None = None


class GeoGuess(_Model):
    """One of a coordinate teacher's ranked guesses (GeoCLIP: a GPS gallery point and its probability)."""

    lat: Latitude
    lon: Longitude
    probability: Score


class TeacherAnswer(_Model):
    """One teacher model's answer for one image, with its provenance (never any secret)."""

    teacher: str = Field(description="name of the teacher in the build recipe")
    model: str = Field(description="model id the endpoint served")
    prompt_version: str = ""
    parsed: bool = Field(description="whether the reply could be parsed; if not, `raw` holds it")
    localizable: bool | None = None
    localizability: Score | None = None
    reasoning: str = ""
    entities: list[Entity] = Field(default_factory=list)
    country: str = ""
    city: str = ""
    lat: Latitude | None = None
    lon: Longitude | None = None
    confidence: Score | None = Field(
        default=None, description="the teacher's probability for lat/lon (GeoCLIP: its top gallery point's)"
    )
    top_k: list[GeoGuess] = Field(
        default_factory=list, description="a coordinate teacher's ranked guesses, best first (lat/lon is the first)"
    )
    raw: str = Field(default="", description="the raw reply, kept only when it could not be parsed")
    input_tokens: Count = 0
    output_tokens: Count = 0
    origin: Literal["endpoint", "authored", "release", "local"] = Field(
        default="endpoint",
        description="endpoint: a model's reply; authored: written by hand (the offline sample); release: the "
        "official MP16-Reason release's reasoning and answer; local: a model run by the build itself (GeoCLIP)",
    )


class SourceLabels(_Model):
    """Labels that came with the input (MP16-Pro's own reverse geocoding), kept as provenance."""

    neighbourhood: str = ""
    city: str = ""
    county: str = ""
    state: str = ""
    region: str = ""
    country: str = ""
    continent: str = ""


class ImageSource(_Model):
    """Which of the build's image sources served the image: its kind and file or folder name (never a path
    with credentials)."""

    kind: str = Field(default="", description="folder, tar, zip, urls, url, or a kind a plug-in adds")
    name: str = ""


class Source(_Model):
    dataset: str = Field(default="MP-16", description="where the photo comes from")
    url: str = ""
    author: str = ""
    license: str = ""
    labels: SourceLabels = Field(default_factory=SourceLabels)
    image_source: ImageSource = Field(default_factory=ImageSource, description="the source that served the image")


class ImageInfo(_Model):
    width: Count = 0
    height: Count = 0
    orig_width: Count = 0
    orig_height: Count = 0
    orig_format: str = ""
    sha256: str = Field(default="", description="sha256 of the original image bytes")
    reencoded: bool | None = Field(
        default=None,
        description="false: the original JPEG's image data as is (it fit the budget; metadata removed); "
        "true: decoded, resized or converted, and encoded again",
    )
    phash: str = Field(
        default="",
        description="perceptual hash of the image (pHash, 16 hex digits; near duplicates differ in few bits)",
    )


class BuildInfo(_Model):
    version: str = Field(default="", description="dataset version")
    schema_version: str = SCHEMA_VERSION
    prompt_version: str = PROMPT_VERSION_UNSET
    recipe_sha256: str = ""


class Sample(_Model):
    """One MP16-Reason record (the ``json`` member of a shard sample; the image is the ``jpg`` member)."""

    id: str = Field(min_length=1, description="MP-16 image id")
    lat: Latitude = Field(description="latitude of the photo, WGS-84 degrees")
    lon: Longitude = Field(description="longitude of the photo, WGS-84 degrees")
    country: str = Field(default="", description="canonical English country name")
    country_code: str = Field(default="", description="ISO 3166-1 alpha-2")
    admin1: str = Field(default="", description="first-level region (state, province)")
    city: str = Field(default="", description="the city the photo is in (GeoNames name)")
    continent: str = Field(default="", description="continent of the country")
    geonames_id: int | None = Field(default=None, description="GeoNames id of `city`")
    city_distance_km: float | None = Field(default=None, ge=0.0, description="km from the photo to `city`'s point")
    localizable: bool | None = Field(default=None, description="the teachers' judgement: can the place be inferred?")
    localizability: Score | None = Field(default=None, description="the teachers' localizability score, 0 to 1")
    reasoning: str = Field(default="", description="the distilled reasoning about where the photo was taken")
    entities: list[Entity] = Field(default_factory=list, description="visual cues named in the reasoning")
    teachers: list[TeacherAnswer] = Field(default_factory=list, description="each teacher's answer and usage")
    source: Source = Field(default_factory=Source, description="origin: dataset, url, author, license, labels")
    image: ImageInfo = Field(default_factory=ImageInfo, description="size before and after preparation, sha256")
    split: Literal["train", "test", ""] = Field(default="", description="train or test")
    build: BuildInfo = Field(default_factory=BuildInfo, description="dataset, schema and prompt versions, recipe")

    @field_validator("country_code")
    @classmethod
    def _iso_code(cls, v: str) -> str:
        if v and (len(v) != 2 or not v.isalpha() or not v.isupper()):
            raise ValueError(f"country_code {v!r} is not an ISO 3166-1 alpha-2 code such as 'FR'")
        return v


class TeacherEntity(_Model):
    text: str = Field(description="the cue as named in the reasoning, e.g. 'red double-decker bus'")
    category: str = Field(
        description="one of: architecture, signage, text, vehicle, vegetation, landscape, landmark, people, other"
    )


class TeacherReply(_Model):
    """What a teacher model is asked to return (also the JSON schema for structured output)."""

    localizable: bool = Field(description="can the location be inferred from what is visible?")
    localizability: Score = Field(description="confidence that the image is localizable, 0 to 1")
    reasoning: str = Field(description="step-by-step reasoning grounded in visible cues")
    entities: list[TeacherEntity] = Field(description="the visual cues the reasoning relies on")
    country: str = Field(description="country name in English, '' if unknown")
    city: str = Field(description="city name in English, '' if unknown")
    lat: Latitude | None = Field(description="latitude in decimal degrees, or null")
    lon: Longitude | None = Field(description="longitude in decimal degrees, or null")


class SchemaError(ValueError):
    """A record that does not fit the schema; the message names every bad field."""


# -- validation and JSON ---------------------------------------------------------------------------------
def validate(record: dict[str, Any] | Sample) -> Sample:
    """Check a record against the schema and return it as a :class:`Sample`."""
    if isinstance(record, Sample):
        return record
    try:
        return Sample.model_validate(record)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<record>'}: {e['msg']}" for e in exc.errors())
        rid = record.get("id", "?") if isinstance(record, dict) else "?"
        raise SchemaError(f"record {rid!r} does not fit the MP16-Reason schema: {problems}") from None


def to_json_bytes(sample: Sample | dict[str, Any]) -> bytes:
    """The shard's ``json`` member: every field present, in schema order, UTF-8, no whitespace.

    Pydantic's own serializer writes it, a third of the CPU of ``json.dumps`` over ``model_dump``, and the
    same text except that a number under 1e-4 is written out (``0.00001``, not ``1e-05``): both read back
    as the same float. No NaN reaches it: every float field has bounds, which NaN fails."""
    return validate(sample).model_dump_json().encode("utf-8")


def from_json_bytes(data: bytes | str) -> Sample:
    return validate(json.loads(data))


# -- derived schemas -------------------------------------------------------------------------------------
def _strip_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _strip_optional(args[0])
    if origin is Annotated:
        return _strip_optional(typing.get_args(tp)[0])
    return tp


def _feature(tp: Any):
    import datasets

    tp = _strip_optional(tp)
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return {name: _feature(f.annotation) for name, f in tp.model_fields.items()}
    if origin is list:
        return datasets.List(_feature(typing.get_args(tp)[0]))
    if origin is Literal:
        return datasets.Value("string")
    mapping = {str: "string", bool: "bool", int: "int64", float: "float64"}
    if tp in mapping:
        return datasets.Value(mapping[tp])
    raise TypeError(f"no Arrow type for schema annotation {tp!r}")


def record_features() -> dict:
    """Features of the ``json`` column: a struct with every :class:`Sample` field."""
    return _feature(Sample)


def features(image_column: str = "jpg"):
    """``datasets.Features`` of a shard sample: the image, and the record under ``json``."""
    import datasets

    return datasets.Features({image_column: datasets.Image(), "json": record_features()})


def field_names(model: type[BaseModel] = Sample) -> list[str]:
    """Every key that can appear in a record, nested keys included (used to check they are dot-free)."""
    names: list[str] = []
    for name, f in model.model_fields.items():
        names.append(name)
        tp = _strip_optional(f.annotation)
        inner = typing.get_args(tp)[0] if typing.get_origin(tp) is list else tp
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            names += field_names(inner)
    return names


def teacher_reply_schema() -> dict[str, Any]:
    """JSON schema for a teacher's answer, in the strict form OpenAI-compatible servers accept
    (every property required, no extra properties, nullable numbers as ``anyOf`` with null)."""
    schema = TeacherReply.model_json_schema()

    def tighten(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                node["required"] = list(node["properties"])
                node["additionalProperties"] = False
            for value in node.values():
                tighten(value)
        elif isinstance(node, list):
            for value in node:
                tighten(value)

    tighten(schema)
    return schema


for _name in field_names():
    assert "." not in _name, f"schema key {_name!r} contains a dot"
