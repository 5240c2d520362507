"""Reading image metadata: MP16-Pro CSVs, GLOBE test CSVs, or any CSV/parquet with id, lat, lon.

Every input row ends up either as an :class:`ingest` row or as a rejection with its reason; a malformed CSV
line is a rejection, not a crash.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from mp16_reason.coords import coerce_coordinates

from .recipe import InputSpec

LABEL_COLUMNS = ("neighbourhood", "city", "county", "state", "region", "country", "continent")
# Candidate source columns for each of our fields, in order of preference (matched case-insensitively).
CANDIDATES: dict[str, tuple[str, ...]] = {
    "id": ("IMG_ID", "id", "image_id", "photo_id", "key"),
    "lat": ("LAT", "lat", "latitude"),
    "lon": ("LON", "lon", "lng", "longitude"),
    "image": ("image", "path", "image_path", "file", "filename"),
    "url": ("url", "image_url", "URL"),
    "author": ("author", "owner"),
    "license": ("license",),
    **{f"label_{c}": (c,) for c in LABEL_COLUMNS},
}
REQUIRED = ("id", "lat", "lon")


class InputError(ValueError):
    """Metadata that cannot be read at all (missing file, missing columns)."""


def read_table(path: str | Path) -> tuple[pd.DataFrame, list[dict]]:
    """Read a CSV (tolerating malformed lines) or a parquet file as strings.

    Returns the frame, with ``_row`` = the data row number (0-based, header excluded), and one rejection per
    malformed line.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"metadata file {p} does not exist")
    if p.suffix.lower() in (".parquet", ".pq"):
        df = pq.read_table(p).to_pandas().astype(str).replace({"None": "", "nan": ""})
        df.insert(0, "_row", range(len(df)))
        return df, []
    rejected: list[dict] = []
    rows: list[list[str]] = []
    numbers: list[int] = []
    with p.open(newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise InputError(f"metadata file {p} is empty") from None
        width = len(header)
        for i, fields in enumerate(reader):
            if not fields:
                continue  # blank line: not a row
            if len(fields) != width:
                rejected.append(
                    {
                        "row": i,
                        "id": fields[0] if fields else "",
                        "stage": "ingest",
                        "reason": f"malformed CSV line {reader.line_num}: {len(fields)} fields, header has {width}",
                    }
                )
                continue
            rows.append(fields)
            numbers.append(i)
    df = pd.DataFrame(rows, columns=header, dtype=object)
    df.insert(0, "_row", numbers)
    return df, rejected


def resolve_columns(df: pd.DataFrame, spec: InputSpec) -> dict[str, str]:
    """Map our field names to the table's columns (explicit mapping first, then known layouts)."""
    lower = {c.lower(): c for c in df.columns}
    mapping: dict[str, str] = {}
    for field, column in spec.columns.items():
        if column not in df.columns:
            raise InputError(
                f"input.columns maps {field!r} to {column!r}, which is not a column of "
                f"{spec.metadata} (columns: {', '.join(map(str, df.columns[1:]))})"
            )
        mapping[field] = column
    for field, names in CANDIDATES.items():
        if field in mapping:
            continue
        for name in names:
            if name.lower() in lower:
                mapping[field] = lower[name.lower()]
                break
    missing = [f for f in REQUIRED if f not in mapping]
    if missing:
        raise InputError(
            f"{spec.metadata} has no column for {', '.join(missing)}; name them with input.columns in the recipe "
            f"(e.g. columns: {{id: photo_id, lat: latitude, lon: longitude}})"
        )
    if "image" not in mapping and "url" not in mapping and not spec.images:
        raise InputError(f"{spec.metadata}: rows need images: set input.images (a folder or .tar) or give a url column")
    return mapping


def ingest(spec: InputSpec, limit: int | None = None) -> tuple[pd.DataFrame, list[dict], int]:
    """Read, map and check the metadata.

    Returns ``(rows, rejections, n_input)``: rows with columns ``row, id, lat, lon, image, url, author,
    license, label_*``; rejections for malformed lines, bad coordinates, empty and duplicate ids (the first
    occurrence of an id wins).
    """
    df, rejected = read_table(spec.metadata)
    if limit is not None:  # the first `limit` data lines, malformed ones included
        df = df[df["_row"] < limit]
        rejected = [r for r in rejected if r["row"] < limit]
    n_input = len(df) + len(rejected)
    cols = resolve_columns(df, spec)
    out = pd.DataFrame({"row": df["_row"].to_numpy()})
    for field in CANDIDATES:
        out[field] = df[cols[field]].fillna("").astype(str).str.strip().to_numpy() if field in cols else ""
    if spec.image_suffix:
        refs = out["image"].where(out["image"] != "", out["id"])
        out["image"] = [r if r.endswith(spec.image_suffix) else r + spec.image_suffix for r in refs]
    lat, lon, errors = coerce_coordinates(out["lat"].to_numpy(), out["lon"].to_numpy())
    out["lat"], out["lon"] = lat, lon
    reasons = pd.Series(errors, index=out.index, dtype=object)
    reasons[out["id"] == ""] = "empty id"
    dup = out["id"].duplicated(keep="first") & (out["id"] != "")
    first_row = out.drop_duplicates("id").set_index("id")["row"]
    reasons[dup] = [f"duplicate id (first seen at row {first_row[i]})" for i in out.loc[dup, "id"]]
    bad = reasons != ""
    rejected += [
        {"row": int(r), "id": i, "stage": "ingest", "reason": why}
        for r, i, why in zip(out.loc[bad, "row"], out.loc[bad, "id"], reasons[bad])
    ]
    return out.loc[~bad].reset_index(drop=True), rejected, n_input
