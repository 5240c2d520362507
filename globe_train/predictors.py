"""Where answers come from: an OpenAI-compatible endpoint, a transformers model, or a predictions file.

Each predictor turns an :class:`~globe_train.benchmarks.EvalItem` into the model's raw text. Failures are
returned as an error string, never as an empty answer, so the evaluation can count them.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import hashlib
import io
import json
from pathlib import Path

from mp16_reason.endpoints import Endpoint
from mp16_reason.jpeg import downscale_jpeg, jpeg_data_url

from .benchmarks import EvalItem, repeated
from .protocols import PROTOCOLS, Protocol


def image_bytes(item: EvalItem, max_pixels: int | None = None) -> bytes:
    data = item.image if isinstance(item.image, bytes) else Path(item.image).read_bytes()
    return downscale_jpeg(data, max_pixels)


def image_url(item: EvalItem, protocol: Protocol, max_pixels: int | None = None) -> str:
    """The image as the protocol sends it: the file's own bytes (as released), or a JPEG within the budget."""
    if protocol.raw_image:
        data = item.image if isinstance(item.image, bytes) else Path(item.image).read_bytes()
        return protocol.data_url_prefix + base64.b64encode(data).decode()
    return jpeg_data_url(image_bytes(item, max_pixels))


def messages(protocol: Protocol, image_part: dict) -> list[dict]:
    """The system prompt, then one user message: the image before the text (the release's order)."""
    user = {"role": "user", "content": [image_part, {"type": "text", "text": protocol.prompt}]}
    return ([{"role": "system", "content": protocol.system}] if protocol.system else []) + [user]


class EndpointPredictor:
    """Any OpenAI-compatible chat endpoint (vLLM, ``transformers serve``, OpenAI). The openai client retries
    429/5xx/timeouts with exponential backoff and honours Retry-After; ``concurrency`` caps requests in flight.
    ``protocol`` sets the messages and the sampling."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = None,
        concurrency: int = 16,
        max_retries: int = 5,
        timeout_s: float = 120.0,
        protocol: Protocol | None = None,
        max_pixels: int | None = None,
        extra_body: dict | None = None,
    ) -> None:
        self.endpoint = Endpoint(base_url, api_key_env, timeout_s, max_retries, key_option="--api-key-env")
        self.client = self.endpoint.async_client()
        self.protocol = protocol or PROTOCOLS["eval"]["ours"]
        p = self.protocol
        self.model, self.concurrency = model, concurrency
        self.sampling: dict = {"temperature": p.temperature, "max_tokens": p.max_tokens}
        if p.frequency_penalty:
            self.sampling["frequency_penalty"] = p.frequency_penalty
        if p.presence_penalty:
            self.sampling["presence_penalty"] = p.presence_penalty
        self.max_pixels, self.extra_body = max_pixels, extra_body
        self.name = f"{model} @ {base_url}"

    async def apredict(self, item: EvalItem) -> tuple[str, str]:
        try:
            url = await asyncio.to_thread(image_url, item, self.protocol, self.max_pixels)
        except OSError as exc:
            return "", f"image unreadable: {exc}"
        try:
            reply = await self.client.chat.completions.create(
                model=self.model,
                messages=messages(self.protocol, {"type": "image_url", "image_url": {"url": url}}),
                extra_body=self.extra_body,
                **self.sampling,
            )
        except Exception as exc:  # the openai client has already retried what can be retried
            return "", self.endpoint.scrub(f"{type(exc).__name__}: {exc}")
        text = reply.choices[0].message.content if reply.choices else None
        return (text, "") if text else ("", "empty reply")


class TransformersPredictor:
    """A local folder or Hub id loaded with transformers, one image at a time, sampled as ``protocol`` says
    (greedy at temperature 0; frequency and presence penalties as vLLM applies them, to the generated tokens;
    each image's sample seeded by its id, so a rerun gives the same answers)."""

    def __init__(
        self,
        model: str,
        revision: str | None = None,
        max_new_tokens: int | None = None,
        device: str | None = None,
        protocol: Protocol | None = None,
    ) -> None:
        from .modeling import load_for_inference

        self.model, self.processor, self.device = load_for_inference(model, revision, device)
        self.protocol = protocol or PROTOCOLS["eval"]["ours"]
        self.max_new_tokens = max_new_tokens or self.protocol.max_tokens
        self.concurrency = 1
        self.name = model

    def predict(self, item: EvalItem) -> tuple[str, str]:
        import torch
        from PIL import Image

        p = self.protocol
        try:
            raw = item.image if isinstance(item.image, bytes) else Path(item.image).read_bytes()
            image = Image.open(io.BytesIO(raw if p.raw_image else image_bytes(item))).convert("RGB")
        except OSError as exc:
            return "", f"image unreadable: {exc}"
        prompt = self.processor.apply_chat_template(messages(p, {"type": "image"}), add_generation_prompt=True)
        inputs = self.processor(text=[prompt], images=[image], return_tensors="pt").to(self.device)
        sampling: dict = {"do_sample": False}
        if p.temperature > 0:
            sampling = {"do_sample": True, "temperature": p.temperature, "top_k": 0, "top_p": 1.0}
            torch.manual_seed(int.from_bytes(hashlib.blake2b(item.id.encode(), digest_size=4).digest(), "big"))
        if p.frequency_penalty or p.presence_penalty:
            from transformers import LogitsProcessorList

            penalties = OpenAIPenalties(inputs["input_ids"].shape[1], p.frequency_penalty, p.presence_penalty)
            sampling["logits_processor"] = LogitsProcessorList([penalties])
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, **sampling)
        text = self.processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]
        return text, ""


class OpenAIPenalties:
    """OpenAI's (and vLLM's) frequency and presence penalties, as a transformers logits processor: each token
    already generated loses ``frequency`` per occurrence and ``presence`` once (the prompt is not counted)."""

    def __init__(self, prompt_length: int, frequency: float, presence: float) -> None:
        self.prompt_length, self.frequency, self.presence = prompt_length, frequency, presence

    def __call__(self, input_ids, scores):
        import torch

        generated = input_ids[:, self.prompt_length :]
        counts = torch.zeros_like(scores)
        counts.scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


def structured_to_text(country: str = "", city: str = "", lat=None, lon=None) -> str:
    lines = [f"country: {country}", f"city: {city}"]
    if lat not in (None, "") and lon not in (None, ""):
        lines += [f"lat: {lat}", f"lon: {lon}"]
    return "<answer>" + "\n".join(lines) + "</answer>"


class FilePredictor:
    """Answers read from a file, so other systems are scored the same way:

    - JSONL with ``id`` and either ``text`` (raw output) or ``country``/``city``/``lat``/``lon``;
    - the CSV the released GLOBE evaluation writes (``IMG_ID``, ``prediction`` = ``{"data": text}``,
      ``pred_city``, ``pred_country``), or any CSV with ``id`` and ``text`` or those fields.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"predictions file {self.path} does not exist")
        self.answers: dict[str, str] = {}
        self.ids: list[str] = []  # as the file gives them
        rows = self._rows()
        for row in rows:
            # The first id column present, whatever its value: an id 0 is an id (`or` would drop it).
            value = next((row[k] for k in ("id", "IMG_ID", "img_id") if row.get(k) is not None), "")
            ident = str(value).strip()
            if not ident:
                continue
            self.ids.append(ident)
            self.answers[ident] = self._text(row)
            self.answers.setdefault(ident.removesuffix(".jpg"), self.answers[ident])
        if twice := repeated(self.ids):
            raise ValueError(
                f"{self.path}: {twice} answered more than once; keep one answer per id (which one counts is not "
                "for the scorer to guess)"
            )
        if not self.answers:
            raise ValueError(f"{self.path}: no rows with an id (expected an 'id' or 'IMG_ID' column)")
        self.concurrency = 1
        self.name = f"file {self.path.name}"

    def _rows(self) -> list[dict]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{self.path} is not a text file ({exc.reason} at byte {exc.start})") from None
        if self.path.suffix != ".jsonl":
            rows = list(csv.DictReader(io.StringIO(text, newline="")))
            if rows and not ({"id", "IMG_ID", "img_id"} & set(rows[0])):
                raise ValueError(f"{self.path}: line 1 names no id column (id or IMG_ID): {list(rows[0])[:8]}")
            return rows
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"{self.path}, line {n}: not JSON ({exc.msg} at column {exc.colno}); each line must be one "
                    'object such as {"id": ..., "text": ...}'
                ) from None
            if not isinstance(row, dict):
                raise ValueError(f"{self.path}, line {n}: a JSON {type(row).__name__}, not an object with an id")
            rows.append(row)
        return rows

    @staticmethod
    def _text(row: dict) -> str:
        if row.get("prediction"):  # the released evaluation's CSV
            try:
                return json.loads(row["prediction"]).get("data") or ""
            except (json.JSONDecodeError, AttributeError):
                return str(row["prediction"])
        if row.get("text") is not None:
            return str(row["text"])

        # pred_* columns (beside the truth's country/city in evaluation CSVs) win over plain ones.
        def get(pred: str, plain: str):
            return row[pred] if pred in row else row.get(plain)

        return structured_to_text(
            get("pred_country", "country") or "",
            get("pred_city", "city") or "",
            get("pred_LAT", "lat"),
            get("pred_LON", "lon"),
        )

    def predict(self, item: EvalItem) -> tuple[str, str]:
        text = self.answers.get(item.id, self.answers.get(item.id.removesuffix(".jpg")))
        return (text, "") if text is not None else ("", "no prediction in file")
