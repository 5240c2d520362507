"""MP16-Reason: a geo-localization reasoning dataset over MP-16 photos.

The base package is light (no torch): the record schema, an offline GeoNames gazetteer, geo metrics and
name matching, and the ``mp16-reason`` command line.
"""

from .distance import THRESHOLDS_KM, accuracy_table, distance_km, geodesic_km, geoscore, haversine_km
from .gazetteer import Gazetteer, forward_geocode, reverse_geocode, reverse_geocode_batch
from .hub import REPO_ID, load, shard_urls, stream
from .matching import city_match, country_match, location_score, official_match
from .names import canonical_country, country_code, normalize
from .schema import Entity, Sample, SchemaError, TeacherAnswer, TeacherReply, features, validate

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
