"""Statistics of a finished build, read back from its shards, and a world map of the sample locations.

They feed the dataset card; reading the shards (not the work files) means the card describes exactly what
is published.
"""

from __future__ import annotations

import json
import math
import re
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import ImageDraw

from mp16_reason.manifest import DEFAULT_CONFIG, Manifest, read_manifest
from mp16_reason.storage import location


def iter_records(root: str | Path, manifest: Manifest | None = None) -> Iterator[tuple[str, dict]]:
    """``(config, record)`` for every sample of every shard the manifest lists (JSON members only)."""
    root = location(root)
    for shard in (manifest or read_manifest(root)).shards:
        with (root / shard.path).open("rb") as fh, tarfile.open(fileobj=fh, mode="r|") as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    yield shard.config, json.load(tar.extractfile(member))


@dataclass
class Stats:
    samples: Counter = field(default_factory=Counter)  # (config, split) -> n
    continents: Counter = field(default_factory=Counter)  # (continent, split) -> n, default config
    countries: Counter = field(default_factory=Counter)
    cities: set = field(default_factory=set)
    localizable: Counter = field(default_factory=Counter)  # True / False / None
    localizability_bins: list[int] = field(default_factory=lambda: [0] * 10)
    judged_by_teachers: int = 0
    teachers_agree: int = 0  # samples with >= 2 parsed answers that all name the same country
    multi_teacher: int = 0
    points: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # split -> (lat, lon)
    image_sources: Counter = field(default_factory=Counter)  # (kind, name) of the source that served each image
    release_answers: int = 0  # samples with the official release's answer
    release_country: int = 0  # ... whose country matches the gazetteer's (alias-aware)
    release_city: int = 0  # ... whose country and city do
    located: Counter = field(default_factory=Counter)  # teacher -> answers with coordinates
    within: dict[str, list[int]] = field(default_factory=dict)  # teacher -> answers within each THRESHOLDS_KM

    def teacher_accuracy(self) -> list[tuple[str, int, list[float]]]:
        """(teacher, answers with coordinates, % within each threshold) for teachers that gave coordinates."""
        return [(name, n, [100.0 * k / n for k in self.within[name]]) for name, n in self.located.items() if n]

    def top_countries(self, n: int = 15) -> list[tuple[str, int]]:
        return self.countries.most_common(n)

    def continent_rows(self) -> list[tuple[str, int, int]]:
        names = sorted({c for c, _ in self.continents}, key=lambda c: (c == "", c))
        return [(c or "(none)", self.continents[(c, "train")], self.continents[(c, "test")]) for c in names]


def compute(root: str | Path, manifest: Manifest | None = None) -> Stats:
    from mp16_reason.distance import THRESHOLDS_KM, haversine_km
    from mp16_reason.matching import city_match, country_match
    from mp16_reason.names import normalize

    stats = Stats()
    for config, rec in iter_records(root, manifest):
        split = rec.get("split", "")
        stats.samples[(config, split)] += 1
        if config != DEFAULT_CONFIG:
            continue
        stats.continents[(rec.get("continent", ""), split)] += 1
        stats.countries[rec.get("country", "")] += 1
        if rec.get("geonames_id") is not None:
            stats.cities.add(rec["geonames_id"])
        stats.points.setdefault(split, []).append((rec["lat"], rec["lon"]))
        stats.localizable[rec.get("localizable")] += 1
        score = rec.get("localizability")
        if score is not None:
            stats.localizability_bins[min(9, int(score * 10))] += 1
        served = rec.get("source", {}).get("image_source") or {}
        stats.image_sources[(served.get("kind", ""), served.get("name", ""))] += 1
        for t in rec.get("teachers", []):
            if t.get("lat") is not None and t.get("lon") is not None:
                km = float(haversine_km(t["lat"], t["lon"], rec["lat"], rec["lon"]))
                stats.located[t["teacher"]] += 1
                hits = stats.within.setdefault(t["teacher"], [0] * len(THRESHOLDS_KM))
                for i, limit in enumerate(THRESHOLDS_KM):
                    hits[i] += km <= limit
            if t.get("origin") == "release":
                stats.release_answers += 1
                if country_match(t.get("country"), rec.get("country")):
                    stats.release_country += 1
                    stats.release_city += city_match(t.get("city"), rec.get("city"), rec.get("country"))
        answers = [t for t in rec.get("teachers", []) if t.get("parsed")]
        if answers:
            stats.judged_by_teachers += 1
        if len(answers) >= 2:
            stats.multi_teacher += 1
            stats.teachers_agree += len({normalize(t.get("country", "")) for t in answers}) == 1
    return stats


def reason_class(reason: str) -> str:
    """What a rejection reason says, without its particulars: "dead link (HTTP 404) after ...: URL" -> "dead link"."""
    return re.sub(r"\s*\d+$", "", re.split(r"[(:\[]", reason, maxsplit=1)[0].strip()) or reason


def world_map(stats: Stats, path: str | Path, width: int = 1200) -> Path:
    """An equirectangular PNG of the sample locations: train in red, test in orange."""
    from mp16_reason.worldmap import base_map

    img, xy = base_map(width)
    draw = ImageDraw.Draw(img)
    radius = max(1, round(width / 600))
    for split, colour in (("train", (235, 64, 52)), ("test", (255, 176, 0))):
        for lat, lon in stats.points.get(split, []):
            x, y = xy(lat, lon)
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
    path = location(path)
    with path.commit() as fh:
        img.save(fh, format="PNG", optimize=True)
    return path


SIZE_CATEGORIES = ["n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "100M<n<1B"]


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` label for ``n`` samples."""
    return SIZE_CATEGORIES[min(len(SIZE_CATEGORIES) - 1, max(0, int(math.log10(max(n, 1))) - 2))]
