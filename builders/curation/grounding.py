"""Visual grounding: is each entity a teacher named actually in the image?

A semantic segmentation model (any ``AutoModelForSemanticSegmentation`` checkpoint, ADE20K-style labels such
as SegFormer's) says which classes cover at least ``min_pixel_share`` of the image. An entity is grounded when
one of those visible classes names it: a class name (or one of its synonyms, ``"signboard, sign"``) appears as
a word in the entity's text, or the sentence embeddings of the two are at least ``min_similarity`` apart.
"""

from __future__ import annotations

import io
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from builders.curation.embeddings import Embedder
from mp16_reason.names import normalize
from mp16_reason.schema import Entity


def synonyms(label: str) -> list[str]:
    """``"building, edifice"`` or ``"building;edifice"`` -> ``["building", "edifice"]`` (normalised)."""
    return [n for n in (normalize(p) for p in re.split(r"[;,]", label)) if n]


BUNDLED_PREFIX = "bundled:"  # models shipped in builders/data, e.g. bundled:scene-segmenter for the sample


def model_path(model: str) -> str:
    if model.startswith(BUNDLED_PREFIX):
        path = Path(__file__).parents[1] / "data" / model.removeprefix(BUNDLED_PREFIX)
        if not path.is_dir():
            raise FileNotFoundError(f"no bundled model {model!r} (looked in {path.parent})")
        return str(path)
    return model


class Segmenter:
    def __init__(self, model: str, device: str | None = None) -> None:
        from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation
        from transformers.utils import logging

        model = model_path(model)

        verbosity = logging.get_verbosity()
        logging.set_verbosity_error()  # the torchvision-less processor fallback warns on every load
        try:
            self.processor = AutoImageProcessor.from_pretrained(model)
        finally:
            logging.set_verbosity(verbosity)
        self.model = AutoModelForSemanticSegmentation.from_pretrained(model).eval()
        if device:
            self.model.to(device)
        id2label = self.model.config.id2label
        self.labels = [str(id2label[i]) for i in range(len(id2label))]

    def shares(self, jpeg: bytes) -> dict[str, float]:
        """Share of the image's pixels per predicted class (classes that cover nothing are left out)."""
        import torch
        from PIL import Image

        image = Image.open(io.BytesIO(jpeg)).convert("RGB")
        inputs = self.processor(images=image, return_tensors="pt").to(self.model.device)
        with torch.inference_mode():
            logits = self.model(**inputs).logits  # (1, classes, h, w), at a fraction of the input size
        # Shares are the same at the logits' resolution as at the image's, up to rounding: skip upsampling.
        counts = np.bincount(logits.argmax(1).flatten().cpu().numpy(), minlength=len(self.labels))
        total = counts.sum()
        return {self.labels[i]: float(c / total) for i, c in enumerate(counts) if c}


@lru_cache(maxsize=2)
def segmenter(model: str) -> Segmenter:
    return Segmenter(model)


def _words(text: str) -> set[str]:
    words = set(normalize(text).split())
    return words | {w[:-1] for w in words if w.endswith("s") and len(w) > 3}  # "trees" names "tree"


class EntityMatcher:
    """Matches entity texts to class names, by words first and by sentence embeddings second."""

    def __init__(self, embedder: Embedder | None, min_similarity: float) -> None:
        self.embedder, self.min_similarity = embedder, min_similarity
        self._label_vectors: dict[str, np.ndarray] = {}

    def _vectors(self, names: list[str]) -> np.ndarray:
        missing = [n for n in names if n not in self._label_vectors]
        if missing and self.embedder is not None:
            for name, vec in zip(missing, self.embedder.encode(missing)):
                self._label_vectors[name] = vec
        return np.stack([self._label_vectors[n] for n in names])

    def ground(self, entities: list[Entity], visible: list[str]) -> list[Entity]:
        """The entities with ``grounded`` set: whether a visible class names them."""
        names = sorted({s for label in visible for s in synonyms(label)})
        if not entities:
            return []
        out = [e.model_copy(update={"grounded": False}) for e in entities]
        if not names:
            return out
        pending = []
        for i, e in enumerate(out):
            words = _words(e.text)
            if any(set(n.split()) <= words for n in names):
                out[i].grounded = True
            else:
                pending.append(i)
        if pending and self.embedder is not None:
            ev = self.embedder.encode([out[i].text for i in pending])
            best = (ev @ self._vectors(names).T).max(axis=1)
            for i, sim in zip(pending, best):
                out[i].grounded = bool(sim >= self.min_similarity)
        return out
