"""Preparing images (modes, EXIF, bombs, resampling, JPEGs kept as they are), reading image sources (tars, URL
lists) and the CSV ingest, each on hand-made inputs."""

import hashlib
import io
import subprocess
import sys
import tarfile
import time
import warnings
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from builders.recipe import RecipeError, load_recipe


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_image_preparation_modes():
    from builders.plane.images import prepare

    rgba = Image.new("RGBA", (100, 80), (255, 0, 0, 0))  # fully transparent red -> white
    out = Image.open(io.BytesIO(prepare(_encode(rgba, "PNG"), 10_000).jpeg))
    assert out.mode == "RGB" and out.getpixel((50, 40))[0] > 240 and out.getpixel((50, 40))[1] > 240
    cmyk = prepare(_encode(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG"), 10_000)
    assert Image.open(io.BytesIO(cmyk.jpeg)).getpixel((32, 32))[0] > 200  # red stays red
    pal = prepare(_encode(Image.new("RGB", (64, 64), "blue").convert("P"), "GIF"), 10_000)
    assert pal.orig_format == "GIF"
    deep = prepare(_encode(Image.new("I;16", (64, 64), 65535), "PNG"), 10_000)
    assert Image.open(io.BytesIO(deep.jpeg)).getpixel((5, 5))[0] > 240
    big = prepare(_encode(Image.new("RGB", (2000, 1000), "green"), "JPEG"), 200_000)
    assert big.width * big.height <= 200_000 and abs(big.width / big.height - 2) < 0.02
    assert (big.orig_width, big.orig_height) == (2000, 1000)


def test_exif_orientation_is_applied():
    from builders.plane.images import prepare

    img = Image.new("RGB", (120, 60), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when shown
    prep = prepare(_encode(img, "JPEG", exif=exif), 100_000)
    assert (prep.width, prep.height) == (60, 120) and (prep.orig_width, prep.orig_height) == (60, 120)


def test_decompression_bomb_is_refused():
    from builders.plane.images import ImageRejected, prepare

    data = _encode(Image.new("1", (20000, 20000)), "PNG")
    with pytest.raises(ImageRejected, match=r"decompression bomb refused: 20000x20000 exceeds 100,000,000 pixels"):
        prepare(data, 1_000_000)
    with pytest.raises(ImageRejected, match=r"decompression bomb refused: 5000x5000 exceeds 1,000,000 pixels"):
        prepare(_encode(Image.new("1", (5000, 5000)), "PNG"), 10_000, max_source_pixels=1_000_000)
    # max_source_pixels is the one limit: above Pillow's own (a warning past 89 MP, an error past 179 MP), an
    # image the recipe allows is prepared, without a warning.
    big = _encode(Image.new("L", (14000, 13000), 128), "JPEG")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prep = prepare(big, 100_000, max_source_pixels=200_000_000)
    assert (prep.orig_width, prep.orig_height) == (14000, 13000) and prep.width * prep.height <= 100_000


def test_every_resample_filter_fits_the_budget_and_is_applied():
    from builders.plane.images import RESAMPLE, prepare

    src = _encode(Image.effect_noise((1024, 768), 80).convert("RGB"), "PNG")
    outs = {name: prepare(src, 682 * 512, resample=name) for name in RESAMPLE}
    for out in outs.values():
        assert out.width * out.height <= 682 * 512 and abs(out.width / out.height - 4 / 3) < 0.01
        assert out.width >= 680  # the budget is used, not just respected
    assert len({out.jpeg for out in outs.values()}) == len(RESAMPLE)  # each filter really is a different one


def test_resample_filter_is_a_recipe_setting_and_changes_the_hash(tmp_path):
    base = load_recipe(None, {"input.metadata": "m.csv"})
    lanczos = load_recipe(None, {"input.metadata": "m.csv", "image.resample": "lanczos"})
    assert base.image.resample == "box" and lanczos.sha256() != base.sha256()
    with pytest.raises(RecipeError, match=r"image\.resample"):
        load_recipe(None, {"input.metadata": "m.csv", "image.resample": "cubic"})


def test_ordered_map_keeps_order_and_bounds_work_in_flight():
    import threading

    from builders.threads import ordered_map

    started: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> int:
        with lock:
            started.append(i)
        time.sleep(0.001 * (i % 3))  # finish out of order
        return i * i

    seen = []
    for k, value in enumerate(ordered_map(work, list(range(60)), threads=3)):
        time.sleep(0.002)  # a slow consumer: the producer must wait, not run ahead
        with lock:
            assert len(started) <= k + 1 + 2 * 3  # never more than 2 x threads ahead of the consumer
        seen.append(value)
    assert seen == [i * i for i in range(60)]


def test_ordered_map_raises_an_error_in_its_place_and_leaves_no_thread():
    import threading

    from builders.threads import ordered_map

    def work(i: int) -> int:
        if i == 7:
            raise ValueError(f"bad item {i}")
        return i

    before = threading.active_count()
    got = []
    with pytest.raises(ValueError, match="bad item 7"):
        for value in ordered_map(work, range(40), threads=4):
            got.append(value)
    assert got == list(range(7)) and threading.active_count() == before  # everything before it, in order

    early = ordered_map(work, range(6), threads=4)  # a consumer that stops early
    assert next(early) == 0
    early.close()
    assert threading.active_count() == before
    assert list(ordered_map(work, [], threads=4)) == [] and threading.active_count() == before


def test_behind_runs_calls_in_order_bounded_and_raises_their_error():
    import threading

    from builders.threads import Behind

    done, gate = [], threading.Event()
    behind = Behind(depth=4)
    behind(gate.wait)
    for i in range(4):
        behind(done.append, i)
    blocked = threading.Thread(target=behind, args=(done.append, 4))
    blocked.start()
    blocked.join(0.2)
    assert blocked.is_alive() and done == []  # the caller waits once it is `depth` calls ahead
    gate.set()
    blocked.join()
    behind.close()
    assert done == [0, 1, 2, 3, 4]

    failing = Behind()
    with pytest.raises(ZeroDivisionError):  # at the call after the error, or at close: whichever comes first
        failing(done.append, 5)
        failing(lambda: 1 / 0)
        failing(done.append, 6)
        failing.close()
    with pytest.raises(ZeroDivisionError):  # the error stays: nothing after it ever runs
        failing.close()
    assert done[-1] == 5


def test_prepare_on_threads_equals_serial():
    from concurrent.futures import ThreadPoolExecutor

    from builders.plane.images import prepare

    srcs = [_encode(Image.effect_noise((300 + 10 * i, 200), 40 + i).convert("RGB"), "JPEG") for i in range(12)]
    serial = [prepare(d, 20_000).jpeg for d in srcs]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda d: prepare(d, 20_000).jpeg, srcs)) == serial


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_keeping_image_memory_changes_speed_not_bytes(tmp_path):
    """Workers tell glibc to keep freed image buffers; what they prepare stays byte for byte the same."""
    from builders.plane.images import prepare

    src = tmp_path / "src.jpg"
    src.write_bytes(_encode(Image.effect_noise((640, 480), 50).convert("RGB"), "JPEG"))
    code = (
        "import sys; from pathlib import Path; from builders.plane.images import keep_image_memory, prepare\n"
        "assert keep_image_memory() and keep_image_memory()\n"  # once per process; the second call is cached
        "sys.stdout.buffer.write(prepare(Path(sys.argv[1]).read_bytes(), 20_000).jpeg)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(src)], capture_output=True, check=True).stdout
    assert out == prepare(src.read_bytes(), 20_000).jpeg


def test_fork_server_preload_loads_the_gazetteer():
    from builders.plane.distributor import PRELOAD

    code = (
        f"import {', '.join(PRELOAD)}\n"
        "from mp16_reason.gazetteer import default_gazetteer\n"
        "assert default_gazetteer.cache_info().currsize == 1\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_atomic_path_leaves_nothing_behind_on_failure(tmp_path):
    import pyarrow as pa

    from builders.workfolder import write_atomic
    from mp16_reason.atomic import atomic_path

    target = tmp_path / "t.parquet"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash while writing")
    assert list(tmp_path.iterdir()) == []
    write_atomic(pa.table({"a": [1, 2]}), target)
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def test_tar_source_random_access_and_bad_member(tmp_path):
    from builders.sources import ArchiveReader, FetchError, tar_index

    tar_path = tmp_path / "images.tar"
    with tarfile.open(tar_path, "w") as tar:
        for name in ("a/1.jpg", "a/2.jpg", "b/3.jpg"):
            data = name.encode() * 100
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    index = {r["name"]: r for r in tar_index(tar_path).to_pylist()}
    assert set(index) == {"a/1.jpg", "a/2.jpg", "b/3.jpg"}
    src = ArchiveReader(tar_path, "tar")

    def read(name: str) -> bytes:
        return src.fetch(name, index[name]["offset"], index[name]["size"], index[name]["method"])

    assert read("b/3.jpg") == b"b/3.jpg" * 100 and read("a/1.jpg") == b"a/1.jpg" * 100
    # Truncate the archive: the index survives, the last member is unreadable.
    raw = tar_path.read_bytes()
    cut = raw.index(b"b/3.jpg" * 100) + 50
    tar_path.write_bytes(raw[:cut])
    src = ArchiveReader(tar_path, "tar")
    with pytest.raises(FetchError, match=r"unreadable tar member b/3\.jpg"):
        read("b/3.jpg")


def test_url_source_downloads_retries_and_records_dead_links(tmp_path):
    import http.server
    import threading

    from builders.sources import FetchError, HttpClient

    hits = {"flaky": 0}
    client_ports: set[int] = set()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keeps connections open unless the client closes them

        def do_GET(self):
            client_ports.add(self.client_address[1])
            if self.path == "/ok.jpg":
                body, code = b"jpegbytes", 200
            elif self.path == "/flaky.jpg":
                hits["flaky"] += 1
                body, code = (b"late", 200) if hits["flaky"] >= 3 else (b"", 503)
            elif self.path == "/moved.jpg":
                self.send_response(302)
                self.send_header("Location", "/ok.jpg")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            elif self.path == "/slow.jpg":
                time.sleep(1.0)  # past the client's timeout: no answer
                return
            elif self.path == "/hangs-up.jpg":  # answers, then drops the kept-alive connection unannounced
                body = b"jpegbytes"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True
                return
            else:
                body, code = b"", 404
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        src = HttpClient(timeout_s=2, retries=3, backoff_s=0.01)
        assert src.fetch(f"{base}/ok.jpg") == b"jpegbytes"
        assert src.fetch(f"{base}/flaky.jpg") == b"late" and hits["flaky"] == 3
        assert src.fetch(f"{base}/moved.jpg") == b"jpegbytes"  # redirects are followed
        with pytest.raises(FetchError, match=r"dead link \(HTTP 404\) after 1 attempt"):
            src.fetch(f"{base}/gone.jpg")
        assert len(client_ports) == 1  # one kept-alive connection served every request above
        # A server that closed an idle kept-alive connection costs no attempt: the request goes again on a new one.
        once = HttpClient(timeout_s=2, retries=0)
        assert once.fetch(f"{base}/hangs-up.jpg") == b"jpegbytes"
        assert once.fetch(f"{base}/ok.jpg") == b"jpegbytes" and len(client_ports) == 3
        with pytest.raises(FetchError, match=r"dead link \(timeout\) after 2 attempt"):
            HttpClient(timeout_s=0.2, retries=1, backoff_s=0.01).fetch(f"{base}/slow.jpg")
        with pytest.raises(FetchError, match=r"dead link \(cannot connect: .*\) after 2 attempt"):
            HttpClient(timeout_s=0.5, retries=1, backoff_s=0.01).fetch("http://127.0.0.1:9/none.jpg")
    finally:
        server.shutdown()


def test_streaming_ingest_matches_a_plain_reading_of_the_csv(tmp_path):
    """Row numbers, malformed-line numbers, bad coordinates, duplicates and the pre-shuffle, against what Python's
    csv module and the per-id shuffle key say."""
    import csv

    import pyarrow.parquet as pq

    from builders.build import Build
    from builders.plane.split import shuffle_key
    from builders.recipe import load_recipe

    lines = ["IMG_ID,LAT,LON,url,city"]
    for i in range(3000):
        lat = "bad" if i == 1700 else f"{(i % 170) - 85}.5"
        if i % 997 == 5:
            lines.append(f"m{i},1.0")  # malformed: two fields
        else:
            lines.append(
                f"{'dup' if i in (10, 2500) else f'id{i}'},{lat},{(i % 350) - 175},http://x/{i}.jpg, City{i % 7} "
            )
    (tmp_path / "meta.csv").write_text("\n".join(lines) + "\n")
    recipe = load_recipe(
        None, {"input.metadata": str(tmp_path / "meta.csv"), "out": str(tmp_path / "out"), "unit_size": 128}
    )
    b = Build(recipe, progress=False)
    b._check_out_dir(False)
    n = b._ingest()
    work = Path(str(b.work))
    with open(tmp_path / "meta.csv", newline="") as fh:
        records = list(csv.reader(fh))[1:]
    expected_bad = {
        i: f"malformed CSV line {i + 2}: 2 fields, header has 5" for i, r in enumerate(records) if len(r) != 5
    }
    expected_bad[1700] = "latitude 'bad' is not a number; give decimal degrees such as 48.8566"
    expected_bad[2500] = "duplicate id (first seen at row 10)"
    rejected = pq.read_table(work / "ingest-rejected.parquet").to_pylist()
    assert {r["row"]: r["reason"] for r in rejected} == expected_bad
    assert [r["row"] for r in rejected] == sorted(expected_bad)
    good = [(i, r) for i, r in enumerate(records) if i not in expected_bad]
    table = pq.read_table(work / "ingest.parquet")
    assert n == len(good) and pq.ParquetFile(work / "ingest.parquet").metadata.num_row_groups == -(-n // 128)
    order = sorted(good, key=lambda g: (shuffle_key(g[1][0], recipe.shards.seed), g[0]))
    assert table.column("row").to_pylist() == [i for i, _ in order]
    assert table.column("id").to_pylist() == [r[0] for _, r in order]
    assert table.column("label_city").to_pylist() == [r[4].strip() for _, r in order]
    assert table.column("lat").to_pylist() == [float(r[1]) for _, r in order]
    assert int(table.schema.metadata[b"n_input"]) == 3000


def _exif(tags: dict) -> bytes:
    exif = Image.Exif()
    for tag, value in tags.items():
        exif[tag] = value
    return exif.tobytes()


def _jpeg(size=(320, 240), mode="RGB", exif=None, **save) -> bytes:
    img = Image.new(mode, size, 120 if mode == "L" else (200, 40, 40, 10)[: len(mode)])
    ImageDraw.Draw(img).rectangle([10, 10, 90, 60], fill=30 if mode == "L" else (10, 200, 30, 0)[: len(mode)])
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85, **({"exif": exif} if exif else {}), **save)
    return buf.getvalue()


def test_a_jpeg_that_fits_keeps_its_image_data_and_loses_its_metadata():
    from builders.plane.images import prepare, strip_metadata

    with_gps = _jpeg(exif=_exif({0x8825: {2: (48.0, 51.0, 29.0), 1: "N"}, 0x010F: "Camera maker"}))  # GPS
    assert b"Exif" in with_gps
    got = prepare(with_gps, max_pixels=320 * 240)
    assert not got.reencoded and (got.width, got.height) == (320, 240)
    assert got.jpeg == strip_metadata(with_gps) and b"Exif" not in got.jpeg
    assert got.jpeg[got.jpeg.index(b"\xff\xda") :] == with_gps[with_gps.index(b"\xff\xda") :]  # scan data as is
    assert got.sha256 == hashlib.sha256(with_gps).hexdigest()  # of the original bytes
    plain = _jpeg()
    assert prepare(plain, 320 * 240).jpeg == plain  # nothing to strip: the very bytes
    for data in (_jpeg(mode="L"), _jpeg(progressive=True)):
        assert not prepare(data, 320 * 240).reencoded  # greyscale and progressive are served as they are


_SEGMENTS = st.lists(
    st.tuples(
        st.sampled_from([0xE0, 0xE1, 0xE2, 0xE3, 0xED, 0xEE, 0xEF, 0xFE, 0xDB, 0xC0, 0xC4]),
        st.one_of(st.binary(max_size=40), st.just(b"ICC_PROFILE\x00" + b"icc"), st.just(b"ICC_PRO")),
        st.booleans(),  # a fill byte before the marker
    ),
    max_size=8,
)


@given(_SEGMENTS, st.binary(max_size=300))
def test_metadata_segments_go_and_every_other_byte_stays(segments, scan):
    """Against a JPEG built from its segments: the output is SOI, each segment that is not metadata (EXIF, XMP,
    IPTC, comments; an APP2 ICC profile and APP14 stay) byte for byte and in order, then the scan as it was;
    the very input object when nothing goes."""
    from builders.plane.images import strip_metadata

    def segment(marker: int, payload: bytes) -> bytes:
        return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload

    def metadata(marker: int, payload: bytes) -> bool:
        if marker == 0xE2:
            return not payload.startswith(b"ICC_PROFILE\x00")
        return marker == 0xFE or (0xE1 <= marker <= 0xEF and marker != 0xEE)

    sos = segment(0xDA, b"\x01\x01\x00") + scan
    jpeg = b"\xff\xd8" + b"".join(b"\xff" * fill + segment(m, p) for m, p, fill in segments) + sos
    kept = [(m, p) for m, p, _ in segments if not metadata(m, p)]
    got = strip_metadata(jpeg)
    if len(kept) == len(segments):
        assert got is jpeg
    else:
        assert got == b"\xff\xd8" + b"".join(segment(m, p) for m, p in kept) + sos


@pytest.mark.parametrize(
    ("case", "data", "budget", "kw"),
    [
        ("over the budget", _jpeg((640, 480)), 320 * 240, {}),
        ("EXIF orientation", _jpeg(exif=_exif({0x0112: 6})), 320 * 240, {}),
        ("CMYK", _jpeg(mode="CMYK"), 320 * 240, {}),
        ("PNG", None, 320 * 240, {}),
        ("forced", _jpeg(), 320 * 240, {"reencode": "always"}),
    ],
)
def test_other_images_are_encoded_again(case, data, budget, kw):
    from builders.plane.images import prepare

    if data is None:
        buf = io.BytesIO()
        Image.new("RGB", (320, 240), "blue").save(buf, "PNG")
        data = buf.getvalue()
    got = prepare(data, budget, **kw)
    assert got.reencoded and Image.open(io.BytesIO(got.jpeg)).mode == "RGB"


def test_a_truncated_jpeg_that_fits_is_rejected():
    from builders.plane.images import ImageRejected, prepare

    data = _jpeg((320, 240))
    with pytest.raises(ImageRejected, match="corrupt or truncated"):
        prepare(data[: len(data) * 2 // 3], 320 * 240)


def test_unit_files_are_written_a_batch_at_a_time(tmp_path):
    import pyarrow as pa

    from builders.workfolder import UnitWriter, read_unit

    path = tmp_path / "unit-000000.arrow"
    rows = [
        (i, f"id{i}", "ok", "", "", "train", "sha", b"jpg" * i, b"{}", 1024, f"id{i}", "", b"", b"") for i in range(10)
    ]
    with UnitWriter(path, batch_rows=4) as sink:
        for row in rows:
            sink.add(row)
        assert not path.exists()  # committed on exit only
    with pa.memory_map(str(path)) as source:
        assert pa.ipc.open_file(source).num_record_batches == 3  # 4 + 4 + 2 rows, written as they came
    assert read_unit(path).to_pylist()[9]["jpg"] == b"jpg" * 9 and (sink.ok, sink.total) == (10, 10)
    with pytest.raises(RuntimeError), UnitWriter(tmp_path / "unit-000001.arrow") as sink:
        sink.add(rows[0])
        raise RuntimeError("killed mid-unit")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unit-000000.arrow"]  # nothing half-written


def test_a_unit_file_is_handed_to_the_disk_a_batch_at_a_time(tmp_path, monkeypatch):
    """Each batch written starts the writeback of the file being written, so that the commit's fsync, which
    the worker waits for, has only the last batch left to write."""
    import os

    import builders.workfolder as workfolder

    seen = []
    monkeypatch.setattr(workfolder, "start_writeback", lambda fd: seen.append(os.fstat(fd)))
    path = tmp_path / "unit-000000.arrow"
    rows = [(i, f"id{i}", "ok", "", "", "train", "sha", b"j" * 5000, b"{}", 1024, "", "", b"", b"") for i in range(10)]
    with workfolder.UnitWriter(path, batch_rows=4) as sink:
        for row in rows:
            sink.add(row)
    assert len(seen) == 3  # 4 + 4 + 2 rows
    assert {s.st_ino for s in seen} == {path.stat().st_ino}  # the temporary that became the unit
    assert seen[0].st_size >= 4 * 5000 and seen[0].st_size < seen[1].st_size < seen[2].st_size <= path.stat().st_size


@given(
    st.lists(st.lists(st.one_of(st.none(), st.binary(max_size=40)), max_size=12), max_size=5),
    st.integers(0, 6),
    st.integers(0, 6),
)
def test_binary_views_are_pyarrows_own_values(chunks, start, stop):
    """The unit reader's views against pyarrow's value a row, over chunks, nulls, empty values and a sliced
    column (whose chunks start inside their buffers)."""
    import pyarrow as pa

    from builders.workfolder import binary_views

    column = pa.chunked_array([pa.array(c, pa.binary()) for c in chunks], pa.binary())
    column = column.slice(min(start, len(column)), stop * 3)
    expected = [b"" if v is None else v for v in column.to_pylist()]
    assert [bytes(v) for v in binary_views(column)] == expected
