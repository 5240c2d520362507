"""Perceptual hashes of an image and of nine windows of it, so that a crop still matches its original.

The hashes are imagehash's definitions: pHash (the signs of the 8x8 lowest frequencies of a 32x32 grey image's
DCT against their median) and dHash (the signs of horizontal steps in a 9x8 grey image), 64 bits each. They
are taken of the whole image and of nine windows that leave out 10 % of it: each side, each corner (10 % of
both sides) and 5 % all round. A copy cropped by up to ~10 % is then close to one of its original's windows,
where the two whole images are not (pHash moves 14-26 bits under such a crop; window to whole: 0-2 on the
grid, about 10 between its points).

All twenty come from one 40x40 grey grid of the image, where the windows are sub-grids (a 10 % trim is 4
cells): each window is brought to 32x32 and 9x8 by fixed area-averaging matrices, and matrix products stand
for the two ``scipy.fftpack.dct`` calls imagehash makes. Calling imagehash on twenty crops costs three times
more than preparing a kept JPEG does; this costs about a tenth of it (``benchmarks/bench_audit.py``).
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


def _pack(bits: np.ndarray) -> np.ndarray:
    """Rows of 64 booleans -> uint64, the first bit highest (imagehash's hex order)."""
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


@functools.cache
def _matrices() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per window, the matrices that take the 40x40 grid to its pHash's low frequencies (``left @ grid @
    right``: area-average the window to 32x32, then the DCT) and to its dHash's 9x8 image (``down @ grid @
    across``); zero outside the window. The left ones of all twenty are stacked, so a hash costs three products."""
    left, right = np.zeros((N_WINDOWS, 8, GRID)), np.zeros((N_WINDOWS, GRID, 8))
    down, across = np.zeros((N_WINDOWS, 8, GRID)), np.zeros((N_WINDOWS, GRID, 9))
    for i, (x0, y0, x1, y1) in enumerate(boxes(GRID, GRID)):
        h, w = y1 - y0, x1 - x0
        left[i, :, y0:y1] = _DCT8 @ _area(h, 32)
        right[i, x0:x1, :] = _area(w, 32).T @ _DCT8.T
        down[i, :, y0:y1] = _area(h, 8)
        across[i, x0:x1, :] = _area(w, 9).T
    # float32: a hash is the signs of differences, which this precision keeps (bar a rare tie).
    return tuple(m.astype(np.float32) for m in (np.concatenate([left, down]).reshape(-1, GRID), right, across))


def window_hashes(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """``(phash, dhash)``: arrays of :data:`N_WINDOWS` uint64 codes, the whole image's first."""
    small = thumbnail(image).resize((GRID, GRID), Image.Resampling.BOX)
    grid = np.frombuffer(small.tobytes(), np.uint8).reshape(GRID, GRID)  # (np.asarray takes longer)
    rows, right, across = _matrices()
    both = (rows @ grid.astype(np.float32)).reshape(2 * N_WINDOWS, 8, GRID)
    low = (both[:N_WINDOWS] @ right).reshape(N_WINDOWS, 64)
    steps = both[N_WINDOWS:] @ across
    mid = np.partition(low, (31, 32), axis=1)
    bits = np.concatenate([low > ((mid[:, 31] + mid[:, 32]) / 2)[:, None],
                           (steps[:, :, 1:] > steps[:, :, :-1]).reshape(N_WINDOWS, 64)])  # fmt: skip
    codes = _pack(bits)
    return codes[:N_WINDOWS], codes[N_WINDOWS:]


def imagehash_codes(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """The same codes through imagehash, window by window (slow: for checks and for comparison)."""
    import imagehash

    grey = thumbnail(image)
    crops = [grey.crop(box) for box in boxes(*grey.size)]  # imagehash resizes each crop itself (Lanczos)
    p = [int(str(imagehash.phash(c)), 16) for c in crops]
    d = [int(str(imagehash.dhash(c)), 16) for c in crops]
    return np.array(p, np.uint64), np.array(d, np.uint64)


def to_bytes(codes: np.ndarray) -> bytes:
    """Codes as big-endian bytes (8 a code), as units and ``hashes.parquet`` keep them."""
    return codes.astype(">u8").tobytes()


def from_bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(data, ">u8").astype(np.uint64)


def hex64(code: int | np.integer) -> str:
    """A code as imagehash writes it (16 hex digits)."""
    return f"{int(code):016x}"
