"""The build's data plane, end to end on the offline sample and on hand-made bad inputs."""

import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
import webdataset as wds
from click.testing import CliRunner
from helpers import sample_recipe
from hub_servers import free_port
from PIL import Image, ImageDraw

from builders.cli import main
from builders.plane.pipeline import BuildError, build, sample_key
from builders.recipe import RecipeError, load_recipe
from builders.sample.scenes import near_copies, write_sample
from mp16_reason import schema

SAMPLE_N = 60


@pytest.fixture(scope="session")
def sample_input(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample-input")
    write_sample(root, SAMPLE_N)
    return root


def shard_digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "data").glob("*.tar"))}


@pytest.fixture(scope="session")
def reference(sample_input, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    summary = build(sample_recipe(sample_input, out), progress=False)
    return out, summary


def test_sample_build_reconciles(reference):
    out, summary = reference
    manifest = json.loads((out / "manifest.json").read_text())
    rejected = pd.read_parquet(out / "rejections.parquet")
    t = manifest["totals"]
    assert t["input_rows"] == SAMPLE_N + len(near_copies(SAMPLE_N)) + 9 == summary.input_rows
    assert t["input_rows"] == t["written"] + t["rejected"]
    assert len(rejected) == t["rejected"] == 9
    reasons = dict(zip(rejected["id"], rejected["stage"] + ": " + rejected["reason"]))
    assert reasons["bad/corrupt.jpg"].startswith("image: corrupt")
    assert reasons["bad/truncated.jpg"].startswith("image: corrupt or truncated")
    assert reasons["bad/empty.jpg"] == "image: zero-byte file"
    assert reasons["bad/missing.jpg"] == "fetch: missing file missing.jpg"
    assert reasons["bad/duplicate-image.jpg"].startswith("dedup: exact duplicate image of id 'sample/00000.jpg'")
    assert reasons["bad/latitude.jpg"].startswith("ingest: latitude 123.4 is outside")
    assert reasons["bad/open-sea.jpg"].startswith("geocode: no populated place")
    assert reasons["bad/malformed.jpg"].startswith("ingest: malformed CSV line")
    assert rejected["stage"].value_counts()["ingest"] == 3  # malformed line, bad latitude, duplicate id
    assert "sample/00001.jpg" in set(rejected["id"])  # its second occurrence


def test_manifest_matches_shards(reference):
    out, _ = reference
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["shards"]) >= 3
    for entry in manifest["shards"]:
        path = out / entry["path"]
        assert entry["path"].startswith(f"data/{entry['split']}-") and entry["path"].endswith(".tar")
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
        assert path.stat().st_size == entry["bytes"] <= 150_000
        with tarfile.open(path) as tar:
            names = tar.getnames()
        assert len(names) == 2 * entry["samples"]
    assert manifest["recipe_sha256"] and manifest["versions"]["webdataset"]


def test_shards_load_with_webdataset_and_datasets(reference, tmp_path):
    import datasets

    out, summary = reference
    urls = sorted(str(p) for p in (out / "data").glob("train-*.tar"))
    rows = list(wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("__key__", "jpg", "json"))
    assert len(rows) == summary.splits["train"]
    for key, img, rec in rows:
        assert "." not in key and key == sample_key(rec["id"])
        sample = schema.validate(rec)
        assert sample.split == "train" and sample.country and sample.image.sha256
        assert img.size == (sample.image.width, sample.image.height)
        assert img.width * img.height <= 160 * 120
        again = rec["id"].endswith("-again.jpg")  # the near copies are 3/4 the size
        assert (sample.image.orig_width, sample.image.orig_height) == ((480, 360) if again else (640, 480))
    ds = datasets.load_dataset(
        "webdataset", data_files={"train": urls}, split="train", features=schema.features(), cache_dir=str(tmp_path)
    )
    assert len(ds) == len(rows) and ds[0]["json"]["id"] == rows[0][2]["id"]


def test_hold_out_cities_keeps_test_places_out_of_train(sample_input, tmp_path):
    build(
        sample_recipe(sample_input, tmp_path, **{"split.hold_out_cities": True, "split.test_fraction": 0.3}),
        progress=False,
    )
    recs = [
        json.loads(s["json"])
        for s in wds.WebDataset(str(tmp_path / "data" / "{train,test}-000000.tar"), shardshuffle=False)
    ]
    cities = {
        split: {(r["country_code"], r["city"]) for r in recs if r["split"] == split} for split in ("train", "test")
    }
    assert cities["test"] and cities["train"] and not cities["test"] & cities["train"]


def test_second_run_does_nothing(sample_input, reference):
    out, _ = reference
    before = shard_digests(out)
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "data").glob("*.tar")}
    logs = []
    summary = build(sample_recipe(sample_input, out, workers=2), progress=False, log=logs.append)
    assert not summary.did_work and "nothing to do" in logs[0]
    assert shard_digests(out) == before
    assert {p: p.stat().st_mtime_ns for p in (out / "data").glob("*.tar")} == mtimes


def test_other_recipe_in_same_out_is_refused(sample_input, reference):
    out, _ = reference
    with pytest.raises(BuildError, match="different recipe"):
        build(sample_recipe(sample_input, out, **{"image.jpeg_quality": 70}), progress=False)


def test_output_does_not_depend_on_workers(sample_input, reference, tmp_path):
    build(sample_recipe(sample_input, tmp_path, workers=2), progress=False)
    assert shard_digests(tmp_path) == shard_digests(reference[0])


@pytest.mark.parametrize(
    "kill_when",
    [
        ".work/recipe.json",
        ".work/ingest.parquet",
        ".work/units/unit-000000.arrow",
        ".work/units/unit-000002.arrow",
        "data/train-000000.tar",  # shards are written while later units are still prepared
    ],
)
@pytest.mark.slow
def test_sigkill_then_resume_is_byte_identical(sample_input, reference, tmp_path, kill_when):
    """SIGKILL the CLI as soon as it reaches a given point, then rerun: nothing lost, nothing duplicated."""
    cmd = [
        sys.executable,
        "-m",
        "builders.cli",
        "build",
        "--metadata",
        str(sample_input / "metadata.csv"),
        "--images",
        str(sample_input / "images"),
        "--out",
        str(tmp_path),
        "--unit-size",
        "16",
        "--shard-bytes",
        "150000",
        "--workers",
        "1",
        "--max-pixels",
        str(160 * 120),
        "--test-fraction",
        "0.25",
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (tmp_path / kill_when).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / kill_when).exists() and not (tmp_path / "manifest.json").exists()  # really cut short
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert shard_digests(tmp_path) == shard_digests(reference[0])
    assert not list((tmp_path / "data").glob(".*")) and not list((tmp_path / ".work/units").glob(".*"))  # no leftovers
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["totals"] == json.loads((reference[0] / "manifest.json").read_text())["totals"]


def test_kill_during_shard_writing_resumes(sample_input, reference, tmp_path):
    """Leave a half-written shard and a missing one behind, as a crash in the shard stage would."""
    build(sample_recipe(sample_input, tmp_path), progress=False)
    shards = sorted((tmp_path / "data").glob("*.tar"))
    half = shards[0].read_bytes()[:5000]
    shards[0].unlink()
    shards[1].unlink()
    (tmp_path / "data" / f".{shards[0].name}.tmp").write_bytes(half)
    (tmp_path / "manifest.json").unlink()
    build(sample_recipe(sample_input, tmp_path), progress=False)
    assert shard_digests(tmp_path) == shard_digests(reference[0])


def test_shard_process_failure_is_reported_and_resumable(sample_input, reference, tmp_path):
    build(sample_recipe(sample_input, tmp_path), progress=False)
    unit = tmp_path / ".work" / "units" / "unit-000001.arrow"
    good = unit.read_bytes()
    for shard in (tmp_path / "data").glob("*.tar"):
        shard.unlink()
    (tmp_path / "manifest.json").unlink()
    unit.write_bytes(b"not an arrow file")
    with pytest.raises(
        BuildError,
        match=r"writing shards failed at unit 1 \(\.work/units/unit-000001\.arrow\): "
        r"ArrowInvalid: .*delete that unit's files",
    ):
        build(sample_recipe(sample_input, tmp_path), progress=False)
    assert not (tmp_path / "manifest.json").exists()
    unit.write_bytes(good)
    build(sample_recipe(sample_input, tmp_path), progress=False)
    assert shard_digests(tmp_path) == shard_digests(reference[0])
    assert not list((tmp_path / "data").glob(".*"))


@pytest.mark.parametrize("build_dir", ["reference", "sample_build"])  # without and with teachers
@pytest.mark.slow
def test_fold_over_a_finished_build_reproduces_its_manifest(build_dir, request):
    """Shards already on disk are kept, their entries recomputed; every input row is counted once."""
    from builders.plane.shards import ShardFold

    out = request.getfixturevalue(build_dir)
    out = out[0] if isinstance(out, tuple) else out
    manifest = json.loads((out / "manifest.json").read_text())
    before = shard_digests(out)
    spec = manifest["recipe"]["shards"]
    fold = ShardFold(out, out / ".work", spec["max_bytes"], "teachers" in manifest, spec["multiple_of"])
    n_units = len(list((out / ".work" / "units").glob("unit-*.arrow")))
    rows = sum(fold.add(unit) for unit in range(n_units))
    entries = fold.finish()
    rejected = pd.read_parquet(out / ".work" / "fold-rejected.parquet")
    at_ingest = len(pd.read_parquet(out / ".work" / "ingest-rejected.parquet"))
    assert rows == manifest["totals"]["input_rows"] - at_ingest
    assert entries == manifest["shards"]
    assert len(rejected) + manifest["totals"]["written"] == rows
    assert shard_digests(out) == before


def test_shard_process_exits_when_the_build_is_killed(sample_input, tmp_path):
    """The shard process must not outlive a killed build: it could otherwise still be writing beside a rerun."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from builders.plane.shards import ShardProcess\n"
        "if __name__ == '__main__':\n"
        "    p = ShardProcess(Path(sys.argv[1]), Path(sys.argv[1]) / '.work', 150_000, 24, curated=False)\n"
        "    print(p._proc.pid, flush=True)\n"
        "    time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    assert _running(child)
    proc.kill()
    proc.wait()
    proc.stdout.close()
    deadline = time.monotonic() + 30
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(child)


def test_killed_build_leaves_no_worker_processes(sample_input, tmp_path):
    """Pool workers, fork server and shard process all end with a SIGKILLed build (nothing left holding memory)."""
    cmd = [
        sys.executable,
        "-m",
        "builders.cli",
        "build",
        "--metadata",
        str(sample_input / "metadata.csv"),
        "--images",
        str(sample_input / "images"),
        "--out",
        str(tmp_path),
        "--unit-size",
        "8",
        "--workers",
        "2",
        "--max-pixels",
        str(160 * 120),
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (tmp_path / ".work/units/unit-000002.arrow").exists() and time.monotonic() < deadline:
        time.sleep(0.002)
    started = _descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(started) >= 4  # fork server, two workers, shard process (and the resource tracker)
    deadline = time.monotonic() + 30
    while any(map(_running, started)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in started if _running(pid)]


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], list(children.get(root, []))
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped (Linux /proc)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_parquet_metadata_builds_the_same_images(sample_input, reference, tmp_path):
    table = pd.read_csv(sample_input / "metadata.csv", dtype=str, keep_default_na=False)
    table[table["image"] != ""].to_parquet(tmp_path / "metadata.parquet")  # without the malformed line
    recipe = sample_recipe(sample_input, tmp_path / "out", **{"input.metadata": str(tmp_path / "metadata.parquet")})
    summary = build(recipe, progress=False)
    assert summary.written == reference[1].written and summary.rejected == reference[1].rejected - 1  # no bad line
    keys = sorted(
        s["__key__"]
        for s in wds.WebDataset(sorted(map(str, (tmp_path / "out" / "data").glob("*.tar"))), shardshuffle=False)
    )
    ref = sorted(
        s["__key__"]
        for s in wds.WebDataset(sorted(map(str, (reference[0] / "data").glob("*.tar"))), shardshuffle=False)
    )
    assert keys == ref


@pytest.mark.slow
def test_ray_distributor_gives_identical_shards(sample_input, reference, tmp_path):
    pytest.importorskip("ray")
    import ray

    try:
        build(sample_recipe(sample_input, tmp_path, distributor="ray", workers=2), progress=False)
    finally:
        ray.shutdown()
    assert shard_digests(tmp_path) == shard_digests(reference[0])


def _ray_status_ok(exe: Path, env: dict) -> bool:
    try:  # a recorded cluster that is gone can keep `ray status` waiting
        return subprocess.run([str(exe), "status"], env=env, capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.mark.slow
def test_ray_distributor_starts_its_own_instance_beside_a_ray_start_cluster(sample_input, reference, tmp_path):
    """``ray start`` records its cluster on the machine, and a bare ``ray.init()`` joins it (a dead one too, after
    a crash). Without RAY_ADDRESS the build must start its own instance of ``workers`` CPUs instead."""
    pytest.importorskip("ray")
    import ray

    exe = Path(sys.executable).with_name("ray")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    head = subprocess.Popen(
        [
            str(exe),
            "start",
            "--head",
            "--port",
            str(free_port()),
            "--num-cpus",
            "1",
            "--include-dashboard",
            "false",
            "--block",
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not _ray_status_ok(exe, env):
            assert head.poll() is None and time.monotonic() < deadline, "ray start did not come up"
            time.sleep(1)
        seen = {}
        with pytest.MonkeyPatch.context() as mp:
            mp.delenv("RAY_ADDRESS", raising=False)
            try:
                build(sample_recipe(sample_input, tmp_path, distributor="ray", workers=2), progress=False)
                seen = ray.cluster_resources()
            finally:
                ray.shutdown()
        assert seen.get("CPU") == 2  # its own instance, not the 1-CPU cluster
        assert shard_digests(tmp_path) == shard_digests(reference[0])
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops what it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)


@pytest.mark.slow
def test_cli_sample_build_and_rerun(tmp_path):
    out = tmp_path / "sb"
    res = CliRunner().invoke(main, ["build", "--sample", "--sample-size", "20", "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    # 9 bad rows (data plane) and 5 scenes whose authored replies exercise each curation filter.
    assert "29 input rows = 15 written" in res.output and "+ 14 rejected" in res.output
    for stage in ("agreement 1", "grounding 1", "ground-truth 1", "localizability 1", "teacher 1"):
        assert stage in res.output
    assert "0 sent (0 retries, 0 failed) + 21 cached" in res.output  # offline: every reply is an authored one
    res = CliRunner().invoke(main, ["build", "--sample", "--sample-size", "20", "--out", str(out), "--quiet"])
    assert res.exit_code == 0 and "nothing to do" in res.output


def test_recipe_errors_are_clear(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("input: {metadata: m.csv}\nimage: {jpeg_qualty: 80}\n")
    with pytest.raises(RecipeError, match=r"image\.jpeg_qualty"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    csv = tmp_path / "m.csv"
    csv.write_text("photo,latitude_deg,lng\na,1,2\n")
    res = CliRunner().invoke(
        main, ["build", "--metadata", str(csv), "--images", str(tmp_path), "--out", str(tmp_path / "o"), "--quiet"]
    )
    assert res.exit_code != 0 and "no column for id, lat" in res.output and "input.columns" in res.output


# -- images and sources ---------------------------------------------------------------------------------
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

    from builders.plane.workfolder import write_atomic
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


def test_build_from_tar(sample_input, reference, tmp_path):
    tar_path = tmp_path / "images.tar"
    with tarfile.open(tar_path, "w") as tar:
        for p in sorted((sample_input / "images").iterdir()):
            tar.add(p, arcname=p.name)
    build(sample_recipe(sample_input, tmp_path / "out", **{"input.images": str(tar_path)}), progress=False)

    def images(out):  # records differ only in the recipe hash (another images path)
        return [
            (s["__key__"], s["jpg"])
            for s in wds.WebDataset(sorted(map(str, (out / "data").glob("*.tar"))), shardshuffle=False)
        ]

    assert images(tmp_path / "out") == images(reference[0])


def test_url_source_downloads_retries_and_records_dead_links(tmp_path):
    import http.server
    import threading

    from builders.sources import FetchError, UrlSource

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
        src = UrlSource(timeout_s=2, retries=3, backoff_s=0.01)
        assert src.fetch(f"{base}/ok.jpg") == b"jpegbytes"
        assert src.fetch(f"{base}/flaky.jpg") == b"late" and hits["flaky"] == 3
        assert src.fetch(f"{base}/moved.jpg") == b"jpegbytes"  # redirects are followed
        with pytest.raises(FetchError, match=r"dead link \(HTTP 404\) after 1 attempt"):
            src.fetch(f"{base}/gone.jpg")
        assert len(client_ports) == 1  # one kept-alive connection served every request above
        # A server that closed an idle kept-alive connection costs no attempt: the request goes again on a new one.
        once = UrlSource(timeout_s=2, retries=0)
        assert once.fetch(f"{base}/hangs-up.jpg") == b"jpegbytes"
        assert once.fetch(f"{base}/ok.jpg") == b"jpegbytes" and len(client_ports) == 3
        with pytest.raises(FetchError, match=r"dead link \(timeout\) after 2 attempt"):
            UrlSource(timeout_s=0.2, retries=1, backoff_s=0.01).fetch(f"{base}/slow.jpg")
        with pytest.raises(FetchError, match=r"dead link \(cannot connect: .*\) after 2 attempt"):
            UrlSource(timeout_s=0.5, retries=1, backoff_s=0.01).fetch("http://127.0.0.1:9/none.jpg")
    finally:
        server.shutdown()


def test_streaming_ingest_matches_a_plain_reading_of_the_csv(tmp_path):
    """Row numbers, malformed-line numbers, bad coordinates, duplicates and the pre-shuffle, against what Python's
    csv module and the per-id shuffle key say."""
    import csv

    import pyarrow.parquet as pq

    from builders.plane.pipeline import Build
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

    from builders.plane.workfolder import UnitWriter, read_unit

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


def test_the_same_inputs_elsewhere_build_identical_shards(sample_input, reference, tmp_path):
    """The recipe hash names inputs by content: a moved input folder and another --out change nothing."""
    import shutil

    moved = tmp_path / "elsewhere" / "input"
    shutil.copytree(sample_input, moved)
    build(sample_recipe(moved, tmp_path / "other-out"), progress=False)
    assert shard_digests(tmp_path / "other-out") == shard_digests(reference[0])
    here, there = (json.loads((p / "manifest.json").read_text()) for p in (reference[0], tmp_path / "other-out"))
    assert here["recipe_sha256"] == there["recipe_sha256"] and here["recipe"] == there["recipe"]
    assert there["inputs"]["metadata"]["location"] == "metadata.csv"  # no local path is published
    assert there["inputs"]["metadata"]["sha256"] == hashlib.sha256((moved / "metadata.csv").read_bytes()).hexdigest()
    assert there["inputs"]["images"][0]["kind"] == "folder" and there["inputs"]["images"][0]["files"] > 0
    assert str(sample_input) not in json.dumps(there["recipe"])  # no location in what the hash covers
    # A changed byte is another input: another hash.
    (moved / "metadata.csv").write_text((moved / "metadata.csv").read_text() + "\n")
    from builders.plane.pipeline import Build

    assert Build(sample_recipe(moved, tmp_path / "third")).sha != here["recipe_sha256"]


def test_two_sample_builds_into_different_folders_are_identical(sample_build, tmp_path):
    from click.testing import CliRunner

    from builders.cli import main

    out = tmp_path / "second-sample"
    result = CliRunner().invoke(main, ["build", "--sample", "--sample-size", "48", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    digests = {p: shard_digests(p) for p in (sample_build, out)}
    assert digests[sample_build] == digests[out] and digests[out]
