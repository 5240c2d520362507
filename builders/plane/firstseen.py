"""The shard fold's record of every image it has taken: its SHA-256 and the id that had it first, which exact
duplicates are found against, in input order.

With a dict of digest -> id, each sample added 0.21 KB to the fold, which peaked at 1,186 MB over MP16-Pro's
4.65M samples; with this record, 0.11 KB and 709 MB (``benchmarks/bench_scale.py fold``). A digest is four
64-bit words in NumPy columns sorted by the first, with its place among the ids (up to 2^32), which are Arrow
strings: ~36 bytes a sample and the id's own. The newest digests wait in a dict of bounded size and are merged
into the columns when it is full, one column at a time, so that a merge holds at most one column twice.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

RECENT = 1 << 16  # digests held in the dict before a merge; a merge copies the columns once (~36 bytes a sample)
DIGEST_BYTES = 32


def _words(digests: Sequence[bytes]) -> np.ndarray:
    """The digests as rows of four 64-bit words (native order: only equality and a consistent sort matter)."""
    return np.frombuffer(b"".join(digests), np.uint64).reshape(len(digests), 4)


class FirstSeen:
    """The first id of every digest taken so far (:meth:`take`)."""

    def __init__(self, recent: int = RECENT) -> None:
        self.recent = recent
        self._new: dict[bytes, str] = {}  # taken since the last merge
        self._columns = [np.empty(0, np.uint64) for _ in range(4)]  # every merged digest, sorted by word 0
        self._ordinal = np.empty(0, np.uint32)  # each merged digest's place among the ids
        self._ids: list[pa.Array] = []  # the merged digests' first ids, a chunk a merge
        self._starts: list[int] = []  # the ordinal of each chunk's first id

    def __len__(self) -> int:
        return len(self._ordinal) + len(self._new)

    def take(self, digests: Sequence[bytes], ids: Sequence[str]) -> list[str | None]:
        """Each digest in order: the id that had it first, or None when it is new (it is then recorded with its
        id, and a later one in the same call is its duplicate)."""
        if any(len(d) != DIGEST_BYTES for d in digests):
            raise ValueError(f"a SHA-256 digest is {DIGEST_BYTES} bytes")
        found = self._find(digests)
        firsts: list[str | None] = []
        for digest, sid, at in zip(digests, ids, found.tolist()):
            if at >= 0:
                firsts.append(self._id(at))
                continue
            first = self._new.get(digest)
            if first is None:
                self._new[digest] = sid
            firsts.append(first)
        if len(self._new) >= self.recent:
            self._merge()
        return firsts

    def _find(self, digests: Sequence[bytes]) -> np.ndarray:
        """The ordinal of each digest among the merged ones, -1 where it is not there."""
        found = np.full(len(digests), -1, np.int64)
        n = len(self._ordinal)
        if not n or not digests:
            return found
        words = _words(digests)
        key = self._columns[0]
        at = np.searchsorted(key, words[:, 0])
        candidates = np.flatnonzero(key[np.minimum(at, n - 1)] == words[:, 0])
        # Few: the duplicates, and digests whose first 8 bytes another one shares (~n^2 / 2^65 pairs)
        for k in candidates.tolist():
            i = int(at[k])
            while i < n and key[i] == words[k, 0]:
                if all(self._columns[w][i] == words[k, w] for w in (1, 2, 3)):
                    found[k] = self._ordinal[i]
                    break
                i += 1
        return found

    def _id(self, ordinal: int) -> str:
        chunk = bisect.bisect_right(self._starts, ordinal) - 1
        return self._ids[chunk][ordinal - self._starts[chunk]].as_py()

    def _merge(self) -> None:
        start = len(self._ordinal)
        if start + len(self._new) > 1 << 32:
            raise OverflowError("more than 2^32 distinct images: the record's places are 32-bit")
        words = _words(list(self._new))
        order = np.argsort(words[:, 0], kind="stable")
        words = words[order]
        at = np.searchsorted(self._columns[0], words[:, 0])
        for w in range(4):  # one at a time: the old column goes before the next is copied
            self._columns[w] = np.insert(self._columns[w], at, words[:, w])
        self._ordinal = np.insert(self._ordinal, at, (start + order).astype(np.uint32))
        self._ids.append(pa.array(list(self._new.values()), pa.string()))
        self._starts.append(start)
        self._new = {}
