"""Teachers in batch mode against a real HTTP server speaking the Files and Batches endpoints the ``openai`` client
calls: chunking, failed lines and an expired batch retried, quarantine, SIGKILL and resume without a second
submission, the same shards as an online build of the same replies, the batch price, and the offline
export-requests / import-results round trip of ``vllm run-batch``."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from batch_server import BatchServer, answer_lines
from click.testing import CliRunner
from helpers import MODELS, scripted_replies, teacher_recipe
from teacher_server import TeacherServer, image_of

from builders.build import build, estimate
from builders.cli import main
from builders.teachers.batch import BatchRunner
from builders.teachers.cache import ReplyCache
from builders.teachers.online import request_body
from mp16_reason.storage import Location

pytest.importorskip("openai")
SECRET = "sk-batch-THIS-MUST-NOT-LEAK-1a2b3c"
BATCH = {"mode": "batch", "batch_poll_s": 0.05, "max_retries": 2}


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("MP16_TEST_KEY", SECRET)


def _with_teachers(recipe, **changes):
    """The recipe with each teacher changed; one image in 24 always fails here, so up to 10 % may be quarantined."""
    data = recipe.model_dump(mode="json", exclude_defaults=True)
    for t in data["teachers"]:
        t.update({"max_quarantined": 0.1, **changes})
    return type(recipe).model_validate(data)


def _batch_recipe(sample_input: Path, out: Path, url: str, cache: Path, **teacher):
    return _with_teachers(teacher_recipe(sample_input, out, url, cache), **{**BATCH, **teacher})


def _shards(out: Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*.tar")}


@pytest.fixture(scope="module")
def online(sample_input, tmp_path_factory):
    """The reference: an online build of the same scripted replies, one image failing every time."""
    root = tmp_path_factory.mktemp("online")
    os.environ["MP16_TEST_KEY"] = SECRET
    recipe = teacher_recipe(sample_input, root / "out", "http://unused/v1", root / "cache.sqlite")
    reply, digests = scripted_replies(sample_input, recipe)
    doomed = digests[0]
    with TeacherServer(reply, lambda n, d: "500" if d == doomed else None) as srv:
        recipe = _with_teachers(
            teacher_recipe(sample_input, root / "out", srv.url, root / "cache.sqlite"), max_retries=2
        )
        build(recipe, progress=False, log=lambda *_: None)
    return root / "out", reply, doomed, srv


@pytest.mark.slow
def test_batches_give_the_online_shards_with_failures_retried_and_quarantined(sample_input, online, tmp_path):
    reference, reply, doomed, online_srv = online
    flaky: set[str] = set()

    def fail(key: str, attempt: int) -> bool:
        image = hashlib.sha256(image_of(server.bodies[key])).hexdigest()
        if image == doomed:
            return True  # every time: quarantined after max_retries + 1 attempts, as online
        if attempt == 0 and int(key, 16) % 5 == 0:
            flaky.add(key)
            return True  # once: answered by the next round
        return False

    logs: list[str] = []
    with BatchServer(reply, fail, delay_s=0.2, expire={1}) as server:
        recipe = _batch_recipe(
            sample_input,
            tmp_path / "out",
            server.url,
            tmp_path / "cache.sqlite",
            batch_max_requests=10,
            batch_max_bytes=60_000,
        )
        summary = build(recipe, progress=False, log=logs.append)
    assert _shards(tmp_path / "out") == _shards(reference)
    assert summary.written + summary.rejected == summary.input_rows

    # Files within both limits; the byte limit binds before the request limit for some of them.
    assert all(size <= 60_000 and lines <= 10 for size, lines in server.uploads)
    assert any(lines < 10 for size, lines in server.uploads[:-2])
    # What was asked: every key once, but the flaky lines, the expired batch's unanswered half and the doomed
    # image, asked again; the doomed image max_retries + 1 = 3 times by each teacher, then quarantined.
    expired = server.batches["batch-0001"]["lines"]
    unanswered = {line["custom_id"] for line in expired[len(expired) // 2 :]}
    doomed_keys = {k for k, b in server.bodies.items() if hashlib.sha256(image_of(b)).hexdigest() == doomed}
    assert len(doomed_keys) == 2 and all(server.submitted[k] == 3 for k in doomed_keys)
    again = {k for k, n in server.submitted.items() if n > 1} - doomed_keys
    assert again == (flaky | unanswered) - doomed_keys and again
    assert all(server.submitted[k] == 2 for k in again)
    assert server.auth == {f"Bearer {SECRET}"}
    rejected = pq.read_table(tmp_path / "out" / "rejections.parquet").to_pylist()
    reasons = [r["reason"] for r in rejected if "HTTP 500" in r["reason"]]
    assert len(reasons) == 1 and reasons[0].count("after 3 attempt(s)") == 2  # both teachers gave up on it
    online_rejected = pq.read_table(reference / "rejections.parquet").to_pylist()
    assert [(r["row"], r["stage"]) for r in rejected] == [(r["row"], r["stage"]) for r in online_rejected]
    # The same reasons, but the server's words for the failure (the SDK words an online 500 its own way).
    assert [r for r in rejected if "HTTP" not in r["reason"]] == [
        r for r in online_rejected if "HTTP" not in r["reason"]
    ]

    # The body of each line is the online request's, image included.
    online_bodies = {
        json.dumps({k: v for k, v in b.items() if k != "messages"}, sort_keys=True) for b in online_srv.requests
    }
    for body in server.bodies.values():
        assert json.dumps({k: v for k, v in body.items() if k != "messages"}, sort_keys=True) in online_bodies
    spec = recipe.teachers[0]
    body = next(b for b in server.bodies.values() if b["model"] == spec.model)
    assert body == request_body(spec, body["messages"][-1]["content"][0]["image_url"]["url"])

    state = json.loads((tmp_path / "out" / ".work" / "batches" / "t0" / "state.json").read_text())
    assert {c["status"] for c in state["chunks"]} == {"completed", "expired"}
    for name in ("manifest.json", "rejections.parquet", ".work/batches/t0/state.json"):
        assert SECRET.encode() not in (tmp_path / "out" / name).read_bytes()
    assert any("(batch)" in line and "quarantined" in line for line in logs)


@pytest.mark.slow
def test_a_killed_build_resumes_polling_and_submits_nothing_twice(sample_input, online, tmp_path):
    reference, reply, doomed, _ = online
    with BatchServer(
        reply, lambda k, a: hashlib.sha256(image_of(server.bodies[k])).hexdigest() == doomed, delay_s=4.0
    ) as server:
        recipe = _batch_recipe(
            sample_input,
            tmp_path / "out",
            server.url,
            tmp_path / "cache.sqlite",
            batch_max_requests=16,
            batch_poll_s=0.2,
        )
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
        cmd = [sys.executable, "-m", "builders.cli", "build", str(path), "--quiet"]
        env = {**os.environ, "MP16_TEST_KEY": SECRET}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        state = tmp_path / "out" / ".work" / "batches" / "t1" / "state.json"
        deadline = time.monotonic() + 120
        # Both teachers' batches submitted, none ended: kill the build while they run.
        while time.monotonic() < deadline and proc.poll() is None:
            if state.exists() and all(c["batch_id"] for c in json.loads(state.read_text())["chunks"]):
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        batches = state.parent.parent
        chunks = [c for t in ("t0", "t1") for c in json.loads((batches / t / "state.json").read_text())["chunks"]]
        assert len(server.batches) >= 3 and chunks and not any(c["imported"] for c in chunks)
        # Meanwhile someone cancels one of them (as from the provider's dashboard): its requests go to a new batch.
        import openai

        client = openai.OpenAI(base_url=server.url, api_key=SECRET)
        assert client.batches.cancel(chunks[0]["batch_id"]).status == "cancelled"
        cancelled = {line["custom_id"] for line in server.batches[chunks[0]["batch_id"]]["lines"]}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    # Every request was submitted once, but the cancelled batch's and the doomed image's, retried after their
    # batches ended.
    doomed_keys = {k for k, b in server.bodies.items() if hashlib.sha256(image_of(b)).hexdigest() == doomed}
    assert {n for k, n in server.submitted.items() if k not in cancelled | doomed_keys} == {1}
    assert {server.submitted[k] for k in cancelled - doomed_keys} == {2}
    assert _shards(tmp_path / "out") == _shards(reference)


def test_a_batch_created_before_a_kill_is_found_not_submitted_again(sample_input, online, tmp_path):
    """The narrowest window: the server accepted a batch, and the build died before it recorded the id."""
    _, reply, _, _ = online
    with BatchServer(reply, delay_s=0.1) as server:
        recipe = _batch_recipe(sample_input, tmp_path / "out", server.url, tmp_path / "cache.sqlite")
        from builders.build import Build, prepare

        build_ = Build(recipe, progress=False)
        with build_.locked("test"):
            n_units = prepare(build_)
        cache = ReplyCache(tmp_path / "cache.sqlite")
        runner = BatchRunner(recipe.teachers[0], build_.work, cache, progress=False, log=lambda *_: None)
        real_create = runner.client.batches.create

        def create_then_die(**kwargs):
            real_create(**kwargs)
            raise KeyboardInterrupt("killed")

        runner.client.batches.create = create_then_die
        with pytest.raises(KeyboardInterrupt):
            runner.run(list(range(n_units)))
        assert len(server.batches) == 1
        again = BatchRunner(recipe.teachers[0], build_.work, cache, progress=False, log=lambda *_: None)
        assert again.run(list(range(n_units))) == {}
        assert len(server.batches) == 1 and set(server.submitted.values()) == {1}
        cache.close()


def test_estimate_prices_batch_teachers_at_half_or_their_own_price(sample_input, tmp_path):
    online = teacher_recipe(sample_input, tmp_path / "o", "http://unused/v1", tmp_path / "c.sqlite")
    half = _batch_recipe(sample_input, tmp_path / "o", "http://unused/v1", tmp_path / "c.sqlite")
    own = _batch_recipe(
        sample_input,
        tmp_path / "o",
        "http://unused/v1",
        tmp_path / "c.sqlite",
        batch_price_input_per_1k=0.0001,
        batch_price_output_per_1k=0.0002,
    )
    assert online.sha256() == half.sha256() == own.sha256()  # how replies are asked for is not what they are

    from builders.build import Build, prepare
    from builders.teacher_stage import estimate as teacher_estimate

    build_ = Build(online, progress=False)
    with build_.locked("test"):
        n_units = prepare(build_)
    costs = {
        name: [e.cost for e in teacher_estimate(r, build_.work, n_units)]
        for name, r in (("online", online), ("half", half), ("own", own))
    }
    tokens = [(e.input_tokens, e.output_tokens) for e in teacher_estimate(own, build_.work, n_units)]
    assert all(c > 0 for c in costs["online"])
    assert costs["half"] == pytest.approx([c / 2 for c in costs["online"]], rel=1e-12)
    assert costs["own"] == pytest.approx([(i * 0.0001 + o * 0.0002) / 1000 for i, o in tokens], rel=1e-12)
    lines = estimate(half, progress=False)
    assert sum("(batch)" in line for line in lines) == 2 and any("batch price" in line for line in lines)


def test_export_requests_run_offline_import_results_then_build_offline(sample_input, online, tmp_path):
    reference, reply, doomed, _ = online
    cache = tmp_path / "cache.sqlite"
    recipe = _with_teachers(teacher_recipe(sample_input, tmp_path / "out", "http://unused/v1", cache))
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    cli = CliRunner()

    def run_batch(requests: Path, results: Path, fail) -> list[dict]:
        lines = requests.read_text().splitlines()
        results.write_text("\n".join(answer_lines(lines, reply, fail)) + "\n")  # as `vllm run-batch` writes
        return [json.loads(x) for x in lines]

    res = cli.invoke(main, ["cache", "export-requests", str(path), "--out", str(tmp_path / "req.jsonl"), "--quiet"])
    assert res.exit_code == 0, res.output
    bodies: dict[str, dict] = {}

    def is_doomed(key: str) -> bool:
        return hashlib.sha256(image_of(bodies[key])).hexdigest() == doomed

    bodies.update(
        (x["custom_id"], x["body"]) for x in map(json.loads, (tmp_path / "req.jsonl").read_text().splitlines())
    )
    first = run_batch(
        tmp_path / "req.jsonl", tmp_path / "res.jsonl", lambda k, a: k.startswith(("0", "1")) or is_doomed(k)
    )
    assert {(x["method"], x["url"]) for x in first} == {("POST", "/v1/chat/completions")}
    assert len(first) == len(bodies) and {b["model"] for b in bodies.values()} == set(MODELS)
    failing = sum(x["custom_id"].startswith(("0", "1")) or is_doomed(x["custom_id"]) for x in first)
    assert failing > 2
    res = cli.invoke(main, ["cache", "import-results", str(tmp_path / "res.jsonl"), "--cache", str(cache)])
    assert res.exit_code == 0 and f"imported {len(first) - failing} replies" in res.output
    assert f"{failing} failed" in res.output
    # Exported again: only what failed.
    res = cli.invoke(main, ["cache", "export-requests", str(path), "--out", str(tmp_path / "req2.jsonl"), "--quiet"])
    assert res.exit_code == 0, res.output
    second = run_batch(tmp_path / "req2.jsonl", tmp_path / "res2.jsonl", lambda k, a: is_doomed(k))
    assert len(second) == failing
    res = cli.invoke(main, ["cache", "import-results", str(tmp_path / "res2.jsonl"), "--cache", str(cache)])
    assert res.exit_code == 0, res.output
    res = cli.invoke(main, ["build", str(path), "--offline", "--quiet"])
    assert res.exit_code == 0, res.output
    assert _shards(tmp_path / "out") == _shards(reference)
    assert Location(tmp_path / "out" / "manifest.json").exists()
