"""Photo-like images for the audit's tests: drawn landscapes with skyline, terrain and buildings from a seed,
copies made the ways photos get copied (resized, re-encoded, cropped, brightened, watermarked), and unrelated
photos of similar scenes (the same kind of landscape, another seed; the same layout, other buildings)."""

from __future__ import annotations

import functools
import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter


def fractal(rng, h, w, octaves=5):
    out = np.zeros((h, w))
    for o in range(octaves):
        s = 2 ** (o + 2)
        g = rng.standard_normal((s + 1, s + 1))
        img = Image.fromarray(((g - g.min()) / (np.ptp(g) + 1e-9) * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
        out += np.asarray(img, dtype=float) / (1.6**o)
    out -= out.min()
    return out / out.max()


def photo(seed: int, size: tuple[int, int] = (640, 480), buildings_seed: int | None = None) -> Image.Image:
    """A landscape drawn from ``seed``; ``buildings_seed`` redraws only its buildings (a similar scene)."""
    rng = np.random.default_rng(seed)
    w, h = size
    sky_top = rng.integers(60, 200, 3)
    sky_bot = rng.integers(120, 255, 3)
    t = np.linspace(0, 1, h)[:, None, None]
    img = (sky_top * (1 - t) + sky_bot * t) * np.ones((1, w, 1))
    horizon = int(h * rng.uniform(0.35, 0.7))
    terr = fractal(rng, h, w)
    ground = rng.integers(30, 160, 3)
    line = (horizon + (fractal(rng, 1, w, 4)[0] - 0.5) * h * 0.3).astype(int)
    yy = np.arange(h)[:, None]
    mask = yy > line[None, :]
    tex = (terr[..., None] * 0.8 + 0.6) * ground
    img = np.where(mask[..., None], tex, img)
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    if buildings_seed is not None:
        rng = np.random.default_rng(10_000_000 + buildings_seed)
    for _ in range(int(rng.integers(2, 9))):  # buildings / objects
        x0 = int(rng.integers(0, w))
        bw = int(rng.integers(w // 20, w // 4))
        bh = int(rng.integers(h // 10, h // 2))
        base = int(line[min(x0, w - 1)]) + int(rng.integers(0, h // 6))
        col = tuple(int(c) for c in rng.integers(0, 255, 3))
        d.rectangle((x0, base - bh, x0 + bw, base), fill=col)
        for _ in range(int(rng.integers(0, 12))):
            wx = int(rng.integers(x0, x0 + bw))
            wy = int(rng.integers(base - bh, base))
            d.rectangle((wx, wy, wx + 6, wy + 8), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    if rng.random() < 0.5:
        r = int(rng.integers(10, 40))
        cx = int(rng.integers(r, w - r))
        cy = int(rng.integers(r, max(r + 1, horizon - r)))
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(255, 240, 200))
    return im.filter(ImageFilter.GaussianBlur(0.8))


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _crop(im: Image.Image, fx: float, fy: float, ax: float, ay: float) -> Image.Image:
    w, h = im.size
    dx, dy = int(w * fx), int(h * fy)
    x0, y0 = int(dx * ax), int(dy * ay)
    return im.crop((x0, y0, w - (dx - x0), h - (dy - y0)))


def _watermark(im: Image.Image) -> Image.Image:
    layer = Image.new("RGBA", im.size, (0, 0, 0, 0))
    ImageDraw.Draw(layer).text((im.width * 0.62, im.height * 0.9), "(c) J. Smith 2009", fill=(255, 255, 255, 170))
    return Image.alpha_composite(im.convert("RGBA"), layer).convert("RGB")


def _reencode(im: Image.Image, quality: int) -> Image.Image:
    return Image.open(io.BytesIO(jpeg(im, quality))).convert("RGB")


# How photos get copied: each a function of the original.
COPIES = {
    "half size": lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS),
    "re-encoded q40": lambda im: _reencode(im, 40),
    "cropped 10% left": lambda im: _crop(im, 0.1, 0.0, 1.0, 0.0),
    "cropped 10% all round": lambda im: _crop(im, 0.1, 0.1, 0.5, 0.5),
    "cropped 10% corner": lambda im: _crop(im, 0.1, 0.1, 1.0, 1.0),
    "cropped 5% right": lambda im: _crop(im, 0.05, 0.0, 0.0, 0.0),
    "cropped 7% top corner": lambda im: _crop(im, 0.07, 0.07, 0.0, 1.0),
    "brighter 20%": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
    "darker 20%": lambda im: ImageEnhance.Brightness(im).enhance(0.8),
    "more contrast 25%": lambda im: ImageEnhance.Contrast(im).enhance(1.25),
    "less contrast 25%": lambda im: ImageEnhance.Contrast(im).enhance(0.75),
    "watermarked": _watermark,
    "cropped 5% and smaller": lambda im: _crop(im, 0.05, 0.05, 0.5, 0.5).resize((400, 300)),
}


def planted(s: int) -> list[tuple[int, Callable[[], Image.Image]]]:
    """One original's share of the near-duplicate quality set, as ``(group, make the image)``: the original and
    two copies of it made the ways photos get copied (group ``s``), and two unrelated photos of similar scenes,
    the same landscape with other buildings and another landscape drawn alike (group -1). Made on demand, so a
    caller that keeps the files makes them once."""
    names = list(COPIES)
    original = functools.cache(lambda: photo(s))
    return [
        (s, original),
        (s, lambda: COPIES[names[s % len(names)]](original())),
        (s, lambda: COPIES[names[(7 * s + 3) % len(names)]](original())),
        (-1, lambda: photo(s, buildings_seed=s)),
        (-1, lambda: photo(100_000 + s)),
    ]


def true_pairs(groups: list[int]) -> set[tuple[int, int]]:
    """The pairs ``(i, j)``, ``i < j``, of images made from the same original."""
    n = len(groups)
    return {(i, j) for i in range(n) for j in range(i + 1, n) if groups[i] >= 0 and groups[i] == groups[j]}
