"""Image preparation: decode-validate, orient, convert to RGB, refuse bombs, resize to a pixel budget, re-encode.

Most MP-16 photos already fit the budget: a JPEG within it that can be served as it is (RGB or greyscale, no
EXIF orientation to apply, not CMYK) keeps its image data byte for byte, checked by a DCT-scaled decode that
still reads all of its entropy-coded data (which catches truncation and corruption at a fraction of a full
decode's cost); only its metadata segments go (EXIF, XMP, IPTC, comments: they can hold the photo's GPS
position). Everything else is decoded, converted and encoded again.

``prepare()`` returns a :class:`PreparedImage` or raises :class:`ImageRejected` whose message is the reason
recorded for the row.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import io
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import get_args

from PIL import Image, ImageOps, UnidentifiedImageError

from builders.audit.hashes import Thumbnail, grey_thumbnail, hash_thumbnails
from builders.spec import ResampleFilter
from mp16_reason.jpeg import fit_budget


class ImageRejected(Exception):
    pass


@dataclass(slots=True)
class PreparedImage:
    jpeg: bytes
    width: int
    height: int
    orig_width: int
    orig_height: int
    orig_format: str
    sha256: str  # of the original bytes: exact duplicates share it
    reencoded: bool = True
    thumbnail: Thumbnail | None = None  # what the hashes are taken of, until :func:`add_hashes` takes them
    phash: bytes = b""  # the window pHashes and dHashes of builders.audit.hashes, 8 bytes a code
    dhash: bytes = b""


def add_hashes(images: Sequence[PreparedImage]) -> None:
    """Give the images their window hashes, taken of their thumbnails together (the products are shared: a
    batch costs far less than one image at a time), and let the thumbnails go."""
    for img, (img.phash, img.dhash) in zip(images, hash_thumbnails([img.thumbnail for img in images])):
        img.thumbnail = None


@functools.cache
def keep_image_memory() -> bool:
    """Let glibc's malloc keep freed image buffers for the next image (once per process; glibc only).

    By default every decoded frame and resize buffer (megabytes each) comes from fresh pages: large blocks
    are mapped and unmapped, and the heap's top is trimmed back to the system on free, so each image pays its
    page faults again. Serving them from the heap and keeping what is freed cuts preparation CPU by about a
    fifth on 1024x768 JPEGs; memory stays at the worker's peak working set instead of being handed back.
    Two arenas, not glibc's eight per core: each arena keeps its own freed memory, and a worker's threads
    allocate a few large buffers per image, too few to contend (~140 MB less per worker, same speed).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    return bool(
        mallopt(m_mmap_threshold, 32 << 20) and mallopt(m_trim_threshold, 256 << 20) and mallopt(m_arena_max, 2)
    )


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit greyscale: scale to 8 bits
        img = img.point(lambda v: v / 256).convert("L") if img.mode != "I" else img.convert("L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "RGBa", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))  # alpha over white, as viewers show it
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB") if img.mode != "RGB" else img  # CMYK, YCbCr, L, 1, ...


# Downscaling filters by their Pillow names; box averages each output pixel's area (OpenCV's INTER_AREA).
RESAMPLE = {name: Image.Resampling[name.upper()] for name in get_args(ResampleFilter)}


_APP2_ICC = b"ICC_PROFILE\x00"


def strip_metadata(jpeg: bytes) -> bytes:
    """The JPEG without its EXIF, XMP and IPTC segments (APP1, APP3-APP13, APP15) and comments; the image data,
    JFIF, ICC profile (APP2) and Adobe (APP14) segments stay byte for byte. Unchanged when it has none."""
    if jpeg[:2] != b"\xff\xd8":
        return jpeg
    keep, i, dropped = [(0, 2)], 2, False  # spans, cut out only if a segment goes: most photos keep all
    while i + 4 <= len(jpeg):
        if jpeg[i] != 0xFF:
            return jpeg  # not the marker structure expected: leave it alone
        marker = jpeg[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xDA:  # start of scan: the rest is image data
            keep.append((i, len(jpeg)))
            break
        end = i + 2 + int.from_bytes(jpeg[i + 2 : i + 4], "big")
        metadata = marker == 0xFE or (0xE1 <= marker <= 0xEF and marker != 0xEE)
        if marker == 0xE2 and jpeg[i + 4 : min(end, i + 4 + len(_APP2_ICC))] == _APP2_ICC:
            metadata = False
        if metadata:
            dropped = True
        else:
            keep.append((i, end))
        i = end
    else:
        return jpeg
    if not dropped:
        return jpeg
    view = memoryview(jpeg)
    return b"".join(view[a:b] for a, b in keep)


def prepare(
    data: bytes,
    max_pixels: int,
    jpeg_quality: int = 90,
    max_source_pixels: int = 100_000_000,
    min_side: int = 28,
    resample: ResampleFilter = "box",
    reencode: str = "if-needed",
) -> PreparedImage:
    if not data:
        raise ImageRejected("zero-byte file")
    digest = hashlib.sha256(data).hexdigest()
    # max_source_pixels, checked below from the header before anything is decoded, is the one pixel limit:
    # Pillow's own (a warning above 89 MP, an error above 179 MP) would override the recipe's either way.
    Image.MAX_IMAGE_PIXELS = None
    try:
        img = Image.open(io.BytesIO(data))
        fmt = img.format or ""
        w0, h0 = img.size
        if w0 * h0 > max_source_pixels:
            raise ImageRejected(f"decompression bomb refused: {w0}x{h0} exceeds {max_source_pixels:,} pixels")
        orientation = img.getexif().get(0x0112, 1)
        rotated = orientation in (5, 6, 7, 8)  # EXIF orientation swaps the axes
        if (
            reencode != "always"
            and fmt == "JPEG"
            and img.mode in ("RGB", "L")
            and orientation == 1
            and w0 * h0 <= max_pixels
            and min(w0, h0) >= min_side
        ):
            # Decode at 1/8 scale and in grey (what the hashes use): every entropy-coded block is still read.
            img.draft("L", (1, 1))
            img.load()
            thumb = grey_thumbnail(img)  # for the hashes, from that small decode, not a second one
            return PreparedImage(strip_metadata(data), w0, h0, w0, h0, fmt, digest, False, thumb)
        img.draft("RGB", fit_budget(w0, h0, max_pixels))  # JPEG: decode at reduced scale when possible
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # in place: no full-size copy
    except ImageRejected:
        raise
    except UnidentifiedImageError:
        raise ImageRejected("not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected(f"corrupt or truncated image: {exc}") from None
    orig_w, orig_h = (h0, w0) if rotated else (w0, h0)  # as a viewer shows it
    if min(orig_w, orig_h) < min_side:
        raise ImageRejected(f"image too small: {orig_w}x{orig_h} (min side {min_side})")
    img = _to_rgb(img)
    size = fit_budget(orig_w, orig_h, max_pixels)
    if img.size != size:
        img = img.resize(size, RESAMPLE[resample])
    thumb = grey_thumbnail(img)  # before the encoder has read the pixels out of the CPU's cache
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=jpeg_quality, optimize=False)
    return PreparedImage(buf.getvalue(), size[0], size[1], orig_w, orig_h, fmt, digest, True, thumb)
