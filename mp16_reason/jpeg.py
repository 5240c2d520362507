"""Image budgets and JPEG data URLs, shared by the builder (teacher requests) and training (predictions, the
reward model)."""

from __future__ import annotations

import base64
import io
import math
from typing import Any


def fit_budget(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """Largest size with the same aspect ratio and at most ``max_pixels`` pixels (never upscales)."""
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    w, h = max(1, int(width * scale)), max(1, int(height * scale))
    while w * h > max_pixels:  # guard against rounding up past the budget
        w, h = (w - 1, h) if w >= h else (w, h - 1)
    return w, h


def downscale_jpeg(data: bytes, max_pixels: int | None) -> bytes:
    """``data`` as is when it fits ``max_pixels`` (or there is no budget), else box-resized to fit, as JPEG
    quality 90."""
    if not max_pixels:
        return data
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    if img.width * img.height <= max_pixels:
        return data
    img = img.convert("RGB").resize(fit_budget(img.width, img.height, max_pixels), Image.Resampling.BOX)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def jpeg_data_url(image: Any, max_pixels: int | None = None) -> str:
    """A base64 ``data:`` URL of JPEG bytes (downscaled to ``max_pixels`` when larger), or of a PIL image
    encoded as JPEG (quality 90)."""
    if not isinstance(image, bytes | bytearray):
        buf = io.BytesIO()
        image.convert("RGB").save(buf, "JPEG", quality=90)
        image = buf.getvalue()
    return "data:image/jpeg;base64," + base64.b64encode(downscale_jpeg(bytes(image), max_pixels)).decode("ascii")
