"""The offline sample: procedurally drawn street scenes at real MP-16 coordinates.

Each image is something a reader of the reasoning could check: a shop sign naming the city, a street sign
with the country's ISO code, a landmark drawing, and sky and vegetation colours that follow the climate
(latitude) of the place. Three scenes come twice, the second time smaller and recompressed under another id
(``sample/NNNNN-again.jpg``): the near copies the sample's leakage audit should find. A handful of
deliberately bad rows (corrupt, truncated and zero-byte files, a missing file, a duplicate image, a duplicate
id, an out-of-range and an open-sea coordinate, a malformed CSV line) shows every rejection path of the build.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from importlib import resources
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFont

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
    "sky",
    "building",
    "tree",
    "road",
    "grass",
    "sand",
    "snow",
    "signboard, sign",
    "windowpane, window",
    "pole",
    "tower",
    "dome",
    "pyramid",
    "bridge",
    "lighthouse",
)
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
    """The scene and its per-pixel class mask (values index :data:`CLASSES`).

    The layout varies with the seed (which side the landmark stands on, the horizon, a skyline of buildings,
    hills, the shop's size, the light), as the framing of real photos does: a perceptual hash tells two scenes
    apart as it tells two photos apart, so the sample's own leakage audit finds only its deliberate near copies.
    """
    rnd = _seed(seed)
    r = random.Random(rnd)
    flip = r.random() < 0.5

    def x(v: float) -> float:  # mirrored when the landmark stands on the left
        return WIDTH - v if flip else v

    def box(x0: float, y0: float, x1: float, y1: float) -> list[float]:
        a, b = sorted((x(x0), x(x1)))
        return [a, y0, b, y1]

    sky, ground = _palette(lat)
    c = _Canvas(sky)
    horizon = r.randrange(250, 331)
    light = r.uniform(0.55, 1.0)  # how dark the top of the sky is: the hour and the weather
    for y in range(horizon):  # sky gradient
        t = y / horizon
        c.d.line([(0, y), (WIDTH, y)], fill=tuple(int(v * (light + (1 - light) * t)) for v in sky))
    # Coordinates-dependent sun height keeps scenes at different latitudes visibly different.
    sun_y = int(40 + 160 * (abs(lat) / 90))
    sun_x = r.randrange(30, WIDTH - 30)
    c("ellipse", [sun_x - 20, sun_y, sun_x + 20, sun_y + 40], "sky", fill=(255, 230, 120))
    # Clouds and a skyline of buildings behind the street: what makes two framings hash apart.
    for _ in range(r.randrange(0, 4)):
        cx, cy, w = r.randrange(0, WIDTH), r.randrange(20, max(30, horizon - 120)), r.randrange(60, 200)
        c("ellipse", [cx - w, cy, cx + w, cy + w // 3], "sky", fill=(245, 245, 248))
    bx = 0
    while bx < WIDTH:
        w, h = r.randrange(40, 140), r.randrange(20, 170)
        shade = r.randrange(90, 200)
        c("rectangle", [bx, horizon - h, bx + w, horizon], "building", fill=(shade, shade - 10, shade - 25))
        bx += w + r.randrange(0, 60)
    hills = [(0, HEIGHT)] + [(px, horizon - r.randrange(0, 40)) for px in range(0, WIDTH + 1, 80)] + [(WIDTH, HEIGHT)]
    c("polygon", hills, ground_class(lat), fill=ground)
    street = r.randrange(380, 436)
    c("rectangle", [0, street, WIDTH, HEIGHT], "road", fill=(90, 90, 95))  # street
    for mx in range(r.randrange(0, 80), WIDTH, 80):
        c("rectangle", [mx, street + 30, mx + 40, street + 36], "road", fill=(240, 240, 240))
    # Landmark on the skyline.
    kind = landmark(seed)
    cx = x(470 + rnd % 100)
    top = horizon - 240
    stone = (150, 140, 125)
    if kind == "tower":
        c(
            "polygon",
            [(cx - 40, horizon), (cx + 40, horizon), (cx + 6, top), (cx - 6, top)],
            kind,
            outline=(60, 50, 40),
            width=4,
        )
        for y in (top + 80, top + 150):
            k = (y - top - 80) // 8
            c("line", [(cx - 30 + k, y), (cx + 30 - k, y)], kind, fill=(60, 50, 40), width=4)
    elif kind == "dome":
        c("rectangle", [cx - 60, horizon - 80, cx + 60, horizon], "building", fill=stone)
        c("pieslice", [cx - 60, horizon - 140, cx + 60, horizon - 20], kind, fill=(200, 170, 60), start=180, end=360)
    elif kind == "pyramid":
        c("polygon", [(cx - 90, horizon), (cx + 90, horizon), (cx, horizon - 150)], kind, fill=(205, 180, 120))
    elif kind == "bridge":
        c(
            "arc",
            [cx - 120, horizon - 120, cx + 120, horizon + 120],
            kind,
            start=180,
            end=360,
            fill=(170, 40, 30),
            width=8,
        )
        c("line", [(cx - 130, horizon - 10), (cx + 130, horizon - 10)], kind, fill=(170, 40, 30), width=6)
    else:
        c(
            "polygon",
            [(cx - 18, horizon), (cx + 18, horizon), (cx + 9, top + 60), (cx - 9, top + 60)],
            kind,
            fill=(235, 235, 235),
        )
        c("rectangle", [cx - 12, top + 40, cx + 12, top + 60], kind, fill=(200, 40, 40))
    # Shop building with a sign naming the city.
    wall = ((rnd >> 8) % 120 + 110, (rnd >> 16) % 100 + 90, (rnd >> 24) % 80 + 80)
    roof = r.randrange(90, 190)
    left = r.randrange(0, 90)
    right = left + r.randrange(330, 400)
    c("rectangle", box(left, roof, right, street), "building", fill=wall)
    for wx in range(left + 20, right - 40, r.choice((55, 70, 90))):
        c("rectangle", box(wx, roof + 100, wx + 40, roof + 150), "windowpane", fill=(180, 210, 230))
    c(
        "rectangle",
        box(left + 15, roof + 15, right - 15, roof + 75),
        "signboard",
        fill=(250, 248, 240),
        outline=(30, 30, 30),
        width=3,
    )
    name = city if len(city) <= 16 else city[:15] + "."
    font = _font(34 if len(name) <= 11 else 26)
    c.d.text((x((left + right) / 2), roof + 45), name.upper(), fill=(20, 20, 20), font=font, anchor="mm")
    # Street sign with the country code; trees coloured by climate.
    c("rectangle", box(420, street - 70, 426, street), "pole", fill=(70, 70, 70))
    c("rectangle", box(400, street - 100, 520, street - 60), "signboard", fill=(20, 90, 170))
    c.d.text((x(460), street - 80), country_code, fill=(255, 255, 255), font=_font(28), anchor="mm")
    for tx in (560, 610):
        c("rectangle", box(tx - 4, street - 70, tx + 4, street), "tree", fill=(90, 60, 30))
        leaves = tuple(max(0, v - 30) for v in ground)
        c("ellipse", box(tx - 25, street - 120, tx + 25, street - 60), "tree", fill=leaves)
    # Uneven light (clouds' shadows, haze): a smooth field of brightness over the whole frame.
    grid = Image.frombytes("L", (4, 3), bytes(r.randrange(120, 256) for _ in range(12)))
    shade = grid.resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR)
    c.img = ImageChops.multiply(c.img, Image.merge("RGB", (shade, shade, shade)))
    return c.img, c.mask


def near_copies(n: int) -> list[int]:
    """The scenes the sample also holds as near copies (``sample/NNNNN-again.jpg``): three, spread out."""
    return sorted({n // 4, n // 2, 3 * n // 4}) if n >= 8 else []


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
                "id": sid,
                "file": f"{i:05d}.jpg",
                "lat": lat,
                "lon": lon,
                "sign": city,
                "city": place["city"] or "",
                "country": place["country"] or "",
                "country_code": code,
                "landmark": landmark(sid),
                "ground": ground_class(lat),
            }
        )
    # Deliberate near copies: a scene uploaded again, smaller and recompressed, under another id. The sample's
    # own leakage audit reports these pairs and no other (its scenes are otherwise distinct places).
    for i in near_copies(n):
        sid, name = f"sample/{i:05d}-again.jpg", f"{i:05d}-again.jpg"
        with Image.open(images / f"{i:05d}.jpg") as im:
            im.resize((WIDTH * 3 // 4, HEIGHT * 3 // 4), Image.Resampling.LANCZOS).save(images / name, quality=70)
        rows.append([sid, *rows[i][1:3], name, *rows[i][4:]])
        scenes.append(scenes[i] | {"id": sid, "file": name})
    # What each scene shows, for the authored teacher replies (builders/sample/replies.py).
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
