"""Near-duplicate pairs by Hamming distance between window hashes.

Every window of every image (:mod:`builders.audit.hashes`) is looked up among the whole-image pHashes of the
other images, so a crop finds its original, and a candidate within ``max_phash`` bits is a pair when the same
two codes' dHashes are within ``max_dhash`` too: two hashes must agree, which keeps unrelated photos of similar
scenes apart. The index holds one code an image and the windows are the queries: that keeps it small (the
windows of 4.65M images are 46.5M codes; their images are 4.65M).

Small searches are exact (faiss's ``IndexBinaryFlat``: every window against every image). Large ones use
multi-index hashing (:class:`MultiIndex`: three tables of 21 bits, one bit flipped in each): every pair within
5 bits is found, and most of those beyond, in time that grows with the number of images rather than its
square. The benchmark (``benchmarks/bench_audit.py``) measures how many of the pairs an exact search finds it
misses.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

EXACT_MAX_COMPARISONS = 5e10  # queries x windows up to which the search is exhaustive
CHUNK = 200_000  # window codes a range search takes at once: bounds its buffers
MULTI_CHUNK = 50_000  # the same for multi-index hashing, whose buffers hold every probed bucket's members


@dataclass(frozen=True)
class Pairs:
    """Pairs ``(a[k], b[k])`` of positions in the two sets, their pHash and dHash distances and the window."""

    a: np.ndarray
    b: np.ndarray
    phash: np.ndarray
    dhash: np.ndarray
    window: np.ndarray

    def __len__(self) -> int:
        return len(self.a)


def exhaustive(whole: int, windows: int) -> bool:
    """Whether a search of ``windows`` window codes against ``whole`` whole-image codes compares them all."""
    return whole * windows <= EXACT_MAX_COMPARISONS


def _codes(values: np.ndarray) -> np.ndarray:
    """uint64 codes as faiss's binary vectors (8 bytes each)."""
    return np.ascontiguousarray(values.astype(">u8")).view(np.uint8).reshape(-1, 8)


class MultiIndex:
    """Multi-index hashing (Norouzi, Punjani and Fleet, CVPR 2012) over 64-bit codes: each code cut into three
    21-bit chunks, one table per chunk. Two codes within ``r`` bits agree to within ``r // 3`` bits in at least
    one chunk, so probing each table at the query's chunk and its 21 one-bit neighbours finds every code within
    5 bits, and codes further away that differ by at most one bit in one chunk.

    A table is the codes' positions sorted by chunk and each chunk value's start in that order (numpy arrays, 4
    and 8 bytes an entry): 60 MB for 4.65M codes, where hash maps of lists take gigabytes.
    """

    BITS = 21
    FLIPS = np.array([0] + [1 << i for i in range(BITS)], np.int64)  # a chunk and its one-bit neighbours

    def __init__(self, codes: np.ndarray) -> None:
        self.codes = np.ascontiguousarray(codes)  # one column of (n, windows) arrays: gathers stay local
        self.tables = []
        for t in range(3):
            key = self._chunk(codes, t)
            order = np.argsort(key, kind="stable").astype(np.int32)
            starts = np.zeros(2**self.BITS + 1, np.int64)
            np.cumsum(np.bincount(key, minlength=2**self.BITS), out=starts[1:])
            self.tables.append((order, starts))

    @classmethod
    def _chunk(cls, codes: np.ndarray, t: int) -> np.ndarray:
        return ((codes >> np.uint64(cls.BITS * t)) & np.uint64(2**cls.BITS - 1)).astype(np.int64)

    def range_search(self, queries: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
        """``(q, ids)``: each query's position and a code's position, once, for every pair probed within
        ``radius`` bits."""
        found_q, found_ids = [], []
        for t, (order, starts) in enumerate(self.tables):
            probes = (self._chunk(queries, t)[:, None] ^ self.FLIPS).ravel()
            first = starts[probes]
            sizes = starts[probes + 1] - first
            total = int(sizes.sum())
            if not total:
                continue
            # The members of every probed bucket, in one array: bucket start + offset within the bucket.
            ends = np.cumsum(sizes)
            at = np.repeat(first - (ends - sizes), sizes) + np.arange(total)
            ids = order[at]
            q = np.repeat(np.arange(len(probes)) // len(self.FLIPS), sizes)
            near = np.bitwise_count(queries[q] ^ self.codes[ids]) <= radius
            found_q.append(q[near])
            found_ids.append(ids[near].astype(np.int64))
        if not found_q:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        q, ids = np.concatenate(found_q), np.concatenate(found_ids)
        _, once = np.unique(q * len(self.codes) + ids, return_index=True)  # found in more than one table
        return q[once], ids[once]


def _exact_index(codes: np.ndarray):
    import faiss

    index = faiss.IndexBinaryFlat(64)
    index.add(_codes(codes))
    return index


def query(
    a_phash: np.ndarray,
    a_dhash: np.ndarray,
    w_phash: np.ndarray,
    w_dhash: np.ndarray,
    max_phash: int,
    max_dhash: int,
    exact: bool | None = None,
    progress: bool = False,
    desc: str = "near duplicates",
) -> Pairs:
    """Every window of the images ``w_*`` (shape (m, windows)) against the whole-image codes ``a_*`` (shape
    (n,)); ``a`` indexes the whole images, ``b`` the windowed ones, ``window`` the window."""
    n_windows = w_phash.shape[1]
    if exact is None:
        exact = exhaustive(len(a_phash), w_phash.size)
    empty = np.empty(0, np.int64)
    if len(a_phash) == 0 or len(w_phash) == 0:
        return Pairs(empty, empty, empty, empty, empty)
    index = _exact_index(a_phash) if exact else MultiIndex(a_phash)
    windows = w_phash.reshape(-1)
    chunk = CHUNK if exact else MULTI_CHUNK
    starts = range(0, len(windows), chunk)

    def search(start: int) -> tuple[np.ndarray, np.ndarray]:
        part = windows[start : start + chunk]
        if exact:
            limits, _, ids = index.range_search(_codes(part), max_phash + 1)  # the radius is exclusive
            return np.repeat(np.arange(len(part)), np.diff(limits).astype(np.int64)) + start, ids.astype(np.int64)
        q, ids = index.range_search(part, max_phash)
        return q + start, ids

    found_a, found_w = [], []
    # faiss runs its own threads; numpy's array operations release the GIL, so chunks run side by side.
    with (
        ThreadPoolExecutor(1 if exact else min(8, os.cpu_count() or 1)) as pool,
        tqdm(total=len(w_phash), unit="img", desc=desc, disable=not progress) as bar,
    ):
        for start, (w, a) in zip(starts, pool.map(search, starts)):
            found_w.append(w)
            found_a.append(a)
            bar.update((min(start + chunk, len(windows)) // n_windows) - (start // n_windows))
    a, w = np.concatenate(found_a), np.concatenate(found_w)
    b, window = w // n_windows, w % n_windows
    dp = np.bitwise_count(a_phash[a] ^ w_phash[b, window]).astype(np.int64)
    dd = np.bitwise_count(a_dhash[a] ^ w_dhash[b, window]).astype(np.int64)
    keep = (dp <= max_phash) & (dd <= max_dhash)
    return Pairs(a[keep], b[keep], dp[keep], dd[keep], window[keep])


def closest(pairs: Pairs, symmetric: bool) -> Pairs:
    """One row per pair of images, the closest window's (by pHash, then dHash); with ``symmetric`` (one set
    against itself) ``(i, j)`` and ``(j, i)`` are one pair, ``a < b``, and an image is not its own pair."""
    a, b = pairs.a, pairs.b
    if symmetric:
        a, b = np.minimum(pairs.a, pairs.b), np.maximum(pairs.a, pairs.b)
    order = np.lexsort((pairs.dhash, pairs.phash, b, a))
    a, b = a[order], b[order]
    first = np.ones(len(a), bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    if symmetric:
        first &= a != b
    pick = order[first]
    return Pairs(a[first], b[first], pairs.phash[pick], pairs.dhash[pick], pairs.window[pick])


def within(
    phash: np.ndarray,
    dhash: np.ndarray,
    max_phash: int,
    max_dhash: int,
    progress: bool = False,
    exact: bool | None = None,
) -> Pairs:
    """Near-duplicate pairs inside one set of images (``phash``, ``dhash``: shape (n, windows))."""
    found = query(phash[:, 0], dhash[:, 0], phash, dhash, max_phash, max_dhash, exact, progress)
    return closest(found, symmetric=True)


def across(
    a: tuple[np.ndarray, np.ndarray],
    b: tuple[np.ndarray, np.ndarray],
    max_phash: int,
    max_dhash: int,
    progress: bool = False,
    exact: bool | None = None,
    desc: str = "near duplicates",
) -> Pairs:
    """Near-duplicate pairs between two sets: each set's windows against the other's whole images (a crop on
    either side finds its original on the other)."""
    (ap, ad), (bp, bd) = a, b
    one = query(ap[:, 0], ad[:, 0], bp, bd, max_phash, max_dhash, exact, progress, desc)  # a whole, b windows
    two = query(bp[:, 0], bd[:, 0], ap, ad, max_phash, max_dhash, exact, progress, desc)  # b whole, a windows
    both = Pairs(
        *(
            np.concatenate([x, y])
            for x, y in zip(
                (one.a, one.b, one.phash, one.dhash, one.window), (two.b, two.a, two.phash, two.dhash, two.window)
            )
        )
    )
    return closest(both, symmetric=False)
