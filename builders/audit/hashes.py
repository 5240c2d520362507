"""Perceptual hashes of an image and of nine windows of it, so that a crop still matches its original.

The hashes are imagehash's definitions: pHash (the signs of the 8x8 lowest frequencies of a 32x32 grey image's
DCT against their median) and dHash (the signs of horizontal steps in a 9x8 grey image), 64 bits each. They
are taken of the whole image and of nine windows that leave out 10 % of it: each side, each corner (10 % of
both sides) and 5 % all round. A copy cropped by up to ~10 % is then close to one of its original's windows,
where the two whole images are not (pHash moves 14-26 bits under such a crop; window to whole: 0-2 on the
grid, about 10 between its points).

All twenty are taken on one 40x40 area-averaged grid of a small grey thumbnail (its shorter side 30 to 59
pixels), where the windows are sub-grids (a 10 % trim is 4 cells): each window is brought to 32x32 and 9x8 by
area-averaging matrices, and matrix products stand for the two ``scipy.fftpack.dct`` calls imagehash makes. The
grid itself is never made: its averaging is folded into the matrices, once per thumbnail size, so three products
give all twenty hashes. Thumbnails of one size share those products, side by side: the image stage hashes 64
images at a time, for less than half the CPU of one at a time (it hashes every image a build prepares; calling
imagehash on the twenty crops would cost two to three times the preparation itself). :func:`imagehash_codes`
gives imagehash's own codes of the same windows, which the tests compare with these.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image

GRID = 40
# (trim of the width, trim of the height, where the trim falls: 0 left/top .. 1 right/bottom, per axis)
WINDOWS: tuple[tuple[float, float, float, float], ...] = (
    (0.0, 0.0, 0.0, 0.0),  # the whole image: its pHash is the record's image.phash
    (0.1, 0.0, 0.0, 0.0),
    (0.1, 0.0, 1.0, 0.0),
    (0.0, 0.1, 0.0, 0.0),
    (0.0, 0.1, 0.0, 1.0),
    (0.1, 0.1, 0.0, 0.0),
    (0.1, 0.1, 1.0, 0.0),
    (0.1, 0.1, 0.0, 1.0),
    (0.1, 0.1, 1.0, 1.0),
    (0.1, 0.1, 0.5, 0.5),
)
N_WINDOWS = len(WINDOWS)
BATCH = 64  # thumbnails hashed together in a build: they share their products (more only spill out of cache)
THUMB_SIDE = 30  # a thumbnail's shorter side is at least this: the hashes' 8x8 and 9x8 need no more detail
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


class Thumbnail(NamedTuple):
    """A grey thumbnail, a byte a pixel, row by row: what the hashes are taken of."""

    width: int
    height: int
    pixels: bytes


def grey_thumbnail(image: Image.Image) -> Thumbnail:
    """What :func:`hash_thumbnails` takes of an image: grey, reduced by Pillow (cheap, area-averaged) when its
    shorter side is at least three times :data:`THUMB_SIDE`. A kept photo's 1/8-scale decode (80x60 for
    640x480) is left as it is: :func:`hash_thumbnails` halves it with the others of its size at once."""
    factor = min(image.size) // THUMB_SIDE
    small = image.reduce(factor) if factor > 2 else image
    small = small if small.mode == "L" else small.convert("L")
    return Thumbnail(*small.size, small.tobytes())


def _pooled(pixels: np.ndarray, pool: int) -> np.ndarray:
    """Sums of ``pool`` x ``pool`` blocks of a stack of images (the remainder rows and columns left out)."""
    h, w = pixels.shape[1:]
    rows = pixels[:, 0 : h - h % pool : pool].astype(np.uint16)
    for i in range(1, pool):
        rows += pixels[:, i : h - h % pool : pool]
    out = rows[:, :, 0 : w - w % pool : pool].copy()
    for j in range(1, pool):
        out += rows[:, :, j : w - w % pool : pool]
    return out


@functools.cache
def _grid_plan() -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """The twenty hashes as products on the 40x40 grid. The windows have four vertical and four horizontal
    extents. ``left`` holds, per vertical extent, the 8 rows that area-average it to 32 and take the DCT (rows
    0-31, pHash), then the 8 that average it to 8 (rows 32-63, dHash). ``right`` holds, per horizontal extent,
    the 8 columns that average it to 32 and take the DCT, then (from column 32) the 8 horizontal steps of its
    average to 9. So ``left[:32] @ grid @ right[:, :32]`` is 4x4 blocks of 8x8 low frequencies, one per pair of
    extents, and ``left[32:] @ grid @ right[:, 32:]`` the same blocks of steps. Last, where each window's 64
    values lie in those 32x32 products: row and column indices."""
    box = boxes(GRID, GRID)
    rows, cols = sorted({(b[1], b[3]) for b in box}), sorted({(b[0], b[2]) for b in box})
    left, right = np.zeros((64, GRID)), np.zeros((GRID, 64))
    for k, (y0, y1) in enumerate(rows):
        left[8 * k : 8 * k + 8, y0:y1] = _DCT8 @ _area(y1 - y0, 32)
        left[32 + 8 * k : 32 + 8 * k + 8, y0:y1] = _area(y1 - y0, 8)
    for k, (x0, x1) in enumerate(cols):
        right[x0:x1, 8 * k : 8 * k + 8] = _area(x1 - x0, 32).T @ _DCT8.T
        nine = _area(x1 - x0, 9).T
        right[x0:x1, 32 + 8 * k : 32 + 8 * k + 8] = nine[:, 1:] - nine[:, :-1]  # brighter than the left cell
    r, c = np.broadcast_arrays(np.arange(8)[:, None], np.arange(8)[None, :])
    at_row = np.array([(8 * rows.index((y0, y1)) + r).ravel() for x0, y0, x1, y1 in box])
    at_col = np.array([(8 * cols.index((x0, x1)) + c).ravel() for x0, y0, x1, y1 in box])
    return left, right, (at_row, at_col)


@functools.lru_cache(maxsize=512)
def _plan(width: int, height: int, pool: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_grid_plan`'s matrices with the area-averaging to the grid folded in, for a thumbnail of this
    size whose pixels are sums of ``pool`` x ``pool`` blocks: products of the thumbnail itself give every hash
    (no grid to make). ``left`` is pHash's rows then dHash's; then pHash's and dHash's columns. float64, so that
    the settled ties (:data:`FLAT`, :data:`TIE`) hold on every machine."""
    left, right, _ = _grid_plan()
    across = _area(width, GRID).T @ right
    return (
        left @ _area(height, GRID) / pool**2,
        np.ascontiguousarray(across[:, :32]),
        np.ascontiguousarray(across[:, 32:]),
    )


@functools.lru_cache(maxsize=64)
def _gather(n: int) -> np.ndarray:
    """Where the 64 values of each of ``n`` thumbnails' windows lie in :func:`hash_thumbnails`' (32 n, 32)
    products, as flat indices: row r, column c of thumbnail i's 32x32 block is row r n + i, column c."""
    at_row, at_col = _grid_plan()[2]
    return at_row * (n * 32) + at_col + 32 * np.arange(n)[:, None, None]


def hash_thumbnails(thumbs: Sequence[Thumbnail]) -> list[tuple[bytes, bytes]]:
    """``(phash, dhash)`` of each thumbnail's :data:`N_WINDOWS` windows, the whole image's first, as big-endian
    bytes (8 a code), as units and ``hashes.parquet`` keep them. The codes of a thumbnail do not depend on the
    others it is hashed with."""
    n = len(thumbs)
    low, steps = np.empty((n, N_WINDOWS, 64)), np.empty((n, N_WINDOWS, 64))
    order = sorted(range(n), key=lambda i: thumbs[i][:2])  # by size: each size's thumbnails in one run
    start = 0
    for (w, h), run in itertools.groupby(order, key=lambda i: thumbs[i][:2]):
        members = list(run)
        b, end = len(members), start + len(members)
        pixels = np.frombuffer(b"".join(thumbs[i].pixels for i in members), np.uint8).reshape(b, h, w)
        pool = max(1, min(w, h) // THUMB_SIDE)
        if pool > 1:  # fewer pixels for the products: sums of blocks, which the plan divides by their size
            pixels = _pooled(pixels, pool)
            w, h = w // pool, h // pool
        left, right_p, right_d = _plan(w, h, pool)
        # The thumbnails side by side, (h, b * w), so that one product takes the rows of them all; then row r of
        # thumbnail i is row r * b + i of ``rows[:32]`` (or ``rows[32:]``) as (32 * b, w), for the columns.
        rows = left @ pixels.transpose(1, 0, 2).astype(np.float64, order="C").reshape(h, b * w)
        at = _gather(b)
        np.take(rows[:32].reshape(32 * b, w) @ right_p, at, out=low[start:end])
        np.take(rows[32:].reshape(32 * b, w) @ right_d, at, out=steps[start:end])
        start = end
    low = low.reshape(-1, 64)
    ranked = np.sort(low, axis=1)
    bits = np.empty((n, 2, N_WINDOWS, 64), bool)
    above = ((ranked[:, 31] + ranked[:, 32]) / 2 + TIE).reshape(n, N_WINDOWS, 1)
    np.greater(low.reshape(n, N_WINDOWS, 64), above, out=bits[:, 0])  # pHash: above the median
    np.greater(steps, FLAT, out=bits[:, 1])  # dHash: brighter than the left cell
    packed = np.packbits(bits, axis=-1).tobytes()  # the first bit highest: imagehash's hex order, big-endian codes
    size, out = N_WINDOWS * 8, [(b"", b"")] * n
    for k, i in enumerate(order):
        out[i] = packed[2 * size * k : 2 * size * k + size], packed[2 * size * k + size : 2 * size * (k + 1)]
    return out


def window_hash_bytes(image: Image.Image) -> tuple[bytes, bytes]:
    """:func:`hash_thumbnails` of one image."""
    return hash_thumbnails([grey_thumbnail(image)])[0]


def window_hashes(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """``(phash, dhash)``: arrays of :data:`N_WINDOWS` uint64 codes, the whole image's first."""
    phash, dhash = window_hash_bytes(image)
    return from_bytes(phash), from_bytes(dhash)


def imagehash_codes(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """imagehash's own codes of the same windows, crop by crop of the grey image (imagehash resizes each itself,
    with Lanczos): slow, for checks and for comparison."""
    import imagehash

    grey = image if image.mode == "L" else image.convert("L")
    crops = [grey.crop(box) for box in boxes(*grey.size)]
    p = [int(str(imagehash.phash(c)), 16) for c in crops]
    d = [int(str(imagehash.dhash(c)), 16) for c in crops]
    return np.array(p, np.uint64), np.array(d, np.uint64)


def from_bytes(data: bytes) -> np.ndarray:
    """Codes from big-endian bytes (8 a code), as units and ``hashes.parquet`` keep them."""
    return np.frombuffer(data, ">u8").astype(np.uint64)
