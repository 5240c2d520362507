"""Where image bytes come from: folders, uncompressed tar archives, zip archives, URL lists, or the rows' own URLs.

A recipe's ``input.images`` lists sources, tried in order; the first that has a row's image serves it. The
archives and URL lists are indexed once, by the main process, when the build starts (``index-*.parquet`` in
the work folder), and ingest joins those indexes onto the rows: each row carries, per source, where its image
sits (offset and size in an archive, its URL in a list). A unit therefore opens no index at all and looks up
nothing: it reads its own rows' byte ranges, so its cost does not grow with the archives' member counts.

A fetch returns bytes or raises :class:`FetchError` with a reason that goes into the rejection record; it
never returns a default.
"""

from __future__ import annotations

import fnmatch
import hashlib
import http.client
import os
import random
import ssl
import struct
import tarfile
import threading
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mp16_reason.storage import location

KINDS = ("folder", "tar", "zip", "urls")
INDEX_SCHEMA = pa.schema(
    [("name", pa.string()), ("offset", pa.int64()), ("size", pa.int64()), ("method", pa.int64()),
     ("url", pa.string())]
)  # fmt: skip
ID_COLUMNS = ("img_id", "id", "image_id", "photo_id", "key")  # a URL list's id column, matched case-insensitively
URL_COLUMNS = ("url", "image_url", "photo_url", "flickr_url")


class FetchError(Exception):
    """An image that could not be obtained; the message is the rejection reason."""


class SourceError(ValueError):
    """An image source that cannot be used at all (missing file, unknown layout)."""


def source_kind(location: str) -> str:
    """``tar``, ``zip``, ``urls`` (a CSV or parquet of id and URL) or ``folder``, by the location's name."""
    name = location.lower().rstrip("/")
    if name.endswith(".tar"):
        return "tar"
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".csv", ".csv.gz", ".parquet", ".pq")):
        return "urls"
    return "folder"


@dataclass(frozen=True)
class ImageSource:
    """One entry of ``input.images``: its position in the list, kind and location."""

    position: int
    kind: str
    location: str

    @property
    def name(self) -> str:
        """What records say served an image: the kind and the file or folder name (no path, no credential)."""
        return Path(self.location.rstrip("/")).name

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}"

    def column(self, field: str) -> str:
        """The ingest column holding this source's ``field`` (offset, size, method, url) for each row."""
        return f"src{self.position}_{field}"

    @property
    def indexed(self) -> bool:
        return self.kind != "folder"


def image_sources(locations: list[str]) -> list[ImageSource]:
    sources = [ImageSource(i, source_kind(loc), loc) for i, loc in enumerate(locations)]
    for s in sources:
        exists = location(s.location).is_dir() if s.kind == "folder" else location(s.location).is_file()
        if not exists:
            what = "folder" if s.kind == "folder" else f"{s.kind} file"
            raise SourceError(f"image source {s.location} ({what}) does not exist; fix input.images or --images")
    return sources


# -- indexes (built once per build, in the main process) ---------------------------------------------------
def _junk(name: str) -> bool:
    """Files archivers add beside the images: macOS's resource forks and folder settings, Windows' thumbnails."""
    base = name.rsplit("/", 1)[-1]
    return name.startswith("__MACOSX/") or "/__MACOSX/" in name or base.startswith("._") or base in _JUNK_NAMES


_JUNK_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})


def _common_folder(names: pa.Array) -> str:
    """The folder every member sits under (``a/b/`` for ``a/b/x.jpg`` and ``a/b/c/y.jpg``), or ""."""
    if not len(names):
        return ""
    parts = names[0].as_py().split("/")[:-1]
    while parts:
        prefix = "/".join(parts) + "/"
        if pc.all(pc.starts_with(names, prefix)).as_py():
            return prefix
        parts.pop()
    return ""


def tar_index(path: str | Path) -> pa.Table:
    """Member name -> data offset and size, from one pass over the tar's headers (uncompressed tars only:
    random access needs them)."""
    names, offsets, sizes = [], [], []
    source = location(path)
    # Seeking from header to header: remotely through the file's read-ahead cache, a few large ranged reads.
    tar_args = {"name": str(source.local)} if source.local else {"fileobj": source.open(block_size=8 << 20)}
    with tarfile.open(mode="r:", **tar_args) as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            if member.isfile() and not _junk(name):
                names.append(name)
                offsets.append(member.offset_data)
                sizes.append(member.size)

    return pa.table({"name": names, "offset": offsets, "size": sizes, "method": [0] * len(names),
                     "url": pa.nulls(len(names), pa.string())}, schema=INDEX_SCHEMA)  # fmt: skip


def zip_index(path: str | Path) -> pa.Table:
    """Member name -> local header offset, compressed size and method, from the central directory."""
    with zipfile.ZipFile(location(path).source()) as zf:
        infos = [i for i in zf.infolist() if not i.is_dir() and not _junk(i.filename)]
    names = [i.filename for i in infos]
    return pa.table({"name": names, "offset": [i.header_offset for i in infos],
                     "size": [i.compress_size for i in infos], "method": [i.compress_type for i in infos],
                     "url": pa.nulls(len(infos), pa.string())}, schema=INDEX_SCHEMA)  # fmt: skip


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
    return pa.table({"name": ids, "offset": pa.nulls(n, pa.int64()), "size": pa.nulls(n, pa.int64()),
                     "method": pa.nulls(n, pa.int64()), "url": urls}, schema=INDEX_SCHEMA)  # fmt: skip


def index_path(source: ImageSource, work_dir):
    """Where the source's index is kept: named by the file's location, size and time, so a moved or changed
    archive is indexed again, never mistaken for another."""
    where = location(source.location)
    name = where.url if where.remote else os.path.abspath(where.url)
    key = hashlib.sha1(f"{name}|{where.stamp()}".encode()).hexdigest()
    return location(work_dir) / f"index-{source.kind}-{key[:16]}.parquet"


def load_index(source: ImageSource, work_dir) -> pa.Table:
    """The source's index, built on first use and kept in the work folder (resumed builds reuse it)."""
    path = index_path(source, work_dir)
    if not path.exists():
        table = {"tar": tar_index, "zip": zip_index, "urls": url_index}[source.kind](source.location)
        table = table.filter(pc.invert(pc.is_null(table.column("name")))).filter(pc.not_equal(table.column("name"), ""))
        with path.commit_path() as tmp:
            pq.write_table(table, str(tmp))
    with path.open() as fh:
        return pq.read_table(fh)


def join_sources(refs: pa.Array, ids: pa.Array, sources: list[ImageSource], work_dir: Path) -> dict[str, pa.Array]:
    """For each indexed source, the columns that say where each row's image sits in it (null: not there).

    Rows are looked up by their image reference (the image column, or the id with ``input.image_suffix``), and
    where that is not listed, by their bare id. In an archive, a member is also known by its name inside the
    folders all members share (``photos/2024/9e/13/1.jpg`` serves ``9e/13/1.jpg``), and by its file name alone
    when no other member has that file name (``photos/1.jpg`` serves ``9e/13/1.jpg``). A name listed twice in
    one source counts once (its first entry)."""
    columns: dict[str, pa.Array] = {}
    same = pc.all(pc.equal(refs, ids)).as_py() is not False
    for source in sources:
        if not source.indexed:
            continue
        index = load_index(source, work_dir)
        names = index.column("name").combine_chunks()
        # A set lookup, not a join: a hash table of the names only (first occurrence wins), a fraction of a
        # join's memory at millions of members, and the rows keep their order.
        where = pc.index_in(refs, value_set=names)
        if not same:
            where = pc.coalesce(where, pc.index_in(ids, value_set=names))
        if source.kind in ("tar", "zip") and where.null_count and (prefix := _common_folder(names)):
            inside = pc.utf8_slice_codeunits(names, len(prefix))
            where = pc.coalesce(where, pc.index_in(refs, value_set=inside))
        if source.kind in ("tar", "zip") and where.null_count:
            where = pc.coalesce(where, _by_file_name(refs, names))
        fields = ("url",) if source.kind == "urls" else ("offset", "size", "method")
        for field in fields:
            columns[source.column(field)] = index.column(field).take(where).combine_chunks()
        del names
    return columns


def _by_file_name(refs: pa.Array, names: pa.Array) -> pa.Array:
    """For each ref, the member whose file name (the part after the last ``/``) is the ref's own, when exactly
    one member has that file name; else null."""
    base = pc.replace_substring_regex(names, r"^.*/", "")
    counts = base.value_counts()
    unique = counts.field("values").filter(pc.equal(counts.field("counts"), 1))
    position = pc.index_in(base, value_set=unique)  # each name's rank among the unique file names, or null
    valid = pc.is_valid(position).to_numpy(zero_copy_only=False)
    member = np.empty(len(unique), dtype=np.int64)  # unique file name -> its member's position
    member[pc.drop_null(position).to_numpy()] = np.flatnonzero(valid)
    found = pc.index_in(pc.replace_substring_regex(refs, r"^.*/", ""), value_set=unique)
    return pa.array(member).take(found)


# -- reading -------------------------------------------------------------------------------------------------
class FolderSource:
    def __init__(self, root: str | Path) -> None:
        self.prefix = location(root)
        if not self.prefix.is_dir():
            raise FileNotFoundError(f"image folder {self.prefix} does not exist")
        self.root = self.prefix.local

    def fetch(self, ref: str) -> bytes:
        if self.root is None:  # a prefix on an object store
            if ".." in ref.split("/"):
                raise FetchError(f"image path {ref!r} leaves the image folder")
            try:
                return (self.prefix / ref).read_bytes()
            except FileNotFoundError:
                raise FetchError(f"missing file {ref}") from None
        path = (self.root / ref).resolve()
        if self.root.resolve() not in path.parents:
            raise FetchError(f"image path {ref!r} leaves the image folder")
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise FetchError(f"missing file {ref}") from None
        except OSError as exc:
            raise FetchError(f"unreadable file {ref}: {exc.strerror or exc}") from None


class ArchiveReader:
    """Byte ranges of one archive, read with ``os.pread`` (no shared file position: safe across threads)."""

    def __init__(self, path: str | Path, kind: str) -> None:
        self.path, self.kind = str(path), kind
        self.remote = location(path) if location(path).remote else None
        self._fd: int | None = None

    def _read(self, size: int, offset: int) -> bytes:
        if self.remote is not None:  # a ranged GET
            try:
                return self.remote.read_range(offset, size)
            except OSError as exc:
                raise FetchError(f"unreadable {self.kind} member at offset {offset}: {exc}") from None
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return os.pread(self._fd, size, offset)

    def fetch(self, ref: str, offset: int, size: int, method: int) -> bytes:
        if self.kind == "zip":
            header = self._read(30, offset)
            if len(header) < 30 or header[:4] != b"PK\x03\x04":
                raise FetchError(f"unreadable zip member {ref}: no local header at offset {offset}")
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            offset += 30 + name_len + extra_len
        data = self._read(size, offset)
        if len(data) != size:
            raise FetchError(f"unreadable {self.kind} member {ref}: {len(data)} of {size} bytes (archive truncated?)")
        if self.kind == "zip" and method == zipfile.ZIP_DEFLATED:
            try:
                return zlib.decompress(data, -15)
            except zlib.error as exc:
                raise FetchError(f"unreadable zip member {ref}: {exc}") from None
        if self.kind == "zip" and method != zipfile.ZIP_STORED:
            raise FetchError(f"zip member {ref} uses compression method {method}; only stored and deflate are read")
        return data

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class UrlSource:
    """HTTP(S) downloads with a timeout, retries with jittered backoff on 429/5xx/timeouts, dead links recorded.

    Connections are kept alive, one per host in each download thread: MP-16's photos come from a handful of
    Flickr hosts, so most requests skip the TCP and TLS handshakes that a connection per image would pay. They
    are the standard library's ``http.client`` connections, used directly: a pooling layer on top (urllib3's
    pool manager, with its per-request retry and URL bookkeeping) costs about as much CPU again as the request
    itself, ~0.1 ms an image, which at MP-16's small photos is a sizeable share of the whole build.
    Redirects are followed (up to five). Flickr answers many deleted photos with a redirect to a "photo
    unavailable" image (HTTP 200): a final URL matching ``placeholder_urls`` is a failure, not an image.
    """

    USER_AGENT = "mp16-reason-builder (+https://arxiv.org/abs/2506.14674)"
    MAX_REDIRECTS = 5

    def __init__(
        self,
        timeout_s: float = 10.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        threads: int = 16,
        placeholder_urls: tuple[str, ...] = (),
    ) -> None:
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.placeholder_urls = tuple(placeholder_urls)
        # Each download thread's kept-alive connections, by host; they close when their thread ends.
        self._local = threading.local()
        self._tls: ssl.SSLContext | None = None

    def _connection(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        conns = self._local.__dict__.setdefault("conns", {})
        conn = conns.get((scheme, netloc))
        if conn is None:
            if scheme == "https":
                self._tls = self._tls or ssl.create_default_context()
                conn = http.client.HTTPSConnection(netloc, timeout=self.timeout_s, context=self._tls)
            else:
                conn = http.client.HTTPConnection(netloc, timeout=self.timeout_s)
            conns[(scheme, netloc)] = conn
        return conn

    def _drop(self, scheme: str, netloc: str) -> None:
        conn = self._local.__dict__.get("conns", {}).pop((scheme, netloc), None)
        if conn is not None:
            conn.close()

    def _get(self, url: str) -> tuple[int, bytes, str]:
        """(status, body, final URL) of one GET, redirects followed."""
        for _ in range(self.MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https"):
                raise FetchError(f"not an http(s) URL: {url}")
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            for fresh in (False, True):
                conn = self._connection(parts.scheme, parts.netloc)
                reused = conn.sock is not None
                if not reused:
                    try:
                        conn.connect()
                    except TimeoutError:
                        self._drop(parts.scheme, parts.netloc)
                        raise
                    except OSError as exc:  # refused, unreachable, no such host, TLS handshake
                        self._drop(parts.scheme, parts.netloc)
                        raise _NoConnection(str(exc)) from exc
                try:
                    conn.request("GET", target, headers={"User-Agent": self.USER_AGENT})
                    resp = conn.getresponse()
                    body = resp.read()
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                    self._drop(parts.scheme, parts.netloc)
                    if reused and not fresh:
                        continue  # the server closed a kept-alive connection while idle: once more, on a new one
                    raise
                except BaseException:
                    self._drop(parts.scheme, parts.netloc)
                    raise
                if resp.will_close:
                    self._drop(parts.scheme, parts.netloc)
                break
            location = resp.getheader("Location")
            if resp.status not in (301, 302, 303, 307, 308) or not location:
                return resp.status, body, url
            url = urljoin(url, location)
        raise FetchError(f"more than {self.MAX_REDIRECTS} redirects: {url}")

    def fetch(self, ref: str) -> bytes:
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random()))
            try:
                status, body, final = self._get(ref)
            except (http.client.HTTPException, OSError) as exc:
                last = _reason(exc)
                continue
            if status < 300:
                if final != ref and any(fnmatch.fnmatch(final, p) for p in self.placeholder_urls):
                    raise FetchError(f"Flickr placeholder: {ref} redirects to {final}")
                return body
            last = f"HTTP {status}"
            if status != 429 and status < 500:
                break  # 404, 403, 410: the link is dead, retrying will not help
        raise FetchError(f"dead link ({last}) after {attempt + 1} attempt(s): {ref}")


class _NoConnection(OSError):
    """A connection that could not be made."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, _NoConnection):
        return f"cannot connect: {exc}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Fetcher:
    """A unit's view of its sources: tries the sources that list a row's image in the recipe's order, and says
    which served it.

    ``fetch(row, ref)`` returns ``(bytes, source)``, ``source`` being the :class:`ImageSource` that served it
    (None: the row's own URL), or raises :class:`FetchError` naming every source that had the image and why it
    failed."""

    def __init__(self, sources: list[ImageSource], urls: UrlSource, reject_sha256: frozenset[str] = frozenset()):
        self.sources, self.urls, self.reject_sha256 = sources, urls, reject_sha256
        self.folders = {s.position: FolderSource(s.location) for s in sources if s.kind == "folder"}
        self.archives = {s.position: ArchiveReader(s.location, s.kind) for s in sources if s.kind in ("tar", "zip")}

    def _one(self, source: ImageSource | None, row: dict, ref: str) -> bytes | None:
        """The bytes from ``source``, None when it does not list the row's image."""
        if source is None:
            return self.urls.fetch(ref)
        if source.kind == "folder":
            return self.folders[source.position].fetch(ref)
        if source.kind == "urls":
            url = row.get(source.column("url"))
            return self.urls.fetch(url) if url else None
        offset = row.get(source.column("offset"))
        if offset is None:
            return None
        return self.archives[source.position].fetch(
            ref, offset, row[source.column("size")], row[source.column("method")]
        )

    def fetch(self, row: dict, ref: str) -> tuple[bytes, ImageSource | None]:
        tried: list[tuple[str, str]] = []
        for source in self.sources or [None]:
            label = source.label if source else "url"
            try:
                data = self._one(source, row, ref)
            except FetchError as exc:
                tried.append((label, str(exc)))
                continue
            if data is None:
                continue  # not listed there
            if self.reject_sha256 and hashlib.sha256(data).hexdigest() in self.reject_sha256:
                tried.append((label, "Flickr placeholder (sha256 in fetch.reject_sha256)"))
            else:
                return data, source
        if not tried:
            raise FetchError(missing_reason(self.sources))
        if len(self.sources) <= 1:
            raise FetchError(tried[0][1])
        # The reason first, so that rejections group by it; then the source that gave it.
        raise FetchError("; ".join(f"{why} [{label}]" for label, why in tried))

    def close(self) -> None:
        for reader in self.archives.values():
            reader.close()


def missing_reason(sources: list[ImageSource]) -> str:
    return "no image in any source (tried: " + ", ".join(s.label for s in sources) + ")"
