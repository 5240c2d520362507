"""Perceptual hashes of an image and of nine windows of it, so that a crop still matches its original.

The hashes are imagehash's definitions: pHash (the signs of the 8x8 lowest frequencies of a 32x32 grey image's
DCT against their median) and dHash (the signs of horizontal steps in a 9x8 grey image), 64 bits each. They
are taken of the whole image and of nine windows that leave out 10 % of it: each side, each corner (10 % of
both sides) and 5 % all round. A copy cropped by up to ~10 % is then close to one of its original's windows,
where the two whole images are not (pHash moves 14-26 bits under such a crop; window to whole: 0-2 on the
grid, about 10 between its points).

All twenty are taken on one 40x40 area-averaged grid of a small grey thumbnail, where the windows are
sub-grids (a 10 % trim is 4 cells): each window is brought to 32x32 and 9x8 by area-averaging matrices, and
matrix products stand for the two ``scipy.fftpack.dct`` calls imagehash makes. The grid itself is never made:
its averaging is folded into the matrices, once per thumbnail size, so three products of the thumbnail give all
twenty hashes. Calling imagehash on twenty crops costs three times more than preparing a kept JPEG does.
:func:`imagehash_codes` gives imagehash's own codes of the same crops, which the tests compare with these.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

GRID = 40
# (trim of the width, trim of the height, where the trim falls: 0 left/top .. 1 right/bottom, per axis)
WINDOWS: tuple[tuple[float, float, float, float], ...] = (
    (0.0, 0.0, 0.0, 0.0),  # the whole image: its pHash is the record's image.phash
    (0.1, 0.0, 0.0, 0.0), (0.1, 0.0, 1.0, 0.0), (0.0, 0.1, 0.0, 0.0), (0.0, 0.1, 0.0, 1.0),
    (0.1, 0.1, 0.0, 0.0), (0.1, 0.1, 1.0, 0.0), (0.1, 0.1, 0.0, 1.0), (0.1, 0.1, 1.0, 1.0),
    (0.1, 0.1, 0.5, 0.5),
)  # fmt: skip
N_WINDOWS = len(WINDOWS)
THUMB_SIDE = 60  # a thumbnail's shorter side is at least this before the grid is taken
# The hashes must not depend on float rounding, which differs between BLAS kernels (machines), so ties are
# settled on purpose. A dHash step of at most FLAT grey levels is no step: a flat region (a blown-out sky, a wall)
# then hashes alike in every copy, as in imagehash's 8-bit images. The steps are fractions with small
# denominators (0.05 itself occurs), so FLAT lies off them by far more than float64's error. A pHash frequency
# within TIE of the median is not above it: in a flat image all but the first are zero.
FLAT = 0.05 + 1e-9
TIE = 1e-6

# scipy.fftpack.dct (type II, unnormalised) as a matrix, its 8 lowest frequencies: y[k] = 2 sum x[n] cos(...)
_n = np.arange(32)
_DCT8 = 2.0 * np.cos(np.pi * np.arange(8)[:, None] * (2 * _n[None, :] + 1) / 64)


def boxes(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """Each window's box (left, top, right, bottom) in an image of this size."""
    out = []
    for fx, fy, ax, ay in WINDOWS:
        dx, dy = round(width * fx), round(height * fy)
        x0, y0 = round(dx * ax), round(dy * ay)
        out.append((x0, y0, width - (dx - x0), height - (dy - y0)))
    return out


@functools.cache
def _area(n: int, m: int) -> np.ndarray:
    """The m x n matrix that area-averages n cells into m."""
    out = np.zeros((m, n))
    for i in range(m):
        lo, hi = i * n / m, (i + 1) * n / m
        for j in range(int(lo), min(n, int(np.ceil(hi)))):
            out[i, j] = min(hi, j + 1) - max(lo, j)
    return out / out.sum(axis=1, keepdims=True)


def thumbnail(image: Image.Image) -> Image.Image:
    """A grey image with its shorter side at least :data:`THUMB_SIDE` (an integer reduction: cheap, area-averaged)."""
    factor = max(1, min(image.size) // THUMB_SIDE)
    small = image.reduce(factor) if factor > 1 else image
    return small if small.mode == "L" else small.convert("L")


@functools.cache
def _grid_plan() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The twenty hashes as products on the 40x40 grid, and where each hash's values lie in them. The windows
    have four vertical and four horizontal extents. ``left`` holds, per vertical extent, the rows that
    area-average it to 32 and take the DCT (pHash), then those that average it to 8 (dHash); ``phash_right`` and
    ``dhash_right`` the same per horizontal extent (to 32 and the DCT; to 9). Of the blocks of ``left[:n] @ grid
    @ phash_right`` each window reads its 8x8 low frequencies (``low``), and of ``left[n:] @ grid @
    dhash_right`` its 8x9 image, whose horizontal steps are its dHash (``step_from``, ``step_to``): flat
    indices."""
    box = boxes(GRID, GRID)
    rows, cols = sorted({(b[1], b[3]) for b in box}), sorted({(b[0], b[2]) for b in box})
    n = len(rows) * 8
    left = np.zeros((2 * n, GRID))
    phash_right, dhash_right = np.zeros((GRID, len(cols) * 8)), np.zeros((GRID, len(cols) * 9))
    for k, (y0, y1) in enumerate(rows):
        left[8 * k : 8 * k + 8, y0:y1] = _DCT8 @ _area(y1 - y0, 32)
        left[n + 8 * k : n + 8 * k + 8, y0:y1] = _area(y1 - y0, 8)
    for k, (x0, x1) in enumerate(cols):
        phash_right[x0:x1, 8 * k : 8 * k + 8] = _area(x1 - x0, 32).T @ _DCT8.T
        dhash_right[x0:x1, 9 * k : 9 * k + 9] = _area(x1 - x0, 9).T
    r, c = np.arange(8)[:, None], np.arange(8)[None, :]
    low, step_from = [], []
    for x0, y0, x1, y1 in box:
        v, h = rows.index((y0, y1)), cols.index((x0, x1))
        low.append(((8 * v + r) * phash_right.shape[1] + 8 * h + c).ravel())
        step_from.append(((8 * v + r) * dhash_right.shape[1] + 9 * h + c).ravel())
    step_from = np.array(step_from)
    return left, phash_right, dhash_right, np.array(low), step_from, step_from + 1


@functools.lru_cache(maxsize=512)
def _plan(width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_grid_plan`'s matrices with the area-averaging to the grid folded in, for a thumbnail of this
    size: products of the thumbnail itself give every hash (no resized copy to make). float64, so that the
    settled ties (:data:`FLAT`, :data:`TIE`) hold on every machine."""
    left, phash_right, dhash_right, *_ = _grid_plan()
    across = _area(width, GRID).T
    return left @ _area(height, GRID), across @ phash_right, across @ dhash_right


def window_hash_bytes(image: Image.Image) -> tuple[bytes, bytes]:
    """``(phash, dhash)`` of the :data:`N_WINDOWS` windows, the whole image's first, as big-endian bytes (8 a
    code), as units and ``hashes.parquet`` keep them. Few array operations: it runs for every image a build
    prepares."""
    small = thumbnail(image)
    left, phash_right, dhash_right = _plan(*small.size)
    *_, low_at, step_from, step_to = _grid_plan()
    pixels = np.frombuffer(small.tobytes(), np.uint8).reshape(small.size[1], small.size[0])
    rows = left @ pixels.astype(np.float64)
    n = len(rows) // 2
    low = (rows[:n] @ phash_right).ravel()[low_at]
    steps = (rows[n:] @ dhash_right).ravel()
    mid = np.partition(low, (31, 32), axis=1)
    bits = np.empty((2 * N_WINDOWS, 64), bool)
    np.greater(low, ((mid[:, 31] + mid[:, 32]) / 2 + TIE)[:, None], out=bits[:N_WINDOWS])  # pHash: above the median
    np.greater(steps[step_to], steps[step_from] + FLAT, out=bits[N_WINDOWS:])  # dHash: brighter than the left cell
    packed = np.packbits(bits, axis=1)  # the first bit highest: imagehash's hex order, and big-endian codes
    return packed[:N_WINDOWS].tobytes(), packed[N_WINDOWS:].tobytes()


def window_hashes(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """``(phash, dhash)``: arrays of :data:`N_WINDOWS` uint64 codes, the whole image's first."""
    phash, dhash = window_hash_bytes(image)
    return from_bytes(phash), from_bytes(dhash)


def imagehash_codes(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """The same codes through imagehash, window by window (slow: for checks and for comparison)."""
    import imagehash

    grey = thumbnail(image)
    crops = [grey.crop(box) for box in boxes(*grey.size)]  # imagehash resizes each crop itself (Lanczos)
    p = [int(str(imagehash.phash(c)), 16) for c in crops]
    d = [int(str(imagehash.dhash(c)), 16) for c in crops]
    return np.array(p, np.uint64), np.array(d, np.uint64)


def from_bytes(data: bytes) -> np.ndarray:
    """Codes from big-endian bytes (8 a code), as units and ``hashes.parquet`` keep them."""
    return np.frombuffer(data, ">u8").astype(np.uint64)


def hex64(code: int | np.integer) -> str:
    """A code as imagehash writes it (16 hex digits)."""
    return f"{int(code):016x}"
