"""Equirectangular world maps drawn with Pillow: GeoNames' populated places make the land, so no map data
or plotting library is needed."""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image

SEA = (18, 30, 48)
LAND = (64, 80, 104)


def base_map(width: int = 1200) -> tuple[Image.Image, Callable[[float, float], tuple[int, int]]]:
    """A blank map and the function from (lat, lon) to its pixel."""
    from .gazetteer import default_gazetteer

    height = width // 2

    def xy(lat: float, lon: float) -> tuple[int, int]:
        return int((lon + 180.0) / 360.0 * (width - 1)), int((90.0 - lat) / 180.0 * (height - 1))

    img = Image.new("RGB", (width, height), SEA)
    land = Image.new("L", (width, height), 0)
    px = land.load()
    gaz = default_gazetteer()
    for lat, lon in zip(gaz.lat.tolist(), gaz.lon.tolist()):
        px[xy(lat, lon)] = 255
    img.paste(LAND, mask=land)
    return img, xy
