"""Where answers come from: an OpenAI-compatible endpoint, a transformers model, or a predictions file.

Each predictor turns an :class:`~globe_train.benchmarks.EvalItem` into the model's raw text. Failures are
returned as an error string, never as an empty answer, so the evaluation can count them.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
from pathlib import Path

from mp16_reason.jpeg import downscale_jpeg, jpeg_data_url
from mp16_reason.prompt import INSTRUCTION

from .benchmarks import EvalItem

SYSTEM = "You are a helpful assistant."


def image_bytes(item: EvalItem, max_pixels: int | None = None) -> bytes:
    data = item.image if isinstance(item.image, bytes) else Path(item.image).read_bytes()
    return downscale_jpeg(data, max_pixels)


class EndpointPredictor:
    """Any OpenAI-compatible chat endpoint (vLLM, ``transformers serve``, OpenAI). The openai client retries
    429/5xx/timeouts with exponential backoff and honours Retry-After; ``concurrency`` caps requests in flight."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 16,
        max_retries: int = 5,
        timeout_s: float = 120.0,
        temperature: float = 0.1,
        max_tokens: int = 512,
        max_pixels: int | None = None,
        extra_body: dict | None = None,
    ) -> None:
        from openai import AsyncOpenAI

        self.client = AsyncOpenAI(
            base_url=base_url,
            api_key=os.environ.get(api_key_env) or "EMPTY",  # local servers accept any key
            max_retries=max_retries,
            timeout=timeout_s,
        )
        self.model, self.concurrency = model, concurrency
        self.sampling = {"temperature": temperature, "max_tokens": max_tokens}
        self.max_pixels, self.extra_body = max_pixels, extra_body
        self.name = f"{model} @ {base_url}"

    async def apredict(self, item: EvalItem) -> tuple[str, str]:
        try:
            data = await asyncio.to_thread(image_bytes, item, self.max_pixels)
        except OSError as exc:
            return "", f"image unreadable: {exc}"
        url = jpeg_data_url(data)
        try:
            reply = await self.client.chat.completions.create(
                model=self.model,
                messages=[
                    {"role": "system", "content": SYSTEM},
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": url}},
                            {"type": "text", "text": INSTRUCTION},
                        ],
                    },
                ],
                extra_body=self.extra_body,
                **self.sampling,
            )
        except Exception as exc:  # the openai client has already retried what can be retried
            return "", f"{type(exc).__name__}: {exc}"
        text = reply.choices[0].message.content if reply.choices else None
        return (text, "") if text else ("", "empty reply")


class TransformersPredictor:
    """A local folder or Hub id loaded with transformers (greedy decoding, one image at a time)."""

    def __init__(
        self, model: str, revision: str | None = None, max_new_tokens: int = 512, device: str | None = None
    ) -> None:
        from .modeling import load_for_inference

        self.model, self.processor, self.device = load_for_inference(model, revision, device)
        self.max_new_tokens = max_new_tokens
        self.concurrency = 1
        self.name = model

    def predict(self, item: EvalItem) -> tuple[str, str]:
        import torch
        from PIL import Image

        try:
            image = Image.open(io.BytesIO(image_bytes(item))).convert("RGB")
        except OSError as exc:
            return "", f"image unreadable: {exc}"
        messages = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": INSTRUCTION}]},
        ]
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = self.processor(text=[prompt], images=[image], return_tensors="pt").to(self.device)
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        text = self.processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]
        return text, ""


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
        rows = self._rows()
        for row in rows:
            ident = str(row.get("id") or row.get("IMG_ID") or row.get("img_id") or "")
            if not ident:
                continue
            self.answers[ident] = self._text(row)
            self.answers.setdefault(ident.removesuffix(".jpg"), self.answers[ident])
        if not self.answers:
            raise ValueError(f"{self.path}: no rows with an id (expected an 'id' or 'IMG_ID' column)")
        self.concurrency = 1
        self.name = f"file {self.path.name}"

    def _rows(self) -> list[dict]:
        if self.path.suffix == ".jsonl":
            return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        with self.path.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))

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
