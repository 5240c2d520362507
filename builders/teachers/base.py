"""The teacher plug-in point: a kind of teacher is a settings class (a recipe's ``teachers:`` entry, picked by
its ``kind``) that knows what decides its replies, how to check it can run, what answers its jobs and how to
read a reply into the record's :class:`~mp16_reason.schema.TeacherAnswer`.

Kinds shipped: ``openai`` (any OpenAI-compatible endpoint, online or through the Batch API;
:mod:`builders.teachers.online`) and ``geoclip`` (GeoCLIP in the build's process; :mod:`builders.teachers.geoclip`).
Another package adds one by an entry point in the group ``mp16_reason.teachers`` naming its settings class
(``my_pkg.teacher:MySettings``), or by :func:`builders.teachers.registry.register` in-process; the recipe then
takes ``kind: my-kind``.

A teacher answers :class:`Job` s with ``await teacher.ask(job)`` -> a :class:`~builders.teachers.cache.CachedReply`,
raises :class:`TeacherFailed` (this image's request failed: quarantined) or :class:`TeacherOutage` (the
teacher itself is failing: the stage stops), and lets any other exception through (a bug, or a setting to
fix: the build stops with it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_serializer

from builders.stops import BuildStopped
from builders.teachers.cache import CachedReply, cache_key
from builders.teachers.prompt import PROMPT_VERSION, parse_reply, reply_problem
from mp16_reason.schema import Entity, TeacherAnswer


@dataclass(frozen=True)
class Job:
    """One image to ask a teacher about: its content hash, the prepared JPEG and its size."""

    image_sha256: str
    jpeg: bytes
    width: int
    height: int


@dataclass
class Usage:
    """What one teacher cost in a run."""

    requests: int = 0  # completed requests (paid for)
    retries: int = 0
    failed: int = 0  # quarantined
    input_tokens: int = 0
    output_tokens: int = 0
    paused: int = 0  # times the breaker paused the teacher (most recent requests failing)


@dataclass(frozen=True)
class TeacherFailure:
    """Why one teacher gave no answer about one image: what the build records as the image's rejection reason."""

    teacher: str
    reason: str
    attempts: int = 1
    kind: Literal["http", "timeout", "connection", "malformed", "reply", "offline", "batch", "local", "duplicate"] = (
        "http"  # reply: the endpoint answered, but with no answer (empty, a refusal, not the asked format)
    )

    def __str__(self) -> str:
        tries = f" (after {self.attempts} attempt(s))" if self.attempts else ""
        return f"teacher {self.teacher}: {self.reason}{tries}"


class TeacherFailed(Exception):
    """A request that could not be completed (after retries, or at once when retrying cannot help): quarantined."""

    def __init__(self, failure: TeacherFailure) -> None:
        super().__init__(str(failure))
        self.failure = failure


class TeacherOutage(BuildStopped):
    """The teacher, not an image, is failing: the stage stops (resumably) and nothing is quarantined for it."""

    def __init__(self, spec: TeacherSettings, cause: str, fix: str = "") -> None:
        super().__init__(
            f"teacher {spec.name!r} ({spec.where()}): {cause}. The build stopped before sealing anything; "
            f"{fix or 'fix the endpoint'}, then run the same command again to resume"
        )
        self.teacher = spec.name


class Teacher(Protocol):
    usage: Usage

    async def ask(self, job: Job) -> CachedReply: ...

    async def close(self) -> None: ...


class TeacherSettings(BaseModel):
    """What every kind of teacher has. ``RUNTIME_FIELDS`` name the settings that decide how requests are sent,
    not what a reply says: they stay out of the cache key and the recipe hash."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="short name used in records and logs")
    kind: str
    model: str = Field(default="", description="the model's name, recorded with every answer")
    max_concurrency: int = Field(default=16, ge=1, description="requests (or images) in flight")
    max_retries: int = Field(default=6, ge=0)
    outage_s: float = Field(
        default=300.0,
        gt=0,
        description="a teacher failing most of its requests is paused and probed; not recovered within this many "
        "seconds, the build stops (resumably)",
    )
    max_quarantined: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="the build never seals while more than this share of a teacher's requests are quarantined: it "
        "stops with the counts by reason, and the rerun asks them again",
    )

    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"max_concurrency", "max_retries", "outage_s", "max_quarantined"}
    )
    reasons: ClassVar[bool] = True  # writes reasoning (an LVLM); False: coordinates only, like GeoCLIP

    @model_serializer(mode="wrap")
    def _with_kind(self, handler: Any) -> Any:
        """Its kind is always written (a dump without defaults too): it is what reads the entry back."""
        data = handler(self)
        return {"kind": self.kind, **data} if isinstance(data, dict) else data

    def request_params(self) -> dict[str, Any]:
        """What, besides the image and the prompt, decides a reply (the cache key covers exactly this)."""
        params = self.model_dump(mode="json", exclude=set(self.RUNTIME_FIELDS) | {"name", "model", "kind"})
        params.pop("kind")
        return params

    def key(self, image_sha256: str) -> str:
        """The cache key of this teacher's reply about one image."""
        return cache_key(image_sha256, PROMPT_VERSION, self.model, self.request_params())

    def reply(
        self, image_sha256: str, text: str, input_tokens: int = 0, output_tokens: int = 0, origin: str = "endpoint"
    ) -> CachedReply:
        """A reply of this teacher about one image, as the cache stores it."""
        return CachedReply(
            key=self.key(image_sha256),
            model=self.model,
            prompt_version=PROMPT_VERSION,
            image_sha256=image_sha256,
            params=json.dumps(self.request_params(), sort_keys=True, separators=(",", ":")),
            text=text,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            origin=origin,
        )

    def where(self) -> str:
        """Where it runs, for messages."""
        return f"{self.model or self.kind}, {self.kind}"

    def check(self, offline: bool) -> None:
        """Raise, before any work, when this teacher cannot run here (a package, a key)."""

    def make(self, usage: Usage, offline: bool) -> Teacher | None:
        """What answers this teacher's jobs in this run; None when the cache alone does (offline, batch)."""
        raise NotImplementedError

    def answer(self, reply: CachedReply) -> TeacherAnswer:
        """A reply, read into the record's answer: by default, an LVLM's reply to the prompt of
        :mod:`builders.teachers.prompt` (raw text kept only when unparsed). Coordinate teachers override it."""
        parsed = parse_reply(reply.text)
        base = {
            "teacher": self.name,
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

    def unusable(self, text: str) -> str | None:
        """Why a reply's text is no answer (empty, or without the fields the prompt asks for), or None: such a
        reply is a failed request, never cached. Coordinate teachers, whose replies are not LVLM text, override."""
        return reply_problem(text)

    # -- hooks the stage and the commands call; a kind overrides what applies to it ----------------------------
    def request_tokens(self, width: int, height: int) -> tuple[int, int] | None:
        """(input, output) tokens of one request about an image of this size, for ``build --estimate``; None
        for a kind that sends no paid request (it runs in the build's process, as GeoCLIP does)."""
        return None

    def billing(self) -> str:
        """How the estimate's price is billed, when not online prices (``"batch"``); empty otherwise."""
        return ""

    def batch_body(self, jpeg: bytes) -> dict[str, Any] | None:
        """The chat-completions body asking about one image (the prepared JPEG), for ``cache export-requests``
        and batch files; None for a kind whose requests cannot be exported."""
        return None

    def exports_requests(self) -> bool:
        """Whether :meth:`batch_body` is this kind's own: its missing replies can be exported as requests."""
        return type(self).batch_body is not TeacherSettings.batch_body

    def cost(self, input_tokens: int, output_tokens: int) -> float | None:
        """Price of these tokens, or None when unknown."""
        return None
