"""Asking teacher LVLMs through any OpenAI-compatible endpoint.

One :class:`Teacher` per recipe entry: an ``openai.AsyncOpenAI`` client with its own retries off, a cap on
requests in flight, optional request and token rates (leaky buckets), and retries with exponential backoff and
jitter on 429, 5xx, timeouts, dropped connections and malformed bodies that honour ``Retry-After``. A request
that still fails is *quarantined*: :class:`TeacherFailed` carries the reason, and the build records it. The
API key is read from the environment variable the recipe names and is scrubbed from every message we keep.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import openai
from aiolimiter import AsyncLimiter
from openai.types.chat import ChatCompletion

from mp16_reason.jpeg import fit_budget
from mp16_reason.schema import Entity, GeoGuess, TeacherAnswer

from .recipe import TeacherSpec
from .teacher_cache import CachedReply, cache_key
from .teacher_prompt import INSTRUCTION, PROMPT_VERSION, SYSTEM, messages, parse_reply, response_format

PIXELS_PER_TOKEN = 28 * 28  # Qwen2.5-VL and InternVL3 both spend about one token per 28x28 patch


class TeacherFailed(Exception):
    """A request that could not be completed (after retries, or at once when retrying cannot help)."""

    def __init__(self, teacher: str, reason: str, attempts: int) -> None:
        super().__init__(f"teacher {teacher}: {reason} (after {attempts} attempt(s))")
        self.teacher, self.reason, self.attempts = teacher, reason, attempts


class MissingApiKey(ValueError):
    pass


@dataclass
class Usage:
    """What one teacher cost in a run."""

    requests: int = 0  # completed requests (paid for)
    retries: int = 0
    failed: int = 0  # quarantined
    input_tokens: int = 0
    output_tokens: int = 0


def spec_key(spec: TeacherSpec, image_sha256: str) -> str:
    """The cache key of this teacher's reply about one image."""
    return cache_key(image_sha256, PROMPT_VERSION, spec.model, spec.request_params())


def new_reply(
    spec: TeacherSpec, image_sha256: str, text: str, input_tokens: int = 0, output_tokens: int = 0, origin="endpoint"
) -> CachedReply:
    """A reply of this teacher about one image, as the cache stores it."""
    return CachedReply(
        key=spec_key(spec, image_sha256),
        model=spec.model,
        prompt_version=PROMPT_VERSION,
        image_sha256=image_sha256,
        params=json.dumps(spec.request_params(), sort_keys=True, separators=(",", ":")),
        text=text,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        origin=origin,
    )


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


def api_key(spec: TeacherSpec) -> str:
    """The teacher's key from the environment variable the recipe names ("EMPTY" when it names none)."""
    if not spec.api_key_env:
        return "EMPTY"  # vLLM and transformers serve accept any key
    key = os.environ.get(spec.api_key_env, "")
    if not key:
        raise MissingApiKey(
            f"teacher {spec.name!r} reads its API key from ${spec.api_key_env}, which is not set; "
            f"export it, or drop api_key_env from the recipe for endpoints without keys"
        )
    return key


def http_client(spec: TeacherSpec) -> Any:
    """The connection pool under the teacher's client: the SDK's aiohttp one when asked for or, with ``auto``,
    when installed (``openai[aiohttp]``); else None, the SDK's default httpx pool.

    httpx's pool checks every idle connection before each request, a cost that grows with the concurrency cap;
    aiohttp's does not, which lets one event loop carry more requests a second."""
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


def request_body(spec: TeacherSpec, url: str) -> dict[str, Any]:
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


class Teacher:
    def __init__(self, spec: TeacherSpec, usage: Usage | None = None) -> None:
        self.spec = spec
        key = api_key(spec)
        self._secret = key if spec.api_key_env else ""
        self.client = openai.AsyncOpenAI(
            base_url=spec.base_url, api_key=key, max_retries=0, timeout=spec.timeout_s, http_client=http_client(spec)
        )
        self.slots = asyncio.Semaphore(spec.max_concurrency)
        self.request_rate = AsyncLimiter(spec.requests_per_minute, 60) if spec.requests_per_minute else None
        self.token_rate = AsyncLimiter(spec.tokens_per_minute, 60) if spec.tokens_per_minute else None
        self.usage = usage if usage is not None else Usage()

    def scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    async def ask(self, image_sha256: str, url: str, expected_tokens: int) -> CachedReply:
        """One reply for one image; raises :class:`TeacherFailed` when it cannot be had."""
        s = self.spec
        request = request_body(s, url)
        for attempt in range(s.max_retries + 1):
            wait: float | None = None
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
                reply = new_reply(
                    s,
                    image_sha256,
                    text,
                    int(getattr(usage, "prompt_tokens", 0) or 0),
                    int(getattr(usage, "completion_tokens", 0) or 0),
                )
                self.usage.requests += 1
                self.usage.input_tokens += reply.input_tokens
                self.usage.output_tokens += reply.output_tokens
                return reply
            except openai.APIStatusError as exc:
                code = exc.status_code
                retryable = code in (408, 409, 429) or code >= 500
                wait = retry_after(exc.response)
                reason = f"HTTP {code}: {str(exc.message)[:300]}"
            except openai.APITimeoutError:
                retryable, reason = True, f"timed out after {s.timeout_s:g} s"
            except openai.APIConnectionError as exc:
                retryable, reason = True, f"connection failed: {exc.__cause__ or exc}"
            except (openai.APIResponseValidationError, ValueError, AttributeError, TypeError) as exc:
                retryable, reason = True, f"malformed response: {type(exc).__name__}: {str(exc)[:300]}"
            reason = self.scrub(reason)
            if not retryable or attempt == s.max_retries:
                self.usage.failed += 1
                raise TeacherFailed(s.name, reason, attempt + 1)
            self.usage.retries += 1
            if wait is None:  # exponential backoff with full jitter
                wait = random.uniform(0, min(s.max_backoff_s, s.backoff_s * 2**attempt))
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        await self.client.close()


def to_answer(spec: TeacherSpec, reply: CachedReply) -> TeacherAnswer:
    """A reply, parsed into the record's :class:`TeacherAnswer` (raw text kept only when unparsed)."""
    if spec.kind == "geoclip":
        return geoclip_answer(spec, reply)
    parsed = parse_reply(reply.text)
    base = {
        "teacher": spec.name,
        "model": reply.model,
        "prompt_version": reply.prompt_version,
        "input_tokens": reply.input_tokens,
        "output_tokens": reply.output_tokens,
        "origin": reply.origin,
    }
    if parsed.reply is None:
        return TeacherAnswer(**base, parsed=False, raw=reply.text)
    r = parsed.reply
    return TeacherAnswer(
        **base,
        parsed=True,
        localizable=parsed.localizable,
        localizability=parsed.localizability,
        reasoning=r.reasoning.strip(),
        entities=[Entity(text=e.text.strip(), category=e.category) for e in r.entities if e.text.strip()],
        country=r.country.strip(),
        city=r.city.strip(),
        lat=r.lat,
        lon=r.lon,
    )


def geoclip_answer(spec: TeacherSpec, reply: CachedReply) -> TeacherAnswer:
    """GeoCLIP's reply: its best point (with the country and city the gazetteer places there), its probability as
    the confidence, and the ranked guesses."""
    from mp16_reason.gazetteer import default_gazetteer  # loaded once, by the build already

    guesses = [GeoGuess(**g) for g in json.loads(reply.text)["top_k"]]
    best = guesses[0]
    place = default_gazetteer().reverse(best.lat, best.lon)
    return TeacherAnswer(
        teacher=spec.name,
        model=reply.model,
        parsed=True,
        country=place.country or "",
        city=place.city or "",
        lat=best.lat,
        lon=best.lon,
        confidence=best.probability,
        top_k=guesses,
        origin="local",
    )
