"""The teacher reply cache: every paid-for reply, keyed by what determines it.

The key is a hash of (image content hash, prompt version, model, request parameters): neither the endpoint
URL nor any key or token is part of it or stored in it, so a cache can be shared and published. It is a
SQLite file in WAL mode, and every reply is committed as soon as it arrives, so a killed build loses at most
the requests that were in flight. ``export``/``import_`` move it as JSON Lines, to rebuild without endpoints.

It is a ledger: a stored reply is never replaced. A later reply under the same key (another build that asked
at the same time, an import) is counted in ``later`` and dropped, so a build and its offline rebuild read the
same reply. Builds sharing one cache file also never send a request another has in flight: before asking, a
build *claims* the key, with a lease it renews while it waits for the answer (``claim``/``renew``/``release``);
a key claimed by another live build is waited for, and a lease that runs out (its build died) is taken over.

Beside the replies it keeps the requests written to batch files (what each ``custom_id`` asked: model, prompt
version, image and parameters), so that a results file, which names only the ``custom_id``, becomes replies.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from builders.stops import gone_here


def default_path() -> Path:
    from mp16_reason.gazetteer import cache_dir

    return cache_dir() / "teacher-replies.sqlite"


def claim_owner() -> str:
    """A build's name on its claims: ``host:pid:random``, so that a build on the same host can tell the holder died."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"


def owner_dead(owner: str) -> bool:
    """True when a claim's holder ran on this host and its process is gone (a ``kill -9``): its claims are taken at
    once, not after the lease. A holder on another host, or of an older cache, waits for its lease."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    return pid.isdigit() and gone_here(host, int(pid))


def cache_key(image_sha256: str, prompt_version: str, model: str, params: dict[str, Any]) -> str:
    blob = json.dumps(
        {"image": image_sha256, "prompt": prompt_version, "model": model, "params": params},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class CachedReply:
    key: str
    model: str
    prompt_version: str
    image_sha256: str
    params: str  # canonical JSON
    text: str
    input_tokens: int
    output_tokens: int
    origin: str = "endpoint"  # or "authored" for hand-written replies (the offline sample)


_COLUMNS = tuple(CachedReply.__dataclass_fields__)
_REQUEST_COLUMNS = ("key", "model", "prompt_version", "image_sha256", "params")  # a reply without its answer


class ReplyCache:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # autocommit (one reply, one commit); the build uses it from one thread at a time, not always the same one;
        # another build writing to the same file makes us wait (busy timeout), never fail
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes, which is what we need
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, model TEXT, prompt_version TEXT, "
            "image_sha256 TEXT, params TEXT, text TEXT, input_tokens INTEGER, output_tokens INTEGER, "
            "origin TEXT, created REAL, later INTEGER DEFAULT 0)"
        )
        if "later" not in {row[1] for row in self._db.execute("PRAGMA table_info(replies)")}:  # an older cache
            self._db.execute("ALTER TABLE replies ADD COLUMN later INTEGER DEFAULT 0")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS requests (key TEXT PRIMARY KEY, model TEXT, prompt_version TEXT, "
            "image_sha256 TEXT, params TEXT)"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, owner TEXT, expires REAL)")

    def get(self, key: str) -> CachedReply | None:
        row = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM replies WHERE key = ?", (key,)).fetchone()
        return CachedReply(*row) if row else None

    def _select(self, table: str, columns: tuple[str, ...], keys: Iterable[str]) -> Iterator[tuple]:
        """The rows of ``table`` whose key is among ``keys``, ``columns`` first the key."""
        keys = list(keys)
        for i in range(0, len(keys), 500):  # under SQLite's limit on bound parameters
            chunk = keys[i : i + 500]
            sql = f"SELECT {', '.join(columns)} FROM {table} WHERE key IN ({', '.join('?' * len(chunk))})"
            yield from self._db.execute(sql, chunk)

    def get_many(self, keys: Iterable[str]) -> dict[str, CachedReply]:
        """The cached replies among ``keys``, by key (absent keys are left out)."""
        return {row[0]: CachedReply(*row) for row in self._select("replies", _COLUMNS, keys)}

    def _insert(self, replies: tuple[CachedReply, ...] | list[CachedReply], count_later: bool) -> None:
        """Store replies whose key is new; a reply under a stored key is dropped (and counted, with
        ``count_later``): the first reply stored is the one every build reads."""
        sql = f"INSERT INTO replies ({', '.join(_COLUMNS)}, created) VALUES ({', '.join('?' * 10)}) ON CONFLICT(key) "
        sql += "DO UPDATE SET later = later + 1" if count_later else "DO NOTHING"
        now = time.time()
        with self._write():  # many rows, one commit
            self._db.executemany(sql, [(*astuple(r), now) for r in replies])
            self._db.executemany("DELETE FROM claims WHERE key = ?", [(r.key,) for r in replies])

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        """One write transaction, taking the file's write lock at once (no upgrade deadlock between builds)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def put(self, *replies: CachedReply) -> list[CachedReply]:
        """Store replies; returns what the cache holds under their keys, which is the earlier reply wherever one
        was stored already (the later one is counted in ``later``, not kept)."""
        self._insert(replies, count_later=True)
        stored = self.get_many(r.key for r in replies)
        return [stored[r.key] for r in replies]

    # -- claims: builds sharing the file never send the same request at once -------------------------------
    def claim(self, key: str, owner: str, lease_s: float) -> CachedReply | bool:
        """The stored reply when there is one; else True when ``owner`` now holds the key's claim (it was free,
        ``owner``'s, or its lease had run out), False when another build's claim is live."""
        now = time.time()
        with self._write():
            if (reply := self.get(key)) is not None:
                return reply
            row = self._db.execute("SELECT owner, expires FROM claims WHERE key = ?", (key,)).fetchone()
            if row is not None and row[0] != owner and row[1] > now and not owner_dead(row[0]):
                return False
            self._db.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?)", (key, owner, now + lease_s))
        return True

    def renew(self, owner: str, lease_s: float) -> None:
        """Extend every claim ``owner`` holds (its build is alive and still waiting for those replies)."""
        with self._write():
            self._db.execute("UPDATE claims SET expires = ? WHERE owner = ?", (time.time() + lease_s, owner))

    def release(self, key: str, owner: str) -> None:
        """Give up ``owner``'s claim on ``key`` (its request failed): another build may ask."""
        with self._write():
            self._db.execute("DELETE FROM claims WHERE key = ? AND owner = ?", (key, owner))

    def release_all(self, owner: str) -> None:
        """Give up every claim ``owner`` holds (its stage is over, or stopped)."""
        with self._write():
            self._db.execute("DELETE FROM claims WHERE owner = ?", (owner,))

    def later(self) -> int:
        """Replies received for keys that already had one (counted, not kept)."""
        return self._db.execute("SELECT COALESCE(SUM(later), 0) FROM replies").fetchone()[0]

    def put_requests(self, requests: Iterable[CachedReply]) -> None:
        """Remember what these requests ask (their answers empty), to read results that name only their key."""
        sql = f"INSERT OR REPLACE INTO requests VALUES ({', '.join('?' * len(_REQUEST_COLUMNS))})"
        with self._write():
            self._db.executemany(sql, [tuple(getattr(r, c) for c in _REQUEST_COLUMNS) for r in requests])

    def get_requests(self, keys: Iterable[str]) -> dict[str, CachedReply]:
        """The remembered requests among ``keys``, as replies with no text and no usage yet."""
        rows = self._select("requests", _REQUEST_COLUMNS, keys)
        return {row[0]: CachedReply(*row, text="", input_tokens=0, output_tokens=0) for row in rows}

    def drop(self, keys: Iterable[str]) -> int:
        """Delete the replies under ``keys`` (``mp16-reason cache drop``): the next build asks for them again.
        The one exception to the ledger's rule, for replies that should never have been kept."""
        keys = list(keys)
        with self._write():
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                self._db.execute(f"DELETE FROM replies WHERE key IN ({', '.join('?' * len(chunk))})", chunk)
        return len(keys)

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def __iter__(self) -> Iterator[CachedReply]:
        for row in self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM replies ORDER BY key"):
            yield CachedReply(*row)

    def export(self, path: str | Path) -> int:
        """Write every reply as one JSON line (sorted by key, so exports of equal caches are equal)."""
        n = 0
        with open(path, "w", encoding="utf-8") as fh:
            for reply in self:
                fh.write(json.dumps(asdict(reply), ensure_ascii=False, sort_keys=True) + "\n")
                n += 1
        return n

    def import_(self, path: str | Path) -> int:
        """Add the replies of an export; existing keys are kept. Returns how many were new."""
        before = len(self)
        with open(path, encoding="utf-8") as fh:
            rows = [CachedReply(**json.loads(line)) for line in fh if line.strip()]
        self._insert(rows, count_later=False)
        return len(self) - before

    def close(self) -> None:
        self._db.close()


def astuple(reply: CachedReply) -> tuple:
    return tuple(getattr(reply, c) for c in _COLUMNS)
