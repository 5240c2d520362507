"""The teacher stage inside real builds: a scripted faulty endpoint, SIGKILL and resume, secrets, the offline
sample, and a real `transformers serve` with the tiny VLM."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner
from helpers import sample_recipe, scripted_replies, teacher_recipe
from teacher_server import TeacherServer

from builders.build import BuildError, build
from builders.cli import main
from builders.publish.validate import validate_build
from builders.sample.scenes import near_copies
from mp16_reason.schema import from_json_bytes

pytest.importorskip("openai")
SECRET = "sk-live-THIS-MUST-NOT-LEAK-9f8e7d"


def _shards(out: Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*.tar")}


@pytest.mark.slow
def test_faults_are_retried_or_quarantined_and_nothing_is_lost(sample_input, tmp_path, monkeypatch):
    monkeypatch.setenv("MP16_TEST_KEY", SECRET)
    cache = tmp_path / "cache.sqlite"
    # One image in 24 always fails: over the default 1 % limit of quarantines, so this build allows 10 %.
    recipe = teacher_recipe(sample_input, tmp_path / "a", "http://unused/v1", cache)
    reply, digests = scripted_replies(sample_input, recipe)
    doomed, echoed = digests[0], digests[1]  # one image always fails with 500; one once with a 400 echoing the key
    cycle = {0: "429", 4: "500", 8: "truncated", 12: "nonjson", 16: "timeout"}
    seen_echo: set[str] = set()
    others = iter(range(10**6))  # the other requests, counted apart: each fault of the cycle happens

    def fault(n: int, digest: str) -> str | None:
        if digest == echoed and digest not in seen_echo:
            seen_echo.add(digest)
            return "400echo"
        if digest == doomed:
            return "500"
        return cycle.get(next(others) % 23) if faulty else None

    faulty = True

    def allowing(r):
        data = r.model_dump()
        for t in data["teachers"]:
            t["max_quarantined"] = 0.1
        return type(r).model_validate(data)

    logs: list[str] = []
    with TeacherServer(reply, fault, hang_s=1.5) as srv:
        recipe = allowing(teacher_recipe(sample_input, tmp_path / "a", srv.url, cache))
        summary = build(recipe, progress=False, log=logs.append)
        assert set(srv.faults) == {"429", "500", "truncated", "nonjson", "timeout", "400echo"}
        # Every other image was answered by both teachers exactly once (no reply paid for twice); the echoed one
        # by the teacher that was not refused.
        assert set(srv.ok_by_image) == set(digests) - {doomed}
        assert srv.ok_by_image.pop(echoed) == 1 and set(srv.ok_by_image.values()) == {2}
        assert srv.auth == {f"Bearer {SECRET}"}
        sent = srv.n

        rejected = pq.read_table(tmp_path / "a" / "rejections.parquet").to_pylist()
        teacher_rows = [r for r in rejected if r["stage"] == "teacher"]
        reasons = " | ".join(r["reason"] for r in teacher_rows)
        assert "HTTP 500" in reasons and "after 7 attempt(s)" in reasons and "HTTP 400" in reasons
        assert summary.written + summary.rejected == summary.input_rows
        validate_build(tmp_path / "a", require_card=False)

        # Same recipe, fresh output folder, same cache: only the quarantined requests go out again.
        faulty = False
        again = allowing(teacher_recipe(sample_input, tmp_path / "b", srv.url, cache))
        build(again, progress=False, log=logs.append)
        # doomed: 2 teachers x 7 attempts; echoed: the teacher whose 400 was final asks once more, and is answered
        assert srv.n - sent == 2 * 7 + 1

    # The exported cache rebuilds the same shards with no endpoint at all.
    res = CliRunner().invoke(main, ["cache", "export", str(tmp_path / "replies.jsonl"), "--cache", str(cache)])
    assert res.exit_code == 0, res.output
    offline = teacher_recipe(
        sample_input,
        tmp_path / "c",
        "http://127.0.0.1:9/v1",
        tmp_path / "fresh.sqlite",
        **{"distill.offline": True, "distill.import_cache": str(tmp_path / "replies.jsonl")},
    )
    offline = allowing(offline)
    build(offline, progress=False, log=logs.append)
    assert _shards(tmp_path / "c") == _shards(tmp_path / "b")

    # The key is nowhere: not in shards, records, manifests, rejections, caches, exports, cards or logs.
    CliRunner().invoke(main, ["card", str(tmp_path / "a")])
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in "\n".join(logs)


@pytest.mark.slow
def test_curated_records_and_the_localizability_config(sample_input, tmp_path, monkeypatch):
    monkeypatch.setenv("MP16_TEST_KEY", "k")
    recipe = teacher_recipe(sample_input, tmp_path / "o", "http://unused/v1", tmp_path / "c.sqlite")
    reply, _ = scripted_replies(sample_input, recipe)
    with TeacherServer(reply) as srv:
        build(teacher_recipe(sample_input, tmp_path / "o", srv.url, tmp_path / "c.sqlite"), progress=False, log=print)
    out = tmp_path / "o"
    manifest = json.loads((out / "manifest.json").read_text())

    def records(config: str) -> list:
        found = []
        for s in manifest["shards"]:
            if s.get("config", "default") == config:
                with tarfile.open(out / s["path"]) as tar:
                    found += [from_json_bytes(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")]
        return found

    kept, judged = records("default"), records("localizability")
    assert kept and all(r.localizable and r.reasoning and r.entities and len(r.teachers) == 2 for r in kept)
    assert all(r.build.prompt_version == "teacher-v1" for r in kept)
    # The chosen reasoning's entities carry the segmenter's verdict; shop signs are always seen.
    assert all(any(e.grounded for e in r.entities) for r in kept)
    assert all(e.grounded for r in kept for e in r.entities if e.text.startswith("shop sign"))
    # The localizability config holds the judged images the filters dropped too, with their verdict.
    assert len(judged) > len(kept)
    assert any(r.localizable is False for r in judged) and {r.id for r in kept} <= {r.id for r in judged}
    rejected = {r["id"]: r for r in pq.read_table(out / "rejections.parquet").to_pylist()}
    # (A "teacher" rejection, an unusable reply, is the offline sample's: an endpoint's would be a failed request.)
    assert {"localizability", "ground-truth", "agreement", "grounding"} <= {r["stage"] for r in rejected.values()}
    t = {t["name"]: t for t in manifest["teachers"]}
    assert t["t0"]["answers"] == t["t1"]["answers"] == len(judged) + 1  # + the duplicate image: judged, then dropped
    assert t["t0"]["input_tokens"] > 0 and manifest["totals"]["configs"]["localizability"]
    validate_build(out, require_card=False)


@pytest.mark.slow
def test_estimate_sends_nothing_and_counts_the_cache(sample_input, tmp_path, monkeypatch):
    monkeypatch.setenv("MP16_TEST_KEY", "k")
    recipe = teacher_recipe(sample_input, tmp_path / "o", "http://unused/v1", tmp_path / "c.sqlite")
    reply, _ = scripted_replies(sample_input, recipe)
    with TeacherServer(reply) as srv:
        path = tmp_path / "r.yaml"
        rec = teacher_recipe(sample_input, tmp_path / "o", srv.url, tmp_path / "c.sqlite")
        path.write_text(yaml.safe_dump(rec.model_dump(mode="json")))
        res = CliRunner().invoke(main, ["build", str(path), "--estimate", "--quiet"])
        assert res.exit_code == 0, res.output
        assert srv.n == 0
        n = 24 + len(near_copies(24))  # the sample's scenes and their near copies
        assert f"t0: {n} requests (0 of {n} images cached)" in res.output and "total: $" in res.output
        assert CliRunner().invoke(main, ["build", str(path), "--quiet"]).exit_code == 0
        res = CliRunner().invoke(main, ["build", str(path), "--estimate", "--out", str(tmp_path / "o2"), "--quiet"])
        assert f"t1: 0 requests ({n} of {n} images cached)" in res.output, res.output


@pytest.mark.slow
def test_sigkill_during_distillation_then_resume(sample_input, tmp_path, monkeypatch):
    monkeypatch.setenv("MP16_TEST_KEY", "k")
    cache = tmp_path / "cache.sqlite"
    recipe = teacher_recipe(sample_input, tmp_path / "o", "http://unused/v1", cache)
    reply, digests = scripted_replies(sample_input, recipe)
    n_jobs = 2 * len(digests)
    env = dict(os.environ)
    with TeacherServer(reply, latency_s=0.1) as srv:
        path = tmp_path / "r.yaml"
        path.write_text(
            yaml.safe_dump(teacher_recipe(sample_input, tmp_path / "o", srv.url, cache).model_dump(mode="json"))
        )
        cmd = [sys.executable, "-m", "builders.cli", "build", str(path), "--quiet"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while srv.ok < n_jobs // 3 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with sqlite3.connect(cache) as db:
            cached = {row[0] for row in db.execute("SELECT image_sha256 || model FROM replies")}
        assert 0 < len(cached) < n_jobs
        before = srv.n
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        # The resumed run asked only for what the cache did not hold: nothing finished was paid for twice.
        assert srv.n - before == n_jobs - len(cached)
    with TeacherServer(reply) as srv:
        build(
            teacher_recipe(sample_input, tmp_path / "ref", srv.url, tmp_path / "ref.sqlite"), progress=False, log=print
        )
    assert _shards(tmp_path / "o") == _shards(tmp_path / "ref")
    validate_build(tmp_path / "o", require_card=False)


def test_offline_sample_is_labelled_authored(tmp_path):
    out = tmp_path / "sb"
    res = CliRunner().invoke(main, ["build", "--sample", "--sample-size", "12", "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    # Each config in its own folder: data/ holds the default config alone.
    assert (out / "localizability").is_dir() and not (out / "data" / "localizability").exists()
    assert CliRunner().invoke(main, ["card", str(out)]).exit_code == 0
    card = (out / "README.md").read_text()
    assert "written by hand, not produced by the models" in card and "`localizability` config" in card
    lines = (out / "sample-input" / "teacher-cache.jsonl").read_text().splitlines()
    assert len(lines) == 2 * (12 + len(near_copies(12))) and all(json.loads(x)["origin"] == "authored" for x in lines)
    manifest = json.loads((out / "manifest.json").read_text())
    assert all(t["authored"] == t["answers"] for t in manifest["teachers"])
    validate_build(out)


def test_teacher_stage_through_transformers_serve(served, tiny_model, sample_input, tmp_path):
    """The real client against a real server: the tiny random VLM answers gibberish, which is no answer: each
    request is asked again once, nothing is cached, and an endpoint whose first replies are all no answer stops
    the stage like an outage, before anything is sealed."""
    import sqlite3

    teacher = {
        "name": "tiny",
        "base_url": served,
        "model": str(tiny_model),
        "structured_output": False,
        "max_tokens": 12,
        "max_concurrency": 2,
        "max_pixels": 112 * 112,
    }
    recipe = sample_recipe(
        sample_input,
        tmp_path / "o",
        teachers=[teacher],
        limit=4,
        **{"distill.cache": str(tmp_path / "c.sqlite"), "curation.grounding.model": "bundled:scene-segmenter"},
    )
    with pytest.raises(BuildError, match=r"teacher 'tiny' .*replies was no answer \(last: (neither a JSON|empty)"):
        build(recipe, progress=False, log=print)
    assert not (tmp_path / "o" / "manifest.json").exists()
    with sqlite3.connect(tmp_path / "c.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM replies").fetchone()[0] == 0
