"""Building the paper's MP16-Reason from the official release's files: a train CSV in the release's columns, a
test CSV, a zip holding part of the images under a top folder, an uncompressed tar named like MP-16, and a
Flickr URL list served by a local HTTP server (with a redirect to the "photo unavailable" placeholder and a
dead link)."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from builders.build import build
from builders.publish.card import write_card
from builders.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "builders/recipes/globe-release.yaml"
TEST_RECIPE = ROOT / "builders/recipes/globe-release-test.yaml"
PLACES = [  # lat, lon, the release's answer
    (48.8566, 2.3522, "France", "Paris"),
    (35.6762, 139.6503, "Japan", "Tokyo"),
    (40.7580, -73.9855, "United States", "New York"),
    (51.5074, -0.1278, "United Kingdom", "London"),
    (41.9028, 12.4964, "Italy", "Rome"),
    (52.5200, 13.4050, "Germany", "Berlin"),
    (-33.8688, 151.2093, "Australia", "Sydney"),
    (55.7558, 37.6173, "Russia", "Moscow"),
    (19.4326, -99.1332, "Mexico", "Mexico City"),
    (-22.9068, -43.1729, "Brazil", "Rio de Janeiro"),
]


def mp16_id(i: int) -> str:
    h = hashlib.md5(str(i).encode()).hexdigest()
    return f"{h[:2]}/{h[2:4]}/{1052462900 + i}.jpg"


def jpeg(i: int) -> bytes:
    """A distinct image per ``i``, the same bytes on every call."""
    import random

    img = Image.frombytes("RGB", (96, 72), random.Random(i).randbytes(96 * 72 * 3))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


PLACEHOLDER = jpeg(999)  # what Flickr shows for a deleted photo


class Flickr(http.server.BaseHTTPRequestHandler):
    """/img/N.jpg an image; /gone/N.jpg redirects to the placeholder; /same/N.jpg answers the placeholder
    itself (no redirect); anything else 404."""

    def do_GET(self):
        if self.path.startswith("/img/"):
            body, code = jpeg(int(self.path.split("/")[-1].split(".")[0])), 200
        elif self.path.startswith("/gone/"):
            self.send_response(302)
            self.send_header("Location", "/pw/images/en-us/photo_unavailable.png")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        elif self.path.endswith("photo_unavailable.png") or self.path.startswith("/same/"):
            body, code = PLACEHOLDER, 200
        else:
            body, code = b"not found", 404
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


# Rows 0-5 sit in the zip, 5-11 in the tar (5 in both: the zip, listed first, serves it), 12-15 and 25 only in
# the URL list; 16 redirects to the placeholder, 17 answers the placeholder without a redirect, 18 is a dead
# link, 19 is in no source. Rows 20-24 are malformed in the release's own cells, 26 has no coordinates, and a
# 28th row repeats row 3's id.
ZIP, TAR, URLS = range(0, 6), range(5, 12), (12, 13, 14, 15, 25)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flickr)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    ids = [mp16_id(i) for i in range(27)]
    rows = []
    for i in range(27):
        lat, lon, country, city = PLACES[i % len(PLACES)]
        entities = [{"text": f"street sign {i}"}, {"text": "tram"}]
        cell = json.dumps(entities) if i % 2 else repr(entities)  # JSON strings and Python literals both occur
        rows.append(
            {
                "IMG_ID": ids[i],
                "response": f"The sign reads {city}. Trams like these run in {city}.",
                "solution": f"<country>{country}</country><city>{city}</city>",
                "entities": cell,
            }
        )
    rows[20]["solution"] = "France, Paris"
    rows[21]["entities"] = "[{'text': 'sign'"  # cut off
    rows[22]["entities"] = "__import__('os').system('echo no')"  # never evaluated
    rows[23]["response"] = "  "
    rows[24]["solution"] = "<country>France</country>"
    rows[11]["solution"] = "<country>Japan</country><city>Osaka</city>"  # the photo is in Tokyo
    rows.append(dict(rows[3]))  # 27: a duplicate id
    import csv

    with (root / "mp16-reason-train.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with (root / "MP16_Pro_filtered.csv").open("w", newline="") as fh:  # MP16-Pro's metadata: the coordinates
        writer = csv.writer(fh)
        writer.writerow(["IMG_ID", "LAT", "LON", "neighbourhood", "city", "county", "state", "region", "country"])
        for i in range(26):  # 26 has none
            lat, lon, country, city = PLACES[i % len(PLACES)]
            writer.writerow([ids[i], lat + 0.001 * (i % 3), lon, "", city, "", "", "", country])
        writer.writerow([mp16_id(500), 10.0, 10.0, "", "", "", "", "", ""])  # MP16-Pro has far more rows
    with zipfile.ZipFile(root / "mp16-reason-train-images.zip", "w") as zf:
        for i in ZIP:
            method = zipfile.ZIP_DEFLATED if i % 2 else zipfile.ZIP_STORED
            zf.writestr(f"mp16-reason-train-images/{ids[i]}", jpeg(i), compress_type=method)
    with tarfile.open(root / "mp-16-images.tar", "w") as tar:
        for i in [*TAR, 40, 41]:
            data = jpeg(i)
            info = tarfile.TarInfo(mp16_id(i))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with (root / "mp16-urls.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["IMG_ID", "url"])
        for i in [*URLS, 20, 21, 22, 23, 24, 26]:
            writer.writerow([ids[i], f"{base}/img/{i}.jpg"])
        writer.writerow([ids[16], f"{base}/gone/16.jpg"])
        writer.writerow([ids[17], f"{base}/same/17.jpg"])
        writer.writerow([ids[18], f"{base}/dead/18.jpg"])
    # The test CSV, in the release's layout; its images in their own zip and in the tar.
    with (root / "mp16-reason-test-12k.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["IMG_ID", "LAT", "LON", "city", "country"])
        for i in range(40, 44):
            lat, lon, country, city = PLACES[i % len(PLACES)]
            writer.writerow([mp16_id(i).removesuffix(".jpg"), lat, lon, city, country])
    with zipfile.ZipFile(root / "eval_images.zip", "w") as zf:
        for i in (42, 43):
            zf.writestr(f"eval_images/{mp16_id(i)}", jpeg(i))
    yield root, ids
    server.shutdown()


def recipe(root: Path, out: Path, **overrides):
    return load_recipe(
        RECIPE,
        {
            "input.metadata": str(root / "mp16-reason-train.csv"),
            "input.images": [
                str(root / n) for n in ("mp16-reason-train-images.zip", "mp-16-images.tar", "mp16-urls.csv")
            ],
            "input.join": [str(root / "MP16_Pro_filtered.csv")],
            "fetch.reject_sha256": [hashlib.sha256(PLACEHOLDER).hexdigest()],
            "fetch.retries": 0,
            "workers": 1,
            "unit_size": 8,
            "shards.max_bytes": 60_000,
            "out": str(out),
            **overrides,
        },
    )


def records(out: Path) -> dict[str, dict]:
    from builders.publish.stats import iter_records

    return {rec["id"]: rec for _, rec in iter_records(out)}


@pytest.fixture(scope="module")
def built(release, tmp_path_factory):
    root, _ = release
    out = tmp_path_factory.mktemp("release-build")
    summary = build(recipe(root, out), progress=False)
    write_card(out)
    return out, summary


def test_every_row_is_written_or_rejected_with_its_reason(release, built):
    _root, ids = release
    out, summary = built
    assert summary.input_rows == 28 and summary.written + summary.rejected == 28
    recs = records(out)
    assert set(recs) == {ids[i] for i in [*ZIP, *TAR, *URLS]}
    why = {r["id"]: (r["stage"], r["reason"]) for r in pq.read_table(out / "rejections.parquet").to_pylist()}
    assert why[ids[16]][0] == "fetch" and "Flickr placeholder" in why[ids[16]][1]
    assert "photo_unavailable.png" in why[ids[16]][1]
    assert why[ids[17]] == ("fetch", "Flickr placeholder (sha256 in fetch.reject_sha256) [urls mp16-urls.csv]")
    assert why[ids[18]][0] == "fetch" and "dead link (HTTP 404)" in why[ids[18]][1]
    assert why[ids[19]] == (
        "fetch",
        "no image in any source (tried: zip mp16-reason-train-images.zip, tar mp-16-images.tar, urls mp16-urls.csv)",
    )
    assert why[ids[20]][1].startswith("malformed solution: 'France, Paris'")
    assert why[ids[21]][1].startswith("unparsable entities") and why[ids[22]][1].startswith("unparsable entities")
    assert why[ids[23]][1] == "empty response (no reasoning)"
    assert why[ids[24]][1].startswith("malformed solution")
    assert why[ids[26]][1] == "no coordinates: not in the metadata nor in input.join (MP16_Pro_filtered.csv)"
    dup = [r for r in pq.read_table(out / "rejections.parquet").to_pylist() if r["row"] == 27]
    assert dup[0]["id"] == ids[3] and dup[0]["reason"].startswith("duplicate id (first seen at row 3)")


def test_records_keep_the_release_verbatim_and_say_which_source_served(release, built):
    _root, ids = release
    recs = records(built[0])
    for i, rid in enumerate(ids[:16]):
        rec = recs[rid]
        lat, _lon, country, city = PLACES[i % len(PLACES)]
        assert rec["reasoning"] == f"The sign reads {city}. Trams like these run in {city}."
        assert [e["text"] for e in rec["entities"]] == [f"street sign {i}", "tram"]
        assert all(e["category"] == "" and e["grounded"] is None for e in rec["entities"])
        [answer] = rec["teachers"]
        assert (answer["origin"], answer["model"], answer["country"], answer["city"]) == (
            "release",
            "GLOBE release",
            country,
            "Osaka" if i == 11 else city,
        )
        assert rec["localizable"] is True and rec["split"] == "train"
        assert (rec["source"]["labels"]["country"], rec["source"]["labels"]["city"]) == (country, answer["city"])
        assert rec["lat"] == pytest.approx(lat + 0.001 * (i % 3)) and rec["country"]  # joined, then labelled
        kind = "zip" if i in ZIP else "tar" if i in TAR else "urls"
        assert rec["source"]["image_source"]["kind"] == kind
        assert (
            rec["source"]["image_source"]["name"]
            == {"zip": "mp16-reason-train-images.zip", "tar": "mp-16-images.tar", "urls": "mp16-urls.csv"}[kind]
        )
        if kind == "urls":
            assert rec["source"]["url"].endswith(f"/img/{i}.jpg")


def test_card_states_completeness_and_agreement(built):
    out, _summary = built
    card = (out / "README.md").read_text()
    assert "## Completeness" in card
    assert "| zip `mp16-reason-train-images.zip` | 6 |" in card
    assert "| tar `mp-16-images.tar` | 6 |" in card and "| urls `mp16-urls.csv` | 5 |" in card
    assert "Flickr placeholder | 2 |" in card and "no image in any source | 1 |" in card
    assert "country 100.0 %, country and city 94.1 % of 17 samples" in card
    assert "every sample is in `train`" in card and "Teachers**: none" not in card
    assert "release's answer" in card and "localizability" not in card.split("## Completeness")[0].split("---")[-1]
    assert "config: localizability" not in card


def test_test_split_from_its_own_csv(release, tmp_path):
    root, _ = release
    out = tmp_path / "test-build"
    summary = build(
        load_recipe(
            TEST_RECIPE,
            {
                "input.metadata": str(root / "mp16-reason-test-12k.csv"),
                "input.images": [str(root / "eval_images.zip"), str(root / "mp-16-images.tar")],
                "workers": 1,
                "out": str(out),
            },
        ),
        progress=False,
    )
    assert summary.written == 4 and summary.splits == {"test": 4}
    recs = records(out)
    kinds = Counter(r["source"]["image_source"]["kind"] for r in recs.values())
    assert kinds == {"zip": 2, "tar": 2}
    assert all(r["source"]["labels"]["city"] and r["reasoning"] == "" for r in recs.values())
    write_card(out)
    assert "city-centre aligned" in (out / "README.md").read_text()


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_shards(release, built, tmp_path):
    from test_build import shard_digests

    root, _ = release
    r = recipe(root, tmp_path)
    cmd = [
        sys.executable,
        "-m",
        "builders.cli",
        "build",
        str(RECIPE),
        "--metadata",
        r.input.metadata,
        *[a for s in r.input.images for a in ("--images", s)],
        "--join",
        r.input.join[0],
        "--out",
        str(tmp_path),
        "--workers",
        "1",
        "--unit-size",
        "8",
        "--shard-bytes",
        "60000",
        "--quiet",
    ]
    overrides = tmp_path.parent / "override.yaml"
    import yaml

    data = yaml.safe_load(RECIPE.read_text())
    data["fetch"]["reject_sha256"] = list(r.fetch.reject_sha256)
    data["fetch"]["retries"] = 0
    overrides.write_text(yaml.safe_dump(data))
    cmd[4] = str(overrides)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (tmp_path / ".work/units/unit-000001.arrow").exists() and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "manifest.json").exists()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert shard_digests(tmp_path) == shard_digests(built[0])


def test_load_dataset_reads_the_release_build(built, tmp_path):
    from mp16_reason import load

    ds = load(path=built[0], split="train", cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 17 and ds[0]["json"]["teachers"][0]["origin"] == "release"
    assert ds[0]["json"]["source"]["image_source"]["kind"] in ("zip", "tar", "urls")


def test_a_missing_release_column_names_the_file_columns_and_the_override(release, tmp_path):
    from builders.plane.ingest import InputError, ingest

    root, _ = release
    bad = tmp_path / "train.csv"
    text = (root / "mp16-reason-train.csv").read_text().replace("solution", "answer", 1)
    bad.write_text(text)
    spec = recipe(root, tmp_path / "out", **{"input.metadata": str(bad)}).input
    with pytest.raises(
        InputError,
        match=r"no column for solution \(its columns: IMG_ID, response, answer, "
        r"entities\); .*columns: \{solution: <your column>\}",
    ):
        ingest(spec, work_dir=tmp_path)


@pytest.mark.slow
def test_the_release_audit_recipe_runs_as_documented(release, tmp_path):
    """docs/building.md's "Auditing the paper's release", command for command, on the stand-in: the train build,
    the test build, the audit against the test build and two benchmarks, and `globe eval --exclude-overlap`."""
    import csv

    root, ids = release
    bin_ = Path(sys.executable).parent
    # Benchmarks in their published layout: a list and a folder of images. IM2GPS3k holds one of the train
    # photos re-encoded; YFCC4k holds one of the test photos as it is.
    im2gps, yfcc = tmp_path / "im2gps3ktest", tmp_path / "yfcc4k"
    im2gps.mkdir()
    yfcc.mkdir()
    Image.open(io.BytesIO(jpeg(1))).save(im2gps / "1_a_1_1@N00.jpg", quality=60)
    (im2gps / "2_b_1_2@N00.jpg").write_bytes(jpeg(700))
    (yfcc / "9001.jpg").write_bytes(jpeg(42))
    (yfcc / "9002.jpg").write_bytes(jpeg(701))
    for name, folder in (("im2gps3k_places365.csv", im2gps), ("yfcc4k_places365.csv", yfcc)):
        with (tmp_path / name).open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["IMG_ID", "LAT", "LON"])
            writer.writerows([p.name, 48.8566, 2.3522] for p in sorted(folder.glob("*.jpg")))

    def run(*args: str) -> str:
        done = subprocess.run([str(bin_ / args[0]), *args[1:]], capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 0, f"{args}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    run(
        "mp16-reason",
        "build",
        str(RECIPE),
        "--metadata",
        str(root / "mp16-reason-train.csv"),
        "--images",
        str(root / "mp16-reason-train-images.zip"),
        "--images",
        str(root / "mp-16-images.tar"),
        "--images",
        str(root / "mp16-urls.csv"),
        "--join",
        str(root / "MP16_Pro_filtered.csv"),
        "--out",
        "mp16-reason",
        "--workers",
        "1",
        "--quiet",
    )
    run(
        "mp16-reason",
        "build",
        str(TEST_RECIPE),
        "--metadata",
        str(root / "mp16-reason-test-12k.csv"),
        "--images",
        str(root / "eval_images.zip"),
        "--images",
        str(root / "mp-16-images.tar"),
        "--out",
        "mp16-reason-test",
        "--workers",
        "1",
        "--quiet",
    )
    printed = run(
        "mp16-reason",
        "audit",
        "mp16-reason",
        "--against",
        "mp16-reason-test",
        "--against",
        "im2gps3k=im2gps3k_places365.csv,im2gps3ktest",
        "--against",
        "yfcc4k=yfcc4k_places365.csv,yfcc4k",
        "--quiet",
    )
    doc = json.loads((tmp_path / "mp16-reason" / "audit.json").read_text())
    assert doc["summary"]["against"] == ["mp16-reason-test", "im2gps3k", "yfcc4k"]
    assert doc["summary"]["images"]["mp16-reason-test"] == 4
    leaks = {(p["a"], p["b"], p["where"]) for p in doc["pairs"] if p["kind"] in ("exact", "near")}
    assert (ids[1], "1_a_1_1@N00.jpg", "train-im2gps3k") in leaks
    assert not [p for p in doc["pairs"] if p["a"] == p["b"]]
    assert "train-im2gps3k" in printed

    preds = tmp_path / "preds.jsonl"
    preds.write_text(
        "".join(
            json.dumps({"id": p.name, "answer": "lat: 48.85\nlon: 2.35"}) + "\n" for p in sorted(im2gps.glob("*.jpg"))
        )
    )
    run(
        "globe",
        "eval",
        "im2gps3k",
        "--data",
        "im2gps3k_places365.csv",
        "--images",
        "im2gps3ktest",
        "--predictions",
        str(preds),
        "--out",
        "runs/released-im2gps3k",
        "--exclude-overlap",
        "mp16-reason",
        "--bootstrap",
        "0",
        "--quiet",
    )
    metrics = json.loads((tmp_path / "runs/released-im2gps3k/metrics.json").read_text())
    assert metrics["n"] == 2 and metrics["excluding_overlap"]["excluded"] == 1
    assert metrics["excluding_overlap"]["set"] == "im2gps3k" and metrics["excluding_overlap"]["n"] == 1
