"""Teacher prompt parsing, the reply cache, and the client against a scripted server that injects faults."""

from __future__ import annotations

import asyncio
import io
import json

import pytest
from PIL import Image
from teacher_server import TeacherServer

from builders.recipe import load_recipe
from builders.teachers.base import Job, TeacherFailed, TeacherOutage
from builders.teachers.cache import CachedReply, ReplyCache, cache_key
from builders.teachers.geoclip import GeoclipTeacher
from builders.teachers.online import (
    OnlineTeacher,
    OpenAITeacher,
    http_client,
    retry_after,
)
from builders.teachers.prompt import parse_reply
from builders.teachers.registry import settings_from
from mp16_reason.endpoints import MissingApiKey
from mp16_reason.jpeg import jpeg_data_url

GOOD = {
    "localizable": True,
    "localizability": 0.8,
    "reasoning": "The sign reads PARIS.",
    "entities": [{"text": "shop sign", "category": "signage"}],
    "country": "France",
    "city": "Paris",
    "lat": 48.85,
    "lon": 2.35,
}


def _jpeg(w: int = 64, h: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 120, 30)).save(buf, "JPEG")
    return buf.getvalue()


# -- parsing ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        json.dumps(GOOD),
        "Here is my answer:\n```json\n" + json.dumps(GOOD) + "\n```\nHope it helps.",
        "Sure! " + json.dumps(GOOD) + " That's it.",
    ],
)
def test_parse_reply_reads_json_wherever_it_is(text):
    p = parse_reply(text)
    assert p.reply is not None and not p.error
    assert (p.reply.country, p.reply.city, p.localizable, p.localizability) == ("France", "Paris", True, 0.8)
    assert p.reply.entities[0].category == "signage"


def test_parse_reply_fills_optional_keys_and_bare_entity_strings():
    obj = {k: v for k, v in GOOD.items() if k not in ("lat", "lon")} | {"entities": ["tower", "river"]}
    p = parse_reply(json.dumps(obj))
    assert p.reply.lat is None and [e.text for e in p.reply.entities] == ["tower", "river"]


def test_parse_reply_tag_format_has_no_judgement():
    p = parse_reply("<think>A red bus and a sign in English.</think><answer>country: UK\ncity: London</answer>")
    assert p.reply.country == "UK" and p.reply.reasoning.startswith("A red bus")
    assert p.localizable is None and p.localizability is None


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "empty reply"),
        ("I cannot tell where this is.", "neither a JSON object"),
        (json.dumps(GOOD | {"localizability": 1.7}), "localizability"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "country"}), "country"),
        ('{"localizable": true, "reasoning": "cut off', "neither a JSON object"),
    ],
)
def test_unusable_replies_are_errors_not_defaults(text, error):
    p = parse_reply(text)
    assert p.reply is None and error in p.error


def test_unparsed_reply_keeps_raw_text():
    spec = OpenAITeacher(name="t", base_url="http://x/v1", model="m")
    reply = CachedReply("k", "m", "v", "sha", "{}", "no idea, sorry", 10, 3)
    a = spec.answer(reply)
    assert not a.parsed and a.raw == "no idea, sorry" and a.country == "" and a.localizable is None


# -- cache -------------------------------------------------------------------------------------------------
def test_cache_key_covers_what_decides_a_reply_only():
    k = cache_key("sha", "v1", "model", {"temperature": 0.7})
    assert k == cache_key("sha", "v1", "model", {"temperature": 0.7})
    assert len({k, cache_key("sha2", "v1", "model", {"temperature": 0.7}), cache_key("sha", "v2", "model", {})}) == 3
    a = OpenAITeacher(name="a", base_url="http://one/v1", model="m", api_key_env="KEY_A", max_concurrency=2)
    b = OpenAITeacher(name="b", base_url="http://two/v1", model="m", api_key_env="KEY_B", max_concurrency=64)
    assert a.request_params() == b.request_params()  # URL, key, limits: not part of the key
    assert (
        a.request_params()
        != OpenAITeacher(name="a", base_url="http://one/v1", model="m", temperature=0.1).request_params()
    )
    batch = OpenAITeacher(name="a", base_url="http://one/v1", model="m", mode="batch", batch_poll_s=5)
    assert batch.request_params() == a.request_params()  # how a reply is asked for is not what it is
    g = GeoclipTeacher(name="g", top_k=3, device="cuda")
    assert g.request_params() == {"kind": "geoclip", "top_k": 3, "clip_model": "openai/clip-vit-large-patch14"}
    with pytest.raises(ValueError, match="needs base_url and model"):
        OpenAITeacher(name="a", model="m")
    with pytest.raises(ValueError, match="mode"):  # batch is a mode of endpoints: GeoCLIP has no such setting
        settings_from({"name": "g", "kind": "geoclip", "mode": "batch"})
    # The shipped kinds, and any a plug-in package installed here adds (docs/extending.md's ollama).
    known = r"unknown teacher kind 'gemini'; known kinds: ([\w-]+, )*geoclip, ([\w-]+, )*openai"
    with pytest.raises(ValueError, match=known):
        settings_from({"name": "x", "kind": "gemini"})


def test_cache_persists_exports_and_imports(tmp_path):
    c = ReplyCache(tmp_path / "c.sqlite")
    c.put(CachedReply("k1", "m", "v", "s1", "{}", "text one", 5, 6))
    c.put(CachedReply("k2", "m", "v", "s2", "{}", "text two", 7, 8, "authored"))
    c.close()
    again = ReplyCache(tmp_path / "c.sqlite")  # a new process would see the same
    assert again.get("k2").origin == "authored" and again.get("nope") is None
    assert {k: r.text for k, r in again.get_many(["k1", "nope", "k2"]).items()} == {"k1": "text one", "k2": "text two"}
    big, many = ReplyCache(tmp_path / "big.sqlite"), [f"x{i}" for i in range(1200)]  # more than one query binds
    big.put(*(CachedReply(k, "m", "v", k, "{}", k, 0, 0) for k in many[::3]))
    assert sorted(big.get_many(many)) == sorted(many[::3])
    assert again.export(tmp_path / "e.jsonl") == 2
    other = ReplyCache(tmp_path / "other.sqlite")
    other.put(CachedReply("k1", "m", "v", "s1", "{}", "kept", 1, 1))
    assert other.import_(tmp_path / "e.jsonl") == 1
    assert other.get("k1").text == "kept" and other.get("k2").text == "text two"


# -- client ------------------------------------------------------------------------------------------------
def test_retry_after_forms():
    class R:
        def __init__(self, **h):
            self.headers = h

    assert retry_after(R(**{"retry-after": "3"})) == 3.0
    assert retry_after(R(**{"retry-after-ms": "250", "retry-after": "9"})) == 0.25
    assert retry_after(R(**{"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0.0  # in the past
    assert retry_after(R()) is None and retry_after(None) is None


def _ask(spec: OpenAITeacher, jpeg: bytes, n: int = 1) -> tuple[list, OnlineTeacher]:
    teacher = OnlineTeacher(spec)

    async def go():
        async def one(i):
            try:
                return await teacher.ask(Job(f"sha{i}", jpeg, 64, 48))
            except (TeacherFailed, TeacherOutage) as exc:
                return exc

        try:
            return await asyncio.gather(*(one(i) for i in range(n)))
        finally:
            await teacher.close()

    return asyncio.run(go()), teacher


POOLS = ["aiohttp", "httpx"]  # both connection pools must meet every fault the same way


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("fault", ["429", "500", "timeout", "truncated", "nonjson"])
@pytest.mark.slow
def test_transient_faults_are_retried(fault, pool):
    first_two = {0: fault, 1: fault}
    with TeacherServer(lambda img, req: json.dumps(GOOD), lambda n, d: first_two.get(n), hang_s=1.0) as srv:
        spec = OpenAITeacher(
            name="t", base_url=srv.url, model="m", timeout_s=0.4, backoff_s=0.01, max_retries=3, http_client=pool
        )
        (reply,), teacher = _ask(spec, _jpeg())
    assert isinstance(reply, CachedReply) and json.loads(reply.text)["city"] == "Paris"
    assert srv.n == 3 and teacher.usage.retries == 2 and teacher.usage.requests == 1
    assert reply.input_tokens > 0 and teacher.usage.input_tokens == reply.input_tokens


@pytest.mark.parametrize("pool", POOLS)
def test_persistent_fault_is_quarantined_with_reason(pool):
    with TeacherServer(lambda img, req: "", lambda n, d: "500") as srv:
        spec = OpenAITeacher(name="t", base_url=srv.url, model="m", backoff_s=0.0, max_retries=2, http_client=pool)
        (err,), teacher = _ask(spec, _jpeg())
    assert isinstance(err, TeacherFailed) and "HTTP 500" in str(err) and err.failure.attempts == 3
    assert srv.n == 3 and teacher.usage.failed == 1


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("fault", ["400echo", "401echo"])
def test_client_errors_are_not_retried_and_keys_are_scrubbed(monkeypatch, pool, fault):
    secret = "sk-test-DO-NOT-LEAK-4242"
    monkeypatch.setenv("TEACHER_KEY", secret)
    with TeacherServer(lambda img, req: "", lambda n, d: fault) as srv:
        spec = OpenAITeacher(
            name="t", base_url=srv.url, model="m", api_key_env="TEACHER_KEY", max_retries=5, http_client=pool
        )
        (err,), _ = _ask(spec, _jpeg())
    assert srv.n == 1 and srv.auth == {f"Bearer {secret}"}  # the key was sent, once
    # A 400 is the image's (quarantined); a 401 is the endpoint's: the stage stops.
    assert isinstance(err, TeacherFailed if fault == "400echo" else TeacherOutage)
    assert f"HTTP {fault[:3]}" in str(err) and secret not in str(err) and "***" in str(err)


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("fault", ["empty", "refusal", "filtered", "prose"])
def test_a_reply_that_is_no_answer_is_a_failed_request_asked_again_once(pool, fault):
    """Empty content, a refusal, a content filter, text without the fields asked for: the request failed (paid
    for, asked once more), and nothing is returned to be cached as an answer."""
    text = {"prose": "I think this is somewhere in Europe."}.get(fault, "")
    with TeacherServer(lambda img, req: text, lambda n, d: fault if fault in ("refusal", "filtered") else None) as srv:
        spec = OpenAITeacher(name="t", base_url=srv.url, model="m", backoff_s=0.0, max_retries=5, http_client=pool)
        (err,), teacher = _ask(spec, _jpeg())
    assert isinstance(err, TeacherFailed) and err.failure.kind == "reply", err
    assert srv.n == 2 and err.failure.attempts == 2
    assert teacher.usage.requests == 2 and teacher.usage.failed == 1 and teacher.usage.input_tokens > 0
    expected = {"empty": "empty reply", "refusal": "refused: I can't help", "filtered": "content filter"}
    assert expected.get(fault, "neither a JSON object") in str(err)


def test_an_endpoint_whose_first_replies_are_all_empty_stops_the_stage():
    with TeacherServer(lambda img, req: "") as srv:
        spec = OpenAITeacher(name="t", base_url=srv.url, model="m", backoff_s=0.0, max_concurrency=2)
        results, _ = _ask(spec, _jpeg(), n=8)
    outages = [r for r in results if isinstance(r, TeacherOutage)]
    assert outages and "replies was no answer (last: empty reply)" in str(outages[0])
    assert not [r for r in results if isinstance(r, CachedReply)]


@pytest.mark.parametrize("pool", POOLS)
def test_retry_after_is_capped_by_max_backoff_and_counts_toward_outage(pool, monkeypatch):
    waits = []
    real_sleep = asyncio.sleep

    async def sleep(s, *a, **k):
        if s >= 0.01:
            waits.append(s)
        return await real_sleep(min(s, 0.2), *a, **k)

    monkeypatch.setattr("builders.teachers.online.asyncio.sleep", sleep)
    with TeacherServer(lambda img, req: json.dumps(GOOD), lambda n, d: "429", retry_after="3600") as srv:
        spec = OpenAITeacher(
            name="t", base_url=srv.url, model="m", max_backoff_s=0.2, max_retries=50, outage_s=0.9, http_client=pool
        )
        (err,), _ = _ask(spec, _jpeg())
    assert waits and max(waits) <= 0.2  # never the hour the server asked for
    assert isinstance(err, TeacherOutage) and "outage_s = 0.9" in str(err) and "HTTP 429" in str(err)
    assert srv.n < 10


@pytest.mark.parametrize("pool", POOLS)
def test_tls_to_a_plain_http_port_is_a_one_line_outage(pool):
    with TeacherServer(lambda img, req: json.dumps(GOOD)) as srv:
        spec = OpenAITeacher(
            name="t", base_url=srv.url.replace("http://", "https://"), model="m", max_retries=1, http_client=pool
        )
        (err,), _ = _ask(spec, _jpeg())
    assert isinstance(err, TeacherOutage) and "TLS failed" in str(err) and "\n" not in str(err), repr(err)


@pytest.mark.skipif(not __import__("shutil").which("openssl"), reason="openssl makes the self-signed certificate")
@pytest.mark.parametrize("pool", POOLS)
def test_a_self_signed_certificate_is_a_one_line_outage(pool, tmp_path):
    import ssl
    import subprocess

    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(tmp_path / "key.pem"),
            "-out",
            str(tmp_path / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    srv = TeacherServer(lambda img, req: json.dumps(GOOD))
    srv.httpd.socket = context.wrap_socket(srv.httpd.socket, server_side=True)
    with srv:
        spec = OpenAITeacher(
            name="t", base_url=srv.url.replace("http://", "https://"), model="m", max_retries=1, http_client=pool
        )
        (err,), _ = _ask(spec, _jpeg())
    assert isinstance(err, TeacherOutage) and "TLS failed" in str(err) and "\n" not in str(err), repr(err)
    assert srv.n == 0


def test_missing_api_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(MissingApiKey, match=r"\$NO_SUCH_KEY_VAR"):
        OnlineTeacher(
            OpenAITeacher(name="t", base_url="http://127.0.0.1:9/v1", model="m", api_key_env="NO_SUCH_KEY_VAR")
        )


def test_concurrency_cap_and_request_shape():
    with TeacherServer(lambda img, req: json.dumps(GOOD), latency_s=0.05) as srv:
        spec = OpenAITeacher(
            name="t",
            base_url=srv.url,
            model="m",
            max_concurrency=3,
            max_pixels=32 * 24,
            seed=7,
            top_p=0.9,
            extra_body={"top_k": 20, "chat_template_kwargs": {"enable_thinking": False}},
        )
        replies, _ = _ask(spec, _jpeg(640, 480), n=12)
    assert all(isinstance(r, CachedReply) for r in replies)
    assert srv.max_in_flight == 3
    req = srv.requests[0]
    assert req["response_format"]["type"] == "json_schema" and req["seed"] == 7 and req["top_p"] == 0.9
    assert req["max_tokens"] == spec.max_tokens and req["model"] == "m"
    assert req["top_k"] == 20 and req["chat_template_kwargs"] == {"enable_thinking": False}  # extra_body, merged


def test_connection_pool_choice(monkeypatch):
    """auto takes the SDK's aiohttp pool when the extra is installed, else httpx; aiohttp when missing is an
    error that names the fix."""
    import openai

    spec = OpenAITeacher(name="t", base_url="http://127.0.0.1:9/v1", model="m")
    assert isinstance(http_client(spec), openai.DefaultAioHttpClient)  # auto, with the extra installed
    assert http_client(spec.model_copy(update={"http_client": "httpx"})) is None

    def missing(**_):
        raise RuntimeError("To use the aiohttp client you must have installed the package with the `aiohttp` extra")

    monkeypatch.setattr(openai, "DefaultAioHttpClient", missing)
    assert http_client(spec) is None  # auto falls back to httpx
    with pytest.raises(ValueError, match=r"openai\[aiohttp\].*http_client: httpx"):
        http_client(spec.model_copy(update={"http_client": "aiohttp"}))


def test_image_is_sent_within_the_teacher_budget():
    url = jpeg_data_url(_jpeg(640, 480), 160 * 120)
    import base64

    img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert img.width * img.height <= 160 * 120 and img.width == 160


def test_recipe_rejects_duplicate_teachers_and_hash_ignores_runtime(tmp_path):
    t = {"name": "a", "base_url": "http://h/v1", "model": "m"}
    base = {"input": {"metadata": "x.csv"}, "teachers": [t]}
    (tmp_path / "r.yaml").write_text(json.dumps(base | {"teachers": [t, t]}))
    with pytest.raises(ValueError, match="unique"):
        load_recipe(tmp_path / "r.yaml")
    r1 = load_recipe(None, {"input.metadata": "x.csv"})
    assert "teachers" not in r1.output_dict()  # data-plane recipes hash as before
    (tmp_path / "a.yaml").write_text(json.dumps(base))
    (tmp_path / "b.yaml").write_text(json.dumps(base | {"teachers": [t | {"base_url": "http://other/v1"}]}))
    (tmp_path / "c.yaml").write_text(json.dumps(base | {"teachers": [t | {"temperature": 0.1}]}))
    a, b, c = (load_recipe(tmp_path / f"{n}.yaml") for n in "abc")
    assert a.sha256() == b.sha256() != c.sha256()


def test_cache_drop_removes_replies_by_reason_model_and_key(tmp_path):
    from click.testing import CliRunner

    from builders.cli import main

    path = tmp_path / "c.sqlite"
    cache = ReplyCache(path)
    cache.put(
        CachedReply("good", "a", "v", "s1", "{}", json.dumps(GOOD), 1, 1),
        CachedReply("empty", "a", "v", "s2", "{}", "  ", 1, 0),
        CachedReply("prose", "b", "v", "s3", "{}", "Somewhere in Europe.", 1, 1),
        CachedReply("other", "b", "v", "s4", "{}", json.dumps(GOOD), 1, 1),
    )
    cache.close()

    def drop(*args: str) -> str:
        done = CliRunner().invoke(main, ["cache", "drop", *args, "--cache", str(path)])
        assert done.exit_code == 0, done.output
        return done.output

    assert drop("--reason", "unparsed", "--dry-run").startswith("would drop 2 replies")
    out = drop("--reason", "empty")
    assert "dropped 1 replies" in out and "a (empty): 1" in out
    out = drop("--model", "b", "--reason", "unparsed")
    assert "dropped 1 replies" in out and "b (unparsed): 1" in out
    assert "dropped 1 replies" in drop("--key", "other")
    cache = ReplyCache(path)
    assert [r.key for r in cache] == ["good"]
    cache.close()
    refused = CliRunner().invoke(main, ["cache", "drop", "--cache", str(path)])
    assert refused.exit_code == 2 and "give --model, --reason or --key" in refused.output
