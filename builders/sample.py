"""The offline sample: procedurally drawn street scenes at real MP-16 coordinates.

Each image is something a reader of the reasoning could check: a shop sign naming the city, a street sign
with the country's ISO code, a landmark drawing, and sky and vegetation colours that follow the climate
(latitude) of the place. A handful of deliberately bad rows (corrupt, truncated and zero-byte files, a
missing file, a duplicate image, a duplicate id, an out-of-range and an open-sea coordinate, a malformed CSV
line) shows every rejection path of the build.
"""

from __future__ import annotations

import csv
import hashlib
import io
from importlib import resources
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from mp16_reason.gazetteer import default_gazetteer

WIDTH, HEIGHT = 640, 480
LANDMARKS = ("tower", "dome", "pyramid", "bridge", "lighthouse")


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _palette(lat: float) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Sky and vegetation colours by climate band (absolute latitude)."""
    a = abs(lat)
    if a < 15:
        return (70, 150, 235), (30, 130, 40)  # tropical: deep blue, lush green
    if a < 35:
        return (120, 175, 230), (190, 165, 100)  # subtropical/arid: pale sky, dry grass
    if a < 55:
        return (140, 170, 200), (80, 140, 60)  # temperate: grey-blue, green
    return (185, 200, 215), (235, 240, 245)  # subpolar: white sky, snow


def draw_scene(lat: float, lon: float, city: str, country_code: str, seed: str) -> Image.Image:
    rnd = int(hashlib.sha256(seed.encode()).hexdigest(), 16)
    sky, ground = _palette(lat)
    img = Image.new("RGB", (WIDTH, HEIGHT), sky)
    d = ImageDraw.Draw(img)
    horizon = 300
    for y in range(horizon):  # sky gradient
        t = y / horizon
        d.line([(0, y), (WIDTH, y)], fill=tuple(int(c * (0.75 + 0.25 * t)) for c in sky))
    d.rectangle([0, horizon, WIDTH, HEIGHT], fill=ground)
    d.rectangle([0, 400, WIDTH, HEIGHT], fill=(90, 90, 95))  # street
    for x in range(20, WIDTH, 80):
        d.rectangle([x, 436, x + 40, 442], fill=(240, 240, 240))
    # Landmark on the skyline.
    kind = LANDMARKS[rnd % len(LANDMARKS)]
    cx = 470 + rnd % 100
    stone = (150, 140, 125)
    if kind == "tower":
        d.polygon([(cx - 40, horizon), (cx + 40, horizon), (cx + 6, 60), (cx - 6, 60)], outline=(60, 50, 40), width=4)
        for y in (140, 210):
            d.line([(cx - 30 + (y - 140) // 8, y), (cx + 30 - (y - 140) // 8, y)], fill=(60, 50, 40), width=4)
    elif kind == "dome":
        d.rectangle([cx - 60, 220, cx + 60, horizon], fill=stone)
        d.pieslice([cx - 60, 160, cx + 60, 280], 180, 360, fill=(200, 170, 60))
    elif kind == "pyramid":
        d.polygon([(cx - 90, horizon), (cx + 90, horizon), (cx, 150)], fill=(205, 180, 120))
    elif kind == "bridge":
        d.arc([cx - 120, 180, cx + 120, 420], 180, 360, fill=(170, 40, 30), width=8)
        d.line([(cx - 130, 290), (cx + 130, 290)], fill=(170, 40, 30), width=6)
    else:
        d.polygon([(cx - 18, horizon), (cx + 18, horizon), (cx + 9, 120), (cx - 9, 120)], fill=(235, 235, 235))
        d.rectangle([cx - 12, 100, cx + 12, 120], fill=(200, 40, 40))
    # Shop building with a sign naming the city.
    wall = ((rnd >> 8) % 120 + 110, (rnd >> 16) % 100 + 90, (rnd >> 24) % 80 + 80)
    d.rectangle([30, 150, 400, 400], fill=wall)
    for wx in range(50, 390, 70):
        d.rectangle([wx, 250, wx + 40, 300], fill=(180, 210, 230))
    d.rectangle([45, 165, 385, 225], fill=(250, 248, 240), outline=(30, 30, 30), width=3)
    name = city if len(city) <= 16 else city[:15] + "."
    d.text((215, 195), name.upper(), fill=(20, 20, 20), font=_font(34 if len(name) <= 11 else 26), anchor="mm")
    # Street sign with the country code; trees coloured by climate.
    d.rectangle([420, 330, 426, 400], fill=(70, 70, 70))
    d.rectangle([400, 300, 520, 340], fill=(20, 90, 170))
    d.text((460, 320), country_code, fill=(255, 255, 255), font=_font(28), anchor="mm")
    for tx in (560, 610):
        d.rectangle([tx - 4, 330, tx + 4, 400], fill=(90, 60, 30))
        d.ellipse([tx - 25, 280, tx + 25, 340], fill=tuple(max(0, c - 30) for c in ground))
    # Coordinates-dependent sun height keeps scenes at different latitudes visibly different.
    sun_y = int(40 + 160 * (abs(lat) / 90))
    d.ellipse([40, sun_y, 80, sun_y + 40], fill=(255, 230, 120))
    return img


def _coordinates() -> list[tuple[float, float]]:
    text = resources.files("builders.data").joinpath("sample_coordinates.csv").read_text()
    return [(float(r["LAT"]), float(r["LON"])) for r in csv.DictReader(io.StringIO(text))]


def write_sample(root: str | Path, n: int = 200) -> Path:
    """Write ``root/metadata.csv`` and ``root/images/``; returns the metadata path. Deterministic."""
    root = Path(root)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    coords = _coordinates()
    if not 1 <= n <= len(coords):
        raise ValueError(f"the sample has between 1 and {len(coords)} images, not {n}")
    gaz = default_gazetteer()
    places = gaz.reverse_batch([c[0] for c in coords[:n]], [c[1] for c in coords[:n]])
    rows = []
    for i, ((lat, lon), (_, place)) in enumerate(zip(coords[:n], places.iterrows())):
        sid = f"sample/{i:05d}.jpg"
        city = place["city"] or place["place"] or "Open road"
        img = draw_scene(lat, lon, city, place["country_code"] or "??", sid)
        img.save(images / f"{i:05d}.jpg", quality=92)
        rows.append([sid, f"{lat:.6f}", f"{lon:.6f}", f"{i:05d}.jpg", place["city"] or "", place["country"] or ""])
    # Deliberately bad rows: each exercises one rejection path.
    good = (images / "00000.jpg").read_bytes()
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg" * 4)
    (images / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (images / "empty.jpg").write_bytes(b"")
    (images / "duplicate.jpg").write_bytes(good)
    lat0, lon0 = coords[0]
    bad = [
        ["bad/corrupt.jpg", f"{lat0}", f"{lon0}", "corrupt.jpg", "", ""],
        ["bad/truncated.jpg", f"{lat0}", f"{lon0}", "truncated.jpg", "", ""],
        ["bad/empty.jpg", f"{lat0}", f"{lon0}", "empty.jpg", "", ""],
        ["bad/missing.jpg", f"{lat0}", f"{lon0}", "missing.jpg", "", ""],
        ["bad/duplicate-image.jpg", f"{lat0}", f"{lon0}", "duplicate.jpg", "", ""],
        ["sample/00001.jpg", f"{lat0}", f"{lon0}", "00001.jpg", "", ""],  # duplicate id
        ["bad/latitude.jpg", "123.4", f"{lon0}", "00002.jpg", "", ""],
        ["bad/open-sea.jpg", "0.0", "-30.0", "00003.jpg", "", ""],
    ]
    meta = root / "metadata.csv"
    with meta.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["IMG_ID", "LAT", "LON", "image", "city", "country"])
        w.writerows(rows[: n // 2])
        w.writerows(bad)
        fh.write("bad/malformed.jpg,1.0\n")  # a line with too few fields
        w.writerows(rows[n // 2 :])
    return meta
