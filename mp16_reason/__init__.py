"""MP16-Reason: a geo-localization reasoning dataset over MP-16 photos.

The base package is light (no torch): the record schema, an offline GeoNames gazetteer, geo metrics and
name matching, and the ``mp16-reason`` command line.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Each public name and the module that defines it. They are imported on first use (PEP 562), so
# `mp16-reason --help` or `import mp16_reason.schema` does not load pandas, scipy and the gazetteer first.
_EXPORTS = {
    ".distance": ["THRESHOLDS_KM", "accuracy_table", "distance_km", "geodesic_km", "geoscore", "haversine_km"],
    ".gazetteer": ["Gazetteer", "forward_geocode", "reverse_geocode", "reverse_geocode_batch"],
    ".hub": ["REPO_ID", "load", "shard_urls", "stream"],
    ".matching": ["city_match", "country_match", "location_score", "official_match"],
    ".names": ["canonical_country", "country_code", "normalize"],
    ".schema": ["Entity", "Sample", "SchemaError", "TeacherAnswer", "TeacherReply", "features", "validate"],
    ".streaming": ["collate"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

if TYPE_CHECKING:
    from .distance import THRESHOLDS_KM, accuracy_table, distance_km, geodesic_km, geoscore, haversine_km
    from .gazetteer import Gazetteer, forward_geocode, reverse_geocode, reverse_geocode_batch
    from .hub import REPO_ID, load, shard_urls, stream
    from .matching import city_match, country_match, location_score, official_match
    from .names import canonical_country, country_code, normalize
    from .schema import Entity, Sample, SchemaError, TeacherAnswer, TeacherReply, features, validate
    from .streaming import collate


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'mp16_reason' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__version__ = "0.1.0"

__all__ = [
    "REPO_ID",
    "THRESHOLDS_KM",
    "Entity",
    "Gazetteer",
    "Sample",
    "SchemaError",
    "TeacherAnswer",
    "TeacherReply",
    "__version__",
    "accuracy_table",
    "canonical_country",
    "city_match",
    "collate",
    "country_code",
    "country_match",
    "distance_km",
    "features",
    "forward_geocode",
    "geodesic_km",
    "geoscore",
    "haversine_km",
    "load",
    "location_score",
    "normalize",
    "official_match",
    "reverse_geocode",
    "reverse_geocode_batch",
    "shard_urls",
    "stream",
    "validate",
]
