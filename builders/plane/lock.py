"""One build per output: an exclusive lock on ``--out`` for the build's life.

On a local disk it is ``flock`` on ``OUT/.lock``: the kernel releases it when the process ends, however it
ends, so a ``kill -9`` leaves no stale lock. On object storage it is a lock object, ``OUT/.lock``, created
with a conditional write (S3 ``If-None-Match: *``) and rewritten by the holder every ``refresh_s`` seconds,
each time only if it is still the holder's (``If-Match`` on its last ETag). A lock object not refreshed for
``stale_s`` seconds belongs to a build that died; a new build takes it over with the same conditional write,
so two builds can never both succeed.

A store that ignores these conditions (some S3-compatible servers do) is found out at once: the holder
creates its lock object a second time, which such a store accepts. The build then warns that two builds
writing to that output at once are not prevented there.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
import warnings
from dataclasses import dataclass

from builders.stops import BuildStopped, BuildWarning, gone_here
from mp16_reason.storage import Location

LOCK_NAME = ".lock"


class LockHeld(BuildStopped):
    """Another build holds the output's lock."""


class OutputError(ValueError):
    """An output location that cannot hold a build."""


class NoConditionalWrites(BuildWarning):
    """The output's store ignores conditional writes: the lock cannot exclude a second build there."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started: float
    command: str
    token: str

    @classmethod
    def me(cls, command: str) -> Holder:
        return cls(socket.gethostname(), os.getpid(), time.time(), command, uuid.uuid4().hex)

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.started))
        return f"host {self.host}, pid {self.pid}, started {when}" + (f" ({self.command})" if self.command else "")


def _holder(data: bytes) -> Holder | None:
    try:
        fields = json.loads(data)
        return Holder(**{k: fields[k] for k in Holder.__dataclass_fields__})
    except (ValueError, KeyError, TypeError):
        return None


def _held(out: Location, holder: Holder | None, extra: str = "") -> LockHeld:
    who = holder.describe() if holder else "a build whose details could not be read"
    return LockHeld(
        f"{out} is being built by another process ({who}){extra}. Wait for it to finish, stop it, or give this "
        "build another --out; two builds in one folder would corrupt it"
    )


class BuildLock:
    """``with BuildLock(out): ...`` holds the output's lock; raises :class:`LockHeld` at once when another
    build holds it."""

    def __init__(self, out: Location, command: str = "", refresh_s: float = 30.0, stale_s: float = 180.0) -> None:
        self.out, self.path = out, out / LOCK_NAME
        self.holder = Holder.me(command)
        self.refresh_s, self.stale_s = refresh_s, stale_s
        self._fd: int | None = None
        self._etag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: str | None = None  # why the lock was lost while held (object stores only)

    def _body(self) -> bytes:
        return json.dumps({**self.holder.__dict__, "refreshed": time.time()}).encode()

    # -- local ---------------------------------------------------------------------------------------------
    def _acquire_local(self) -> None:
        import fcntl

        folder = self.out.local
        assert folder is not None
        if folder.exists() and not folder.is_dir():
            raise OutputError(f"--out {folder} is a file, not a folder; give a folder path")
        for parent in folder.parents:
            if parent.exists() and not parent.is_dir():
                raise OutputError(f"--out {folder} lies under {parent}, which is a file; give a folder path")
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            data = os.pread(fd, 4096, 0)
            os.close(fd)
            raise _held(self.out, _holder(data)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, self._body(), 0)
        self._fd = fd

    # -- object storage ------------------------------------------------------------------------------------
    @property
    def _on_s3(self) -> bool:
        """S3's API takes the conditions the lock needs (other stores: a warning, no lock)."""
        protocol = self.out.fs.protocol
        return "s3" in (protocol if isinstance(protocol, (tuple, list)) else (protocol,))

    def _put(self, condition: dict[str, str]) -> str:
        fs = self.out.fs
        bucket, key, _ = fs.split_path(self.path._path)
        out = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=self._body(), **condition)
        fs.invalidate_cache(self.path._path)
        return out["ETag"]

    def _acquire_remote(self) -> None:
        if not self._on_s3:
            warnings.warn(
                f"{self.out}: no conditional writes are known for this store, so the build cannot lock its output; "
                "make sure no other build writes to it at the same time",
                NoConditionalWrites,
                stacklevel=3,
            )
            return
        try:
            self._etag = self._put({"IfNoneMatch": "*"})
        except OSError as exc:
            if not _precondition_failed(exc):
                raise
            self._take_over_if_stale()
        else:
            try:  # a store that honours the condition refuses this second create
                self._etag = self._put({"IfNoneMatch": "*"})
            except OSError as exc:
                if not _precondition_failed(exc):
                    raise
            else:
                warnings.warn(
                    f"{self.out}: this S3-compatible store ignores conditional writes (If-None-Match), so the lock "
                    "cannot exclude a second build; make sure no other build writes to this output at the same time",
                    NoConditionalWrites,
                    stacklevel=3,
                )
        self._thread = threading.Thread(target=self._refresh, name="build-lock", daemon=True)
        self._thread.start()

    def _take_over_if_stale(self) -> None:
        fs = self.out.fs
        info = fs.info(self.path._path, refresh=True)
        data = fs.cat_file(self.path._path)
        holder = _holder(data)
        try:
            refreshed = float(json.loads(data).get("refreshed", 0))
        except (ValueError, AttributeError):
            refreshed = 0.0
        age = time.time() - refreshed
        dead = holder is not None and gone_here(holder.host, holder.pid)
        if age < self.stale_s and not dead:
            raise _held(
                self.out,
                holder,
                f", refreshed {age:.0f} s ago; if that build died, its lock goes stale {self.stale_s - age:.0f} s "
                f"from now (stale_s = {self.stale_s:g}) and the next build takes it over",
            )
        try:  # replaces the stale lock only if nobody else has replaced it since we read it
            self._etag = self._put({"IfMatch": info["ETag"]})
        except OSError as exc:
            if _precondition_failed(exc):
                raise _held(self.out, None, " (it took over a stale lock just now)") from None
            raise
        why = "whose process is gone from this host" if dead else f"not refreshed for {age:.0f} s"
        warnings.warn(
            f"{self.out}: took over a lock {why} ({holder.describe() if holder else 'unknown holder'}); that build "
            "is presumed dead",
            BuildWarning,
            stacklevel=3,
        )

    def _refresh(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                self._etag = self._put({"IfMatch": self._etag} if self._etag else {})
            except OSError as exc:
                if _precondition_failed(exc):
                    self.lost = "another build took over this output's lock (this build stalled past stale_s)"
                    return
                # A transient error: try again at the next refresh; stale_s is several refreshes long.

    def _release_remote(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self._on_s3 or self.lost:
            return
        fs = self.out.fs
        with contextlib.suppress(OSError):
            data = fs.cat_file(self.path._path)
            holder = _holder(data)
            if holder is not None and holder.token == self.holder.token:
                fs.rm_file(self.path._path)

    # -- both ----------------------------------------------------------------------------------------------
    def check(self) -> None:
        """Raise if the lock was lost while held (an object store's lock taken over after a long stall)."""
        if self.lost:
            raise LockHeld(f"{self.out}: {self.lost}; stopping before writing more")

    def __enter__(self) -> BuildLock:
        if self.out.remote:
            self._acquire_remote()
        else:
            self._acquire_local()
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock; the file stays (a later build reuses it)
            self._fd = None
        elif self.out.remote:
            self._release_remote()


def _precondition_failed(exc: BaseException) -> bool:
    text = f"{exc} {exc.__cause__ or ''}"
    return "PreconditionFailed" in text or "pre-conditions" in text or "412" in text
