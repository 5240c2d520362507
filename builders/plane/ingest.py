"""Reading image metadata: MP16-Pro CSVs, GLOBE test CSVs, the official MP16-Reason release, or any CSV/parquet
with id, lat, lon.

Every input row ends up either as an ingest row or as a rejection with its reason; a malformed CSV line is a
rejection with its line number, not a crash. Ingest also takes coordinates the file lacks from
``input.join`` files, and joins the image sources' indexes onto the rows (see :mod:`builders.sources.base`).

It streams: the CSV is split into records block by block (:mod:`builders.plane.csvrecords`: exact at any size,
cells that span lines included) and each block's records are parsed by Arrow into Arrow columns (only the
columns the build uses; labels dictionary-encoded); coordinates, ids and duplicates are checked on whole columns.
"""

from __future__ import annotations

import ast
import csv
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from builders.plane import csvrecords
from builders.recipe import InputSpec
from builders.workfolder import LABEL_COLUMNS, REJECTION_WORK_SCHEMA
from mp16_reason.coords import coerce_coordinates
from mp16_reason.storage import Location, location

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
RELEASE_COLUMNS = ("response", "solution", "entities")  # a release training file: every row needs all three
_SOLUTION = re.compile(r"\s*<country>(.*?)</country>\s*<city>(.*?)</city>\s*", re.S)


class InputError(ValueError):
    """Metadata that cannot be read at all (missing file, missing columns)."""


def rejections(rows, ids, stage: str, reasons: list | str) -> pa.Table:
    """Rejection records (``reasons``: one per row, or one for all), stage and reason dictionary-encoded."""
    n = len(rows)

    def constant(text: str) -> pa.DictionaryArray:
        return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([text], pa.string()))

    why = constant(reasons) if isinstance(reasons, str) else _array(reasons, pa.string()).dictionary_encode()
    return pa.table(
        [_array(rows, pa.int64()), _array(ids, pa.string()), constant(stage), why], schema=REJECTION_WORK_SCHEMA
    )


def _array(values, dtype: pa.DataType) -> pa.Array:
    """``values`` as an Arrow array; a chunked one is combined by Arrow, where ``pa.array`` would convert it
    through a Python object a value (~3 s a column of 4M rows here)."""
    if isinstance(values, pa.ChunkedArray):  # one chunk (a filtered column): its buffers, not a copy
        values = values.chunk(0) if values.num_chunks == 1 else values.combine_chunks()
    return pa.array(values, dtype)


def resolve_columns(columns: list[str], spec: InputSpec) -> dict[str, str]:
    """Map our field names to the file's columns (explicit mapping first, then known layouts, case-insensitive)."""
    lower = {c.lower(): c for c in columns}
    mapping: dict[str, str] = {}
    for field, column in spec.columns.items():
        if column not in columns:
            raise InputError(
                f"input.columns maps {field!r} to {column!r}, which is not a column of "
                f"{spec.metadata} (columns: {', '.join(columns)})"
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
    if spec.format == "globe-release":  # never a release record without its reasoning
        required += RELEASE_COLUMNS
    missing = [f for f in required if f not in mapping]
    if missing:
        example = ", ".join(f"{f}: <your column>" for f in missing)
        coords = {"lat", "lon"} & set(missing)
        hint = " or give input.join (e.g. MP16-Pro's metadata) to take coordinates from" if coords else ""
        raise InputError(
            f"{spec.metadata} has no column for {', '.join(missing)} (its columns: {', '.join(columns)}); name "
            f"them with input.columns in the recipe (columns: {{{example}}}){hint}"
        )
    if "image" not in mapping and "url" not in mapping and not spec.images:
        raise InputError(
            f"{spec.metadata}: rows need images: set input.images (folders, .tar/.zip archives, .csv URL lists) "
            "or give a url column"
        )
    return mapping


def read_metadata(spec: InputSpec, limit: int | None = None) -> tuple[pa.Table, pa.Table, int]:
    """The metadata's columns as our fields (all strings) plus ``row`` (the data row, 0-based, header
    excluded), the malformed lines as rejections, and the number of input rows."""
    path = location(spec.metadata)  # a local file or an fsspec URL
    if not path.exists():
        raise InputError(f"metadata file {path} does not exist")
    if path.name.lower().endswith((".parquet", ".pq")):
        schema = pq.read_schema(path.source())
        mapping = resolve_columns(schema.names, spec)
        table = pq.read_table(path.source(), columns=sorted(set(mapping.values())))
        if limit is not None:
            table = table.slice(0, limit)
        fields = {f: _as_text(table.column(c)) for f, c in mapping.items()}
        fields["row"] = pa.array(np.arange(table.num_rows, dtype=np.int64))
        return pa.table(fields), rejections([], [], "ingest", []), table.num_rows
    header, chunks = _csv_records(path, spec.encoding)
    mapping = resolve_columns(header, spec)
    used = sorted(set(mapping.values()))
    labels = {mapping[f] for f in mapping if f.startswith("label_")}
    types = {c: pa.dictionary(pa.int32(), pa.string()) if c in labels else pa.string() for c in used}
    options = (
        pacsv.ReadOptions(column_names=header, use_threads=False),
        pacsv.ParseOptions(newlines_in_values=True),
        pacsv.ConvertOptions(
            include_columns=used, column_types=types, strings_can_be_null=False, quoted_strings_can_be_null=False
        ),
    )
    tables, rows, bad = [], [], []
    for chunk in chunks:
        bad += chunk.rejected
        if chunk.data:
            table = pacsv.read_csv(pa.py_buffer(chunk.data), *options)
            if table.num_rows != len(chunk.rows):  # the splitter and Arrow disagree: never guess which is right
                raise InputError(
                    f"{path}: {len(chunk.rows)} records split, {table.num_rows} parsed near row {chunk.rows[0]}"
                )
            tables.append(table)
            rows.append(chunk.rows)
        if limit is not None and sum(map(len, rows)) + len(bad) >= limit:
            break
    schema = pa.schema([pa.field(c, types[c]) for c in used])
    table = pa.concat_tables(tables).unify_dictionaries() if tables else schema.empty_table()
    rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    if limit is not None:  # the first `limit` records, malformed ones included
        table, rows = table.filter(pa.array(rows < limit)), rows[rows < limit]
        bad = [b for b in bad if b[0] < limit]
    fields = {f: table.column(c) for f, c in mapping.items()}
    fields["row"] = pa.array(rows)
    rejected = rejections([b[0] for b in bad], [b[2] for b in bad], "ingest", [b[3] for b in bad])
    return pa.table(fields), rejected, table.num_rows + len(bad)


def _csv_records(path: Location, encoding: str | None):
    """The CSV's header and its records (:mod:`builders.plane.csvrecords`), with encoding errors as input
    errors that name the file and the fix."""
    raw = path.open("rb")
    blocks = csvrecords.utf8_blocks(raw, encoding, str(path))

    def guarded():
        try:
            yield from blocks
        except csvrecords.EncodingError as e:
            raise InputError(str(e)) from None
        finally:
            raw.close()

    try:
        header, chunks = csvrecords.split(guarded())
    except (UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{path}: its header cannot be read ({e}); name its encoding with input.encoding") from None
    if not header:
        raise InputError(f"metadata file {path} is empty")
    return header, chunks


def _header(path: Location, encoding: str | None = None) -> list[str]:
    """The CSV's column names (a byte-order mark is not part of the first one)."""
    return _csv_records(path, encoding)[0]


def _as_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A parquet column as strings ("" for null), as a CSV's would be."""
    if not pa.types.is_string(column.type) and not pa.types.is_dictionary(column.type):
        column = column.cast(pa.string())
    return pc.fill_null(column, "")


def parse_solution(text: str) -> tuple[str, str]:
    """``<country>X</country><city>Y</city>`` -> ``(X, Y)``; ValueError when it is not that."""
    found = _SOLUTION.fullmatch(text or "")
    if not found:
        raise ValueError(f"malformed solution: {text[:80]!r} (expected <country>X</country><city>Y</city>)")
    return found.group(1).strip(), found.group(2).strip()


def parse_entities(text: str) -> list[dict]:
    """The release's ``entities`` cell: a list of ``{"text": ...}`` (optionally ``category``), written as JSON or
    as a Python literal (read with ``ast.literal_eval``: literals only, nothing is run)."""
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


def _release_fields(fields: dict[str, pa.Array], reasons: np.ndarray) -> None:
    """Parse the release's reasoning, answer and entities; bad cells become rejection reasons."""
    countries, cities, entities = [], [], []
    for i, (response, solution, ents) in enumerate(zip(*(fields[c].to_pylist() for c in RELEASE_COLUMNS))):
        country = city = ents_json = ""
        try:
            if not response.strip():
                raise ValueError("empty response (no reasoning)")
            country, city = parse_solution(solution)
            ents_json = json.dumps(parse_entities(ents), ensure_ascii=False)
        except ValueError as exc:
            if not reasons[i]:
                reasons[i] = str(exc)
        countries.append(country)
        cities.append(city)
        entities.append(ents_json)
    fields["answer_country"], fields["answer_city"] = pa.array(countries), pa.array(cities)
    fields["entities"] = pa.array(entities)
    # The release's answer is its label of the photo, kept as source labels like any input's.
    fields["label_country"], fields["label_city"] = fields["answer_country"], fields["answer_city"]


def join_coordinates(fields: dict[str, pa.Array], files: list[str], reasons: np.ndarray) -> None:
    """Fill missing lat/lon from ``files`` (CSV or parquet with id, lat, lon; the first file that has a row
    wins). An id a join file lists more than once counts once when every listing has the same coordinates;
    when they differ, the rows with that id are rejected (``reasons``), since which one is right is unknown."""
    n = len(fields["id"])
    lat = fields.get("lat", pa.array([""] * n))
    lon = fields.get("lon", pa.array([""] * n))
    for path in files:
        need = pc.or_(pc.equal(lat, ""), pc.equal(lon, ""))
        if not pc.any(need).as_py():
            break
        path = location(path)
        if not path.exists():
            raise InputError(f"input.join file {path} does not exist; fix --join or input.join")
        parquet = path.name.lower().endswith((".parquet", ".pq"))
        columns = pq.read_schema(path.source()).names if parquet else _header(path)
        lower = {c.lower(): c for c in columns}
        cols = {f: next((lower[c.lower()] for c in CANDIDATES[f] if c.lower() in lower), None) for f in REQUIRED}
        if None in cols.values():
            raise InputError(
                f"input.join file {path} needs id, lat and lon columns (its columns: {', '.join(columns)})"
            )
        if parquet:
            table = pq.read_table(path.source(), columns=list(cols.values()))
        else:
            options = pacsv.ConvertOptions(
                include_columns=list(cols.values()),
                strings_can_be_null=False,
                column_types=dict.fromkeys(cols.values(), pa.string()),
            )
            table = pacsv.read_csv(path.source(), convert_options=options)
        coords = pa.table({f"j_{f}": pc.utf8_trim_whitespace(_as_text(table.column(c))) for f, c in cols.items()})
        coords, conflicting = _one_per_id(coords)
        rows = pa.table({"id": fields["id"], "_pos": pa.array(np.arange(n))})
        joined = rows.join(coords, keys="id", right_keys="j_id", join_type="left outer").sort_by("_pos")
        found = pc.and_(need, pc.is_valid(joined.column("j_lat")))
        lat = pc.if_else(found, joined.column("j_lat"), lat)
        lon = pc.if_else(found, joined.column("j_lon"), lon)
        if len(conflicting):
            clash = pc.and_(need, pc.is_in(fields["id"], value_set=conflicting)).to_numpy(zero_copy_only=False)
            clash &= reasons == ""
            reasons[clash] = f"input.join file {path.name} lists this id more than once, with different coordinates"
    fields["lat"], fields["lon"] = lat, lon


def _one_per_id(coords: pa.Table) -> tuple[pa.Table, pa.Array]:
    """One row per id (listings with the same coordinates collapse), and the ids listed with different ones."""
    groups = coords.group_by("j_id").aggregate(
        [("j_lat", "min"), ("j_lon", "min"), ("j_lat", "count_distinct"), ("j_lon", "count_distinct")]
    )
    agree = pc.and_(
        pc.equal(groups.column("j_lat_count_distinct"), 1), pc.equal(groups.column("j_lon_count_distinct"), 1)
    )
    conflicting = groups.filter(pc.invert(agree)).column("j_id").combine_chunks()
    single = groups.filter(agree)
    table = pa.table(
        {"j_id": single.column("j_id"), "j_lat": single.column("j_lat_min"), "j_lon": single.column("j_lon_min")}
    )
    return table, conflicting


def _coordinates(lat: pa.Array, lon: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float coordinates and per-row problems; Arrow's cast when every value parses, else the full check."""
    try:
        lat_f = pc.cast(lat, pa.float64()).to_numpy(zero_copy_only=False)
        lon_f = pc.cast(lon, pa.float64()).to_numpy(zero_copy_only=False)
        ok = np.isfinite(lat_f) & np.isfinite(lon_f) & (np.abs(lat_f) <= 90.0) & (np.abs(lon_f) <= 180.0)
        if ok.all():
            return lat_f, lon_f, np.full(len(lat_f), "", dtype=object)
    except pa.ArrowInvalid:
        pass
    return coerce_coordinates(np.asarray(lat.to_pylist(), dtype=object), np.asarray(lon.to_pylist(), dtype=object))


def _first_rows(ids: pa.Array) -> np.ndarray:
    """For each row, the position of the first row with the same id (a stable sort puts equal ids together,
    earliest first; far less memory than a hash join at millions of rows)."""
    order = pc.sort_indices(ids).to_numpy()  # stable
    ranked = ids.take(pa.array(order))
    same = np.zeros(len(order), dtype=bool)
    if len(order) > 1:
        same[1:] = pc.equal(ranked.slice(1), ranked.slice(0, len(order) - 1)).to_numpy(zero_copy_only=False)
    del ranked
    starts = np.where(same, 0, np.arange(len(order)))
    np.maximum.accumulate(starts, out=starts)  # index (in sorted order) of each run's first element
    first = np.empty(len(order), dtype=np.int64)
    first[order] = order[starts]
    return first


def ingest(spec: InputSpec, limit: int | None = None, work_dir: Path | None = None) -> tuple[pa.Table, pa.Table, int]:
    """Read, map and check the metadata, and find each row's image in the sources.

    Returns ``(rows, rejections, n_input)``: rows with columns ``row, id, lat, lon, image, url, author,
    license, label_*`` (release files add ``response, answer_country, answer_city, entities``) and, per indexed
    image source, where the row's image sits in it; rejections for malformed lines, bad coordinates, empty and
    duplicate ids (the first occurrence of an id wins), unparsable release cells, and images in no source.
    """
    table, rejected, n_input = read_metadata(spec, limit)
    n = table.num_rows
    fields: dict[str, pa.Array] = {}
    for field in ("row", *CANDIDATES):
        if field in table.column_names:
            column = table.column(field).combine_chunks()
            table = table.drop_columns([field])  # one copy of each column at a time
            if pa.types.is_dictionary(column.type) and field in ("id", "image", "url"):
                column = column.dictionary_decode()
            if pa.types.is_dictionary(column.type):  # labels: trim each distinct value once
                column = pa.DictionaryArray.from_arrays(column.indices, pc.utf8_trim_whitespace(column.dictionary))
            elif pa.types.is_string(column.type):
                column = pc.utf8_trim_whitespace(column)
            fields[field] = column
        elif field not in RELEASE_COLUMNS:
            fields[field] = pa.nulls(n, pa.string()).fill_null("")
    if spec.image_suffix:
        refs = pc.if_else(pc.equal(fields["image"], ""), fields["id"], fields["image"])
        has = pc.ends_with(refs, spec.image_suffix)
        fields["image"] = pc.if_else(has, refs, pc.binary_join_element_wise(refs, spec.image_suffix, ""))
    clashes = np.full(n, "", dtype=object)
    if spec.join:
        join_coordinates(fields, spec.join, clashes)
    missing_coords = pc.and_(pc.equal(fields["lat"], ""), pc.equal(fields["lon"], "")).to_numpy(zero_copy_only=False)
    lat, lon, reasons = _coordinates(fields["lat"], fields["lon"])
    fields["lat"], fields["lon"] = pa.array(lat), pa.array(lon)
    if spec.join:
        where = ", ".join(Path(p).name for p in spec.join)
        reasons[missing_coords] = f"no coordinates: not in the metadata nor in input.join ({where})"
        reasons[clashes != ""] = clashes[clashes != ""]
    if spec.format == "globe-release" and "response" in fields:
        _release_fields(fields, reasons)
    ids = fields["id"]
    reasons[pc.equal(ids, "").to_numpy(zero_copy_only=False)] = "empty id"
    first = _first_rows(ids)
    dup = (first != np.arange(n)) & (reasons == "")
    row_numbers = fields["row"].to_numpy()
    for i in np.flatnonzero(dup):
        reasons[i] = f"duplicate id (first seen at row {row_numbers[first[i]]})"
    bad = reasons != ""
    if bad.any():
        where = np.flatnonzero(bad)
        rejected = pa.concat_tables(
            [rejected, rejections(row_numbers[where], ids.take(pa.array(where)), "ingest", list(reasons[where]))]
        )
    rows = pa.table(fields)
    del fields
    if bad.any():  # filtering copies every column: only when something is dropped
        rows = rows.filter(pa.array(~bad))
    if spec.images:
        rows, unseen = _locate_images(rows, spec, work_dir)
        rejected = pa.concat_tables([rejected, unseen])
    return rows, rejected.sort_by("row"), n_input


def _locate_images(rows: pa.Table, spec: InputSpec, work_dir: Path | None) -> tuple[pa.Table, pa.Table]:
    """Join the image sources' indexes onto the rows; rows that no source can serve are rejected here."""
    from builders.sources import image_sources, join_sources, missing_reason

    if work_dir is None:
        raise ValueError("ingest needs a work folder for the image sources' indexes")
    sources = image_sources(spec.images)
    ids, image = _array(rows.column("id"), pa.string()), _array(rows.column("image"), pa.string())
    named = pc.not_equal(image, "")
    refs = pc.if_else(named, image, ids) if pc.any(named).as_py() else ids  # MP16-Pro has ids only
    located = join_sources(refs, ids, sources, work_dir)
    del ids, image, named, refs  # ~100 MB a column of names at MP16-Pro's size
    for name, column in located.items():
        rows = rows.append_column(name, column)
    if not all(s.indexed for s in sources) or not located:  # a folder is probed when the unit reads it
        return rows, rejections([], [], "fetch", [])
    listed = pa.array(np.zeros(rows.num_rows, dtype=bool))
    for column in located.values():
        listed = pc.or_(listed, pc.is_valid(column))
    unseen = rows.select(["row", "id"]).filter(pc.invert(listed))  # the rejections' columns, not every one
    reason = missing_reason(sources)
    return rows.filter(listed), rejections(unseen.column("row"), unseen.column("id"), "fetch", reason)
