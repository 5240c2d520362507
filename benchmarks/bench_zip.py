"""Reading images from a zip archive: our zip source (central directory indexed once, then each member read by
its byte range, in random order, as a build's units read them) against Python's ``zipfile`` reading the same
members in archive order, its best case. Same members, same bytes, one run.

    python benchmarks/bench_zip.py [--images 4000] [--kb 80] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import best_of

from builders.sources import ArchiveReader, zip_index


def make_zip(path: Path, n: int, kb: int, method: int) -> list[str]:
    """``n`` members of ~``kb`` KB under one top folder (the release's layout); JPEG-like bytes (incompressible)."""
    rng = random.Random(0)
    names = []
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        for i in range(n):
            h = f"{rng.getrandbits(16):04x}"
            name = f"{h[:2]}/{h[2:]}/{1_000_000_000 + i}.jpg"
            zf.writestr(f"mp16-reason-train-images/{name}", rng.randbytes(kb * 1024))
            names.append(name)
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--kb", type=int, default=80)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{args.images:,} members of {args.kb} KB; best of {args.repeat}; page cache warm for both")
        for method, label in ((zipfile.ZIP_STORED, "stored"), (zipfile.ZIP_DEFLATED, "deflated")):
            path = Path(tmp) / f"{label}.zip"
            make_zip(path, args.images, args.kb, method)
            full = {i.filename.split("/", 1)[1]: i.filename for i in zipfile.ZipFile(path).infolist()}

            def stdlib(path: Path = path) -> int:
                total = 0
                with zipfile.ZipFile(path) as zf:
                    for info in zf.infolist():  # archive order: the stdlib's best case
                        total += len(zf.read(info))
                return total

            def ours(path: Path = path) -> int:
                index = zip_index(path).to_pylist()
                random.Random(1).shuffle(index)  # a unit's rows come in shuffled order
                reader = ArchiveReader(path, "zip")
                total = sum(len(reader.fetch(r["name"], r["offset"], r["size"], r["method"])) for r in index)
                reader.close()
                return total

            assert ours() == stdlib() and len(full) == args.images
            t_std = best_of(stdlib, args.repeat)
            t_ours = best_of(ours, args.repeat)
            print(
                f"  {label:<9} zipfile, archive order {args.images / t_std:>9,.0f} img/s   "
                f"ours, random order (index included) {args.images / t_ours:>9,.0f} img/s   "
                f"ratio {t_std / t_ours:.2f}x"
            )
            os.remove(path)


if __name__ == "__main__":
    main()
