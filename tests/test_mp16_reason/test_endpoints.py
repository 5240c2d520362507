"""Every OpenAI client of the project reaches its endpoint through one helper, with one key rule: a named
variable must be set, and no name sends no key (never the OpenAI key by accident)."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from teacher_server import TeacherServer

from mp16_reason.endpoints import Endpoint, MissingApiKey
from mp16_reason.storage import location

SECRET = "sk-endpoint-secret-42"
pytest.importorskip("openai", reason="the endpoint clients need openai (pip install -e '.[build]')")


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (30, 120, 200)).save(buf, "JPEG")
    return buf.getvalue()


def _clients(url: str, var: str | None, work=None) -> dict:
    """The four clients, each built as its users build it, with the key variable ``var``."""
    from builders.teachers.batch import BatchRunner
    from builders.teachers.online import OnlineTeacher, OpenAITeacher
    from globe_train.localizability import EndpointJudge
    from globe_train.predictors import EndpointPredictor

    spec = OpenAITeacher(name="t", base_url=url, model="m", api_key_env=var, max_retries=0)
    return {
        "teacher": lambda: OnlineTeacher(spec),
        "batch": lambda: BatchRunner(spec, location(work), cache=None, progress=False),
        "predictor": lambda: EndpointPredictor(url, "m", api_key_env=var, max_retries=0),
        "judge": lambda: EndpointJudge(url, "m", api_key_env=var, max_retries=0),
    }


@pytest.mark.parametrize("which", ["teacher", "batch", "predictor", "judge"])
def test_a_named_key_variable_that_is_unset_fails_at_construction_naming_it(which, monkeypatch, tmp_path):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(MissingApiKey, match=r"\$NO_SUCH_KEY_VAR.*not set"):
        _clients("http://127.0.0.1:9/v1", "NO_SUCH_KEY_VAR", tmp_path)[which]()


@pytest.mark.parametrize("which", ["teacher", "batch", "predictor", "judge"])
def test_each_client_sends_the_named_key_and_none_without_a_name(which, monkeypatch, tmp_path):
    monkeypatch.setenv("MY_KEY", SECRET)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-leave")  # the SDK's default variable, never read unasked
    for var, sent in (("MY_KEY", f"Bearer {SECRET}"), (None, "Bearer EMPTY")):
        client = _clients("http://127.0.0.1:9/v1", var, tmp_path)[which]()
        assert client.endpoint.key() == sent.removeprefix("Bearer ")
        openai_client = getattr(client, "client", None) or client.endpoint.async_client()
        assert openai_client.api_key == sent.removeprefix("Bearer ")


def test_the_predictor_sends_the_key_over_the_wire_and_errors_never_show_it(monkeypatch):
    import asyncio

    from globe_train.benchmarks import EvalItem
    from globe_train.predictors import EndpointPredictor

    monkeypatch.setenv("MY_KEY", SECRET)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-leave")
    item = EvalItem(id="a", lat=0.0, lon=0.0, image=_jpeg())
    with TeacherServer(lambda im, req: "<answer>country: France\ncity: Paris</answer>") as srv:
        asyncio.run(EndpointPredictor(srv.url, "m", api_key_env="MY_KEY", max_retries=0).apredict(item))
        asyncio.run(EndpointPredictor(srv.url, "m", max_retries=0).apredict(item))
    assert srv.auth == {f"Bearer {SECRET}", "Bearer EMPTY"}
    with TeacherServer(lambda im, req: "x", fault=lambda n, d: "401echo") as srv:
        text, error = asyncio.run(EndpointPredictor(srv.url, "m", api_key_env="MY_KEY", max_retries=0).apredict(item))
    assert text == "" and "401" in error and SECRET not in error
    assert Endpoint(srv.url, "MY_KEY").scrub(f"gateway said: bad key {SECRET}") == "gateway said: bad key ***"
