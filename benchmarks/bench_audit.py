"""The leakage audit's hashing and near-duplicate search against imagededup, in one run.

Three parts, each runnable alone (``all`` runs them in turn):

- ``hashing``: the image stage's cost of hashing (twenty codes: pHash and dHash of the whole image and nine
  windows) as a share of preparing the image, with prepare() timed with and without it, for MP-16-shaped JPEGs
  that are kept as they are and for larger ones that are resized; and the per-image cost from file to codes
  against imagededup's ``PHash.encode_images`` (one code an image) and imagehash (the same twenty codes).
- ``quality``: a planted set (drawn photos, copies made the ways photos get copied, unrelated photos of similar
  scenes) hashed and searched by ours and by imagededup at their default thresholds: recall and precision.
- ``search``: all-pairs search over synthetic hashes, ours (whole images against every window, faiss) against
  imagededup's ``find_duplicates`` (whole images, its Cython brute force) at the sizes imagededup finishes,
  then ours alone at 1M and at MP16-Pro's 4,654,532 images. A planted 1 % of near twins, at the distances the
  ``quality`` set's true pairs have, measures the recall of the index used at scale. Each search runs in a
  fresh process; its search time and peak RSS are reported (imagededup's: its main process).

imagededup runs from a virtual environment of its own (created on first use in ``--idd-venv``): its CNN
module needs torchvision, which this project does not install, so it is installed without dependencies
and only its hashing modules are imported.

    python benchmarks/bench_audit.py all
    python benchmarks/bench_audit.py search --idd-sizes 10000 25000 50000 --sizes 1000000 4654532
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the repository, and the tests' photo generator

from _common import DEFAULT_COORDS  # noqa: E402

MP16_PRO = 4_654_532
MAX_PHASH, MAX_DHASH = 10, 12  # the recipe's defaults (audit.max_phash, audit.max_dhash)
IDD_THRESHOLD = 10  # imagededup's default max_distance_threshold

# imagededup's package imports its CNN method (torch, torchvision) on import; only the hashing is used here.
IDD_PRELUDE = """
import sys, types
for name, attr in (("imagededup.methods.cnn", "CNN"), ("imagededup.utils.models", "CustomModel")):
    mod = types.ModuleType(name); setattr(mod, attr, None); sys.modules[name] = mod
from imagededup.methods import PHash
"""

IDD_ENCODE = (
    IDD_PRELUDE
    + """
import json, time
from pathlib import Path
files = sorted(Path(sys.argv[1]).glob("*.jpg"))
phash = PHash(verbose=False)
codes, best = {}, float("inf")
for _ in range(int(sys.argv[2])):  # best of passes, CPU of this process (encode_images would use a pool)
    t0 = time.process_time()
    codes = {f.name: phash.encode_image(image_file=f) for f in files}
    best = min(best, time.process_time() - t0)
json.dump({"cpu": best, "codes": codes}, sys.stdout)
"""
)

IDD_SEARCH = (
    IDD_PRELUDE
    + """
import json, time, numpy as np
codes = np.load(sys.argv[1])
threshold, method = int(sys.argv[2]), sys.argv[3]
encoding_map = {str(i): f"{int(c):016x}" for i, c in enumerate(codes)}
t0 = time.perf_counter()
found = PHash().find_duplicates(encoding_map=encoding_map, max_distance_threshold=threshold,
                                search_method=method)
seconds = time.perf_counter() - t0
pairs = sorted({(min(int(a), int(b)), max(int(a), int(b))) for a, dups in found.items() for b in dups})
np.save(sys.argv[4], np.array(pairs, np.int64).reshape(-1, 2))
peak = [int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM")]
json.dump({"seconds": seconds, "peak_mb": peak[0] / 1024 if peak else None}, sys.stdout)
"""
)

OURS_SEARCH = """
import json, sys, time, numpy as np
sys.path.insert(0, sys.argv[1])
from builders.audit import search
phash, dhash = np.load(sys.argv[2]), np.load(sys.argv[3])
t0 = time.perf_counter()
found = search.within(phash, dhash, int(sys.argv[4]), int(sys.argv[5]))
seconds = time.perf_counter() - t0
np.save(sys.argv[6], np.stack([found.a, found.b], axis=1))
peak = [int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM")]
json.dump({"seconds": seconds, "exact": search.exhaustive(len(phash), phash.size),
           "peak_mb": peak[0] / 1024 if peak else None}, sys.stdout)
"""


def idd_python(venv: Path) -> str:
    exe = venv / "bin" / "python"
    if not exe.exists():
        print(f"installing imagededup into {venv} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "pip"), "install", "-q"]
        subprocess.run(
            [*pip, "numpy", "pillow", "PyWavelets", "scipy", "tqdm", "scikit-learn", "matplotlib"], check=True
        )
        subprocess.run([*pip, "--no-deps", "imagededup"], check=True)
    return str(exe)


def run_json(cmd: list[str]) -> dict:
    """Run a command in a fresh process and read the JSON it prints (searches add their own peak RSS, read
    from /proc/self/status: a fresh process's high-water mark, not the forking parent's)."""
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd[:3])} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


# -- hashing ------------------------------------------------------------------------------------------------


def mp16_jpegs(folder: Path, n: int, size: tuple[int, int], quality: int) -> list[bytes]:
    """Drawn landscapes with grain, as JPEGs of MP-16's sizes (~640x480 at ~80 KB: the grain gives the
    entropy-coded data a photo's volume, which is what decoding costs)."""
    from photos import jpeg, photo

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        path = folder / f"{i:05d}.jpg"
        if not path.exists():
            pixels = np.asarray(photo(i, size), dtype=np.float32)
            pixels += np.random.default_rng(i).normal(0, 10, pixels.shape)
            path.write_bytes(jpeg(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), quality))
        out.append(path.read_bytes())
    return out


def cpu_per_item(run, items: list, repeat: int = 3) -> float:
    """Best of ``repeat`` calls of ``run(items)``, CPU seconds per item."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        run(items)
        best = min(best, (time.process_time() - t0) / len(items))
    return best


def cpu_per_image(fn, items: list, repeat: int = 3) -> float:
    """Best of ``repeat`` passes of ``fn`` over each item, CPU seconds per item."""
    return cpu_per_item(lambda all_items: [fn(item) for item in all_items], items, repeat)


# The image stage without hashes: prepare() keeps no thumbnail, and the batches are not hashed. Patched as the
# modules load, in the processes that load them: importing them up front in every process the build starts
# (helpers included) cost more than the hashes do.
NO_HASHES = """
import importlib.abc, sys

PATCHES = {"builders.plane.images": ("grey_thumbnail", lambda img: None),
           "builders.plane.units": ("add_hashes", lambda imgs: None)}


class Patcher(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in PATCHES:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            setattr(module, *PATCHES[name])

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, Patcher())
"""


def machine_cpu() -> float:
    """CPU seconds the whole machine has spent (user + system, all cores): the build's workers are not the
    caller's children, so their time is read here, on an otherwise idle machine."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return (int(fields[0]) + int(fields[1]) + int(fields[2])) / os.sysconf("SC_CLK_TCK")


def build_share(args, work: Path, folder: Path) -> None:
    """The hashes' share of a whole build's CPU (fetch from a folder, prepare, geocode, record, shards), the
    build run with and without them in alternation."""
    if not Path("/proc/stat").exists() or args.build_passes < 1:
        return
    coords = np.loadtxt(DEFAULT_COORDS, delimiter=",", skiprows=1, max_rows=args.images)
    files = sorted(folder.glob("*.jpg"))[: len(coords)]
    meta = work / "build-metadata.csv"
    meta.write_text("IMG_ID,LAT,LON\n" + "".join(f"{f.name},{la},{lo}\n" for f, (la, lo) in zip(files, coords)))
    patch = work / "no-hashes"
    patch.mkdir(exist_ok=True)
    (patch / "sitecustomize.py").write_text(NO_HASHES)  # every process of the build, its workers too
    exe = Path(sys.executable).with_name("mp16-reason")
    shares, cpu = [], {True: [], False: []}
    for rep in range(args.build_passes):
        for hashes in (True, False) if rep % 2 == 0 else (False, True):
            out = work / "build-out"
            env = {**os.environ, "PYTHONPATH": "" if hashes else str(patch)}
            t0 = machine_cpu()
            subprocess.run(
                [
                    str(exe),
                    "build",
                    "--metadata",
                    str(meta),
                    "--images",
                    str(folder),
                    "--out",
                    str(out),
                    "--workers",
                    "1",
                    "--quiet",
                    "--overwrite",
                ],
                check=True,
                env=env,
                capture_output=True,
            )
            cpu[hashes].append((machine_cpu() - t0) / len(files))
        shares.append(cpu[True][-1] / cpu[False][-1] - 1)
    shares.sort()
    print(
        f"  a whole build of {len(files)} of them, 1 worker, machine CPU per image: "
        f"{statistics.median(cpu[False]) * 1e3:.2f} ms, with hashes {statistics.median(cpu[True]) * 1e3:.2f} ms: "
        f"+{statistics.median(shares):.1%} (passes {shares[0]:+.1%} to {shares[-1]:+.1%})"
    )


def bench_hashing(args, work: Path) -> None:
    import imagehash

    from builders.audit.audit import hash_images
    from builders.audit.hashes import BATCH
    from builders.plane import images, units

    print("== hashing: CPU per image, one process")
    images.keep_image_memory()  # as every build worker does
    units.one_blas_thread()
    real_thumbnail, real_hashes = images.grey_thumbnail, images.add_hashes
    inside = [0.0]  # CPU seconds spent hashing: the thumbnail prepare() keeps, and the batches' hashes

    def timed_thumbnail(img: Image.Image):
        t0 = time.process_time()
        out = real_thumbnail(img)
        inside[0] += time.process_time() - t0
        return out

    def batch_cpu(batch: list[bytes], budget: int, with_hashes: bool) -> float:
        """CPU seconds of the image stage's preparation of one batch: prepare() each JPEG, then (with hashes)
        the batch's hashes, as a unit does."""
        images.grey_thumbnail = timed_thumbnail if with_hashes else (lambda img: None)
        try:
            t0 = time.process_time()
            prepared = [images.prepare(d, budget) for d in batch]
            if with_hashes:
                t1 = time.process_time()
                real_hashes(prepared)
                inside[0] += time.process_time() - t1
            return time.process_time() - t0
        finally:
            images.grey_thumbnail = real_thumbnail

    # MP-16's photos (kept at every recipe's budget); the least favourable resize, where the decoder's 1/2
    # scale gives the budget exactly (no resize to pay for: the thumbnail's pass over the pixels weighs most);
    # and a full-size Flickr original brought to the recipes' 1,003,520 pixels (a fifth as many images).
    few = max(BATCH, args.images // 5)
    cases = [
        ("MP-16-shaped 640x480, kept", (640, 480), 640 * 480, args.images),
        ("1024x768, resized to 512x384", (1024, 768), 512 * 384, args.images),
        ("2048x1536, resized to 1155x866", (2048, 1536), 1_003_520, few),
    ]
    for label, size, budget, n_images in cases:
        folder = work / f"photos-{size[0]}x{size[1]}"
        data = mp16_jpegs(folder, n_images, size, 85)
        kb = statistics.mean(len(d) for d in data) / 1024
        # With and without alternate batch by batch, the first of the two swapped each time: the machine's
        # speed drifts over seconds, and a batch's JPEGs are warmer in the cache the second time.
        shares, own, per = [], [], {True: [], False: []}
        for _ in range(args.passes):
            inside[0], cpu = 0.0, {True: 0.0, False: 0.0}
            for k, start in enumerate(range(0, len(data), BATCH)):
                batch = data[start : start + BATCH]
                for with_hashes in (True, False) if k % 2 == 0 else (False, True):
                    cpu[with_hashes] += batch_cpu(batch, budget, with_hashes)
            shares.append(cpu[True] / cpu[False] - 1)
            own.append(inside[0] / (cpu[True] - inside[0]))  # against the rest of the same pass's preparation
            for key in cpu:
                per[key].append(cpu[key] / len(data))
        shares.sort(), own.sort()
        print(
            f"  {label} ({len(data)} images, {kb:.0f} KB): prepare {statistics.median(per[False]) * 1e6:,.0f} us, "
            f"with hashes {statistics.median(per[True]) * 1e6:,.0f} us: +{statistics.median(shares):.1%} (passes "
            f"{shares[0]:+.1%} to {shares[-1]:+.1%}; goal <= 5 %); the hashing itself, timed inside: "
            f"+{statistics.median(own):.1%} (passes {own[0]:+.1%} to {own[-1]:+.1%})"
        )

    build_share(args, work, work / "photos-640x480")

    # From the file's bytes to codes, as a tool that hashes a folder does it: ours as `mp16-reason audit` hashes
    # an image folder (its sha256 too, decoded on threads, hashed a batch at a time).
    folder = work / "photos-640x480"
    data = mp16_jpegs(folder, args.images, (640, 480), 85)

    def ours(items: list[bytes]) -> None:
        hash_images("bench", ((str(i), d) for i, d in enumerate(items)), None, progress=False)

    def with_imagehash(d: bytes) -> None:
        from builders.audit.hashes import imagehash_codes

        img = Image.open(io.BytesIO(d))
        img.draft(img.mode, (1, 1))
        imagehash_codes(img)

    def imagehash_whole(d: bytes) -> None:
        img = Image.open(io.BytesIO(d))
        imagehash.phash(img)

    t_ours = cpu_per_item(ours, data)
    t_ih20 = cpu_per_image(with_imagehash, data[:300])
    t_ih1 = cpu_per_image(imagehash_whole, data)
    result = run_json([idd_python(Path(args.idd_venv)), "-c", IDD_ENCODE, str(folder), "3"])
    t_idd = result["cpu"] / len(data)
    print(f"  file -> codes, {len(data)} MP-16-shaped JPEGs:")
    print(f"    ours, 20 codes (pHash+dHash, whole + 9 windows):  {t_ours * 1e6:7,.0f} us")
    print(
        f"    imagehash, the same 20 codes:                      {t_ih20 * 1e6:7,.0f} us  ({t_ih20 / t_ours:.1f}x ours)"
    )
    print(
        f"    imagehash.phash, 1 code:                           {t_ih1 * 1e6:7,.0f} us  ({t_ih1 / t_ours:.1f}x ours)"
    )
    print(
        f"    imagededup PHash.encode_image, 1 code:             {t_idd * 1e6:7,.0f} us  ({t_idd / t_ours:.1f}x ours)"
    )


# -- quality ------------------------------------------------------------------------------------------------


def planted_photos(folder: Path, originals: int) -> list[int]:
    """Write the planted set's JPEGs (those not written yet); return each image's group."""
    from photos import jpeg, planted

    folder.mkdir(parents=True, exist_ok=True)
    groups = []
    for s in range(originals):
        for k, (g, make) in enumerate(planted(s)):
            path = folder / f"{s:05d}-{k}.jpg"
            if not path.exists():
                path.write_bytes(jpeg(make()))
            groups.append(g)
    return groups


def scores(found: set[tuple[int, int]], groups: list[int]) -> tuple[float, float, int]:
    from photos import true_pairs

    truth = true_pairs(groups)
    hit = len(found & truth)
    return hit / len(truth), (hit / len(found) if found else 1.0), len(truth)


def bench_quality(args, work: Path) -> list[tuple[int, int]]:
    """Recall and precision of ours and imagededup on the planted set; the (pHash, dHash) distances of the true
    pairs ours found (the search part plants its twins at these)."""
    from builders.audit import search
    from builders.audit.hashes import window_hashes

    folder = work / f"planted-{args.originals}"
    groups = planted_photos(folder, args.originals)
    files = sorted(folder.glob("*.jpg"))
    codes = []
    for path in files:
        img = Image.open(path)
        img.draft(img.mode, (1, 1))
        codes.append(window_hashes(img))
    phash, dhash = np.stack([c[0] for c in codes]), np.stack([c[1] for c in codes])
    print(
        f"== quality: planted set of {len(files)} images ({args.originals} originals, 2 copies each, "
        f"2 unrelated look-alikes each)"
    )
    rows = []
    for label, exact in (("ours, exhaustive search", True), ("ours, the index used at scale", False)):
        found = search.within(phash, dhash, MAX_PHASH, MAX_DHASH, exact=exact)
        pairs = set(zip(found.a.tolist(), found.b.tolist()))
        recall, precision, n_true = scores(pairs, groups)
        rows.append((label, recall, precision))
        if exact:
            truth_pairs = [
                (int(p), int(d))
                for a, b, p, d in zip(found.a, found.b, found.phash, found.dhash)
                if groups[a] >= 0 and groups[a] == groups[b]
            ]
    result = run_json([idd_python(Path(args.idd_venv)), "-c", IDD_ENCODE, str(folder), "1"])
    idd_codes = np.array([int(result["codes"][p.name], 16) for p in files], np.uint64)
    np.save(work / "idd-quality.npy", idd_codes)
    out = work / "idd-quality-pairs.npy"
    idd_python_exe = idd_python(Path(args.idd_venv))
    subprocess.run(
        [
            idd_python_exe,
            "-c",
            IDD_SEARCH,
            str(work / "idd-quality.npy"),
            str(IDD_THRESHOLD),
            "brute_force_cython",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    idd_pairs = {(int(a), int(b)) for a, b in np.load(out)}
    recall, precision, _ = scores(idd_pairs, groups)
    rows.append((f"imagededup PHash, threshold {IDD_THRESHOLD}", recall, precision))
    print(f"  {n_true} true pairs; ours at max_phash {MAX_PHASH}, max_dhash {MAX_DHASH}")
    for label, recall, precision in rows:
        print(f"  {label:<36} recall {recall:.3f}  precision {precision:.3f}")
    return truth_pairs


# -- search -------------------------------------------------------------------------------------------------


def flip(rng: np.random.Generator, codes: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """Each code with ``bits[k]`` of its bits flipped, chosen at random."""
    out = codes.copy()
    for k, d in enumerate(bits):
        if d:
            out[k] ^= np.uint64(sum(1 << int(b) for b in rng.choice(64, int(d), replace=False)))
    return out


def synthetic(n: int, distances: list[tuple[int, int]], seed: int = 0):
    """Window hashes of ``n`` images, 1 % of them planted twins of another at the given (pHash, dHash)
    distances, each twin's whole image close to one of its original's windows (a crop) or to its whole."""
    rng = np.random.default_rng(seed)
    full = np.iinfo(np.uint64).max

    def windows(whole: np.ndarray) -> np.ndarray:
        # A window differs from its whole image in ~16 bits (the tests measure 14-26 for 10 % crops).
        masks = rng.integers(0, full, (len(whole), 9), dtype=np.uint64, endpoint=True)
        masks &= rng.integers(0, full, (len(whole), 9), dtype=np.uint64, endpoint=True)
        return np.concatenate([whole[:, None], whole[:, None] ^ masks], axis=1)

    phash = windows(rng.integers(0, full, n, dtype=np.uint64, endpoint=True))
    dhash = windows(rng.integers(0, full, n, dtype=np.uint64, endpoint=True))
    m = n // 100
    chosen = rng.permutation(n)[: 2 * m]
    originals, twins = chosen[:m], chosen[m:]
    d = np.array(distances)[rng.integers(0, len(distances), m)]
    window = np.where(rng.random(m) < 0.5, 0, rng.integers(1, 10, m))  # half the twins are crops
    p_whole = flip(rng, phash[originals, window], d[:, 0])
    d_whole = flip(rng, dhash[originals, window], d[:, 1])
    phash[twins] = windows(p_whole)
    dhash[twins] = windows(d_whole)
    planted = np.stack([np.minimum(originals, twins), np.maximum(originals, twins)], axis=1)
    return phash, dhash, planted, d


def recall_of(found: np.ndarray, planted: np.ndarray) -> float:
    keys = set(map(tuple, found.tolist()))
    return sum(tuple(p) in keys for p in planted.tolist()) / len(planted)


def bench_search(args, work: Path, distances: list[tuple[int, int]]) -> None:
    py = idd_python(Path(args.idd_venv))
    print(
        f"== search: all pairs within pHash {MAX_PHASH} (ours: and dHash {MAX_DHASH}); synthetic hashes, "
        f"1 % planted twins; each a fresh process"
    )
    print(f"  {'images':>10} {'tool':<34} {'seconds':>9} {'peak RSS':>10} {'recall':>7}  ratio")
    idd_rate = None
    for n in sorted(set(args.idd_sizes) | set(args.sizes)):
        phash, dhash, planted, _ = synthetic(n, distances, seed=n)
        np.save(work / "p.npy", phash)
        np.save(work / "d.npy", dhash)
        np.save(work / "whole.npy", phash[:, 0].copy())
        del phash, dhash
        ours = run_json(
            [
                sys.executable,
                "-c",
                OURS_SEARCH,
                str(ROOT),
                str(work / "p.npy"),
                str(work / "d.npy"),
                str(MAX_PHASH),
                str(MAX_DHASH),
                str(work / "ours.npy"),
            ]
        )
        mode = "exhaustive" if ours["exact"] else "multi-index"
        ratio = ""
        if n in args.idd_sizes:
            cmd = [
                py,
                "-c",
                IDD_SEARCH,
                str(work / "whole.npy"),
                str(IDD_THRESHOLD),
                args.idd_method,
                str(work / "idd.npy"),
            ]
            theirs = run_json(cmd)
            idd_rate = theirs["seconds"] / n**2  # brute force: every pair
            print(
                f"  {n:>10,} {'imagededup ' + args.idd_method:<34} {theirs['seconds']:>9.1f} "
                f"{theirs['peak_mb']:>8,.0f}MB {recall_of(np.load(work / 'idd.npy'), planted):>7.3f}"
            )
            ratio = f"{theirs['seconds'] / ours['seconds']:.1f}x"
        elif idd_rate:
            ratio = f"{idd_rate * n**2 / ours['seconds']:.0f}x (imagededup extrapolated: {idd_rate * n**2:,.0f} s)"
        print(
            f"  {n:>10,} {'ours, ' + mode:<34} {ours['seconds']:>9.1f} {ours['peak_mb']:>8,.0f}MB "
            f"{recall_of(np.load(work / 'ours.npy'), planted):>7.3f}  {ratio}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["hashing", "quality", "search", "all"])
    ap.add_argument("--images", type=int, default=1000, help="JPEGs for the hashing part")
    ap.add_argument("--passes", type=int, default=7, help="alternating passes with and without the hashes")
    ap.add_argument("--build-passes", type=int, default=4, help="whole builds with and without the hashes")
    ap.add_argument("--originals", type=int, default=200, help="originals in the planted set (5 images each)")
    ap.add_argument(
        "--idd-sizes",
        type=int,
        nargs="*",
        default=[10_000, 25_000, 50_000],
        help="sizes at which imagededup searches too (its time grows with the square)",
    )
    ap.add_argument("--sizes", type=int, nargs="*", default=[1_000_000, MP16_PRO], help="sizes for ours alone")
    ap.add_argument("--idd-method", default="brute_force_cython", choices=["brute_force_cython", "bktree"])
    ap.add_argument("--idd-venv", default=os.path.join(tempfile.gettempdir(), "imagededup-venv"))
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "bench-audit"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.part in ("hashing", "all"):
        bench_hashing(args, work)
    distances = [(0, 0)]
    if args.part in ("quality", "search", "all"):
        distances = bench_quality(args, work)
    if args.part in ("search", "all"):
        bench_search(args, work, distances)


if __name__ == "__main__":
    main()
