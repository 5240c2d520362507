"""``globe predict IMAGE…``: where was each photo taken? Reasoning, country, city and coordinates.

The model is GLOBE from the Hub by default, or a local folder, or any OpenAI-compatible endpoint. Coordinates
are the answer's own ``lat``/``lon`` lines when it gives them, else its city (or country) geocoded offline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from mp16_reason.answer import answer_location, parse_answer

from .benchmarks import EvalItem


@dataclass
class Prediction:
    image: str
    country: str
    city: str
    lat: float | None
    lon: float | None
    coordinate_source: str  # "coordinates" (the answer's own), "city", "country" (geocoded), or ""
    reasoning: str
    text: str
    error: str = ""

    def as_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        if self.error:
            return [f"{self.image}: failed: {self.error}"]
        where = f"{self.lat:.4f}, {self.lon:.4f} ({self.coordinate_source})" if self.lat is not None else "unknown"
        out = [
            f"{self.image}",
            f"  country: {self.country or '?'}",
            f"  city: {self.city or '?'}",
            f"  coordinates: {where}",
        ]
        if self.reasoning:
            out.append(f"  reasoning: {self.reasoning}")
        if not (self.country or self.city):
            out.append(f"  (no answer could be read from: {self.text[:200]!r})")
        return out


def to_prediction(image: str, text: str, error: str = "") -> Prediction:
    ans = parse_answer(text)
    where = answer_location(ans) if not error else None
    lat, lon, source = where if where else (None, None, "")
    return Prediction(image, ans.country, ans.city, lat, lon, source, ans.think.strip(), text, error)


def predict(images: list[str | Path], predictor) -> list[Prediction]:
    """Run ``predictor`` (one of ``globe_train.predictors``) on each image; results in the images' order."""
    from .evaluate import ask_all

    items = [EvalItem(id=str(p), lat=0.0, lon=0.0, image=str(p)) for p in images]
    answers: dict[str, tuple[str, str]] = {}
    ask_all(items, predictor, lambda item, text, error, _s: answers.__setitem__(item.id, (text, error)))
    return [to_prediction(i.id, *answers[i.id]) for i in items]
