"""The audit's sides are what the user named them, and relations that hold for any input hold here: A against B
finds the pairs B against A finds; a set against a copy of itself pairs each photo with its copy only; unrelated
photos add no pair; an empty or unreadable set is an error, never the build compared with itself."""

from __future__ import annotations

import io
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from photos import jpeg, photo, planted

from builders.audit.audit import AuditError, Side, against_side, audit

MAX_PHASH, MAX_DHASH = 10, 10


def _folder(root, images: dict[str, bytes]):
    root.mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        (root / name).write_bytes(data)
    return root


@pytest.fixture(scope="module")
def planted_images() -> dict[str, bytes]:
    """Four originals of the planted set, each with its two copies and two unrelated look-alikes."""
    return {f"g{s}-{k}-{group}.jpg": jpeg(make()) for s in range(4) for k, (group, make) in enumerate(planted(s))}


def _cross(found, name: str) -> set[tuple[frozenset, str]]:
    return {(frozenset((r["a"], r["b"])), r["kind"]) for r in found.rows if name in r["where"].split("-")}


def test_a_against_b_finds_the_pairs_b_against_a_finds(tmp_path, planted_images):
    names = sorted(planted_images)
    a = _folder(tmp_path / "a", {n: planted_images[n] for n in names[::2]})
    b = _folder(tmp_path / "b", {n: planted_images[n] for n in names[1::2]})
    side_a, side_b = against_side(f"a={a}", progress=False), against_side(f"b={b}", progress=False)
    ab = audit(side_a, [side_b], MAX_PHASH, MAX_DHASH, progress=False)
    ba = audit(side_b, [side_a], MAX_PHASH, MAX_DHASH, progress=False)
    cross_ab = {p for p in _cross(ab, "a") if p in _cross(ab, "b")}
    cross_ba = {p for p in _cross(ba, "a") if p in _cross(ba, "b")}
    assert cross_ab == cross_ba and cross_ab  # the planted copies straddle the two halves


def test_a_set_against_a_copy_of_itself_pairs_each_photo_with_its_copy_and_unrelated_photos_add_nothing(tmp_path):
    originals = {f"p{i}.jpg": jpeg(photo(i)) for i in range(8)}
    build = against_side(f"mine={_folder(tmp_path / 'mine', originals)}", progress=False)
    copy = _folder(tmp_path / "copy", originals)
    found = audit(build, [against_side(f"copy={copy}", progress=False)], MAX_PHASH, MAX_DHASH, progress=False)
    pairs = {(r["a"], r["b"]) for r in found.rows if r["where"] == "copy-mine" and r["kind"] in ("exact", "near")}
    assert pairs == {(n, n) for n in originals}
    assert all(r["kind"] == "exact" for r in found.rows if r["where"] == "copy-mine")
    assert not [r for r in found.rows if r["where"] == "mine-mine"]  # no photo paired with itself
    empty = Side("none", [], [], [], [], build.phash[:0], build.dhash[:0])  # falsy: never the build again
    assert not audit(build, [empty], MAX_PHASH, MAX_DHASH, progress=False).rows
    # Unrelated photos in the other set add no pair.
    _folder(copy, {f"other{i}.jpg": jpeg(photo(500 + i)) for i in range(6)})
    more = audit(build, [against_side(f"copy={copy}", progress=False)], MAX_PHASH, MAX_DHASH, progress=False)
    assert sorted(map(str, more.rows)) == sorted(map(str, found.rows))


def test_another_build_is_filed_under_the_name_given_never_under_its_own_splits(tmp_path):
    images = {f"p{i}.jpg": jpeg(photo(i)) for i in range(6)}
    mine = against_side(f"mine={_folder(tmp_path / 'mine', images)}", progress=False)
    mine.where = ["train", "train", "train", "test", "test", "test"]  # as a build's own splits
    other = tmp_path / "other-build"
    other.mkdir()
    (other / "manifest.json").write_text("{}")
    pq.write_table(
        pa.table(
            {
                "id": mine.ids,
                "split": mine.where,  # the other build's own splits: the same names as ours
                "sha256": mine.sha256,
                "author": mine.authors,
                "phash": [row.astype(">u8").tobytes() for row in mine.phash],
                "dhash": [row.astype(">u8").tobytes() for row in mine.dhash],
            }
        ),
        other / "hashes.parquet",
    )
    found = audit(mine, [against_side(f"other={other}", progress=False)], MAX_PHASH, MAX_DHASH, progress=False)
    wheres = {r["where"] for r in found.rows}
    assert wheres == {"train-other", "test-other"}
    assert len([r for r in found.rows if r["kind"] == "exact"]) == 6


@pytest.mark.parametrize("kind", ["empty folder", "non-images", "csv without its images", "missing", "truncated tar"])
def test_an_empty_or_unreadable_set_is_an_error_naming_it(tmp_path, kind):
    path = tmp_path / "set"
    if kind == "empty folder":
        path.mkdir()
    elif kind == "non-images":
        _folder(path, {"notes.txt": b"text", "broken.jpg": b"not a jpeg"})
    elif kind == "csv without its images":
        path = tmp_path / "bench.csv"
        path.write_text("IMG_ID,LAT,LON\na,1,2\nb,3,4\n")
    elif kind == "truncated tar":
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for i in range(3):
                data = jpeg(photo(i))
                info = tarfile.TarInfo(f"p{i}.jpg")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        path = tmp_path / "set.tar"
        path.write_bytes(buf.getvalue()[:700])
    with pytest.raises(AuditError, match=r"--against bench=|not a readable tar"):
        against_side(f"bench={path}", progress=False)


@pytest.mark.parametrize("kind", ["folder", "nested folder", "tar", "csv + folder", "csv + tar", "csv image column"])
def test_exclude_overlap_finds_the_benchmark_items_the_audit_paired_whatever_the_set(tmp_path, kind):
    """`globe eval --exclude-overlap` leaves out the items an audit against the set paired with a training photo,
    whether the set was a folder, a tar or a list with its images: b0 is p0 as it is, b1 p1 re-encoded."""
    from builders.audit.audit import summary, write
    from globe_train.benchmarks import load_benchmark
    from globe_train.evaluate import overlapping_ids, overlapping_items

    train = against_side(f"mine={_folder(tmp_path / 'mine', {f'p{i}.jpg': jpeg(photo(i)) for i in range(6)})}")
    train.where = ["train"] * len(train)
    images = {"b0.jpg": jpeg(photo(0)), "b1.jpg": jpeg(photo(1), 70)}
    images |= {f"b{i}.jpg": jpeg(photo(100 + i)) for i in range(2, 6)}
    bench = _folder(tmp_path / "set" / "bench", images)
    ids = [n.removesuffix(".jpg") for n in images] if kind.startswith("csv") else list(images)
    listing = tmp_path / "list.csv"
    column = kind == "csv image column"
    listing.write_text(
        ("IMG_ID,LAT,LON,image\n" if column else "IMG_ID,LAT,LON\n")
        + "".join(f"{i},1.0,2.0{',bench/' + n if column else ''}\n" for i, n in zip(ids, images))
    )
    spec = {"folder": str(bench), "nested folder": str(bench.parent)}.get(kind)
    if kind in ("tar", "csv + tar"):
        with tarfile.open(tmp_path / "bench.tar", "w") as tar:
            for name in images:
                tar.add(bench / name, f"im2gps3ktest/{name}")
        spec = str(tmp_path / "bench.tar") if kind == "tar" else f"{listing},{tmp_path / 'bench.tar'}"
    elif kind.startswith("csv"):
        spec = f"{listing},{bench.parent if column else bench}"
    side = against_side(f"im2gps3k={spec}", progress=False)
    found = audit(train, [side], MAX_PHASH, MAX_DHASH, progress=False)
    (tmp_path / "audit").mkdir()
    write(tmp_path / "audit", found, summary(found, train, [side], MAX_PHASH, MAX_DHASH))

    leaked, source = overlapping_ids(tmp_path / "audit", "im2gps3k")
    items = load_benchmark("csv", listing, bench.parent if column else bench).items
    assert overlapping_items(items, leaked) == {ids[0], ids[1]}
    assert source["set"] == "im2gps3k" and source["pairs"] >= 2 and source["thresholds"] == {"phash": 10, "dhash": 10}
