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
import json
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


# The classes a scene is drawn from, named as in ADE20K so that the segmentation models used on real photos
# and the scene segmenter trained on these drawings (builders/sample/segmenter.py) speak the same language.
CLASSES = (
    "sky", "building", "tree", "road", "grass", "sand", "snow", "signboard, sign", "windowpane, window",
    "pole", "tower", "dome", "pyramid", "bridge", "lighthouse",
)  # fmt: skip
LABEL = {name.split(",")[0]: i for i, name in enumerate(CLASSES)}


class _Canvas:
    """Draws each shape on the picture and, with its class, on the label mask."""

    def __init__(self, sky: tuple[int, int, int]) -> None:
        self.img = Image.new("RGB", (WIDTH, HEIGHT), sky)
        self.mask = Image.new("L", (WIDTH, HEIGHT), LABEL["sky"])
        self.d, self.m = ImageDraw.Draw(self.img), ImageDraw.Draw(self.mask)

    def __call__(self, shape: str, xy, label: str, **style) -> None:
        getattr(self.d, shape)(xy, **style)
        ink = {k: LABEL[label] if k in ("fill", "outline") else v for k, v in style.items()}
        getattr(self.m, shape)(xy, **ink)


def _seed(seed: str) -> int:
    return int(hashlib.sha256(seed.encode()).hexdigest(), 16)


def ground_class(lat: float) -> str:
    a = abs(lat)
    return "snow" if a >= 55 else "sand" if 15 <= a < 35 else "grass"


def landmark(seed: str) -> str:
    return LANDMARKS[_seed(seed) % len(LANDMARKS)]


def draw_scene(lat: float, lon: float, city: str, country_code: str, seed: str) -> Image.Image:
    return draw_scene_with_mask(lat, lon, city, country_code, seed)[0]


def draw_scene_with_mask(
    lat: float, lon: float, city: str, country_code: str, seed: str
) -> tuple[Image.Image, Image.Image]:
    """The scene and its per-pixel class mask (values index :data:`CLASSES`)."""
    rnd = _seed(seed)
    sky, ground = _palette(lat)
    c = _Canvas(sky)
    horizon = 300
    for y in range(horizon):  # sky gradient
        t = y / horizon
        c.d.line([(0, y), (WIDTH, y)], fill=tuple(int(v * (0.75 + 0.25 * t)) for v in sky))
    c("rectangle", [0, horizon, WIDTH, HEIGHT], ground_class(lat), fill=ground)
    c("rectangle", [0, 400, WIDTH, HEIGHT], "road", fill=(90, 90, 95))  # street
    for x in range(20, WIDTH, 80):
        c("rectangle", [x, 436, x + 40, 442], "road", fill=(240, 240, 240))
    # Landmark on the skyline.
    kind = landmark(seed)
    cx = 470 + rnd % 100
    stone = (150, 140, 125)
    if kind == "tower":
        c("polygon", [(cx - 40, horizon), (cx + 40, horizon), (cx + 6, 60), (cx - 6, 60)], kind,
          outline=(60, 50, 40), width=4)  # fmt: skip
        for y in (140, 210):
            c("line", [(cx - 30 + (y - 140) // 8, y), (cx + 30 - (y - 140) // 8, y)], kind, fill=(60, 50, 40), width=4)
    elif kind == "dome":
        c("rectangle", [cx - 60, 220, cx + 60, horizon], "building", fill=stone)
        c("pieslice", [cx - 60, 160, cx + 60, 280], kind, fill=(200, 170, 60), start=180, end=360)
    elif kind == "pyramid":
        c("polygon", [(cx - 90, horizon), (cx + 90, horizon), (cx, 150)], kind, fill=(205, 180, 120))
    elif kind == "bridge":
        c("arc", [cx - 120, 180, cx + 120, 420], kind, start=180, end=360, fill=(170, 40, 30), width=8)
        c("line", [(cx - 130, 290), (cx + 130, 290)], kind, fill=(170, 40, 30), width=6)
    else:
        c("polygon", [(cx - 18, horizon), (cx + 18, horizon), (cx + 9, 120), (cx - 9, 120)], kind, fill=(235, 235, 235))
        c("rectangle", [cx - 12, 100, cx + 12, 120], kind, fill=(200, 40, 40))
    # Shop building with a sign naming the city.
    wall = ((rnd >> 8) % 120 + 110, (rnd >> 16) % 100 + 90, (rnd >> 24) % 80 + 80)
    c("rectangle", [30, 150, 400, 400], "building", fill=wall)
    for wx in range(50, 390, 70):
        c("rectangle", [wx, 250, wx + 40, 300], "windowpane", fill=(180, 210, 230))
    c("rectangle", [45, 165, 385, 225], "signboard", fill=(250, 248, 240), outline=(30, 30, 30), width=3)
    name = city if len(city) <= 16 else city[:15] + "."
    c.d.text((215, 195), name.upper(), fill=(20, 20, 20), font=_font(34 if len(name) <= 11 else 26), anchor="mm")
    # Street sign with the country code; trees coloured by climate.
    c("rectangle", [420, 330, 426, 400], "pole", fill=(70, 70, 70))
    c("rectangle", [400, 300, 520, 340], "signboard", fill=(20, 90, 170))
    c.d.text((460, 320), country_code, fill=(255, 255, 255), font=_font(28), anchor="mm")
    for tx in (560, 610):
        c("rectangle", [tx - 4, 330, tx + 4, 400], "tree", fill=(90, 60, 30))
        c("ellipse", [tx - 25, 280, tx + 25, 340], "tree", fill=tuple(max(0, v - 30) for v in ground))
    # Coordinates-dependent sun height keeps scenes at different latitudes visibly different.
    sun_y = int(40 + 160 * (abs(lat) / 90))
    c("ellipse", [40, sun_y, 80, sun_y + 40], "sky", fill=(255, 230, 120))
    return c.img, c.mask


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
    rows, scenes = [], []
    for i, ((lat, lon), (_, place)) in enumerate(zip(coords[:n], places.iterrows())):
        sid = f"sample/{i:05d}.jpg"
        city = place["city"] or place["place"] or "Open road"
        code = place["country_code"] or "??"
        img = draw_scene(lat, lon, city, code, sid)
        img.save(images / f"{i:05d}.jpg", quality=92)
        rows.append([sid, f"{lat:.6f}", f"{lon:.6f}", f"{i:05d}.jpg", place["city"] or "", place["country"] or ""])
        scenes.append(
            {
                "id": sid, "file": f"{i:05d}.jpg", "lat": lat, "lon": lon, "sign": city, "city": place["city"] or "",
                "country": place["country"] or "", "country_code": code, "landmark": landmark(sid),
                "ground": ground_class(lat),
            }
        )  # fmt: skip
    # What each scene shows, for the authored teacher replies (builders/sample_replies.py).
    (root / "scenes.jsonl").write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in scenes))
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
