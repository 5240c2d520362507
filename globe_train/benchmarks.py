"""Evaluation sets as lists of :class:`EvalItem`: MP16-Reason-Test, IM2GPS3K, YFCC4K, OSV-5M, or any CSV.

Truth coordinates come from the set. Truth names come from the set when it has them (the GLOBE test CSV and
MP16-Reason records do) and otherwise from the offline gazetteer, which also gives every item its continent.
Rows without valid coordinates are left out and counted, as the released evaluation does.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

BENCHMARKS = ("mp16-reason-test", "im2gps3k", "yfcc4k", "osv5m", "csv")

# Column names each layout uses (first match wins), all compared case-insensitively.
ID_COLUMNS = ("img_id", "id", "image_id", "photo_id")
LAT_COLUMNS = ("lat", "latitude")
LON_COLUMNS = ("lon", "lng", "longitude")
IMAGE_COLUMNS = ("image", "image_path", "path", "file", "filename")


@dataclass
class EvalItem:
    id: str
    lat: float
    lon: float
    image: str | bytes  # a path, or the image bytes
    country: str = ""
    city: str = ""
    continent: str = ""


@dataclass
class Benchmark:
    name: str
    items: list[EvalItem]
    skipped: int = 0  # rows without valid coordinates
    source: dict | None = None  # {"hub_id", "revision"} for a Hub dataset: what a model card may cite


def _pick(columns: list[str], names: tuple[str, ...], what: str, path: Path) -> str:
    lower = {c.lower(): c for c in columns}
    for name in names:
        if name in lower:
            return lower[name]
    raise ValueError(f"{path}: no {what} column (looked for {', '.join(names)}); columns are {', '.join(columns)}")


def _label(items: list[EvalItem]) -> None:
    """Fill missing names, and every continent, from the gazetteer."""
    from mp16_reason.gazetteer import default_gazetteer

    if not items:
        return
    places = default_gazetteer().reverse_batch([i.lat for i in items], [i.lon for i in items])
    for item, (_, place) in zip(items, places.iterrows()):
        if not item.country:
            item.country = place["country"] or ""
            item.city = item.city or (place["city"] or "")
        item.continent = item.continent or (place["continent"] or "")


def repeated(ids: Iterable[str]) -> str:
    """The ids given more than once, for an error ("2 id(s), e.g. '7' (3x)"); empty when there are none."""
    twice = {i: n for i, n in Counter(ids).items() if n > 1}
    named = ", ".join(f"{i!r} ({n}x)" for i, n in list(twice.items())[:5])
    return f"{len(twice):,} id(s), e.g. {named}" if twice else ""


def from_csv(path: str | Path, images: str | Path | None, name: str = "csv", suffix: str | None = None) -> Benchmark:
    """A CSV (or parquet) with id, lat, lon and optionally an image path, city and country."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"benchmark file {path} does not exist")
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype=str, keep_default_na=False)
    cols = list(df.columns)
    id_col = _pick(cols, ID_COLUMNS, "id", path)
    lat_col, lon_col = _pick(cols, LAT_COLUMNS, "latitude", path), _pick(cols, LON_COLUMNS, "longitude", path)
    lower = {c.lower(): c for c in cols}
    image_col = next((lower[c] for c in IMAGE_COLUMNS if c in lower), None)
    folder = Path(images) if images else path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist; pass --images")
    items, skipped = [], 0
    for row in df.to_dict("records"):
        try:
            lat, lon = float(row[lat_col]), float(row[lon_col])
        except (TypeError, ValueError):
            skipped += 1
            continue
        if not (math.isfinite(lat) and math.isfinite(lon) and abs(lat) <= 90 and abs(lon) <= 180):
            skipped += 1
            continue
        ident = str(row[id_col])
        ref = str(row[image_col]) if image_col else ident
        if suffix is None and not image_col and not Path(ref).suffix:
            ref += ".jpg"  # GLOBE, IM2GPS3K and OSV-5M name images <id>.jpg
        elif suffix:
            ref += suffix
        items.append(
            EvalItem(
                id=ident,
                lat=lat,
                lon=lon,
                image=str(folder / ref),
                country=str(row.get(lower.get("country", ""), "") or ""),
                city=str(row.get(lower.get("city", ""), "") or ""),
            )
        )
    if twice := repeated(i.id for i in items):
        raise ValueError(f"{path}: {twice} appear more than once; each item needs its own id")
    _label(items)
    return Benchmark(name, items, skipped)


def from_mp16_reason(path: str | Path | None = None, split: str = "test", revision: str | None = None) -> Benchmark:
    """MP16-Reason-Test from a local build folder, or from the Hub (``HF_ENDPOINT`` honoured)."""
    import json

    from mp16_reason import stream

    items = []
    in_order = {"rows": "raw", "decode": False, "shuffle": 0, "shard_shuffle": False}
    for sample in stream(split=split, path=path, revision=revision, **in_order):
        rec = json.loads(sample["json"])
        items.append(
            EvalItem(
                id=rec["id"],
                lat=rec["lat"],
                lon=rec["lon"],
                image=sample["jpg"],
                country=rec.get("country", ""),
                city=rec.get("city", ""),
                continent=rec.get("continent", ""),
            )
        )
    _label(items)
    if path is not None:
        return Benchmark("mp16-reason-test", items)
    from huggingface_hub import HfApi

    from mp16_reason.hub import REPO_ID

    sha = revision if revision and len(revision) == 40 else HfApi().dataset_info(REPO_ID, revision=revision).sha
    return Benchmark("mp16-reason-test", items, source={"hub_id": REPO_ID, "revision": sha})


def load_benchmark(
    name: str,
    data: str | Path | None = None,
    images: str | Path | None = None,
    limit: int | None = None,
    revision: str | None = None,
) -> Benchmark:
    """``name`` is one of :data:`BENCHMARKS`; ``data`` the CSV (or the MP16-Reason build folder); ``revision``
    pins the Hub dataset (MP16-Reason-Test without ``data``)."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; use one of {', '.join(BENCHMARKS)}")
    if name == "mp16-reason-test" and (data is None or Path(data).is_dir()):
        bench = from_mp16_reason(data, revision=revision)
    elif data is None:
        raise ValueError(f"benchmark {name} needs --data: its CSV of image ids and coordinates")
    else:
        bench = from_csv(data, images, name)
    if limit is not None:
        bench.items = bench.items[:limit]
    return bench
