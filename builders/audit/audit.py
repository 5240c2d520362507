"""`mp16-reason audit BUILD [--against NAME=PATH]...`: which photos a build holds twice, across its splits, and
which photos of public benchmarks it already holds.

A side is a set of images with, for each, an id, its window hashes, the sha256 of its bytes, its Flickr photo
id and author when known, and where it belongs (``train``, ``test``, or the benchmark's name). A build's side
comes from its ``hashes.parquet`` (the image stage computed the hashes); any other side (a folder, a tar, a
CSV of ids beside its images, another build) is hashed here from its images.

A pair is of one kind, the strongest that holds: ``exact`` (the same bytes), ``near`` (the window hashes of
:mod:`builders.audit.search`), ``same-photo`` (the same Flickr photo id: MP-16 ids and IM2GPS file names carry
it) or ``same-author`` (the same photographer, one pair per author and side pair, with the count of photos).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm.auto import tqdm

from builders.audit import search
from builders.audit.hashes import BATCH, N_WINDOWS, Thumbnail, from_bytes, grey_thumbnail, hash_thumbnails
from builders.threads import ordered_map
from mp16_reason.storage import location

AUDIT_JSON = "audit.json"
AUDIT_PAIRS = "audit-pairs.parquet"
KINDS = ("exact", "near", "same-photo", "same-author")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
PAIR_SCHEMA = pa.schema(
    [
        ("a", pa.string()),
        ("b", pa.string()),
        ("kind", pa.string()),
        ("where", pa.string()),
        ("distance", pa.int32()),
        ("dhash_distance", pa.int32()),
        ("photos", pa.int64()),
    ]
)

_PHOTO_ID = re.compile(r"^(\d{6,})(?:[_.]|$)")  # Flickr photo ids: 1052462958.jpg, 10280718_4ff8a0a9b6_179_...
_OWNER = re.compile(r"(\d+@N\d\d)")  # a Flickr account (NSID), as IM2GPS file names end


class AuditError(ValueError):
    pass


def photo_id(ident: str) -> str:
    """The Flickr photo id in an MP-16 id or a benchmark file name, or ""."""
    m = _PHOTO_ID.match(PurePosixPath(ident).name)
    return m.group(1) if m else ""


def owner(ident: str) -> str:
    m = _OWNER.search(PurePosixPath(ident).name)
    return m.group(1) if m else ""


@dataclass
class Side:
    """Images of one origin; ``where`` says where each belongs (a split, or the side's name)."""

    name: str
    ids: list[str]
    where: list[str]
    sha256: list[str]
    authors: list[str]
    phash: np.ndarray  # (n, windows) uint64
    dhash: np.ndarray
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def part(self, where: str) -> np.ndarray:
        return np.flatnonzero(np.asarray(self.where, dtype=object) == where)


# -- sides ---------------------------------------------------------------------------------------------------
def build_side(root: str | Path) -> Side:
    """A finished build, from its ``hashes.parquet``."""
    path = location(root) / "hashes.parquet"
    if not path.exists():
        raise AuditError(
            f"{root} has no hashes.parquet: it was built before builds kept image hashes; build it again with "
            f"this version (its shards stay as they are), or audit its images as a folder"
        )
    with path.open() as fh:
        table = pq.read_table(fh)
    cols = table.to_pydict()
    return Side(
        name=Path(str(root).rstrip("/")).name,
        ids=cols["id"],
        where=cols["split"],
        sha256=cols["sha256"],
        authors=[a or "" for a in cols["author"]],
        phash=_stack(cols["phash"]),
        dhash=_stack(cols["dhash"]),
    )


def _stack(values: list[bytes]) -> np.ndarray:
    if not values:
        return np.empty((0, N_WINDOWS), np.uint64)
    return np.frombuffer(b"".join(values), ">u8").astype(np.uint64).reshape(len(values), N_WINDOWS)


def _thumbnail(item: tuple[str, bytes]) -> tuple[str, str, Thumbnail | None, str]:
    ident, data = item
    digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", (1, 1))  # JPEGs decode at 1/8 scale, as the image stage hashes kept photos
            img.load()
            return ident, digest, grey_thumbnail(img if img.mode in ("RGB", "L") else img.convert("RGB")), ""
    except Exception as exc:  # an unreadable image is reported, never a reason to stop the audit
        return ident, digest, None, f"{type(exc).__name__}: {exc}"


def hash_images(name: str, items: Iterator[tuple[str, bytes]], total: int | None, progress: bool) -> Side:
    """A side from ``(id, bytes)`` of its images: decoded on a few threads (Pillow lets go of the GIL), a few
    images read ahead at most, and hashed a batch at a time."""
    ids, shas, thumbs, codes, bad = [], [], [], [], []
    with tqdm(total=total, unit="img", desc=f"hash {name}", disable=not progress) as bar:
        for ident, digest, thumb, error in ordered_map(_thumbnail, items, 4):
            bar.update(1)
            if error:
                bad.append((ident, error))
                continue
            ids.append(ident)
            shas.append(digest)
            thumbs.append(thumb)
            if len(thumbs) == BATCH:
                codes += hash_thumbnails(thumbs)
                thumbs = []
        codes += hash_thumbnails(thumbs)
    return Side(
        name,
        ids,
        [name] * len(ids),
        shas,
        [owner(i) for i in ids],
        _stack([p for p, _ in codes]),
        _stack([d for _, d in codes]),
        bad,
    )


def _folder_items(root: Path) -> tuple[Iterator[tuple[str, bytes]], int]:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    return ((p.relative_to(root).as_posix(), p.read_bytes()) for p in files), len(files)


def _tar_items(path: Path) -> tuple[Iterator[tuple[str, bytes]], int]:
    try:
        with tarfile.open(path) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.lower().endswith(IMAGE_SUFFIXES)]
    except (tarfile.TarError, OSError, EOFError) as e:
        raise AuditError(f"{path}: not a readable tar ({type(e).__name__}: {e}); check the file is whole") from None

    def read() -> Iterator[tuple[str, bytes]]:
        # A member cut short (a truncated archive) is an unreadable image, counted, not a reason to stop.
        with tarfile.open(path) as tar:
            for m in members:
                try:
                    data = tar.extractfile(m).read()
                except (tarfile.TarError, OSError, EOFError):
                    data = b""
                yield m.name, data

    return read(), len(members)


def _csv_items(path: Path, images: Path | None) -> tuple[Iterator[tuple[str, bytes]], int]:
    """A benchmark list (``IMG_ID`` or ``id``, optionally ``image``), its images in ``images`` (a folder or tar;
    default: a folder named like the CSV, or the CSV's own folder)."""
    with path.open(newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise AuditError(f"{path} has no rows")
    lower = {k.lower(): k for k in rows[0]}
    key = lower.get("img_id") or lower.get("id") or lower.get("image")
    if key is None:
        raise AuditError(f"{path} has no IMG_ID, id or image column (it has {', '.join(rows[0])})")
    # Pairs name the list's ids (what `globe eval` scores), whatever file each id's image is.
    files = {(r[lower["image"]] if "image" in lower and r[lower["image"]] else r[key]): r[key] for r in rows}
    folder = images or next((p for p in (path.with_suffix(""), path.parent) if p.is_dir()), path.parent)
    if folder.is_file():  # a tar of the images
        stream, _ = _tar_items(folder)
        by_name = files | {PurePosixPath(n).name: i for n, i in files.items()}
        by_name |= {n + ".jpg": i for n, i in by_name.items() if not PurePosixPath(n).suffix}
        found = ((by_name.get(n) or by_name.get(PurePosixPath(n).name), d) for n, d in stream)
        return ((i, d) for i, d in found if i is not None), len(files)

    def read() -> Iterator[tuple[str, bytes]]:
        for n, ident in files.items():
            p = folder / n
            if not p.exists() and not p.suffix:
                p = p.with_suffix(".jpg")  # the release's test ids lack the suffix its files have
            yield ident, (p.read_bytes() if p.exists() else b"")

    return read(), len(files)


def against_side(spec: str, progress: bool = True) -> Side:
    """``[NAME=]PATH[,IMAGES]``: another build, a folder or tar of images, or a CSV of ids with its images."""
    name, _, rest = spec.rpartition("=") if "=" in spec.split(",", 1)[0] else ("", "", spec)
    path_text, _, images_text = rest.partition(",")
    path = Path(path_text).expanduser()
    name = name or path.stem
    if name in ("train", "test"):
        raise AuditError(f"--against {spec}: {name!r} names one of the build's own splits; name the set (NAME=PATH)")
    if (path / "manifest.json").exists():
        side = build_side(path)
        # Another build's photos belong to the set the user named, whatever its own splits: its "train" is not ours.
        side.name, side.where = name, [name] * len(side)
        if not len(side):
            raise AuditError(f"--against {spec}: the build at {path} holds no photos (0 rows in hashes.parquet)")
        return side
    if not path.exists():
        raise AuditError(f"--against {spec}: {path} does not exist")
    if path.is_dir():
        items, total = _folder_items(path)
    elif path.suffix.lower() == ".tar":
        items, total = _tar_items(path)
    elif path.suffix.lower() == ".csv":
        items, total = _csv_items(path, Path(images_text).expanduser() if images_text else None)
    else:
        raise AuditError(
            f"--against {spec}: not a build folder, an image folder, a .tar or a .csv; give one of those, "
            f"optionally named (im2gps3k=PATH) and, for a CSV, with its images after a comma (NAME=LIST.csv,IMAGES)"
        )
    if not total:
        raise AuditError(f"--against {spec}: {path} holds no images ({', '.join(IMAGE_SUFFIXES)}); nothing to compare")
    side = hash_images(name, items, total, progress)
    if not len(side):
        raise AuditError(
            f"--against {spec}: none of its {total} images could be read ({len(side.unreadable)} unreadable, e.g. "
            f"{side.unreadable[0][0]}: {side.unreadable[0][1]}); for a CSV, give its images after a comma "
            "(NAME=LIST.csv,IMAGES)"
        )
    return side


# -- pairs ---------------------------------------------------------------------------------------------------
@dataclass
class Found:
    rows: list[dict] = field(default_factory=list)

    def add(
        self,
        a: str,
        b: str,
        kind: str,
        where: str,
        distance: int | None = None,
        dhash_distance: int | None = None,
        photos: int | None = None,
    ) -> None:
        self.rows.append(
            {
                "a": a,
                "b": b,
                "kind": kind,
                "where": where,
                "distance": distance,
                "dhash_distance": dhash_distance,
                "photos": photos,
            }
        )


def _where(x: str, y: str) -> str:
    order = {"train": 0, "test": 1}
    first, second = sorted((x, y), key=lambda s: (order.get(s, 2), s))
    return f"{first}-{second}"


def _pairs_by_key(keys_a: list[str], keys_b: list[str] | None) -> list[tuple[int, int]]:
    """Positions whose key (non-empty) is equal: within ``keys_a`` (``keys_b`` None) or across the two."""
    by: dict[str, list[int]] = {}
    for i, k in enumerate(keys_a):
        if k:
            by.setdefault(k, []).append(i)
    out = []
    if keys_b is None:
        for members in by.values():
            out += [(members[i], members[j]) for i in range(len(members)) for j in range(i + 1, len(members))]
    else:
        for j, k in enumerate(keys_b):
            out += [(i, j) for i in by.get(k, [])]
    return out


def audit(build: Side, others: list[Side], max_phash: int, max_dhash: int, progress: bool = True) -> Found:
    """Every pair within the build and between it and each other side, each of its strongest kind."""
    found = Found()
    seen: set[tuple[str, str, str]] = set()  # (a, b, where) already given a kind

    def emit(side_a: Side, i: int, side_b: Side, j: int, kind: str, **extra) -> None:
        wa, wb = side_a.where[i], side_b.where[j]
        where, a, b = _where(wa, wb), side_a.ids[i], side_b.ids[j]
        if wa != wb and not where.startswith(f"{wa}-"):
            a, b = b, a  # written in the order `where` names them
        key = (a, b, where)
        if key in seen:
            return
        seen.add(key)
        found.add(a, b, kind, where, **extra)

    def run(side_a: Side, side_b: Side | None) -> None:
        cross = side_b is not None
        other = side_b if cross else side_a  # an empty side is falsy: never `side_b or side_a`
        for i, j in _pairs_by_key(side_a.sha256, other.sha256 if cross else None):
            emit(side_a, i, other, j, "exact")
        if cross:
            near = search.across(
                (side_a.phash, side_a.dhash),
                (other.phash, other.dhash),
                max_phash,
                max_dhash,
                progress,
                desc=f"near duplicates: {side_a.name} x {other.name}",
            )
        else:
            near = search.within(side_a.phash, side_a.dhash, max_phash, max_dhash, progress)
        for i, j, dp, dd in zip(near.a.tolist(), near.b.tolist(), near.phash.tolist(), near.dhash.tolist()):
            emit(side_a, i, other, j, "near", distance=dp, dhash_distance=dd)
        photos_a = [photo_id(x) for x in side_a.ids]
        photos_b = [photo_id(x) for x in other.ids] if cross else None
        for i, j in _pairs_by_key(photos_a, photos_b):
            emit(side_a, i, other, j, "same-photo")
        _authors(side_a, other, cross, found)

    run(build, None)
    for side in others:
        run(build, side)
    return found


def _authors(a: Side, b: Side, cross: bool, found: Found) -> None:
    """One ``same-author`` row per author and pair of places (train-test, train-im2gps3k, ...) where the
    author has photos on both sides; ``photos`` counts them. Within one place an author is not a leak."""
    where_a: dict[str, dict[str, list[int]]] = {}
    for i, (author, w) in enumerate(zip(a.authors, a.where)):
        if author:
            where_a.setdefault(author, {}).setdefault(w, []).append(i)
    if not cross:
        for places in where_a.values():
            names = sorted(places)
            for x in range(len(names)):
                for y in range(x + 1, len(names)):
                    p, q = places[names[x]], places[names[y]]
                    where = _where(names[x], names[y])
                    first, second = (p, q) if where.startswith(names[x]) else (q, p)
                    found.add(a.ids[first[0]], a.ids[second[0]], "same-author", where, photos=len(p) + len(q))
        return
    where_b: dict[str, list[int]] = {}
    for j, author in enumerate(b.authors):
        if author in where_a:
            where_b.setdefault(author, []).append(j)
    for author, theirs in where_b.items():
        for w, members in where_a[author].items():
            found.add(
                a.ids[members[0]], b.ids[theirs[0]], "same-author", _where(w, b.name), photos=len(members) + len(theirs)
            )


# -- report --------------------------------------------------------------------------------------------------
def summary(found: Found, build: Side, others: list[Side], max_phash: int, max_dhash: int) -> dict:
    """Counts by place pair and kind, and the share of each side's images with a pair."""
    by: dict[str, Counter] = {}
    involved: dict[str, set[str]] = {}
    for r in found.rows:
        by.setdefault(r["where"], Counter())[r["kind"]] += 1
        if r["kind"] != "same-author":
            first, second = r["where"].split("-", 1)
            involved.setdefault(r["where"], set()).update([r["b"], r["a"]] if first == second else [r["b"]])
    sizes = Counter(build.where)
    for s in others:
        sizes[s.name] += len(s)
    places = {}
    for where, kinds in sorted(by.items()):
        second = where.split("-", 1)[1]
        n = len(involved.get(where, ()))
        places[where] = {
            "pairs": dict(sorted(kinds.items())),
            f"{second}_with_a_pair": n,
            f"{second}_share": round(n / sizes[second], 6) if sizes.get(second) else None,
        }
    return {
        "build": build.name,
        "images": dict(sorted(sizes.items())),
        "against": [s.name for s in others],
        "thresholds": {"phash": max_phash, "dhash": max_dhash},
        "places": places,
        "unreadable": {s.name: len(s.unreadable) for s in others if s.unreadable},
    }


def write(root: str | Path, found: Found, info: dict) -> tuple[Path, Path]:
    root = Path(root)
    table = pa.Table.from_pylist(found.rows, schema=PAIR_SCHEMA)
    pq.write_table(table, root / AUDIT_PAIRS)
    doc = {"summary": info, "pairs": found.rows}
    (root / AUDIT_JSON).write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    return root / AUDIT_JSON, root / AUDIT_PAIRS


def lines(info: dict) -> list[str]:
    """The summary as the command prints it."""
    out = [f"audit of {info['build']}: " + ", ".join(f"{n:,} {w}" for w, n in info["images"].items())]
    if not info["places"]:
        out.append("no pairs found")
    for where, row in info["places"].items():
        second = where.split("-", 1)[1]
        kinds = ", ".join(f"{n:,} {k}" for k, n in row["pairs"].items())
        share = row[f"{second}_share"]
        n = row[f"{second}_with_a_pair"]
        tail = f"; {n:,} of the {second} images ({share:.2%}) have one" if share is not None else ""
        out.append(f"  {where}: {kinds}{tail}")
    for name, n in info.get("unreadable", {}).items():
        out.append(f"  {name}: {n:,} images could not be read (left out)")
    return out


def read_audit(root: str | Path) -> dict | None:
    path = location(root) / AUDIT_JSON
    return json.loads(path.read_text()) if path.exists() else None


__all__ = [
    "AUDIT_JSON",
    "AUDIT_PAIRS",
    "KINDS",
    "AuditError",
    "Side",
    "against_side",
    "audit",
    "build_side",
    "from_bytes",
    "lines",
    "photo_id",
    "read_audit",
    "summary",
    "write",
]
