"""GeoCLIP as a coordinate teacher: GPS predictions with a confidence, run in the build's process.

GeoCLIP (Vivanco Cepeda et al., NeurIPS 2023), the paper's third teacher, scores a CLIP ViT-L/14 image embedding
against the embeddings of a gallery of 100K GPS points. The ``geoclip`` wheel ships its location encoder
weights and the gallery; its image tower loads like any transformers CLIP model (a path or a Hub id, cached).
The gallery's embeddings do not depend on the image, so they are computed once per process: each image then
costs one pass of the image tower and one matrix product. Images are scored in batches of up to the teacher's
``max_concurrency``.

A reply is cached like an endpoint's: its text is the JSON of the ranked guesses, keyed by the image hash, the
recorded model name and the settings that change the answer (``top_k``, ``clip_model``).
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
from typing import Any, ClassVar, Literal

from pydantic import Field

from builders.teachers.base import Job, TeacherFailed, TeacherFailure, TeacherSettings, Usage
from builders.teachers.cache import CachedReply
from mp16_reason.schema import GeoGuess, TeacherAnswer

INSTALL = (
    "pip install --no-deps geoclip (it declares torchvision, which it does not import; its runtime needs, torch, "
    "transformers, huggingface_hub, safetensors, pandas and pillow, come with mp16-reason[build])"
)


class GeoclipTeacher(TeacherSettings):
    """GeoCLIP's GPS prediction, run in the build's process: coordinates with a confidence, no reasoning."""

    kind: Literal["geoclip"] = "geoclip"
    model: str = Field(default="GeoCLIP", description="the name recorded with its answers")
    top_k: int = Field(default=5, ge=1, description="ranked guesses kept in the record (the first is lat/lon)")
    clip_model: str = Field(
        default="openai/clip-vit-large-patch14", description="GeoCLIP's image tower: a path or a Hub id (cached)"
    )
    device: str = Field(default="cpu", description="torch device, e.g. cuda or cuda:1")

    RUNTIME_FIELDS: ClassVar[frozenset[str]] = TeacherSettings.RUNTIME_FIELDS | {"device"}
    reasons: ClassVar[bool] = False

    def request_params(self) -> dict[str, Any]:
        return self.model_dump(mode="json", include={"kind", "top_k", "clip_model"})

    def where(self) -> str:
        return f"GeoCLIP on {self.device}"

    def check(self, offline: bool) -> None:
        check_installed()

    def make(self, usage: Usage, offline: bool) -> GeoclipRunner:
        return GeoclipRunner(self, usage)  # runs here, sends nothing: offline too

    def unusable(self, text: str) -> str | None:
        """Its replies are ranked points, not LVLM text: no answer only when there is no point."""
        try:
            return None if json.loads(text)["top_k"] else "no point in the reply"
        except (ValueError, KeyError, TypeError):
            return "not GeoCLIP's ranked points"

    def answer(self, reply: CachedReply) -> TeacherAnswer:
        """Its best point (with the country and city the gazetteer places there), its probability as the
        confidence, and the ranked guesses."""
        from mp16_reason.gazetteer import default_gazetteer  # loaded once, by the build already

        guesses = [GeoGuess(**g) for g in json.loads(reply.text)["top_k"]]
        best = guesses[0]
        place = default_gazetteer().reverse(best.lat, best.lon)
        return TeacherAnswer(
            teacher=self.name,
            model=reply.model,
            parsed=True,
            country=place.country,
            city=place.city,
            lat=best.lat,
            lon=best.lon,
            confidence=best.probability,
            top_k=guesses,
            origin="local",
        )


class GeoclipUnavailable(ValueError):
    """GeoCLIP could not be loaded: a setting or an install to fix, not an image to quarantine."""


def check_installed() -> None:
    """Fail before any work when a recipe's GeoCLIP teacher cannot run here."""
    import importlib.util

    if importlib.util.find_spec("geoclip") is None:
        raise ValueError(f"the recipe has a teacher of kind geoclip, which needs the geoclip package: {INSTALL}")


def load_geoclip(clip_model: str, device: str) -> Any:
    """GeoCLIP with its bundled location encoder and gallery, and the image tower ``clip_model``."""
    from geoclip import GeoCLIP  # a build checks the install first (check_installed), with the fix

    return GeoCLIP(from_pretrained=True, clip_path=clip_model).to(device).eval()


class GeoclipScorer:
    """Ranked gallery points for images: the model, and the gallery's normalised embeddings, computed once."""

    def __init__(self, clip_model: str, device: str) -> None:
        import torch
        import torch.nn.functional as F

        self.device = device
        self.model = load_geoclip(clip_model, device)
        with torch.no_grad():
            gallery = self.model.gps_gallery.to(device)
            self.points = gallery.cpu().tolist()
            parts = [
                F.normalize(self.model.location_encoder(gallery[i : i + 8192]), dim=1)
                for i in range(0, len(gallery), 8192)
            ]
            self.gallery = torch.cat(parts)
            self.scale = self.model.logit_scale.exp()

    def __call__(self, jpegs: list[bytes], top_k: int) -> list[list[GeoGuess]]:
        """GeoCLIP's ``predict`` for a batch of JPEGs: softmax over the gallery, top ``top_k`` points."""
        import torch
        import torch.nn.functional as F
        from PIL import Image

        images = []
        for data in jpegs:
            with Image.open(io.BytesIO(data)) as img:
                images.append(img.convert("RGB"))
        with torch.no_grad():
            pixels = self.model.image_encoder.preprocess_image(images).to(self.device)
            features = F.normalize(self.model.image_encoder(pixels), dim=1)
            probs = (self.scale * features @ self.gallery.T).softmax(dim=-1)
            top = probs.topk(min(top_k, probs.shape[1]), dim=1)
        out = []
        for values, indices in zip(top.values.cpu().tolist(), top.indices.cpu().tolist()):
            out.append(
                [
                    GeoGuess(lat=self.points[i][0], lon=self.points[i][1], probability=round(min(1.0, p), 6))
                    for p, i in zip(values, indices)
                ]
            )
        return out


@functools.lru_cache(maxsize=2)
def scorer(clip_model: str, device: str) -> GeoclipScorer:
    """One scorer per image tower and device in a process (the gallery's embeddings take ~17 s on two cores)."""
    return GeoclipScorer(clip_model, device)


def reply_text(guesses: list[GeoGuess]) -> str:
    return json.dumps({"top_k": [g.model_dump() for g in guesses]}, separators=(",", ":"))


class GeoclipRunner:
    """The teacher stage's view of GeoCLIP: ``ask`` one image, answered in batches on a thread of its own (torch
    lets go of the GIL), the model loaded on the first ask, so a build whose replies are cached never loads it.
    An image GeoCLIP cannot score is that image's failure; GeoCLIP that cannot load stops the build."""

    def __init__(self, spec: GeoclipTeacher, usage: Usage | None = None) -> None:
        self.spec, self.usage = spec, usage if usage is not None else Usage()
        self._scorer: GeoclipScorer | None = None
        self._pending: list[tuple[bytes, asyncio.Future]] = []
        self._drain: asyncio.Task | None = None

    async def ask(self, job: Job) -> CachedReply:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((job.jpeg, future))
        if self._drain is None or self._drain.done():
            self._drain = asyncio.ensure_future(self._run())
        try:
            guesses = await future
        except GeoclipUnavailable:
            raise  # not an image's fault: the build stops and says what to fix
        except Exception as exc:
            self.usage.failed += 1
            reason = f"GeoCLIP failed: {type(exc).__name__}: {str(exc)[:300]}"
            raise TeacherFailed(TeacherFailure(self.spec.name, reason, 1, "local")) from exc
        self.usage.requests += 1
        return self.spec.reply(job.image_sha256, reply_text(guesses), origin="local")

    async def _run(self) -> None:
        while self._pending:
            await asyncio.sleep(0)  # let the other workers add their images to this batch
            batch, self._pending = (
                self._pending[: self.spec.max_concurrency],
                self._pending[self.spec.max_concurrency :],
            )
            try:
                if self._scorer is None:
                    self._scorer = await asyncio.to_thread(self._load)
                results = await asyncio.to_thread(self._scorer, [jpeg for jpeg, _ in batch], self.spec.top_k)
            except Exception as exc:  # every image of the batch fails with the reason; nothing is cached
                if isinstance(exc, GeoclipUnavailable):  # no image will fare better: all fail at once
                    batch, self._pending = batch + self._pending, []
                for _, future in batch:
                    if not future.done():  # a stopped stage cancels the asks still waiting
                        future.set_exception(exc)
                continue
            for (_, future), guesses in zip(batch, results):
                if not future.done():
                    future.set_result(guesses)

    def _load(self) -> GeoclipScorer:
        try:
            return scorer(self.spec.clip_model, self.spec.device)
        except Exception as exc:
            raise GeoclipUnavailable(
                f"teacher {self.spec.name!r}: GeoCLIP could not be loaded (clip_model {self.spec.clip_model}, "
                f"device {self.spec.device}): {type(exc).__name__}: {str(exc)[:300]}"
            ) from exc

    async def close(self) -> None:
        if self._drain is not None:
            await self._drain
