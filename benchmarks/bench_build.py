"""Build throughput and memory: our data plane against img2dataset on the same images, in one run.

Both read the same JPEGs from a loopback HTTP server, resize to the same size (smaller side 512, keeping the
ratio; JPEG quality 90) and write WebDataset shards with 2 processes. img2dataset pins old webdataset and
pandas, so it runs from its own virtual environment (created on first use in --i2d-venv).

    python benchmarks/bench_build.py [--images 1000] [--rss-images 1000 10000]
"""

from __future__ import annotations

import argparse
import csv
import functools
import http.server
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image, ImageDraw


def make_images(folder: Path, n: int, size: tuple[int, int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(0)
    base = Image.effect_noise(size, 60).convert("RGB")  # texture so JPEGs have realistic sizes
    for i in range(n):
        path = folder / f"{i:06d}.jpg"
        if path.exists():
            continue
        img = base.copy()
        d = ImageDraw.Draw(img)
        for _ in range(12):
            x, y = rnd.randrange(size[0]), rnd.randrange(size[1])
            d.rectangle(
                [x, y, x + rnd.randrange(50, 300), y + rnd.randrange(50, 300)],
                fill=(rnd.randrange(256), rnd.randrange(256), rnd.randrange(256)),
            )
        img.save(path, quality=92)


def serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def run_timed(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of the largest process in the command's tree."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/env", "time", "-f", "%M", *cmd] if os.path.exists("/usr/bin/time") else cmd,
        capture_output=True,
        text=True,
        env=env,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    try:
        rss_mb = int(proc.stderr.strip().splitlines()[-1]) / 1024
    except (ValueError, IndexError):
        rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return wall, rss_mb


def ours(base_url: str, n: int, work: Path, size: tuple[int, int]) -> tuple[float, float]:
    meta = work / f"ours-{n}.csv"
    with meta.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "lat", "lon", "url"])
        for i in range(n):
            w.writerow([f"img{i:06d}", 48.8566 + i * 1e-4, 2.3522, f"{base_url}/{i:06d}.jpg"])
    short = min(size)
    budget = (size[0] * 512 // short) * (size[1] * 512 // short)  # smaller side 512, as img2dataset keep_ratio
    out = work / f"ours-{n}-{size[0]}x{size[1]}"
    shutil.rmtree(out, ignore_errors=True)  # a finished build would be left alone
    cmd = [
        sys.executable,
        "-m",
        "mp16_reason.cli",
        "build",
        "--metadata",
        str(meta),
        "--out",
        str(out),
        "--workers",
        "2",
        "--unit-size",
        "250",
        "--max-pixels",
        str(budget),
        "--jpeg-quality",
        "90",
        "--test-fraction",
        "0",
        "--quiet",
        "--overwrite",
    ]
    return run_timed(cmd)


def img2dataset(venv: Path, base_url: str, n: int, work: Path) -> tuple[float, float]:
    exe = venv / "bin" / "img2dataset"
    if not exe.exists():
        print(f"installing img2dataset into {venv} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "img2dataset"], check=True)
    urls = work / f"i2d-{n}.txt"
    urls.write_text("".join(f"{base_url}/{i:06d}.jpg\n" for i in range(n)))
    out = work / f"i2d-{n}"
    shutil.rmtree(out, ignore_errors=True)  # its own overwrite mode races with its reader's temp files
    cmd = [
        str(exe),
        "--url_list",
        str(urls),
        "--input_format",
        "txt",
        "--output_format",
        "webdataset",
        "--output_folder",
        str(out),
        "--image_size",
        "512",
        "--resize_mode",
        "keep_ratio",
        "--encode_quality",
        "90",
        "--processes_count",
        "2",
        "--thread_count",
        "16",
        "--number_sample_per_shard",
        "250",
        "--enable_wandb",
        "False",
    ]
    return run_timed(cmd, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--height", type=int, default=768)
    ap.add_argument(
        "--rss-images",
        type=int,
        nargs="*",
        default=[1000, 10000],
        help="image counts for the memory check (small 320x240 images)",
    )
    ap.add_argument("--i2d-venv", default=os.path.join(tempfile.gettempdir(), "img2dataset-venv"))
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "mp16-bench-build"))
    args = ap.parse_args()
    work = Path(args.work)
    size = (args.width, args.height)
    make_images(work / "images", args.images, size)
    server, url = serve(work / "images")
    try:
        i2d_wall, i2d_rss = img2dataset(Path(args.i2d_venv), url, args.images, work)
        our_wall, our_rss = ours(url, args.images, work, size)
    finally:
        server.shutdown()
    print(
        f"\n{args.images} JPEGs of {size[0]}x{size[1]} over loopback HTTP -> smaller side 512, quality 90, 2 processes"
    )
    print(f"  img2dataset   {args.images / i2d_wall:8.1f} img/s   {i2d_wall:6.1f} s   peak RSS {i2d_rss:6.0f} MB")
    print(f"  mp16-reason   {args.images / our_wall:8.1f} img/s   {our_wall:6.1f} s   peak RSS {our_rss:6.0f} MB")
    print(f"  ratio (ours / img2dataset): {i2d_wall / our_wall:.2f}x  (goal >= 1.2x)")
    if args.rss_images:
        print("\npeak RSS of our build by input size (320x240 images; should stay flat)")
        make_images(work / "small", max(args.rss_images), (320, 240))
        server, url = serve(work / "small")
        try:
            for n in args.rss_images:
                wall, rss = ours(url, n, work, (320, 240))
                print(f"  {n:>7,} images   {n / wall:8.1f} img/s   peak RSS {rss:6.0f} MB")
        finally:
            server.shutdown()


if __name__ == "__main__":
    main()
