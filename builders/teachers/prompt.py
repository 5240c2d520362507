"""What a teacher model is asked, and how its reply is read.

The prompt is versioned: ``PROMPT_VERSION`` is part of every cache key and every record, so a change to the
wording below must come with a new version. A reply is read, in order, as JSON (the whole text, a fenced
block, or the first balanced ``{...}`` in free text) and then as the GLOBE tag format
``<think>…</think><answer>country: …\\ncity: …</answer>``. A reply that fits neither is *unparsed*: it is
kept with its raw text and never turned into a default answer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from mp16_reason.answer import parse_answer
from mp16_reason.schema import TeacherReply, teacher_reply_schema

PROMPT_VERSION = "teacher-v1"

SYSTEM = "You are an expert in image geolocation. You reason only from what is visible in the photo."

INSTRUCTION = (
    "Study this photo and decide where it was taken.\n"
    "1. Judge whether the location can be inferred from what is visible (landmarks, signs and writing, "
    "architecture, vehicles, vegetation, terrain). A close-up of food or an indoor room usually cannot.\n"
    "2. Reason step by step, naming only cues that are actually visible.\n"
    "3. List the visual entities your reasoning relies on, each with a category: architecture, signage, text, "
    "vehicle, vegetation, landscape, landmark, people or other.\n"
    "4. Give the country and the city in English; coordinates if you can.\n"
    "Reply with a single JSON object and nothing else, with these keys: "
    '"localizable" (true or false), "localizability" (0 to 1), "reasoning" (string), '
    '"entities" (list of {"text": ..., "category": ...}), "country", "city" (strings, "" if unknown), '
    '"lat", "lon" (numbers or null).'
)

_FENCE = re.compile(r"```(?:json)?\s*(\{.*?\})\s*```", re.S | re.I)


def messages(image_data_url: str) -> list[dict[str, Any]]:
    """The chat messages for one image (an OpenAI ``image_url`` part, usually a base64 ``data:`` URL)."""
    return [
        {"role": "system", "content": SYSTEM},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": image_data_url}},
                {"type": "text", "text": INSTRUCTION},
            ],
        },
    ]


def response_format() -> dict[str, Any]:
    """The ``response_format`` for endpoints with JSON-schema structured output (vLLM, OpenAI)."""
    return {
        "type": "json_schema",
        "json_schema": {"name": "teacher_reply", "schema": teacher_reply_schema(), "strict": True},
    }


@dataclass(frozen=True)
class ParsedReply:
    """A reply read into the schema's fields; ``localizable``/``localizability`` are None when the reply was in
    the tag format, which has no judgement. ``error`` is set (and every other field empty) when unreadable."""

    reply: TeacherReply | None
    localizable: bool | None = None
    localizability: float | None = None
    error: str = ""


def _balanced_objects(text: str) -> list[str]:
    """Every top-level ``{...}`` span in ``text`` (string-aware brace matching)."""
    spans, depth, start, in_str, escaped = [], 0, -1, False, False
    for i, ch in enumerate(text):
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                spans.append(text[start : i + 1])
    return spans


def _json_candidates(text: str) -> list[Any]:
    out = []
    for chunk in [text.strip(), *(m.group(1) for m in _FENCE.finditer(text)), *_balanced_objects(text)]:
        try:
            value = json.loads(chunk)
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


def _from_json(obj: dict[str, Any]) -> TeacherReply:
    data = dict(obj)
    data.setdefault("entities", [])
    data.setdefault("lat", None)
    data.setdefault("lon", None)
    data["entities"] = [
        {"text": e, "category": "other"} if isinstance(e, str) else {"category": "other", **e}
        for e in data["entities"] or []
    ]
    for key in ("country", "city", "reasoning"):
        if key in data and data[key] is None:  # an explicit null is "unknown"; a missing key stays an error
            data[key] = ""
    return TeacherReply.model_validate({k: v for k, v in data.items() if k in TeacherReply.model_fields})


def parse_reply(text: str | None) -> ParsedReply:
    text = text or ""
    if not text.strip():
        return ParsedReply(None, error="empty reply")
    problems = []
    for obj in _json_candidates(text):
        try:
            reply = _from_json(obj)
        except ValidationError as exc:
            problems.append("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
            continue
        return ParsedReply(reply, reply.localizable, reply.localizability)
    tagged = parse_answer(text)
    if tagged.tagged and tagged.parsed and tagged.think:
        reply = TeacherReply.model_construct(
            localizable=False,  # unused: the tag format carries no judgement (see ParsedReply)
            localizability=0.0,
            reasoning=tagged.think,
            entities=[],
            country=tagged.country,
            city=tagged.city,
            lat=tagged.lat,
            lon=tagged.lon,
        )
        return ParsedReply(reply, None, None)
    if problems:
        return ParsedReply(None, error=f"JSON does not fit the reply schema: {problems[0]}")
    return ParsedReply(None, error="neither a JSON object nor the <think>/<answer> format")


def reply_problem(text: str | None) -> str | None:
    """Why a reply's text is not an answer in the prompt's format (empty included), or None when it is one."""
    parsed = parse_reply(text)
    return None if parsed.reply is not None else parsed.error or "not an answer"
