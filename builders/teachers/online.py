"""Asking teacher LVLMs through any OpenAI-compatible endpoint.

One :class:`Teacher` per recipe entry: an ``openai.AsyncOpenAI`` client with its own retries off, a cap on
requests in flight, optional request and token rates (leaky buckets), and retries with exponential backoff and
jitter on 429, 5xx, timeouts, dropped connections and malformed bodies that honour ``Retry-After``.

Failures are told apart by whose they are:

- the **endpoint's** (connection refused or no such host before it ever answered, TLS, 401/403, 404 for the
  model or the route, the same 4xx for every request before any success): :class:`TeacherOutage` stops the
  stage at once, naming the teacher, the endpoint and the cause; nothing is quarantined for it;
- **transient** ones (429, 5xx, timeouts, dropped connections, malformed bodies) are retried behind a
  :class:`Breaker`: a teacher failing most of its recent requests is paused and probed, and the stage stops
  (:class:`TeacherOutage`, resumable) when it has not recovered within ``outage_s``;
- an **image's** (another 4xx, or retries run out): the request is *quarantined*, :class:`TeacherFailed`
  carrying a typed :class:`TeacherFailure`, which the build records as a rejection.

An exception in our own code is none of these: it propagates and stops the build with its traceback. The API
key is read from the environment variable the recipe names and is scrubbed from every message we keep.
"""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
import time
from collections import deque
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from builders.teachers.base import (
    Job,
    TeacherFailed,
    TeacherFailure,
    TeacherOutage,
    TeacherSettings,
    Usage,
)
from builders.teachers.cache import CachedReply
from builders.teachers.prompt import INSTRUCTION, SYSTEM, messages, response_format
from mp16_reason.endpoints import Endpoint
from mp16_reason.jpeg import fit_budget, jpeg_data_url

PIXELS_PER_TOKEN = 28 * 28  # Qwen2.5-VL and InternVL3 both spend about one token per 28x28 patch


class OpenAITeacher(TeacherSettings):
    """An LVLM behind an OpenAI-compatible endpoint (vLLM, ``transformers serve``, OpenAI, ...), asked online, or
    through the Batch API (``mode: batch``; :mod:`builders.teachers.batch`)."""

    kind: Literal["openai"] = "openai"
    base_url: str = Field(default="", description="endpoint root, e.g. http://localhost:8000/v1")
    model: str = Field(default="", description="model id the endpoint serves")
    api_key_env: str | None = Field(default=None, description="environment variable holding the API key, if any")
    temperature: float = Field(default=0.7, ge=0.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int = Field(default=1024, ge=1)
    seed: int | None = None
    extra_body: dict[str, Any] = Field(default_factory=dict, description="passed through to the endpoint")
    structured_output: bool = Field(default=True, description="the endpoint honours JSON-schema response_format")
    max_pixels: int = Field(
        default=768 * 28 * 28, gt=0, description="image budget sent to the teacher: the main lever on tokens and cost"
    )
    # How requests are sent; these do not change what a reply means and are left out of the recipe hash.
    http_client: Literal["auto", "aiohttp", "httpx"] = Field(
        default="auto", description="connection pool under the openai client; auto: aiohttp when installed"
    )
    requests_per_minute: float | None = Field(default=None, gt=0)
    tokens_per_minute: float | None = Field(default=None, gt=0)
    timeout_s: float = Field(default=120.0, gt=0)
    backoff_s: float = Field(default=1.0, ge=0, description="first retry delay; doubles each time, with jitter")
    max_backoff_s: float = Field(default=60.0, ge=0)
    price_input_per_1k: float | None = Field(default=None, ge=0)
    price_output_per_1k: float | None = Field(default=None, ge=0)
    expected_output_tokens: int = Field(default=400, ge=1, description="used by --estimate")
    mode: Literal["online", "batch"] = Field(
        default="online",
        description="online: requests sent as images are ready; batch: Batch API files (OpenAI bills them at half "
        "price; `vllm run-batch` runs the same files offline), uploaded, submitted and polled before curation",
    )
    batch_max_requests: int = Field(default=50_000, ge=1, description="requests per batch file (the API's limit)")
    batch_max_bytes: int = Field(
        default=200_000_000, ge=1, description="bytes per batch file (the API's limit; base64 images fill it first)"
    )
    batch_poll_s: float = Field(default=60.0, gt=0, description="seconds between looks at submitted batches")
    batch_completion_window: str = Field(default="24h", description="how long a batch may take before it expires")
    batch_price_input_per_1k: float | None = Field(default=None, ge=0, description="default: half the online price")
    batch_price_output_per_1k: float | None = Field(default=None, ge=0, description="default: half the online price")

    RUNTIME_FIELDS: ClassVar[frozenset[str]] = TeacherSettings.RUNTIME_FIELDS | {
        "base_url",
        "api_key_env",
        "http_client",
        "requests_per_minute",
        "tokens_per_minute",
        "timeout_s",
        "backoff_s",
        "max_backoff_s",
        "price_input_per_1k",
        "price_output_per_1k",
        "expected_output_tokens",
        "mode",
        "batch_max_requests",
        "batch_max_bytes",
        "batch_poll_s",
        "batch_completion_window",
        "batch_price_input_per_1k",
        "batch_price_output_per_1k",
    }

    @model_validator(mode="after")
    def _endpoint(self) -> OpenAITeacher:
        if not (self.base_url and self.model):
            raise ValueError(f"teacher {self.name!r} needs base_url and model (or another kind, e.g. kind: geoclip)")
        return self

    def where(self) -> str:
        return f"{self.model} at {self.base_url}"

    def check(self, offline: bool) -> None:
        if not offline:
            endpoint(self).key()  # a missing key fails now, not after the images are prepared

    def make(self, usage: Usage, offline: bool) -> OnlineTeacher | None:
        return None if offline or self.mode == "batch" else OnlineTeacher(self, usage)

    def request_tokens(self, width: int, height: int) -> tuple[int, int]:
        return PROMPT_TOKENS + image_tokens(width, height, self.max_pixels), self.expected_output_tokens

    def billing(self) -> str:
        return "batch" if self.mode == "batch" else ""

    def batch_body(self, jpeg: bytes) -> dict[str, Any]:
        return request_body(self, jpeg_data_url(jpeg, self.max_pixels))

    def cost(self, input_tokens: int, output_tokens: int) -> float | None:
        """Price of these tokens in this teacher's mode, or None when the recipe gives no price. A batch teacher
        pays its batch price, or half the online price when the recipe gives none (OpenAI's Batch API)."""
        price_in, price_out = self.price_input_per_1k, self.price_output_per_1k
        if self.mode == "batch":
            if self.batch_price_input_per_1k is not None or self.batch_price_output_per_1k is not None:
                price_in, price_out = self.batch_price_input_per_1k, self.batch_price_output_per_1k
            else:
                price_in = None if price_in is None else price_in / 2
                price_out = None if price_out is None else price_out / 2
        if price_in is None and price_out is None:
            return None
        return (input_tokens * (price_in or 0) + output_tokens * (price_out or 0)) / 1000


def import_http_stacks() -> None:
    """Import every HTTP library the stage's threads may load lazily (the openai client's pools, the Hub
    client under the curation models), on the calling thread, before those threads start: imported lazily, a
    request's thread and the curation thread may import one at the same moment, and one of them then meets a
    half-initialised module and fails a good reply."""
    import importlib

    for name in ("httpx", "httpx2", "httpcore", "httpcore2", "aiohttp", "huggingface_hub", "requests"):
        try:
            importlib.import_module(name)
        except ImportError:
            continue
    import openai

    getattr(openai, "DefaultAioHttpClient", None)  # the SDK's aiohttp adapter loads on first access


def image_tokens(width: int, height: int, max_pixels: int) -> int:
    w, h = fit_budget(width, height, max_pixels) if width * height > max_pixels else (width, height)
    return max(1, round(w * h / PIXELS_PER_TOKEN))


PROMPT_TOKENS = (len(SYSTEM) + len(INSTRUCTION)) // 4 + 20  # ~4 characters a token, plus chat-template tokens


def retry_after(response: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    if response is None:
        return None
    headers = response.headers
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def endpoint(spec: OpenAITeacher) -> Endpoint:
    """The teacher's server, key, timeout and retries, as every client of the project reaches one."""
    return Endpoint(
        spec.base_url,
        spec.api_key_env,
        spec.timeout_s,
        spec.max_retries,
        who=f"teacher {spec.name!r}",
        key_option="api_key_env in the recipe",
    )


def http_client(spec: OpenAITeacher) -> Any:
    """The connection pool under the teacher's client: the SDK's aiohttp one when asked for or, with ``auto``,
    when installed (``openai[aiohttp]``); else None, the SDK's default httpx pool.

    httpx's pool checks every idle connection before each request, a cost that grows with the concurrency cap;
    aiohttp's does not, which lets one event loop carry more requests a second."""
    import openai

    if spec.http_client == "httpx":
        return None
    try:
        return openai.DefaultAioHttpClient(timeout=spec.timeout_s)
    except (AttributeError, RuntimeError):  # an openai without the class, or installed without the extra
        if spec.http_client == "auto":
            return None
        raise ValueError(
            f"teacher {spec.name!r} asks for http_client: aiohttp, which this install lacks; "
            "pip install 'openai[aiohttp]', or set http_client: httpx"
        ) from None


def request_body(spec: OpenAITeacher, url: str) -> dict[str, Any]:
    """The chat-completion body asking about one image (its data URL): what an online request sends, and what a
    batch file's line holds."""
    req: dict[str, Any] = {"model": spec.model, "messages": messages(url), "temperature": spec.temperature}
    req["max_tokens"] = spec.max_tokens
    if spec.top_p is not None:
        req["top_p"] = spec.top_p
    if spec.seed is not None:
        req["seed"] = spec.seed
    if spec.structured_output:
        req["response_format"] = response_format()
    return {**req, **spec.extra_body}  # as the SDK merges ``extra_body``: endpoint-specific keys win


def client_errors() -> tuple[type[BaseException], ...]:
    """What the HTTP stacks under the SDK raise for one request: caught as that request's failure, while any
    other exception (ours) propagates."""
    import httpx
    import openai

    errors: tuple[type[BaseException], ...] = (openai.OpenAIError, httpx.HTTPError, OSError)
    try:
        import aiohttp
    except ImportError:
        return errors
    return (*errors, aiohttp.ClientError)


def connection_cause(exc: BaseException, timeout_s: float) -> tuple[str, str]:
    """What a failed connection was underneath the SDK's error (which, over aiohttp, calls a refused connection a
    timeout): ``(kind, text)`` with kind ``tls``, ``dns``, ``refused``, ``timeout`` or ``dropped``."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ssl.SSLError):
            return "tls", f"TLS failed: {getattr(e, 'reason', None) or e}"  # aiohttp's subclasses lack .reason
        if isinstance(e, socket.gaierror):
            return "dns", f"cannot resolve the host ({e.strerror or e})"
        if isinstance(e, ConnectionRefusedError):
            return "refused", "connection refused"
        e = e.__cause__ or e.__context__
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return "timeout", f"timed out after {timeout_s:g} s"
    return "dropped", f"connection failed: {exc.__cause__ or exc}"


class Breaker:
    """A circuit breaker over one teacher's transient failures.

    When more than ``threshold`` of the last ``window`` attempts failed (at least ``min_calls`` of them), the
    breaker opens: requests wait, and one at a time goes out as a probe, at growing intervals. A success closes
    it. Still open after ``outage_s``: the endpoint is down, and :meth:`admit` raises :class:`TeacherOutage`.
    """

    def __init__(
        self,
        spec: OpenAITeacher,
        usage: Usage,
        window: int = 20,
        min_calls: int = 10,
        threshold: float = 0.5,
        max_probe_s: float = 30,
    ) -> None:
        self.spec, self.usage = spec, usage
        self.min_calls, self.threshold, self.max_probe_s = min_calls, threshold, max_probe_s
        self.recent: deque[bool] = deque(maxlen=window)
        self.opened_at: float | None = None
        self.next_probe = 0.0
        self.probe_wait = 0.5
        self.probing = False
        self.last_reason = ""
        self.failing_since: float | None = None  # the first failure since the last success

    @property
    def open(self) -> bool:
        return self.opened_at is not None

    def record(self, ok: bool, reason: str = "") -> None:
        self.recent.append(ok)
        self.failing_since = None if ok else self.failing_since or time.monotonic()
        if ok:
            if self.opened_at is not None:
                self.opened_at = None
                self.recent.clear()
            return
        self.last_reason = reason or self.last_reason
        failed = self.recent.count(False)
        if self.opened_at is None and len(self.recent) >= self.min_calls and failed > self.threshold * len(self.recent):
            self.opened_at = time.monotonic()
            self.next_probe, self.probe_wait = self.opened_at + self.probe_wait, 0.5
            self.usage.paused += 1

    def within_outage(self, wait: float) -> None:
        """Raise :class:`TeacherOutage` when failures with no success between them, waits included (a 429's
        ``Retry-After``), would last past ``outage_s``."""
        if self.failing_since is not None and time.monotonic() + wait - self.failing_since > self.spec.outage_s:
            raise TeacherOutage(
                self.spec,
                f"no request succeeded within outage_s = {self.spec.outage_s:g} s (last failure: {self.last_reason})",
                "bring the endpoint back, or lower its load (max_concurrency, requests_per_minute), or raise outage_s",
            )

    async def admit(self) -> bool:
        """Wait until a request may go out; True when it goes as the breaker's probe."""
        while self.opened_at is not None:
            now = time.monotonic()
            if now - self.opened_at > self.spec.outage_s:
                raise TeacherOutage(
                    self.spec,
                    f"most requests failed and the endpoint did not recover within outage_s = {self.spec.outage_s:g} s "
                    f"(last failure: {self.last_reason})",
                    "bring the endpoint back (or raise outage_s)",
                )
            if not self.probing and now >= self.next_probe:
                self.probing = True
                return True
            await asyncio.sleep(min(0.25, max(0.01, self.next_probe - now)))
        return False

    def probed(self, ok: bool) -> None:
        self.probing = False
        if not ok:
            self.probe_wait = min(self.max_probe_s, self.probe_wait * 2)
            self.next_probe = time.monotonic() + self.probe_wait


def no_answer(refusal: str | None, finish_reason: str | None, problem: str | None, max_tokens: int) -> str | None:
    """Why a completed reply is no answer (online or in a batch's results): a refusal, a content filter, or
    ``problem`` with its text (:meth:`TeacherSettings.unusable`); None when it is an answer."""
    if refusal:
        return f"refused: {refusal[:200]}"
    if finish_reason == "content_filter":
        return "refused: stopped by the endpoint's content filter"
    if problem and finish_reason == "length":
        return f"{problem} (cut off at max_tokens = {max_tokens})"
    return problem


class NoAnswer(Exception):
    """A completed reply that is no answer: empty, a refusal, or not the format the prompt asks for."""


class OnlineTeacher:
    """An :class:`OpenAITeacher` asked online: its client, concurrency cap, rates, retries and breaker."""

    # Before any success, this many requests failing with one and the same 4xx (or with replies that are no
    # answer) are the endpoint's failure.
    SAME_4XX = 5
    NO_ANSWER_RETRIES = 1  # a reply that is no answer costs as much as one that is: asked again once only

    def __init__(self, spec: OpenAITeacher, usage: Usage | None = None) -> None:
        from aiolimiter import AsyncLimiter

        self.spec = spec
        self.endpoint = endpoint(spec)
        # Retries are ours (max_retries=0): failures are classified first, and the breaker sees each one.
        self.client = self.endpoint.async_client(max_retries=0, http_client=http_client(spec))
        self.slots = asyncio.Semaphore(spec.max_concurrency)
        self.request_rate = AsyncLimiter(spec.requests_per_minute, 60) if spec.requests_per_minute else None
        self.token_rate = AsyncLimiter(spec.tokens_per_minute, 60) if spec.tokens_per_minute else None
        self.usage = usage if usage is not None else Usage()
        self.breaker = Breaker(spec, self.usage)
        self.answered = False  # has the endpoint ever answered a request of this run
        self.early_4xx: list[int] = []
        self.early_no_answers: list[str] = []

    def _connection_failure(self, exc: BaseException) -> tuple[bool, str, str]:
        """(retryable, kind, reason) of a failed connection; raises :class:`TeacherOutage` when it is the
        endpoint's (TLS, or nothing listening before it ever answered)."""
        cause, reason = connection_cause(exc, self.spec.timeout_s)
        if cause == "tls" or (cause in ("refused", "dns") and not self.answered):
            raise self._outage(reason, f"check base_url {self.spec.base_url!r} and that the server is up") from None
        return True, "timeout" if cause == "timeout" else "connection", reason

    def _paid(self, usage: Any) -> None:
        """A completed request is paid for, whether or not its reply is an answer."""
        self.usage.requests += 1
        self.usage.input_tokens += int(getattr(usage, "prompt_tokens", 0) or 0)
        self.usage.output_tokens += int(getattr(usage, "completion_tokens", 0) or 0)

    def _no_answer(self, choice: Any, text: str) -> str | None:
        refusal = getattr(choice.message, "refusal", None)
        return no_answer(
            self.scrub(str(refusal)) if refusal else None,
            choice.finish_reason,
            self.spec.unusable(text),
            self.spec.max_tokens,
        )

    def scrub(self, text: str) -> str:
        return self.endpoint.scrub(text)

    def _outage(self, cause: str, fix: str = "") -> TeacherOutage:
        return TeacherOutage(self.spec, self.scrub(cause), fix)

    def _status_failure(self, exc: Any) -> tuple[bool, str]:
        """(retryable, reason) of an HTTP error; raises :class:`TeacherOutage` for the endpoint's own."""
        s, code = self.spec, exc.status_code
        message = self.scrub(str(exc.message)[:300])
        if code in (401, 403):
            fix = f"check {self.endpoint.describe_key()} and the account's access"
            raise self._outage(f"HTTP {code}, access refused ({message})", fix)
        if code == 404:
            fix = f"check that base_url ends in /v1 and that the endpoint serves model {s.model!r}"
            raise self._outage(f"HTTP 404 ({message})", fix)
        retryable = code in (408, 409, 429) or code >= 500
        if not retryable and not self.answered:
            self.early_4xx.append(code)
            if len(self.early_4xx) >= self.SAME_4XX and len(set(self.early_4xx)) == 1:
                raise self._outage(f"HTTP {code} for each of the first {len(self.early_4xx)} requests ({message})")
        return retryable, f"HTTP {code}: {message}"

    async def ask(self, job: Job) -> CachedReply:
        """One reply for one image; raises :class:`TeacherFailed` when it cannot be had (quarantine) and
        :class:`TeacherOutage` when the endpoint itself is failing."""
        import openai
        from openai.types.chat import ChatCompletion

        s = self.spec
        url = await asyncio.to_thread(jpeg_data_url, job.jpeg, s.max_pixels)
        expected_tokens = PROMPT_TOKENS + image_tokens(job.width, job.height, s.max_pixels) + s.max_tokens
        request = request_body(s, url)
        attempt = 0
        while True:
            wait: float | None = None
            probe = await self.breaker.admit()
            try:
                async with self.slots:
                    if self.request_rate:
                        await self.request_rate.acquire()
                    if self.token_rate:
                        await self.token_rate.acquire(min(expected_tokens, s.tokens_per_minute or expected_tokens))
                    # Not ``chat.completions.create``: it walks every request through the SDK's typed-parameter
                    # transform (~2 ms of event-loop time each, a third of the loop at 128 requests/s). Ours is
                    # plain JSON already; ``post`` keeps the pool, auth, error classes and response model.
                    resp = await self.client.post(
                        "/chat/completions",
                        body=request,
                        cast_to=ChatCompletion,
                        options={"security": {"bearer_auth": True}},
                    )
                if not resp.choices:
                    raise ValueError("the reply has no choices")
                text = resp.choices[0].message.content or ""
                usage = resp.usage
                self._paid(usage)
                if problem := self._no_answer(resp.choices[0], text):
                    raise NoAnswer(problem)
            except openai.APIStatusError as exc:
                retryable, reason = self._status_failure(exc)
                wait = retry_after(exc.response)
                kind = "http"
            except openai.APIConnectionError as exc:  # timeouts included
                retryable, kind, reason = self._connection_failure(exc)
            except NoAnswer as exc:  # answered, but not an answer: asked again once, never cached
                reason, kind = str(exc), "reply"
                retryable = attempt < self.NO_ANSWER_RETRIES
                self.breaker.record(True)  # the endpoint is up: this is the reply's failure, not the endpoint's
                if probe:
                    self.breaker.probed(True)
                    probe = False
                if not self.answered:
                    self.early_no_answers.append(reason)
                    if len(self.early_no_answers) >= self.SAME_4XX:
                        raise self._outage(
                            f"each of the first {len(self.early_no_answers)} replies was no answer (last: {reason})",
                            f"check that {s.model!r} is a vision-language chat model and that max_tokens "
                            f"({s.max_tokens}) leaves room for the answer",
                        ) from None
            except (openai.APIResponseValidationError, ValueError) as exc:  # the body is not a chat completion
                retryable, kind = True, "malformed"
                reason = f"malformed response: {type(exc).__name__}: {str(exc)[:300]}"
            except client_errors() as exc:  # what an HTTP stack raises past the SDK (aiohttp's TLS errors, ...)
                retryable, kind, reason = self._connection_failure(exc)
            else:
                self.answered = True
                self.breaker.record(True)
                if probe:
                    self.breaker.probed(True)
                return s.reply(
                    job.image_sha256,
                    text,
                    int(getattr(usage, "prompt_tokens", 0) or 0),
                    int(getattr(usage, "completion_tokens", 0) or 0),
                )
            reason = self.scrub(reason)
            if probe:  # the probe's failure is the outage's, not this image's: it costs no attempt
                self.breaker.probed(False)
                continue
            if retryable and kind != "reply":
                self.breaker.record(False, reason)
            attempt += 1
            if not retryable or attempt > s.max_retries:
                self.usage.failed += 1
                raise TeacherFailed(TeacherFailure(s.name, reason, attempt, kind))  # type: ignore[arg-type]
            self.usage.retries += 1
            if wait is None:  # exponential backoff with full jitter
                wait = random.uniform(0, min(s.max_backoff_s, s.backoff_s * 2 ** (attempt - 1)))
            wait = min(wait, s.max_backoff_s)  # a Retry-After too: the recipe bounds every wait
            self.breaker.within_outage(wait)
            await asyncio.sleep(wait)

    async def close(self) -> None:
        await self.client.close()
