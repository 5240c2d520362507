"""The build at MP16-Pro scale (4,654,532 rows): ingest time and memory, per-unit source set-up, and a whole
build over a CSV whose tar holds only the first images (the rest dead, as many MP-16 links are).

Inputs are generated here in MP16-Pro's layout: real MP-16 coordinates (the shared 100k gallery, jittered),
MP-16-style ids (``9e/13/1052462958.jpg``), Nominatim-style label columns.

    python benchmarks/bench_scale.py ingest [--rows 4654532]
    python benchmarks/bench_scale.py units  [--rows 4654532]
    python benchmarks/bench_scale.py build  [--rows 4654532] [--images 2000] [--workers 2]
    python benchmarks/bench_scale.py fold   [--rows 4654532]

``ingest`` reads the same file with ``pandas.read_csv(dtype=str)`` (what the landed reader did first) and runs
our whole ingest stage (read, check coordinates and ids, pre-shuffle, commit ``ingest.parquet``), each in a
fresh process. ``units``
times a unit's source set-up against a tar of as many members, against loading its member index per unit.
``build`` runs the whole build and checks that every row is accounted for. ``fold`` takes the shard stage alone
over units of as many published samples (tiny generated images, each distinct) and a tenth as many, each in a
fresh process, and prints its peak memory and what each sample adds to it: what it keeps of every sample
(its image's SHA-256 and id, for exact duplicates) is all that should grow.
"""

from __future__ import annotations

import argparse
import io
import json
import os
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
        np.char.add(
            np.char.add(np.char.mod("%02x/", hexes >> 8), np.char.mod("%02x/", hexes & 255)), photo.astype(str)
        ),
        ".jpg",
    )


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
        table[name] = (
            pa.array([value] * rows)
            if rows < 10
            else pa.repeat(value, rows)
            if hasattr(pa, "repeat")
            else pa.array(np.full(rows, value, dtype=object))
        )
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


def _child(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


PEAK = """
def peak_mb():  # this process's own high-water mark (ru_maxrss carries the parent's across fork and exec)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024
"""

INGEST = (
    PEAK
    + """
import json, resource, shutil, sys, time
sys.path.insert(0, {root!r})
t = time.perf_counter()
from builders.build import Build
from builders.recipe import load_recipe
out = {path!r} + ".ingest-out"
shutil.rmtree(out, ignore_errors=True)
build = Build(load_recipe(None, {{"input.metadata": {path!r}, "input.format": "mp16pro", "out": out,
                                  "input.columns": {{"url": "neighbourhood"}}}}), progress=False)
build._check_out_dir(False)
n = build._ingest()  # read, check, pre-shuffle, commit ingest.parquet
import pyarrow.parquet as pq
rejected = pq.read_metadata(str(build.work / "ingest-rejected.parquet")).num_rows
wall = time.perf_counter() - t
print(json.dumps({{"wall": wall, "rss_mb": peak_mb(),
                   "rows": n, "rejected": rejected, "input": n + rejected}}))
shutil.rmtree(out, ignore_errors=True)
"""
)


PANDAS = (
    PEAK
    + """
import json, resource, time
t = time.perf_counter()
import pandas as pd
rows = pd.read_csv({path!r}, dtype=str, keep_default_na=False)
wall = time.perf_counter() - t
print(json.dumps({{"wall": wall, "rss_mb": peak_mb(),
                   "rows": len(rows), "rejected": 0, "input": len(rows)}}))
"""
)


def bench_ingest(rows: int) -> None:
    path = make_csv(rows)
    size = path.stat().st_size / 1e6
    print(f"ingest of {rows:,} MP16-Pro-shaped rows ({size:,.0f} MB CSV), each in a fresh process")
    root = str(Path(__file__).resolve().parents[1])
    results = {}
    for label, code in (("pandas.read_csv(dtype=str)", PANDAS), ("mp16-reason ingest stage", INGEST)):
        r = _child(code.format(root=root, path=str(path)))
        results[label] = r
        print(
            f"  {label:<26} {r['wall']:6.1f} s   peak RSS {r['rss_mb']:7,.0f} MB   "
            f"{r['rows']:,} rows + {r['rejected']:,} rejected = {r['input']:,}"
        )
    a, b = results.values()
    print(
        f"  ours: the whole stage in {b['wall']:.1f} s (goal <= 20 s) at {b['rss_mb']:,.0f} MB (goal <= 1,000 MB); "
        f"{a['rss_mb'] / b['rss_mb']:.1f}x less memory than pandas' read_csv alone"
    )


UNITS = (
    PEAK
    + """
import json, resource, sys, time
sys.path.insert(0, {root!r})
import pyarrow.parquet as pq
from pathlib import Path
from builders.recipe import Recipe
from builders.sources import Fetcher, HttpClient, image_sources
work = Path({work!r})
recipe = Recipe.model_validate(json.loads((work / "bench-recipe.json").read_text()))
meta = pq.ParquetFile(work / "ingest.parquet").metadata
times = []
from builders.plane.units import _ingest_file
for unit in range(0, meta.num_row_groups, max(1, meta.num_row_groups // 20)):
    t = time.perf_counter()
    rows = _ingest_file(str(work)).read_row_group(unit).to_pylist()  # what process_unit does first
    fetcher = Fetcher(image_sources(recipe.input.images), HttpClient())
    times.append(time.perf_counter() - t)
    fetcher.close()
print(json.dumps({{"units": len(times), "median_ms": sorted(times)[len(times) // 2] * 1e3, "max_ms": max(times) * 1e3,
                  "rss_mb": peak_mb()}}))
"""
)

ANCHOR = (
    PEAK
    + """
import json, resource, sys, time
import pyarrow.parquet as pq
t = time.perf_counter()
table = pq.read_table({index!r})
index = dict(zip(table.column("name").to_pylist(), zip(table.column("offset").to_pylist(),
                                                       table.column("size").to_pylist())))
print(json.dumps({{"ms": (time.perf_counter() - t) * 1e3, "rss_mb": peak_mb()}}))
"""
)


def bench_units(rows: int) -> None:
    """Per-unit source set-up with a tar of ``rows`` members: ours (the unit reads its own row group; the
    index was joined at ingest) against loading the member index per unit, as the landed tar source did."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from builders.build import Build
    from builders.recipe import load_recipe
    from builders.sources import image_sources, index_path

    csv_path = make_csv(rows)
    ids = pq.read_table(csv_path.with_suffix(".ids.parquet")) if csv_path.with_suffix(".ids.parquet").exists() else None
    if ids is None:
        import pyarrow.csv as pacsv

        ids = pacsv.read_csv(csv_path, convert_options=pacsv.ConvertOptions(include_columns=["IMG_ID"]))
        pq.write_table(ids, csv_path.with_suffix(".ids.parquet"))
    names = ids.column("IMG_ID")
    # A tar of `rows` members, as MP16-Pro's: its member index (offsets of ~80 KB members) and a sparse file.
    tar = WORK / f"sparse-{rows}.tar"
    if not tar.exists():
        with tar.open("wb") as fh:
            fh.truncate(rows * 82_432 + 1024)
    out = WORK / f"units-{rows}"
    recipe = load_recipe(
        None, {"input.metadata": str(csv_path), "input.images": [str(tar)], "out": str(out), "input.format": "mp16pro"}
    )
    import shutil

    shutil.rmtree(out, ignore_errors=True)  # a clean build folder: the index below must not be swept away
    build = Build(recipe, progress=False)
    # The member index of a 4.65M-member tar, made here (the sparse file holds no headers to scan), where the
    # build looks for it, before the build computes its inputs' identity.
    index = index_path(image_sources([str(tar)])[0], build.work)
    build.work.mkdir()
    if not index.exists():
        offsets = pa.array(range(512, rows * 82_432, 82_432)[:rows], pa.int64())
        pq.write_table(
            pa.table(
                {
                    "name": names,
                    "offset": offsets,
                    "size": pa.repeat(80_000, rows) if hasattr(pa, "repeat") else pa.array([80_000] * rows, pa.int64()),
                    "method": pa.array([0] * rows, pa.int64()),
                    "url": pa.nulls(rows, pa.string()),
                }
            ),
            str(index),
        )
    build._check_out_dir(False)
    if not (build.work / "ingest.parquet").exists():
        t = time.perf_counter()
        build._ingest()
        print(f"ingest with the tar index joined: {time.perf_counter() - t:.1f} s")
    # The whole recipe for the child (the build's own recipe.json holds only what the hash covers).
    (build.work / "bench-recipe.json").write_text(json.dumps(recipe.model_dump(mode="json")))
    root = str(Path(__file__).resolve().parents[1])
    ours = _child(UNITS.format(root=root, work=str(build.work)))
    anchor = _child(ANCHOR.format(index=str(index)))
    print(f"per-unit source set-up, tar of {rows:,} members, fresh process each:")
    print(
        f"  ours (own row group; nothing to look up)   median {ours['median_ms']:7.1f} ms, max "
        f"{ours['max_ms']:6.1f} ms over {ours['units']} units; process peak RSS {ours['rss_mb']:6,.0f} MB"
    )
    print(
        f"  member index loaded per unit (landed)      {anchor['ms']:7.1f} ms per unit; "
        f"process peak RSS {anchor['rss_mb']:6,.0f} MB"
    )
    print(f"  ratio: {anchor['ms'] / ours['median_ms']:.0f}x less set-up per unit")


def bench_build(rows: int, n_images: int, workers: int) -> None:
    """A whole build over the MP16-Pro-shaped CSV whose tar holds only the first images."""
    sys.path.insert(0, str(Path(__file__).parent))
    import pyarrow.csv as pacsv
    from bench_build import run_timed

    csv_path = make_csv(rows)
    head = pacsv.read_csv(
        csv_path,
        read_options=pacsv.ReadOptions(block_size=1 << 20),
        convert_options=pacsv.ConvertOptions(include_columns=["IMG_ID"]),
    ).column("IMG_ID")
    tar = make_tar(head.slice(0, n_images).to_pylist(), n_images)
    out = WORK / f"build-{rows}-{n_images}"
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "builders.cli",
        "build",
        "--metadata",
        str(csv_path),
        "--images",
        str(tar),
        "--out",
        str(out),
        "--workers",
        str(workers),
        "--quiet",
    ]
    run = run_timed(cmd)
    wall, peak_one, peak_all = run.wall, run.largest_mb, run.all_mb
    manifest = json.loads((out / "manifest.json").read_text())
    t = manifest["totals"]
    rejections = (out / "rejections.parquet").stat().st_size / 1e6
    print(f"whole build: {rows:,} rows, a tar of the first {n_images:,} images, {workers} workers")
    print(f"  {wall:6.1f} s wall; largest process {peak_one:,.0f} MB RSS, all processes {peak_all:,.0f} MB PSS")
    print(
        f"  {t['input_rows']:,} input rows = {t['written']:,} written + {t['rejected']:,} rejected "
        f"({'reconciled' if t['input_rows'] == t['written'] + t['rejected'] else 'NOT RECONCILED'}); "
        f"rejections.parquet {rejections:.1f} MB"
    )


UNIT_ROWS = 1000


def make_units(rows: int) -> Path:
    """A work folder of ``rows`` published samples in units of :data:`UNIT_ROWS`: 100-byte images (each its
    own, so none is a duplicate), MP-16-style ids and the hashes' 160 bytes, as the workers write them."""
    import hashlib

    from builders.workfolder import UnitWriter, tar_member_bytes, unit_path

    out = WORK / f"fold-{rows}"
    work = out / ".work"
    done = work / "units-made"
    if done.exists():
        return out
    ids = mp16_ids(rows)
    rng = np.random.default_rng(0)
    for u in range(-(-rows // UNIT_ROWS)):
        first, last = u * UNIT_ROWS, min(rows, (u + 1) * UNIT_ROWS)
        images = rng.integers(0, 256, (last - first, 100), dtype=np.uint8)
        codes = rng.integers(0, 256, (last - first, 160), dtype=np.uint8)
        with UnitWriter(unit_path(work, u), batch_rows=UNIT_ROWS) as sink:
            for k, row in enumerate(range(first, last)):
                jpg, js = images[k].tobytes(), b'{"id": "%s"}' % ids[row].encode()
                sha = hashlib.sha256(jpg).hexdigest()
                size = tar_member_bytes(len(jpg), len(js))
                sink.add(
                    (
                        row,
                        ids[row],
                        "ok",
                        "",
                        "",
                        "train",
                        sha,
                        jpg,
                        js,
                        size,
                        ids[row],
                        "",
                        codes[k, :80].tobytes(),
                        codes[k, 80:].tobytes(),
                    )
                )
    done.touch()
    return out


FOLD = (
    PEAK
    + """
import json, shutil, sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from builders.plane.shards import ShardFold
out = Path({out!r})
shutil.rmtree(out / "data", ignore_errors=True)  # an earlier run's shards would be kept, not written
(out / "hashes.parquet").unlink(missing_ok=True)
t = time.perf_counter()
base = peak_mb()
fold = ShardFold(out, out / ".work", 1 << 30, False, 24, workers=1)
for unit in range({units}):
    fold.add(unit)
taken = peak_mb()
entries = fold.finish(parts=1)
print(json.dumps({{"wall": time.perf_counter() - t, "base_mb": base, "taken_mb": taken, "rss_mb": peak_mb(),
                   "written": sum(e["samples"] for e in entries)}}))
"""
)


def bench_fold(rows: int) -> None:
    root = str(Path(__file__).resolve().parents[1])
    print(f"the shard fold over units of published samples, each size in a fresh process (units of {UNIT_ROWS:,})")
    sizes, peaks = (rows // 10, rows), []
    for n in sizes:
        r = _child(FOLD.format(root=root, out=str(make_units(n)), units=-(-n // UNIT_ROWS)))
        assert r["written"] == n, r
        peaks.append(r["rss_mb"])
        print(
            f"  {n:>10,} samples  {r['wall']:6.1f} s  peak {r['rss_mb']:6.0f} MB"
            f" (start {r['base_mb']:.0f} MB, every unit taken in {r['taken_mb']:.0f} MB)"
        )
    slope = (peaks[1] - peaks[0]) * 1024 / (sizes[1] - sizes[0])
    print(f"  each sample adds {slope:.2f} KB to the peak: {slope * 1e6 / 1024:,.0f} MB a million samples")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["ingest", "units", "build", "fold"])
    ap.add_argument("--rows", type=int, default=MP16PRO_ROWS)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    if args.what == "ingest":
        bench_ingest(args.rows)
    elif args.what == "units":
        bench_units(args.rows)
    elif args.what == "fold":
        bench_fold(args.rows)
    else:
        bench_build(args.rows, args.images, args.workers)


if __name__ == "__main__":
    main()
