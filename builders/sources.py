"""Where image bytes come from: a folder, a tar archive (random access through an index), or URLs.

A source's ``fetch(ref)`` returns bytes or raises :class:`FetchError` with a reason that goes into the
rejection record; it never returns a default.
"""

from __future__ import annotations

import os
import random
import tarfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import urllib3


class FetchError(Exception):
    """An image that could not be obtained; the message is the rejection reason."""


class FolderSource:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")

    def fetch(self, ref: str) -> bytes:
        path = (self.root / ref).resolve()
        if self.root.resolve() not in path.parents:
            raise FetchError(f"image path {ref!r} leaves the image folder")
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise FetchError(f"missing file {ref}") from None
        except OSError as exc:
            raise FetchError(f"unreadable file {ref}: {exc.strerror or exc}") from None


def build_tar_index(tar_path: str | Path, index_path: str | Path) -> None:
    """Scan the tar's headers once and store member name -> (offset, size) as parquet."""
    names, offsets, sizes = [], [], []
    with tarfile.open(tar_path, "r:") as tar:  # uncompressed tars only: random access needs it
        for member in tar:
            if member.isfile():
                names.append(member.name.removeprefix("./"))
                offsets.append(member.offset_data)
                sizes.append(member.size)
    tmp = f"{index_path}.tmp"
    pq.write_table(pa.table({"name": names, "offset": offsets, "size": sizes}), tmp)
    os.replace(tmp, index_path)


class TarSource:
    """Random access into one large uncompressed tar (MP16-Pro ships its images that way)."""

    def __init__(self, tar_path: str | Path, index_path: str | Path) -> None:
        self.tar_path = Path(tar_path)
        if not self.tar_path.is_file():
            raise FileNotFoundError(f"image tar {self.tar_path} does not exist")
        if not Path(index_path).exists():
            build_tar_index(self.tar_path, index_path)
        table = pq.read_table(index_path)
        self._index = dict(
            zip(
                table.column("name").to_pylist(),
                zip(table.column("offset").to_pylist(), table.column("size").to_pylist()),
            )
        )
        self._fd: int | None = None

    def fetch(self, ref: str) -> bytes:
        entry = self._index.get(ref.removeprefix("./"))
        if entry is None:
            raise FetchError(f"missing tar member {ref}")
        if self._fd is None:
            self._fd = os.open(self.tar_path, os.O_RDONLY)
        offset, size = entry
        data = os.pread(self._fd, size, offset)  # no shared file position: safe across fetch threads
        if len(data) != size:
            raise FetchError(f"unreadable tar member {ref}: {len(data)} of {size} bytes (archive truncated?)")
        return data


class UrlSource:
    """HTTP(S) downloads with a timeout, retries with jittered backoff on 429/5xx/timeouts, dead links recorded.

    Connections are pooled and kept alive (urllib3), ``threads`` per host: MP-16's photos come from a handful
    of Flickr hosts, so most requests skip the TCP and TLS handshakes that a connection per image would pay.
    """

    USER_AGENT = "mp16-reason-builder (+https://arxiv.org/abs/2506.14674)"

    def __init__(self, timeout_s: float = 10.0, retries: int = 3, backoff_s: float = 0.5, threads: int = 16) -> None:
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.pool = urllib3.PoolManager(
            num_pools=64,
            maxsize=threads,
            headers={"User-Agent": self.USER_AGENT},
            timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
            # Redirects are followed; every other retry is ours (below), so each failure has a reason.
            retries=urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=5),
        )

    def fetch(self, ref: str) -> bytes:
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random()))
            try:
                resp = self.pool.request("GET", ref)
            except urllib3.exceptions.MaxRetryError as exc:
                last = _reason(exc.reason)
                continue
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                last = _reason(exc)
                continue
            if resp.status < 300:
                return resp.data
            last = f"HTTP {resp.status}"
            if resp.status != 429 and resp.status < 500:
                break  # 404, 403, 410: the link is dead, retrying will not help
        raise FetchError(f"dead link ({last}) after {attempt + 1} attempt(s): {ref}")


def _reason(exc: BaseException | None) -> str:
    if isinstance(exc, urllib3.exceptions.NewConnectionError):  # before timeouts: urllib3 makes it one
        return f"cannot connect: {exc.__cause__ or exc}"
    if isinstance(exc, (urllib3.exceptions.TimeoutError, TimeoutError)):
        return "timeout"
    return str(exc)


def open_source(
    images: str | None, work_dir: Path, timeout_s: float, retries: int, backoff_s: float, threads: int = 16
):
    """The source for a recipe's ``input.images`` (None: URLs from the metadata)."""
    if images is None:
        return UrlSource(timeout_s, retries, backoff_s, threads)
    if images.endswith(".tar"):
        return TarSource(images, work_dir / "tar-index.parquet")
    return FolderSource(images)
