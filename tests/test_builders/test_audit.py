"""The leakage audit: window hashes beside imagehash's, near-duplicate quality on a planted set, the audit of a
build against a benchmark folder (kinds, audit.json, the card), `globe eval --exclude-overlap`, and a split
that keeps near twins and authors together."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from photos import COPIES, jpeg, photo, planted, true_pairs

pytest.importorskip("faiss", reason="the audit needs faiss-cpu (pip install -e '.[build]')")
from builders.audit import search
from builders.audit.audit import owner, photo_id
from builders.audit.hashes import (
    from_bytes,
    grey_thumbnail,
    hash_thumbnails,
    imagehash_codes,
    window_hash_bytes,
    window_hashes,
)
from builders.plane.images import add_hashes, prepare

COORDS = Path(__file__).resolve().parents[2] / "builders" / "data" / "sample_coordinates.csv"
BIN = Path(sys.executable).parent


def _hashes(image) -> tuple[np.ndarray, np.ndarray]:
    """The window hashes as the image stage computes them, from the JPEG a photo arrives as."""
    prepared = prepare(jpeg(image), 1280 * 28 * 28)
    add_hashes([prepared])
    return from_bytes(prepared.phash), from_bytes(prepared.dhash)


def test_the_hashes_are_imagehashs_phash_and_dhash_within_a_few_bits():
    imagehash = pytest.importorskip("imagehash")
    assert imagehash  # the reference implementation is installed
    ours, theirs = [], []
    for seed in range(24):
        (p, d), (rp, rd) = window_hashes(photo(seed)), imagehash_codes(photo(seed))
        ours.append(np.bitwise_count(p ^ rp))
        theirs.append(np.bitwise_count(d ^ rd))
    p_dist = np.concatenate(ours)
    # One area-averaged 40x40 grid against imagehash's Lanczos resize of each crop: the same bits, bar a few.
    assert p_dist.mean() <= 3 and p_dist.max() <= 10
    # Unrelated photos are ~32 bits apart: the two implementations agree far more than photos do.
    unrelated = np.bitwise_count(window_hashes(photo(1))[0][0] ^ window_hashes(photo(2))[0][0])
    assert unrelated >= 14


def test_a_batch_hashes_each_image_as_it_would_be_hashed_alone():
    """The image stage hashes 64 images at a time, sizes mixed: an image's codes must not depend on the others."""
    from PIL import Image

    small = []
    for seed, size in enumerate([(640, 480)] * 5 + [(480, 640), (640, 427), (500, 375), (1024, 768), (90, 70)]):
        img = Image.open(io.BytesIO(jpeg(photo(seed, size))))
        img.draft("L", (1, 1))  # as the image stage decodes a kept JPEG: 1/8 scale, grey
        small.append(img)
    small += [Image.new("L", (80, 60), 128), photo(20, (700, 500)), Image.new("L", (5, 3), 7)]
    together = hash_thumbnails([grey_thumbnail(img) for img in small])
    assert together == [window_hash_bytes(img) for img in small]
    assert len({p for p, _ in together}) == len(small) - 1  # one code each, bar the two flat images' pHash
    assert hash_thumbnails([]) == []


HASH_MANY = """
import sys
from PIL import Image
sys.path.insert(0, sys.argv[1])
from photos import jpeg, photo
from builders.plane.images import add_hashes, prepare
# As the image stage hashes them: from the JPEG a photo arrives as, in batches.
photos = [prepare(jpeg(photo(seed)), 1280 * 28 * 28) for seed in range(60)]
# Flat images: every frequency but the first is zero.
flat = [prepare(jpeg(Image.new("RGB", (640, 480), (grey, grey, grey))), 1280 * 28 * 28) for grey in range(0, 256, 15)]
for start in range(0, 78, 16):
    add_hashes((photos + flat)[start : start + 16])
sys.stdout.buffer.write(b"".join(p.phash + p.dhash for p in photos + flat))
"""


@pytest.mark.slow
def test_the_hashes_do_not_depend_on_the_machines_blas_kernel():
    """Records carry the hashes, so a rebuild elsewhere must compute the same bits: the same images hashed in
    fresh processes under OpenBLAS's kernels for other CPUs (``OPENBLAS_CORETYPE``). With float32 products and
    no settled ties, 117 of 1,352 images differed between kernels."""
    tests = Path(__file__).resolve().parents[1]
    runs = {}
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    # Only kernels this CPU can run: SandyBridge's needs AVX, Haswell's AVX2.
    cores = ["", "Prescott"] + ["SandyBridge"] * ("avx" in flags) + ["Haswell"] * ("avx2" in flags)
    for core in cores:
        env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"} | (
            {"OPENBLAS_CORETYPE": core} if core else {}
        )
        proc = subprocess.run([sys.executable, "-c", HASH_MANY, str(tests)], env=env, capture_output=True, timeout=300)
        assert proc.returncode == 0, proc.stderr.decode()[-2000:]
        runs[core or "default"] = proc.stdout
    assert len(runs["default"]) == (60 + 18) * 2 * 80
    assert all(out == runs["default"] for out in runs.values()), [k for k, v in runs.items() if v != runs["default"]]


def test_the_photo_id_and_the_account_in_mp16_ids_and_benchmark_file_names():
    assert photo_id("9e/13/1052462958.jpg") == "1052462958"
    assert photo_id("10280718_4ff8a0a9b6_179_75011938@N00.jpg") == "10280718"
    assert owner("10280718_4ff8a0a9b6_179_75011938@N00.jpg") == "75011938@N00"
    assert photo_id("sample/00012.jpg") == "" and photo_id("IMG_2231.jpg") == ""


@pytest.mark.slow
def test_near_duplicates_on_a_planted_set_recall_095_precision_099():
    groups, codes = [], []
    for s in range(150):
        for g, make in planted(s):
            groups.append(g)
            codes.append(_hashes(make()))
    phash, dhash = np.stack([c[0] for c in codes]), np.stack([c[1] for c in codes])
    found = search.within(phash, dhash, max_phash=10, max_dhash=12)  # the recipe's defaults
    pairs = set(zip(found.a.tolist(), found.b.tolist()))
    truth = true_pairs(groups)
    recall = len(pairs & truth) / len(truth)
    precision = len(pairs & truth) / len(pairs)
    assert recall >= 0.95, recall
    assert precision >= 0.99, precision
    # The index used at scale finds the same pairs here as the exhaustive search.
    fast = search.within(phash, dhash, 10, 12, exact=False)
    assert set(zip(fast.a.tolist(), fast.b.tolist())) <= pairs
    assert len(fast) >= 0.9 * len(found)


# -- a build, audited ----------------------------------------------------------------------------------------
def _planted_input(root: Path) -> dict[str, str]:
    """A metadata CSV and image folder: 40 photos by 20 authors, each author's photos far apart; photos 0-5 have
    a resized or cropped copy under another id (and another author), so near twins exist across the split."""
    coords = list(csv.DictReader(COORDS.open()))
    images = root / "images"
    images.mkdir(parents=True)
    rows, copies = [], {}
    for i in range(40):
        image = photo(500 + i)
        (images / f"{i:04d}.jpg").write_bytes(jpeg(image))
        rows.append([f"p/{i:04d}.jpg", coords[i]["LAT"], coords[i]["LON"], f"{i:04d}.jpg", f"author{i % 20}"])
    for k in range(6):
        twin = COPIES["half size" if k % 2 else "cropped 10% left"](photo(500 + k))
        (images / f"copy{k}.jpg").write_bytes(jpeg(twin, 85))
        i = 40 + k
        rows.append([f"p/copy{k}.jpg", coords[i]["LAT"], coords[i]["LON"], f"copy{k}.jpg", f"other{k}"])
        copies[f"p/copy{k}.jpg"] = f"p/{k:04d}.jpg"
    with (root / "metadata.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["IMG_ID", "LAT", "LON", "image", "author"])
        w.writerows(rows)
    return copies


def _build(root: Path, out: Path, *extra: str) -> None:
    done = subprocess.run(
        [
            str(BIN / "mp16-reason"),
            "build",
            "--metadata",
            str(root / "metadata.csv"),
            "--images",
            str(root / "images"),
            "--out",
            str(out),
            "--test-fraction",
            "0.5",
            "--unit-size",
            "8",
            "--workers",
            "1",
            "--quiet",
            *extra,
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _records(out: Path) -> dict[str, dict]:
    import webdataset as wds

    from mp16_reason.manifest import read_manifest

    shards = [str(out / s.path) for s in read_manifest(out).shards]
    return {json.loads(s["json"])["id"]: json.loads(s["json"]) for s in wds.WebDataset(shards, shardshuffle=False)}


@pytest.mark.slow
def test_an_audit_against_a_benchmark_folder_the_card_and_eval_without_the_overlap(tmp_path):
    root = tmp_path / "in"
    copies = _planted_input(root)
    out = tmp_path / "build"
    _build(root, out)
    records = _records(out)
    assert all(len(r["image"]["phash"]) == 16 for r in records.values())

    # A benchmark folder of IM2GPS-style names: three of the build's photos (one re-encoded, one brightened,
    # one as it is) and four photos of its own.
    bench = tmp_path / "im2gps3k"
    bench.mkdir()
    src = root / "images"
    (bench / "10280718_4ff8a0a9b6_179_75011938@N00.jpg").write_bytes((src / "0010.jpg").read_bytes())
    (bench / "10280719_aa_1_1@N00.jpg").write_bytes(jpeg(COPIES["re-encoded q40"](photo(511))))
    (bench / "10280720_bb_1_2@N00.jpg").write_bytes(jpeg(COPIES["brighter 20%"](photo(512))))
    for k in range(4):
        (bench / f"2000000{k}_cc_1_3@N00.jpg").write_bytes(jpeg(photo(9_000 + k)))
    done = subprocess.run(
        [str(BIN / "mp16-reason"), "audit", str(out), "--against", f"im2gps3k={bench}", "--quiet"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads((out / "audit.json").read_text())
    pairs = doc["pairs"]
    # Every planted twin inside the build is found, under its place pair and kind.
    inside = {frozenset((p["a"], p["b"])) for p in pairs if p["kind"] == "near" and "im2gps3k" not in p["where"]}
    assert {frozenset(x) for x in copies.items()} <= inside
    for p in pairs:
        if {p["a"], p["b"]} in [set(x) for x in copies.items()]:
            splits = sorted([records[p["a"]]["split"], records[p["b"]]["split"]], key=lambda s: s != "train")
            assert p["where"] == "-".join(splits)
    # The benchmark's three copies, and none of its own photos.
    against = {p["b"] for p in pairs if p["where"].endswith("-im2gps3k") and p["kind"] != "same-author"}
    assert against == {"10280718_4ff8a0a9b6_179_75011938@N00.jpg", "10280719_aa_1_1@N00.jpg", "10280720_bb_1_2@N00.jpg"}
    kinds = {p["b"]: p["kind"] for p in pairs if p["where"].endswith("-im2gps3k")}
    assert kinds["10280718_4ff8a0a9b6_179_75011938@N00.jpg"] == "exact"
    assert kinds["10280719_aa_1_1@N00.jpg"] == "near"
    summary = doc["summary"]
    assert summary["images"]["im2gps3k"] == 7 and summary["thresholds"] == {"phash": 10, "dhash": 12}
    assert (out / "audit-pairs.parquet").exists()

    # The card reports it.
    subprocess.run([str(BIN / "mp16-reason"), "card", str(out)], check=True, capture_output=True)
    card = (out / "README.md").read_text()
    assert "## Overlap and leakage" in card and "-im2gps3k |" in card

    # globe eval scores the benchmark with and without the items the training set holds.
    (bench / "list.csv").write_text(
        "IMG_ID,LAT,LON\n" + "".join(f"{p.name},48.8566,2.3522\n" for p in sorted(bench.glob("*.jpg")))
    )
    preds = tmp_path / "preds.jsonl"
    lines = [
        {
            "id": p.name,
            "text": "<answer>country: France\ncity: Paris</answer>"
            if "2000000" in p.name
            else "<answer>country: Japan\ncity: Tokyo</answer>",
        }
        for p in sorted(bench.glob("*.jpg"))
    ]
    preds.write_text("".join(json.dumps(x) + "\n" for x in lines))
    train_ids = [p["b"] for p in pairs if p["where"] == "train-im2gps3k" and p["kind"] in ("exact", "near")]
    done = subprocess.run(
        [
            str(BIN / "globe"),
            "eval",
            "csv",
            "--data",
            str(bench / "list.csv"),
            "--images",
            str(bench),
            "--predictions",
            str(preds),
            "--out",
            str(tmp_path / "eval"),
            "--exclude-overlap",
            str(out),
            "--overlap-name",
            "im2gps3k",
            "--bootstrap",
            "0",
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    clean = report["excluding_overlap"]
    assert clean["excluded"] == len(train_ids) and clean["n"] == 7 - len(train_ids)
    assert clean["metrics"]["acc_25km"] > report["metrics"]["acc_25km"] or not train_ids
    assert "without the" in done.stdout


@pytest.mark.slow
def test_a_split_grouped_by_near_duplicates_and_authors_keeps_them_apart(tmp_path):
    root = tmp_path / "in"
    copies = _planted_input(root)
    plain, grouped = tmp_path / "plain", tmp_path / "grouped"
    _build(root, plain)
    _build(root, grouped, "--group-by", "near_duplicate", "--group-by", "author")
    before, after = _records(plain), _records(grouped)

    # Without grouping, at this test fraction some twins and authors straddle the split; with it, none does.
    def straddling(records):
        twins = sum(records[a]["split"] != records[b]["split"] for a, b in copies.items())
        by_author: dict[str, set[str]] = {}
        for r in records.values():
            by_author.setdefault(r["source"]["author"], set()).add(r["split"])
        return twins, sum(len(s) > 1 for s in by_author.values())

    assert straddling(before) != (0, 0)
    assert straddling(after) == (0, 0)
    assert Counter(r["split"] for r in after.values()).keys() == {"train", "test"}
    # The audit of the grouped build finds no pair across its split.
    subprocess.run([str(BIN / "mp16-reason"), "audit", str(grouped), "--quiet"], check=True, capture_output=True)
    across = [p for p in json.loads((grouped / "audit.json").read_text())["pairs"] if p["where"] == "train-test"]
    assert across == []
    # Byte-reproducible: another worker count gives the same shards.
    again = tmp_path / "again"
    _build(root, again, "--group-by", "near_duplicate", "--group-by", "author", "--workers", "2")
    files = {
        p: {s["path"]: s["sha256"] for s in json.loads((p / "manifest.json").read_text())["shards"]}
        for p in (grouped, again)
    }
    assert files[grouped] == files[again]


@pytest.mark.slow
def test_a_build_against_another_build_and_eval_of_that_build_without_the_overlap(tmp_path):
    """A built from planted photos; B built from a benchmark folder that holds near copies of some of A's photos.
    The audit of A against other=B files the copies under `other`, pairs no photo with itself, and
    `globe eval mp16-reason-test --data B --exclude-overlap A` leaves out exactly B's test items copied from A's
    training photos."""
    root = tmp_path / "a-in"
    _planted_input(root)
    a = tmp_path / "a"
    _build(root, a)
    a_split = {i: r["split"] for i, r in _records(a).items()}

    coords = list(csv.DictReader(COORDS.open()))
    b_root = tmp_path / "b-in"
    (b_root / "images").mkdir(parents=True)
    copied = {}  # B id -> the A id it copies
    rows = []
    for k in range(40):
        name = f"q{k:03d}.jpg"
        # A's photos 6-39 (0-5 have twins inside A, which would pair too), then six of B's own
        image = COPIES["re-encoded q40"](photo(506 + k)) if k < 34 else photo(7_000 + k)
        (b_root / "images" / name).write_bytes(jpeg(image))
        rows.append([f"b/{name}", coords[50 + k]["LAT"], coords[50 + k]["LON"], name, f"bauthor{k}"])
        if k < 34:
            copied[f"b/{name}"] = f"p/{6 + k:04d}.jpg"
    with (b_root / "metadata.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["IMG_ID", "LAT", "LON", "image", "author"], *rows])
    b = tmp_path / "b"
    _build(b_root, b)
    b_split = {i: r["split"] for i, r in _records(b).items()}

    done = subprocess.run(
        [str(BIN / "mp16-reason"), "audit", str(a), "--against", f"other={b}", "--quiet"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    pairs = [p for p in json.loads((a / "audit.json").read_text())["pairs"] if p["kind"] in ("exact", "near")]
    cross = {(p["a"], p["b"]): p["where"] for p in pairs if p["where"].endswith("-other")}
    assert set(cross) == {(copied[x], x) for x in copied}
    assert all(where == f"{a_split[x]}-other" for (x, _), where in cross.items())
    assert not [p for p in pairs if p["a"] == p["b"]]

    tests = [i for i, s in b_split.items() if s == "test"]
    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(json.dumps({"id": i, "answer": "lat: 0\nlon: 0"}) + "\n" for i in tests))
    done = subprocess.run(
        [
            str(BIN / "globe"),
            "eval",
            "mp16-reason-test",
            "--data",
            str(b),
            "--predictions",
            str(preds),
            "--out",
            str(tmp_path / "eval"),
            "--exclude-overlap",
            str(a),
            "--overlap-name",
            "other",
            "--bootstrap",
            "0",
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    clean = json.loads((tmp_path / "eval" / "metrics.json").read_text())["excluding_overlap"]
    leaked = {x for x in tests if x in copied and a_split[copied[x]] == "train"}
    assert leaked, "the planted copies should reach B's test split"
    assert clean["excluded"] == len(leaked) and clean["set"] == "other" and clean["audit"] == "a"
    scores = list(csv.DictReader((tmp_path / "eval" / "scores.csv").open()))
    assert {r["id"] for r in scores if r["overlap"] == "True"} == leaked
