"""Near-duplicate pairs by Hamming distance between window hashes, with faiss's binary indexes.

Every image's whole-image pHash is looked up among the pHashes of every window of the other images
(:mod:`builders.audit.hashes`), so a crop finds its original, and a candidate within ``max_phash`` bits is a pair
when the same two codes' dHashes are within ``max_dhash`` too: two hashes must agree, which keeps unrelated
photos of similar scenes apart.

Small searches are exact (``IndexBinaryFlat``: every query against every window). Large ones use multi-index
hashing (``IndexBinaryMultiHash``: three tables of 21 bits, one bit flipped in each): every pair within 5 bits
is found, and more of those beyond, in time that grows with the number of images rather than its square. The
benchmark (``benchmarks/bench_audit.py``) measures how many of the pairs an exact search finds it misses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

EXACT_MAX_COMPARISONS = 5e10  # queries x windows up to which the search is exhaustive
CHUNK = 50_000  # queries a range search takes at once: bounds its result buffers


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


def _codes(values: np.ndarray) -> np.ndarray:
    """uint64 codes as faiss's binary vectors (8 bytes each)."""
    return np.ascontiguousarray(values.astype(">u8")).view(np.uint8).reshape(-1, 8)


def _index(windows: np.ndarray, exact: bool):
    import faiss

    if exact:
        index = faiss.IndexBinaryFlat(64)
    else:
        index = faiss.IndexBinaryMultiHash(64, 3, 21)
        index.nflip = 1
    index.add(_codes(windows.ravel()))
    return index


def query(
    q_phash: np.ndarray,
    q_dhash: np.ndarray,
    w_phash: np.ndarray,
    w_dhash: np.ndarray,
    max_phash: int,
    max_dhash: int,
    exact: bool | None = None,
    progress: bool = False,
    desc: str = "near duplicates",
) -> Pairs:
    """Each query image's whole-image codes (``q_*``, shape (n,)) against every window of the indexed images
    (``w_*``, shape (m, windows)); ``a`` indexes the queries, ``b`` the indexed images."""
    n_windows = w_phash.shape[1]
    if exact is None:
        exact = len(q_phash) * w_phash.size <= EXACT_MAX_COMPARISONS
    empty = np.empty(0, np.int64)
    if len(q_phash) == 0 or len(w_phash) == 0:
        return Pairs(empty, empty, empty, empty, empty)
    index = _index(w_phash, exact)
    codes = _codes(q_phash)
    found_a, found_w = [], []
    with tqdm(total=len(codes), unit="img", desc=desc, disable=not progress) as bar:
        for start in range(0, len(codes), CHUNK):
            limits, _, ids = index.range_search(codes[start : start + CHUNK], max_phash + 1)  # radius is exclusive
            found_a.append(np.repeat(np.arange(start, start + len(limits) - 1), np.diff(limits).astype(np.int64)))
            found_w.append(ids)
            bar.update(len(limits) - 1)
    a, w = np.concatenate(found_a), np.concatenate(found_w).astype(np.int64)
    b, window = w // n_windows, w % n_windows
    dp = np.bitwise_count(q_phash[a] ^ w_phash[b, window]).astype(np.int64)
    dd = np.bitwise_count(q_dhash[a] ^ w_dhash[b, window]).astype(np.int64)
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


def within(phash: np.ndarray, dhash: np.ndarray, max_phash: int, max_dhash: int, progress: bool = False,
           exact: bool | None = None) -> Pairs:  # fmt: skip
    """Near-duplicate pairs inside one set of images (``phash``, ``dhash``: shape (n, windows))."""
    found = query(phash[:, 0], dhash[:, 0], phash, dhash, max_phash, max_dhash, exact, progress)
    return closest(found, symmetric=True)


def across(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], max_phash: int, max_dhash: int,
           progress: bool = False, exact: bool | None = None, desc: str = "near duplicates") -> Pairs:  # fmt: skip
    """Near-duplicate pairs between two sets: each set's whole images against the other's windows (a crop on
    either side finds its original on the other)."""
    (ap, ad), (bp, bd) = a, b
    one = query(ap[:, 0], ad[:, 0], bp, bd, max_phash, max_dhash, exact, progress, desc)
    two = query(bp[:, 0], bd[:, 0], ap, ad, max_phash, max_dhash, exact, progress, desc)
    both = Pairs(*(np.concatenate([x, y]) for x, y in zip(
        (one.a, one.b, one.phash, one.dhash, one.window), (two.b, two.a, two.phash, two.dhash, two.window)
    )))  # fmt: skip
    return closest(both, symmetric=False)
