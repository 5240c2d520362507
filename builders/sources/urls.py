"""URL lists (MP16-Pro's ``mp16-urls.csv``: id and URL), downloaded through the unit's HTTP client."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from builders.sources.base import INDEX_SCHEMA, Source, SourceError
from builders.sources.index import indexed_identity
from mp16_reason.storage import location

ID_COLUMNS = ("img_id", "id", "image_id", "photo_id", "key")  # a URL list's id column, matched case-insensitively
URL_COLUMNS = ("url", "image_url", "photo_url", "flickr_url")


def url_index(path: str | Path) -> pa.Table:
    """Id -> URL from a list such as MP16-Pro's ``mp16-urls.csv`` (``IMG_ID,url``; names matched
    case-insensitively)."""
    import pyarrow.csv as pacsv

    source = location(path)
    if source.name.lower().endswith((".parquet", ".pq")):
        table = pq.read_table(source.source())
    else:
        options = pacsv.ConvertOptions(strings_can_be_null=False, auto_dict_encode=False)
        table = pacsv.read_csv(source.source(), convert_options=options)
    lower = {c.lower(): c for c in table.column_names}
    id_col = next((lower[c] for c in ID_COLUMNS if c in lower), None)
    url_col = next((lower[c] for c in URL_COLUMNS if c in lower), None)
    if id_col is None or url_col is None:
        raise SourceError(
            f"URL list {path} needs an id column ({', '.join(ID_COLUMNS)}) and a url column "
            f"({', '.join(URL_COLUMNS)}); its columns are: {', '.join(table.column_names)}"
        )
    ids = pc.utf8_trim_whitespace(table.column(id_col).cast(pa.string()))
    urls = pc.utf8_trim_whitespace(table.column(url_col).cast(pa.string()))
    n = len(ids)
    return pa.table(
        {
            "name": ids,
            "offset": pa.nulls(n, pa.int64()),
            "size": pa.nulls(n, pa.int64()),
            "method": pa.nulls(n, pa.int64()),
            "url": urls,
        },
        schema=INDEX_SCHEMA,
    )


class UrlListSource(Source):
    """A CSV or parquet of id and URL."""

    kind = "urls"
    fields = ("url",)
    network = True

    @classmethod
    def matches(cls, location: str) -> bool:
        return location.lower().rstrip("/").endswith((".csv", ".csv.gz", ".parquet", ".pq"))

    def identity(self, work_dir) -> dict:
        return indexed_identity(self, work_dir)

    def build_index(self) -> pa.Table:
        return url_index(self.location)

    def reader(self, urls) -> _ListedUrls:
        return _ListedUrls(self, urls)


class _ListedUrls:
    def __init__(self, source: Source, urls) -> None:
        self.source, self.urls = source, urls

    def fetch(self, row: dict, ref: str) -> bytes | None:
        url = row.get(self.source.column("url"))
        return self.urls.fetch(url) if url else None

    def close(self) -> None:
        pass
