"""Reading image metadata: MP16-Pro CSVs, GLOBE test CSVs, the official MP16-Reason release, or any CSV/parquet
with id, lat, lon.

Every input row ends up either as an :class:`ingest` row or as a rejection with its reason; a malformed CSV
line is a rejection, not a crash. Ingest also takes coordinates the file lacks from ``input.join`` files, and
joins the image sources' indexes onto the rows (see :mod:`builders.sources`).
"""

from __future__ import annotations

import ast
import csv
import json
import re
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
    # The official release's training CSV, as its training code reads it.
    "response": ("response", "reasoning"),
    "solution": ("solution",),
    "entities": ("entities",),
}
REQUIRED = ("id", "lat", "lon")
RELEASE_COLUMNS = ("response", "solution", "entities")  # required together: a release training file
_SOLUTION = re.compile(r"\s*<country>(.*?)</country>\s*<city>(.*?)</city>\s*", re.S)


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
    """Map our field names to the table's columns (explicit mapping first, then known layouts, case-insensitive)."""
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
    required = [f for f in REQUIRED if not (spec.join and f in ("lat", "lon"))]
    if spec.format == "globe-release" and "response" in mapping:
        required += RELEASE_COLUMNS
    missing = [f for f in required if f not in mapping]
    if missing:
        example = ", ".join(f"{f}: <your column>" for f in missing)
        hint = (
            " or give input.join (e.g. MP16-Pro's metadata) to take coordinates from"
            if {"lat", "lon"} & set(missing)
            else ""
        )
        raise InputError(
            f"{spec.metadata} has no column for {', '.join(missing)} (its columns: "
            f"{', '.join(map(str, df.columns[1:]))}); name them with input.columns in the recipe "
            f"(columns: {{{example}}}){hint}"
        )
    if "image" not in mapping and "url" not in mapping and not spec.images:
        raise InputError(
            f"{spec.metadata}: rows need images: set input.images (folders, .tar/.zip archives, .csv URL lists) "
            "or give a url column"
        )
    return mapping


def parse_solution(text: str) -> tuple[str, str]:
    """``<country>X</country><city>Y</city>`` -> ``(X, Y)``; ValueError when it is not that."""
    found = _SOLUTION.fullmatch(text or "")
    if not found:
        raise ValueError(f"malformed solution: {text[:80]!r} (expected <country>X</country><city>Y</city>)")
    return found.group(1).strip(), found.group(2).strip()


def parse_entities(text: str) -> list[dict]:
    """The release's ``entities`` cell: a list of ``{"text": ...}`` (optionally ``category``), written as JSON or
    as a Python literal (read with ``ast.literal_eval``: literals only, nothing is run)."""
    value = None
    for parse in (json.loads, ast.literal_eval):
        try:
            value = parse(text)
            break
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    else:
        raise ValueError(f"unparsable entities: {text[:80]!r} (expected a JSON or Python list of {{'text': ...}})")
    if not isinstance(value, list):
        raise ValueError(f"unparsable entities: {text[:80]!r} is not a list")
    out = []
    for item in value:
        if isinstance(item, dict) and isinstance(item.get("text"), str):
            out.append({"text": item["text"], "category": str(item.get("category") or "")})
        elif isinstance(item, str):
            out.append({"text": item, "category": ""})
        else:
            raise ValueError(f"unparsable entities: item {item!r} has no text")
    return out


def _release_fields(out: pd.DataFrame, reasons: pd.Series) -> None:
    """Parse the release's reasoning, answer and entities in place; bad cells become rejection reasons."""
    countries, cities, entities = [], [], []
    for i, (response, solution, ents) in enumerate(zip(out["response"], out["solution"], out["entities"])):
        country = city = ents_json = ""
        try:
            if not response.strip():
                raise ValueError("empty response (no reasoning)")
            country, city = parse_solution(solution)
            ents_json = json.dumps(parse_entities(ents), ensure_ascii=False)
        except ValueError as exc:
            if not reasons.iat[i]:
                reasons.iat[i] = str(exc)
        countries.append(country)
        cities.append(city)
        entities.append(ents_json)
    out["answer_country"], out["answer_city"], out["entities"] = countries, cities, entities
    # The release's answer is its label of the photo, kept as source labels like any input's.
    has = out["answer_country"] != ""
    out.loc[has, "label_country"] = out.loc[has, "answer_country"]
    out.loc[has, "label_city"] = out.loc[has, "answer_city"]


def join_coordinates(out: pd.DataFrame, files: list[str]) -> None:
    """Fill missing lat/lon, in place, from ``files`` (CSV or parquet with id, lat, lon; first file wins)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    need = (out["lat"] == "") | (out["lon"] == "")
    for path in files:
        if not need.any():
            return
        if not Path(path).exists():
            raise InputError(f"input.join file {path} does not exist")
        if str(path).endswith((".parquet", ".pq")):
            table = pq.read_table(path)
        else:
            table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(strings_can_be_null=False))
        lower = {c.lower(): c for c in table.column_names}
        cols = {f: next((lower[n.lower()] for n in CANDIDATES[f] if n.lower() in lower), None) for f in REQUIRED}
        if None in cols.values():
            raise InputError(
                f"input.join file {path} needs id, lat and lon columns (its columns: {', '.join(table.column_names)})"
            )
        coords = pa.table({f: table.column(c).cast(pa.string()) for f, c in cols.items()}).to_pandas()
        coords = coords.drop_duplicates("id").set_index("id")
        ids = out.loc[need, "id"]
        found = ids.isin(coords.index)
        hit = ids[found]
        out.loc[hit.index, "lat"] = coords.loc[hit, "lat"].to_numpy()
        out.loc[hit.index, "lon"] = coords.loc[hit, "lon"].to_numpy()
        need = (out["lat"] == "") | (out["lon"] == "")


def ingest(
    spec: InputSpec, limit: int | None = None, work_dir: Path | None = None
) -> tuple[pd.DataFrame, list[dict], int]:
    """Read, map and check the metadata, and find each row's image in the sources.

    Returns ``(rows, rejections, n_input)``: rows with columns ``row, id, lat, lon, image, url, author,
    license, label_*`` (release files add ``response, answer_country, answer_city, entities``) and, per indexed
    image source, where the row's image sits in it; rejections for malformed lines, bad coordinates, empty and
    duplicate ids (the first occurrence of an id wins), unparsable release cells, and images in no source.
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
    if spec.join:
        join_coordinates(out, spec.join)
    missing_coords = (out["lat"] == "") & (out["lon"] == "")
    lat, lon, errors = coerce_coordinates(out["lat"].to_numpy(), out["lon"].to_numpy())
    out["lat"], out["lon"] = lat, lon
    reasons = pd.Series(errors, index=out.index, dtype=object)
    if spec.join:
        where = ", ".join(Path(p).name for p in spec.join)
        reasons[missing_coords] = f"no coordinates: not in the metadata nor in input.join ({where})"
    if spec.format == "globe-release" and "response" in cols:
        _release_fields(out, reasons)
    reasons[out["id"] == ""] = "empty id"
    dup = out["id"].duplicated(keep="first") & (out["id"] != "")
    first_row = out.drop_duplicates("id").set_index("id")["row"]
    reasons[dup] = [f"duplicate id (first seen at row {first_row[i]})" for i in out.loc[dup, "id"]]
    bad = reasons != ""
    rejected += [
        {"row": int(r), "id": i, "stage": "ingest", "reason": why}
        for r, i, why in zip(out.loc[bad, "row"], out.loc[bad, "id"], reasons[bad])
    ]
    out = out.loc[~bad].reset_index(drop=True)
    if spec.images:
        out, unseen = _locate_images(out, spec, work_dir)
        rejected += unseen
    return out, rejected, n_input


def _locate_images(out: pd.DataFrame, spec: InputSpec, work_dir: Path | None) -> tuple[pd.DataFrame, list[dict]]:
    """Join the image sources' indexes onto the rows; rows that no source can serve are rejected here."""
    import pyarrow as pa

    from .sources import image_sources, join_sources, missing_reason

    sources = image_sources(spec.images)
    if work_dir is None:
        raise ValueError("ingest needs a work folder for the image sources' indexes")
    refs = out["image"].where(out["image"] != "", out["id"])
    located = join_sources(pa.array(refs, pa.string()), pa.array(out["id"], pa.string()), sources, work_dir)
    for name, column in located.items():
        out[name] = column.to_pandas(types_mapper=pd.ArrowDtype)  # ints stay ints, absent stays null
    if any(s.kind == "folder" for s in sources):  # a folder is probed when the unit reads it
        return out, []
    listed = pd.Series(False, index=out.index)
    for column in located.values():
        listed |= column.is_valid().to_numpy(zero_copy_only=False)
    reason = missing_reason(sources)
    unseen = [
        {"row": int(r), "id": i, "stage": "fetch", "reason": reason}
        for r, i in zip(out.loc[~listed, "row"], out.loc[~listed, "id"])
    ]
    return out.loc[listed].reset_index(drop=True), unseen
