"""Streaming throughput: ``mp16_reason.stream()`` against raw ``webdataset.WebDataset`` and against
``datasets.load_dataset(..., streaming=True)`` on the same local shards, in one run.

All three decode every image to PIL and every record to a dict, in one process, with no shuffle buffer.

    python benchmarks/bench_stream.py [--samples 2000] [--size 512x384] [--repeat 3]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw


def make_shards(root: Path, n: int, size: tuple[int, int], per_shard: int = 500) -> list[str]:
    """Shards in the builder's layout (records that pass the schema) plus a manifest."""
    import webdataset as wds

    from mp16_reason import schema

    data = root / "data"
    if (root / "manifest.json").exists():
        return sorted(str(p) for p in data.glob("train-*.tar"))
    data.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(0)
    base = Image.effect_noise(size, 50).convert("RGB")
    shards = []
    for start in range(0, n, per_shard):
        path = data / f"train-{start // per_shard:06d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(start, min(n, start + per_shard)):
                img = base.copy()
                ImageDraw.Draw(img).rectangle([rnd.randrange(size[0]), 0, size[0], rnd.randrange(size[1])], "red")
                buf = io.BytesIO()
                img.save(buf, "JPEG", quality=90)
                rec = schema.Sample(
                    id=f"bench/{i:07d}.jpg",
                    lat=rnd.uniform(-60, 70),
                    lon=rnd.uniform(-180, 180),
                    country="France",
                    country_code="FR",
                    city="Paris",
                    split="train",
                    reasoning="The signs are in French and the facades are Haussmann-style." * 3,
                    image=schema.ImageInfo(width=size[0], height=size[1], sha256="0" * 64),
                )
                sink.write({"__key__": f"s{i:07d}", "jpg": buf.getvalue(), "json": schema.to_json_bytes(rec)})
        shards.append(
            {
                "path": path.relative_to(root).as_posix(),
                "split": "train",
                "samples": min(n, start + per_shard) - start,
                "bytes": path.stat().st_size,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            }
        )
    manifest = {"version": "bench", "shards": shards, "totals": {"written": n}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return sorted(str(data / Path(s["path"]).name) for s in shards)


def drain(iterable) -> int:
    n = 0
    for sample in iterable:
        n += 1
        if n == 1:
            image = sample[0] if isinstance(sample, tuple) else sample.get("jpg")
            assert isinstance(image, Image.Image), type(image)
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--size", default="512x384")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "mp16-bench-stream"))
    args = ap.parse_args()
    width, height = map(int, args.size.split("x"))
    root = Path(args.work) / f"{args.samples}-{args.size}"
    os.environ.setdefault("HF_HOME", str(Path(args.work) / "hf"))
    shards = make_shards(root, args.samples, (width, height))

    import datasets
    import webdataset as wds

    import mp16_reason
    from mp16_reason import schema

    datasets.disable_progress_bars()
    runners = {
        "webdataset.WebDataset (raw)": lambda: wds.WebDataset(shards, shardshuffle=False).decode("pil"),
        "mp16_reason.stream()": lambda: mp16_reason.stream(path=root, shuffle=0, shard_shuffle=False),
        "load_dataset(streaming=True)": lambda: datasets.load_dataset(
            "webdataset", data_files={"train": shards}, split="train", streaming=True, features=schema.features()
        ),
    }
    best: dict[str, float] = {}
    for _ in range(args.repeat):
        for name, make in runners.items():
            t0 = time.perf_counter()
            n = drain(make())
            seconds = time.perf_counter() - t0
            assert n == args.samples, (name, n)
            best[name] = min(best.get(name, float("inf")), seconds)
    raw = args.samples / best["webdataset.WebDataset (raw)"]
    print(f"\n{args.samples:,} samples, {width}x{height} JPEGs, decoded to PIL + dict, best of {args.repeat}")
    for name, seconds in best.items():
        rate = args.samples / seconds
        print(f"  {name:<30} {rate:9.0f} samples/s   {rate / raw:5.2f}x raw")
    ours = args.samples / best["mp16_reason.stream()"]
    print(f"  ratio stream() / raw webdataset: {ours / raw:.2f}x  (goal >= 0.9x)")


if __name__ == "__main__":
    main()
