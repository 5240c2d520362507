"""The build's data plane, end to end on the offline sample and on hand-made bad inputs."""

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pandas as pd
import pytest
import webdataset as wds
from click.testing import CliRunner
from helpers import sample_recipe
from hub_servers import free_port

from builders.build import BuildError, build, sample_key
from builders.cli import main
from builders.recipe import RecipeError, load_recipe
from builders.sample.scenes import near_copies, write_sample
from mp16_reason import schema

SAMPLE_N = 60


@pytest.fixture(scope="session")
def sample_input_60(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample-input")
    write_sample(root, SAMPLE_N)
    return root


def shard_digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "data").glob("*.tar"))}


@pytest.fixture(scope="session")
def reference(sample_input_60, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    summary = build(sample_recipe(sample_input_60, out), progress=False)
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


def test_hold_out_cities_keeps_test_places_out_of_train(sample_input_60, tmp_path):
    build(
        sample_recipe(sample_input_60, tmp_path, **{"split.hold_out_cities": True, "split.test_fraction": 0.3}),
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


def test_second_run_does_nothing(sample_input_60, reference):
    out, _ = reference
    before = shard_digests(out)
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "data").glob("*.tar")}
    logs = []
    summary = build(sample_recipe(sample_input_60, out, workers=2), progress=False, log=logs.append)
    assert not summary.did_work and "nothing to do" in logs[0]
    assert shard_digests(out) == before
    assert {p: p.stat().st_mtime_ns for p in (out / "data").glob("*.tar")} == mtimes


def test_other_recipe_in_same_out_is_refused(sample_input_60, reference):
    out, _ = reference
    with pytest.raises(BuildError, match="different recipe"):
        build(sample_recipe(sample_input_60, out, **{"image.jpeg_quality": 70}), progress=False)


def test_output_does_not_depend_on_workers(sample_input_60, reference, tmp_path):
    build(sample_recipe(sample_input_60, tmp_path, workers=2), progress=False)
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
def test_sigkill_then_resume_is_byte_identical(sample_input_60, reference, tmp_path, kill_when):
    """SIGKILL the CLI as soon as it reaches a given point, then rerun: nothing lost, nothing duplicated."""
    cmd = [
        sys.executable,
        "-m",
        "builders.cli",
        "build",
        "--metadata",
        str(sample_input_60 / "metadata.csv"),
        "--images",
        str(sample_input_60 / "images"),
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


def test_kill_during_shard_writing_resumes(sample_input_60, reference, tmp_path):
    """Leave a half-written shard and a missing one behind, as a crash in the shard stage would."""
    build(sample_recipe(sample_input_60, tmp_path), progress=False)
    shards = sorted((tmp_path / "data").glob("*.tar"))
    half = shards[0].read_bytes()[:5000]
    shards[0].unlink()
    shards[1].unlink()
    (tmp_path / "data" / f".{shards[0].name}.tmp").write_bytes(half)
    (tmp_path / "manifest.json").unlink()
    build(sample_recipe(sample_input_60, tmp_path), progress=False)
    assert shard_digests(tmp_path) == shard_digests(reference[0])


def test_shard_process_failure_is_reported_and_resumable(sample_input_60, reference, tmp_path):
    build(sample_recipe(sample_input_60, tmp_path), progress=False)
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
        build(sample_recipe(sample_input_60, tmp_path), progress=False)
    assert not (tmp_path / "manifest.json").exists()
    unit.write_bytes(good)
    build(sample_recipe(sample_input_60, tmp_path), progress=False)
    assert shard_digests(tmp_path) == shard_digests(reference[0])
    assert not list((tmp_path / "data").glob(".*"))


@pytest.mark.parametrize("build_dir", ["reference", "sample_build"])  # without and with teachers
@pytest.mark.slow
def test_fold_over_a_finished_build_reproduces_its_manifest(build_dir, request):
    """Shards already on disk are kept, their entries recomputed; every input row is counted once."""
    out = request.getfixturevalue(build_dir)
    out = out[0] if isinstance(out, tuple) else out
    before = shard_digests(out)
    fold, manifest, rows = _folded(out)
    entries = fold.finish()
    rejected = pd.read_parquet(out / ".work" / "fold-rejected.parquet")
    at_ingest = len(pd.read_parquet(out / ".work" / "ingest-rejected.parquet"))
    assert rows == manifest["totals"]["input_rows"] - at_ingest
    assert entries == manifest["shards"]
    assert len(rejected) + manifest["totals"]["written"] == rows
    assert shard_digests(out) == before


def _folded(out: Path, built: Path | None = None):
    """A shard fold into ``out`` over its units, made by the recipe of the finished build ``built`` (``out``
    itself by default), every unit taken in: the fold, that build's manifest and the rows folded."""
    from builders.plane.shards import ShardFold

    manifest = json.loads(((built or out) / "manifest.json").read_text())
    spec = manifest["recipe"]["shards"]
    fold = ShardFold(out, out / ".work", spec["max_bytes"], "teachers" in manifest, spec["multiple_of"])
    n_units = len(list((out / ".work" / "units").glob("unit-*.arrow")))
    return fold, manifest, sum(fold.add(unit) for unit in range(n_units))


def _fold_copy(built: Path, out: Path):
    """A fold over a copy of ``built``'s units, into ``out``, which holds no shard yet."""
    import shutil

    shutil.copytree(built / ".work", out / ".work")
    fold, manifest, _ = _folded(out, built)
    return fold, manifest


@pytest.mark.parametrize("parts", [2, 3])
def test_shards_written_by_several_processes_are_one_process_shards(reference, tmp_path, monkeypatch, parts):
    """The forks that share the writing change no byte: shards, entries, hashes and rejections are those of one
    process writing them all, each fork wrote the shards of its part (their number modulo ``parts``) and no
    other, and the progress told adds up to every sample, each once."""
    from builders.plane import shards

    forked, gather = [], shards._results

    def results_seen(helpers, progress):
        entries = gather(helpers, progress)
        forked.extend([e["path"] for e in helper.entries] for helper in helpers)
        return entries

    monkeypatch.setattr(shards, "_results", results_seen)
    built = reference[0]
    results = {}
    for n in (1, parts):
        out = tmp_path / f"parts-{n}"
        fold, manifest = _fold_copy(built, out)
        told: list[int] = []
        entries = fold.finish(told.append, parts=n)
        assert sum(told) == manifest["totals"]["written"]
        results[n] = (
            entries,
            shard_digests(out),
            pd.read_parquet(out / "hashes.parquet"),
            pd.read_parquet(out / ".work" / "fold-rejected.parquet"),
        )

    def number(path: str) -> int:
        return int(path.rsplit("-", 1)[1].removesuffix(".tar"))

    assert len(forked) == parts - 1
    for part, paths in enumerate(forked, start=1):
        assert paths and {number(p) % parts for p in paths} == {part}
    not_first = [e["path"] for e in results[1][0] if number(e["path"]) % parts]
    assert sorted(p for paths in forked for p in paths) == sorted(not_first)  # the forks wrote those, no more
    assert results[parts][0] == results[1][0] == manifest["shards"]
    assert results[parts][1] == results[1][1] == shard_digests(built)
    pd.testing.assert_frame_equal(results[parts][2], results[1][2])
    pd.testing.assert_frame_equal(results[parts][3], results[1][3])


@pytest.mark.parametrize(("workers", "cores", "writers"), [(1, 8, 2), (2, 1, 2), (3, 8, 3), (6, 4, 4), (64, 16, 16)])
def test_shard_writers_follow_the_build_workers_within_the_cores(monkeypatch, workers, cores, writers):
    """One writer a worker, as far as the cores go, at least two, and never more than the shards."""
    from builders.plane import shards

    monkeypatch.setattr(shards, "local_cores", lambda: cores)
    assert shards.shard_writers(1000, workers) == writers
    assert shards.shard_writers(3, workers) == min(3, writers)
    assert shards.shard_writers(1, workers) == 1


def test_the_fold_writes_the_hashes_as_it_goes_and_commits_them_only_when_done(reference, tmp_path, monkeypatch):
    """hashes.parquet is written a row group at a time during the pass (4 samples here), so the fold holds a row
    group's hashes, not a build's; its rows are the build's own, in order. A pass that fails leaves neither the
    file nor its temporary."""
    import pyarrow.parquet as pq

    from builders.plane import shards

    built = reference[0]
    monkeypatch.setattr(shards, "HASH_ROWS", 4)
    units, flushes = [], []
    write_unit, flush = shards.ShardFold._write_unit, shards.HashesWriter._flush

    def counted(self, unit, *args):
        units.append(unit)
        return write_unit(self, unit, *args)

    def flush_seen(self):
        flushes.append(len(units))
        return flush(self)

    monkeypatch.setattr(shards.ShardFold, "_write_unit", counted)
    monkeypatch.setattr(shards.HashesWriter, "_flush", flush_seen)
    fold, manifest = _fold_copy(built, tmp_path / "small-groups")
    fold.finish(parts=1)
    assert len(units) > 2 and flushes[0] < len(units)  # the first row group went before the last unit
    written = pq.ParquetFile(tmp_path / "small-groups" / "hashes.parquet")
    assert written.metadata.num_rows == manifest["totals"]["written"]
    assert written.read().to_pandas().equals(pd.read_parquet(built / "hashes.parquet"))

    monkeypatch.setattr(shards.HashesWriter, "_flush", flush)
    units.clear()

    def fails_at_the_third(self, unit, *args):
        units.append(unit)
        if len(units) == 3:
            raise OSError("disk full")
        return write_unit(self, unit, *args)

    monkeypatch.setattr(shards.ShardFold, "_write_unit", fails_at_the_third)
    out = tmp_path / "failed"
    fold, _ = _fold_copy(built, out)
    with pytest.raises(OSError, match="disk full"):
        fold.finish(parts=1)
    assert not (out / "hashes.parquet").exists()
    assert not [p.name for p in out.iterdir() if "hashes" in p.name]


def test_a_fold_whose_hashes_file_cannot_be_opened_leaves_no_writer_running(reference, tmp_path, monkeypatch):
    """The hashes file is opened inside the block that stops the forks on an error: if it cannot be, the fork
    writing the other part has been stopped and reaped by the time the error is raised."""
    from builders.plane import shards

    pids, init = [], shards._Helper.__init__

    def recorded(self, *args, **kwargs):
        init(self, *args, **kwargs)
        pids.append(self.pid)

    def refused(out):
        raise OSError("read-only file system")

    monkeypatch.setattr(shards._Helper, "__init__", recorded)
    monkeypatch.setattr(shards, "HashesWriter", refused)
    fold, _ = _fold_copy(reference[0], tmp_path / "out")
    with pytest.raises(OSError, match="read-only"):
        fold.finish(parts=2)
    assert len(pids) == 1
    with pytest.raises(ChildProcessError):  # reaped: no child of this process by that pid is left
        os.waitpid(pids[0], os.WNOHANG)


def test_a_fold_writes_with_as_many_processes_as_its_workers_allow(reference, tmp_path, monkeypatch):
    """Unasked, a fold on a local disk takes :func:`shard_writers` of its workers: three workers on a machine of
    four cores, three writers; the shards are the build's all the same."""
    from builders.plane import shards

    helpers, init = [], shards._Helper.__init__

    def init_seen(self, fold, plans, part, parts, *earlier):
        init(self, fold, plans, part, parts, *earlier)
        helpers.append((part, parts))

    monkeypatch.setattr(shards, "local_cores", lambda: 4)
    monkeypatch.setattr(shards._Helper, "__init__", init_seen)
    fold, manifest = _fold_copy(reference[0], tmp_path)
    fold.workers = 3
    assert fold.finish() == manifest["shards"]
    assert helpers == [(1, 3), (2, 3)]
    assert shard_digests(tmp_path) == shard_digests(reference[0])


def test_a_fold_takes_each_writers_result_as_it_comes(reference, tmp_path, monkeypatch):
    """With three writers, the fold takes whichever fork reports first: the second fork's end reaches it while
    the first fork still runs (here the first waits for exactly that, up to 10 s, and the second starts late,
    after this process has written its own part). Waiting on the forks in turn would have held up the
    second, its pipe full of progress, behind the first."""
    import time

    from builders.plane import shards

    parent, flag, write = os.getpid(), tmp_path / "second-fork-done", shards.ShardFold._write
    done, receive = [], shards._Helper._receive

    def write_in_turn(self, plans, part, parts, *args):
        if os.getpid() != parent and part == 2:
            time.sleep(1.0)
        entries = write(self, plans, part, parts, *args)
        if os.getpid() != parent and part == 1:
            deadline = time.monotonic() + 10
            while not flag.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        return entries

    def receive_seen(self, progress):
        receive(self, progress)
        if self.entries is not None and self.name not in done:
            done.append(self.name)
            if self.name == "shard writer 3 of 3":
                flag.touch()

    monkeypatch.setattr(shards.ShardFold, "_write", write_in_turn)
    monkeypatch.setattr(shards._Helper, "_receive", receive_seen)
    out = tmp_path / "out"
    fold, manifest = _fold_copy(reference[0], out)
    assert fold.finish(parts=3) == manifest["shards"]
    assert done == ["shard writer 3 of 3", "shard writer 2 of 3"]
    assert shard_digests(out) == shard_digests(reference[0])


def test_a_writer_holds_no_other_writers_pipe(reference, tmp_path, monkeypatch):
    """Each fork closes the reading ends of the pipes of the forks made before it, so that a writer's pipe
    breaks (and the writer stops) as soon as the shard process is gone, not once every later fork is."""
    from builders.plane import shards

    parent, helpers, init, write = os.getpid(), [], shards._Helper.__init__, shards.ShardFold._write

    def init_seen(self, *args):
        init(self, *args)
        helpers.append(self)  # in this process only: a fork is made inside ``init``, before this line

    def write_checked(self, plans, part, parts, *args):
        if os.getpid() != parent:
            held = [h.name for h in helpers if not h.conn.closed]
            assert len(helpers) == part - 1 and not held, f"part {part} holds the pipes of {held}"
        return write(self, plans, part, parts, *args)

    monkeypatch.setattr(shards._Helper, "__init__", init_seen)
    monkeypatch.setattr(shards.ShardFold, "_write", write_checked)
    fold, manifest = _fold_copy(reference[0], tmp_path)
    assert fold.finish(parts=3) == manifest["shards"]
    assert len(helpers) == 2


def test_a_build_starts_its_shard_process_with_its_workers_and_the_cards_imports_under_way(
    sample_input_60, tmp_path, monkeypatch
):
    """The recipe's workers reach the shard process, which sizes its writers by them. Starting it waits for
    the fork server's preload; the card's imports are already under way by then, on a thread of their own, on
    the core this process would otherwise leave idle."""
    import inspect
    import threading

    from builders import build as build_module

    real, card_imports = build_module.ShardProcess, threading.Event()

    class Seen(Exception):
        pass

    def shard_process(*args, **kwargs):
        workers = inspect.signature(real).bind(*args, **kwargs).arguments["workers"]
        raise Seen(workers, card_imports.wait(10))  # set by the thread, which may not have run yet

    monkeypatch.setattr(build_module, "_preload_card", card_imports.set)
    monkeypatch.setattr(build_module, "ShardProcess", shard_process)
    with pytest.raises(Seen) as seen:
        build(sample_recipe(sample_input_60, tmp_path / "out", workers=3), progress=False)
    assert seen.value.args == (3, True)


@pytest.mark.parametrize("parts", [1, 2, 3])
def test_the_fold_drops_each_unit_from_the_cache_once_every_writer_is_past_it(reference, tmp_path, monkeypatch, parts):
    """Every unit but the last UNITS_IN_FLIGHT is dropped from the page cache, once each and in order, by this
    process only, and only when it and the fork have both handed units UNITS_IN_FLIGHT further on to their
    threads; the shards are those of the build all the same. The fork is slowed down, so that a drop that did
    not wait for it would come while it is behind."""
    import time

    from builders.plane import shards

    parent, dropped, forgets = os.getpid(), [], []
    init, write_unit = shards._Forget.__init__, shards.ShardFold._write_unit

    def write_unit_slowly_in_the_fork(self, *args):
        if os.getpid() != parent:
            time.sleep(0.05)
        write_unit(self, *args)

    def init_seen(self, *args):
        init(self, *args)
        forgets.append(self)

    def forget(self, unit):
        assert os.getpid() == parent, "the fork dropped a unit"  # raised in the fork, it fails the fold
        (state,) = forgets
        dropped.append((unit, min([state.at, *(h.at for h in state.helpers)])))

    monkeypatch.setattr(shards._Forget, "__init__", init_seen)
    monkeypatch.setattr(shards.ShardFold, "forget", forget)
    monkeypatch.setattr(shards.ShardFold, "_write_unit", write_unit_slowly_in_the_fork)
    fold, _ = _fold_copy(reference[0], tmp_path)
    fold.finish(parts=parts)
    assert len(forgets[0].helpers) == parts - 1
    assert len(fold.units) > shards.UNITS_IN_FLIGHT + 1
    assert [unit for unit, _ in dropped] == fold.units[: -shards.UNITS_IN_FLIGHT]
    for position, (_, slowest) in enumerate(dropped):
        assert slowest - shards.UNITS_IN_FLIGHT >= position
    assert shard_digests(tmp_path) == shard_digests(reference[0])


def _resident_pages(path: Path) -> int:
    """How many of a file's pages are in the page cache (mincore over a private mapping of it)."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    size = path.stat().st_size
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_COPY) as mapped:
        pages = -(-size // mmap.PAGESIZE)
        vec = (ctypes.c_ubyte * pages)()
        address = ctypes.addressof(ctypes.c_char.from_buffer(mapped))
        if libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(size), vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore failed")
        return sum(v & 1 for v in vec)


def _filesystem(path: Path) -> str:
    mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    return max((m for m in mounts if str(path).startswith(m[1])), key=lambda m: len(m[1]))[2]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore and /proc/self/mounts are Linux's")
def test_drop_cached_lets_the_kernel_drop_a_units_pages(tmp_path):
    """A unit written, synced and read is cached; once dropped, none of its pages is, and it reads back the same.
    Where the filesystem is memory (tmpfs), there is no disk copy to fall back on and the pages stay."""
    from builders.workfolder import drop_cached

    path = tmp_path / "unit-000000.arrow"
    data = os.urandom(4 << 20)
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    assert path.read_bytes() == data
    pages = -(-len(data) // os.sysconf("SC_PAGE_SIZE"))
    assert _resident_pages(path) > pages // 2
    drop_cached(path)
    if _filesystem(tmp_path) == "tmpfs":
        pytest.skip("tmpfs keeps its pages: they are the file")
    assert _resident_pages(path) == 0
    assert path.read_bytes() == data
    drop_cached(tmp_path / "gone.arrow")  # a missing file: nothing to do, no error


def test_a_failing_second_shard_writer_fails_the_fold(reference, tmp_path, monkeypatch):
    """An error in the fork is raised here, named; the shards it did not write are not published."""
    from builders.plane import shards

    parent, add = os.getpid(), shards._Shard.add

    def add_in_parent_only(self, *args):
        if os.getpid() != parent:
            raise OSError("disk full")
        add(self, *args)

    helpers, init = [], shards._Helper.__init__

    def init_seen(self, *args):
        init(self, *args)
        helpers.append(self.pid)

    monkeypatch.setattr(shards._Shard, "add", add_in_parent_only)
    monkeypatch.setattr(shards._Helper, "__init__", init_seen)
    fold, _ = _fold_copy(reference[0], tmp_path)
    with pytest.raises(RuntimeError, match="shard writer 2 of 2 failed: OSError: disk full"):
        fold.finish(parts=2)
    assert not (tmp_path / "manifest.json").exists()
    assert len(helpers) == 1 and not Path(f"/proc/{helpers[0]}").exists()  # ended and reaped: no zombie left


def test_shard_process_exits_when_the_build_is_killed(sample_input_60, tmp_path):
    """The shard process must not outlive a killed build: it could otherwise still be writing beside a rerun."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from builders.plane.shards import ShardProcess\n"
        "if __name__ == '__main__':\n"
        "    p = ShardProcess(Path(sys.argv[1]), Path(sys.argv[1]) / '.work', 150_000, 24, 2, curated=False)\n"
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


def test_killed_build_leaves_no_worker_processes(sample_input_60, tmp_path):
    """Pool workers, fork server and shard process all end with a SIGKILLed build (nothing left holding memory)."""
    cmd = [
        sys.executable,
        "-m",
        "builders.cli",
        "build",
        "--metadata",
        str(sample_input_60 / "metadata.csv"),
        "--images",
        str(sample_input_60 / "images"),
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


def test_parquet_metadata_builds_the_same_images(sample_input_60, reference, tmp_path):
    table = pd.read_csv(sample_input_60 / "metadata.csv", dtype=str, keep_default_na=False)
    table[table["image"] != ""].to_parquet(tmp_path / "metadata.parquet")  # without the malformed line
    recipe = sample_recipe(sample_input_60, tmp_path / "out", **{"input.metadata": str(tmp_path / "metadata.parquet")})
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
def test_ray_distributor_gives_identical_shards(sample_input_60, reference, tmp_path):
    pytest.importorskip("ray")
    import ray

    try:
        build(sample_recipe(sample_input_60, tmp_path, distributor="ray", workers=2), progress=False)
    finally:
        ray.shutdown()
    assert shard_digests(tmp_path) == shard_digests(reference[0])


def _ray_status_ok(exe: Path, env: dict) -> bool:
    try:  # a recorded cluster that is gone can keep `ray status` waiting
        return subprocess.run([str(exe), "status"], env=env, capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.mark.slow
def test_ray_distributor_starts_its_own_instance_beside_a_ray_start_cluster(sample_input_60, reference, tmp_path):
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
                build(sample_recipe(sample_input_60, tmp_path, distributor="ray", workers=2), progress=False)
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
    # 20 scenes, their 3 near copies and 9 bad rows (data plane); 6 scenes' authored replies exercise each
    # curation filter (a near copy's replies are its own: one more disagreement).
    assert "32 input rows = 17 written" in res.output and "+ 15 rejected" in res.output
    for stage in ("agreement 2", "grounding 1", "ground-truth 1", "localizability 1", "teacher 1"):
        assert stage in res.output
    assert "0 sent (0 retries, 0 failed) + 24 cached" in res.output  # offline: every reply is an authored one
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


def test_build_from_tar(sample_input_60, reference, tmp_path):
    tar_path = tmp_path / "images.tar"
    with tarfile.open(tar_path, "w") as tar:
        for p in sorted((sample_input_60 / "images").iterdir()):
            tar.add(p, arcname=p.name)
    build(sample_recipe(sample_input_60, tmp_path / "out", **{"input.images": str(tar_path)}), progress=False)

    def images(out):  # records differ only in the recipe hash (another images path)
        return [
            (s["__key__"], s["jpg"])
            for s in wds.WebDataset(sorted(map(str, (out / "data").glob("*.tar"))), shardshuffle=False)
        ]

    assert images(tmp_path / "out") == images(reference[0])


def test_the_same_inputs_elsewhere_build_identical_shards(sample_input_60, reference, tmp_path):
    """The recipe hash names inputs by content: a moved input folder and another --out change nothing."""
    import shutil

    moved = tmp_path / "elsewhere" / "input"
    shutil.copytree(sample_input_60, moved)
    build(sample_recipe(moved, tmp_path / "other-out"), progress=False)
    assert shard_digests(tmp_path / "other-out") == shard_digests(reference[0])
    here, there = (json.loads((p / "manifest.json").read_text()) for p in (reference[0], tmp_path / "other-out"))
    assert here["recipe_sha256"] == there["recipe_sha256"] and here["recipe"] == there["recipe"]
    assert there["inputs"]["metadata"]["location"] == "metadata.csv"  # no local path is published
    assert there["inputs"]["metadata"]["sha256"] == hashlib.sha256((moved / "metadata.csv").read_bytes()).hexdigest()
    assert there["inputs"]["images"][0]["kind"] == "folder" and there["inputs"]["images"][0]["files"] > 0
    assert str(sample_input_60) not in json.dumps(there["recipe"])  # no location in what the hash covers
    # A changed byte is another input: another hash.
    (moved / "metadata.csv").write_text((moved / "metadata.csv").read_text() + "\n")
    from builders.build import Build

    assert Build(sample_recipe(moved, tmp_path / "third")).sha != here["recipe_sha256"]


def test_two_sample_builds_into_different_folders_are_identical(sample_build, tmp_path):
    from click.testing import CliRunner

    from builders.cli import main

    out = tmp_path / "second-sample"
    result = CliRunner().invoke(main, ["build", "--sample", "--sample-size", "48", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    digests = {p: shard_digests(p) for p in (sample_build, out)}
    assert digests[sample_build] == digests[out] and digests[out]
