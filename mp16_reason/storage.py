"""Where a build's files live: a local folder or any fsspec filesystem (``s3://``, ``gs://``, ``hf://``,
``file://``), behind one small path type.

Writes commit: a file appears under its name complete or not at all. On a local disk that is a hidden
temporary, fsynced and renamed; on an object store it is the upload itself (an object appears only when its
PUT or multipart upload completes; a failed upload is aborted, never completed). The build writes its
manifest last, so a manifest's presence means a finished build on either.

Credentials come from each filesystem's usual environment and config files (for S3: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``~/.aws``); they are never part of a location this module
prints, and a location given with them inline is refused.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from .atomic import atomic_file, atomic_path, remove_stale


def is_url(location: str | os.PathLike) -> bool:
    return "://" in str(location) and not str(location).startswith("file://")


class StorageError(ValueError):
    """A location that cannot be used (credentials inline, unknown scheme)."""


class Location:
    """A file or folder, local or remote; ``/`` joins, like :class:`pathlib.Path`."""

    def __init__(self, location: str | os.PathLike | Location) -> None:
        if isinstance(location, Location):
            self.url, self._fs = location.url, location._fs
            return
        text = str(location)
        if text.startswith("file://"):
            text = text[len("file://") :]
        if is_url(text) and urlsplit(text).password:
            raise StorageError(
                f"{urlsplit(text).scheme}:// location with credentials in it; give them in the environment or the "
                "filesystem's config files instead (e.g. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
            )
        self.url = text.rstrip("/") if is_url(text) else str(Path(text))
        self._fs: Any = None

    # -- naming ----------------------------------------------------------------------------------------
    @property
    def remote(self) -> bool:
        return is_url(self.url)

    @property
    def local(self) -> Path | None:
        """The local path, or None for a remote location."""
        return None if self.remote else Path(self.url)

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    def __truediv__(self, part: str) -> Location:
        return Location(f"{self.url}/{part}" if self.remote else str(Path(self.url) / part))

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def relative_to(self, base: Location) -> str:
        return self.url[len(base.url) :].lstrip("/")

    @property
    def fs(self):
        if self._fs is None:
            import fsspec

            self._fs, _ = fsspec.core.url_to_fs(self.url)
        return self._fs

    @property
    def _path(self) -> str:
        """The path the filesystem knows (no scheme)."""
        return self.fs._strip_protocol(self.url)

    # -- reading ---------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return Path(self.url).exists() if not self.remote else self.fs.exists(self._path)

    def is_dir(self) -> bool:
        return Path(self.url).is_dir() if not self.remote else self.fs.isdir(self._path)

    def is_file(self) -> bool:
        return Path(self.url).is_file() if not self.remote else self.fs.isfile(self._path)

    def size(self) -> int:
        return Path(self.url).stat().st_size if not self.remote else int(self.fs.size(self._path))

    def source(self) -> str | IO:
        """What readers that take a path or a file (Arrow's, zipfile's) should get: the local path, or an open
        file on the remote filesystem (ranged reads on an object store)."""
        return self.url if not self.remote else self.open("rb")

    def stamp(self) -> str:
        """Size and modification time (an ETag where there is no time): what changes when the file does."""
        if not self.remote:
            stat = os.stat(self.url)
            return f"{stat.st_size}|{stat.st_mtime_ns}"
        info = self.fs.info(self._path)
        return f"{info.get('size')}|{info.get('LastModified') or info.get('mtime') or info.get('ETag')}"

    def open(self, mode: str = "rb", **kwargs) -> IO:
        """For reading (writes go through :meth:`commit`)."""
        if not self.remote:
            return open(self.url, mode, **({"encoding": "utf-8"} if "b" not in mode else {}))
        return self.fs.open(self._path, mode, **kwargs)

    def read_bytes(self) -> bytes:
        return Path(self.url).read_bytes() if not self.remote else self.fs.cat_file(self._path)

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def read_range(self, offset: int, size: int) -> bytes:
        if size <= 0:
            return b""
        if not self.remote:
            with open(self.url, "rb") as fh:
                return os.pread(fh.fileno(), size, offset)
        return self.fs.cat_file(self._path, start=offset, end=offset + size)

    def glob(self, pattern: str) -> list[Location]:
        """Files directly in this folder whose names match ``pattern`` (sorted)."""
        if not self.remote:
            return [Location(p) for p in sorted(Path(self.url).glob(pattern))]
        import fnmatch

        if not self.fs.isdir(self._path):
            return []
        names = sorted(p.rsplit("/", 1)[-1] for p in self.fs.ls(self._path, detail=False))
        return [self / n for n in names if fnmatch.fnmatch(n, pattern)]

    def walk_files(self, special: list[str] | None = None) -> Iterator[tuple[str, int]]:
        """(path relative to this folder, size) of every regular file under it. FIFOs, sockets and devices (which
        a read would block on, or never end) are left out, their names appended to ``special`` when given."""
        if not self.remote:
            root = Path(self.url)
            for d, _, files in os.walk(root):
                for f in files:
                    p = Path(d, f)
                    st = p.stat()
                    if stat.S_ISREG(st.st_mode):
                        yield str(p.relative_to(root)), st.st_size
                    elif special is not None:
                        special.append(str(p.relative_to(root)))
            return
        for path, info in self.fs.find(self._path, detail=True).items():
            yield path[len(self._path) :].lstrip("/"), int(info.get("size") or 0)

    # -- writing ---------------------------------------------------------------------------------------
    def mkdir(self) -> None:
        if not self.remote:
            Path(self.url).mkdir(parents=True, exist_ok=True)  # object stores have no folders to make

    @contextmanager
    def commit(self, mode: str = "wb") -> Iterator[IO]:
        """A file object whose contents appear under this name only when the block ends without error."""
        if not self.remote:
            with atomic_file(self.url, mode) as fh:
                yield fh
            return
        fh = self.fs.open(self._path, "wb")
        try:
            yield fh if "b" in mode else _TextWriter(fh)
        except BaseException:
            discard = getattr(fh, "discard", None)  # abort the upload: nothing appears
            if discard is not None:
                discard()
                fh.closed = True  # so that closing it later does not upload what is left
            raise
        fh.close()

    @contextmanager
    def commit_path(self) -> Iterator[Path]:
        """A local path for writers that open files themselves (Arrow's native I/O); committed like
        :meth:`commit` (remote: uploaded whole when the block ends)."""
        if not self.remote:
            with atomic_path(self.url) as tmp:
                yield tmp
            return
        with tempfile.TemporaryDirectory(prefix="mp16-reason-") as folder:
            tmp = Path(folder) / self.name
            yield tmp
            self.fs.put_file(str(tmp), self._path)

    def remove_temporaries(self) -> None:
        """Delete the hidden temporaries a killed run left in this folder (local only: an unfinished upload to
        an object store leaves no object behind)."""
        if not self.remote:
            remove_stale(self.url)

    def write_text(self, text: str) -> None:
        with self.commit("w") as fh:
            fh.write(text)

    def unlink(self, missing_ok: bool = True) -> None:
        if not self.remote:
            Path(self.url).unlink(missing_ok=missing_ok)
        elif not missing_ok or self.fs.exists(self._path):
            self.fs.rm_file(self._path)

    def rmtree(self) -> None:
        if not self.remote:
            path = Path(self.url)
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        elif self.fs.exists(self._path):
            self.fs.rm(self._path, recursive=True)


class _TextWriter:
    def __init__(self, fh) -> None:
        self.fh = fh

    def write(self, text: str) -> int:
        return self.fh.write(text.encode("utf-8"))


def location(value: str | os.PathLike | Location) -> Location:
    return value if isinstance(value, Location) else Location(value)
