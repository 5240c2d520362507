"""``globe demo``: a Gradio app that asks GLOBE where a photo was taken.

Upload a photo (or pick an example) and see the model's reasoning with its visual cues highlighted, its
country and city, a map with the predicted point and, when the photo's EXIF carries GPS, the true one and the
distance between them, and the time it took. The model is one of the paper's released checkpoints, a local
folder, or any OpenAI-compatible endpoint. The map is drawn here on our own world map (GeoNames' places make
the land), so the app needs no tile server and runs offline; a link opens the point on OpenStreetMap.

The first API endpoint, ``/predict``, answers a photo given alone (every other input has a default), so
``gradio_client`` scripts can call ``Client(url).predict(handle_file("photo.jpg"), api_name="/predict")``.
Which models it runs is the operator's choice (``globe demo --model ... --endpoint ...``; ``GLOBE_MODELS`` on a
Space): a caller picks one of them by name and gives a photo, never a path or a URL the server would load or
call. It binds to 127.0.0.1 unless told otherwise, refuses uploads over ``max_file_size`` and images over
``MAX_PIXELS`` (read from the header, before decoding), and its errors name the fix without the server's paths.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageOps

from mp16_reason.answer import answer_location, parse_answer

from .benchmarks import EvalItem
from .protocols import protocol as preset
from .released import RELEASED

MAX_PIXELS = 40_000_000  # a photo, not a decompression bomb
MAX_FILE_SIZE = "20mb"
EXAMPLES = Path(__file__).parent / "space" / "examples"
PROTOCOL_NAMES = ("ours", "globe-release")
LOG = logging.getLogger("globe_train.demo")

# Words that name the visual cues GLOBE reasons from, by kind: what the reasoning panel highlights.
CUES = {
    "signage": r"signs?|signage|shop ?fronts?|billboards?|posters?|lettering|text|script|alphabet|characters|"
    r"language|written|plates?|street names?",
    "architecture": r"buildings?|architecture|roofs?|facades?|houses?|churche?s?|temples?|mosques?|towers?|"
    r"balcon(?:y|ies)|windows?|brick|stone|tiles?|domes?|arch(?:es)?|skyscrapers?",
    "vegetation": r"trees?|palms?|pines?|vegetation|forests?|grass|plants?|flowers?|shrubs?|bushes",
    "terrain": r"mountains?|hills?|desert|beach(?:es)?|coast|sea|ocean|rivers?|lakes?|snow|sand|cliffs?|valley",
    "infrastructure": r"roads?|streets?|pavement|sidewalks?|bollards?|poles?|lamps?|bridges?|rail(?:way)?s?|"
    r"traffic|lanes?|markings?",
    "vehicles": r"cars?|buses|bus|taxis?|trams?|trucks?|bicycles?|scooters?|motorbikes?|boats?",
    "landmark": r"landmarks?|monuments?|statues?|cathedral|palace|castle|stadium",
}
_CUE = re.compile(r"\b(" + "|".join(f"(?P<{k}>{v})" for k, v in CUES.items()) + r")\b", re.I)


def highlight(reasoning: str) -> list[tuple[str, str | None]]:
    """The reasoning as (text, cue kind or None) pieces, for Gradio's HighlightedText."""
    pieces, at = [], 0
    for m in _CUE.finditer(reasoning):
        if m.start() > at:
            pieces.append((reasoning[at : m.start()], None))
        kind = next(k for k, v in m.groupdict().items() if v)
        pieces.append((m.group(0), kind))
        at = m.end()
    if at < len(reasoning):
        pieces.append((reasoning[at:], None))
    return pieces


def exif_gps(path: str | Path) -> tuple[float, float] | None:
    """The photo's GPS position from its EXIF, or None."""
    try:
        gps = Image.open(path).getexif().get_ifd(0x8825)
    except (OSError, ValueError):
        return None
    try:
        lat = sum(float(v) / 60**i for i, v in enumerate(gps[2])) * (-1 if gps.get(1) == "S" else 1)
        lon = sum(float(v) / 60**i for i, v in enumerate(gps[4])) * (-1 if gps.get(3) == "W" else 1)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    return (lat, lon) if abs(lat) <= 90 and abs(lon) <= 180 else None


def draw_map(predicted: tuple[float, float] | None, true: tuple[float, float] | None, width: int = 900) -> Image.Image:
    """Our world map with the predicted point (red) and the true one (green), joined by a line."""
    img, xy = _base(width)
    draw = ImageDraw.Draw(img)
    if predicted and true:
        draw.line([xy(*true), xy(*predicted)], fill=(255, 214, 10), width=2)
    for point, colour in ((true, (46, 204, 113)), (predicted, (231, 76, 60))):
        if point:
            x, y = xy(*point)
            draw.ellipse([x - 7, y - 7, x + 7, y + 7], fill=colour, outline=(255, 255, 255), width=2)
    return img


_MAPS: dict[int, tuple] = {}


def _base(width: int):
    """The blank map (drawn once per width) and its projection."""
    from mp16_reason.worldmap import base_map

    if width not in _MAPS:
        _MAPS[width] = base_map(width)
    img, xy = _MAPS[width]
    return img.copy(), xy


@dataclass
class Answer:
    text: str
    reasoning: list[tuple[str, str | None]]
    place: str
    map: Image.Image
    details: str


@dataclass(frozen=True)
class Choice:
    """One model the operator offers: what callers see (``label``) and what the server loads (never shown)."""

    label: str
    target: str  # a released id, a Hub id or a local folder; or an endpoint's URL
    endpoint_model: str = ""  # set for an endpoint

    @classmethod
    def of_model(cls, model: str) -> Choice:
        # A local folder is offered by its name: its path on the server is not the caller's business.
        return cls(Path(model).name if Path(model).exists() else model, model)

    @classmethod
    def of_endpoint(cls, url: str, model: str) -> Choice:
        return cls(f"{model or 'globe'} (endpoint)", url, model or "globe")


def choices(models: list[str], endpoint: str = "", endpoint_model: str = "") -> list[Choice]:
    """The operator's models (``--model``, repeatable; ``GLOBE_MODELS`` on a Space) and endpoint, in that order
    after the endpoint; without any, the released checkpoints."""
    listed = [Choice.of_endpoint(endpoint, endpoint_model)] if endpoint else []
    listed += [Choice.of_model(m) for m in (models or ([] if endpoint else list(RELEASED)))]
    labels = [c.label for c in listed]
    if len(set(labels)) != len(labels):
        raise ValueError(f"two of the demo's models show as the same name ({', '.join(labels)}); rename a folder")
    return listed


class Locator:
    """The predictors the app has loaded, one per offered model, loaded on first use. Callers name a model by
    its label only: no path or URL of theirs reaches the server."""

    def __init__(self, offered: list[Choice], protocol: str) -> None:
        self.offered, self.protocol = {c.label: c for c in offered}, protocol
        self._loaded: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    def predictor(self, label: str, protocol: str):
        from .predictors import EndpointPredictor, TransformersPredictor

        choice = self.offered.get(label)
        if choice is None:
            raise DemoError(f"no model {label[:80]!r} here; this demo offers: {', '.join(self.offered)}")
        if protocol not in PROTOCOL_NAMES:
            raise DemoError(f"no protocol {protocol[:40]!r}; choose {' or '.join(PROTOCOL_NAMES)}")
        chosen = preset(protocol, "predict")
        if choice.endpoint_model:
            return EndpointPredictor(choice.target, choice.endpoint_model, protocol=chosen)
        key = (choice.target, chosen.name)
        with self._lock:
            if key not in self._loaded:
                try:
                    self._loaded[key] = TransformersPredictor(choice.target, protocol=chosen)
                except Exception as exc:  # the operator's log has it whole; the caller gets the model's name
                    LOG.exception("loading %s failed", choice.target)
                    raise DemoError(
                        f"{choice.label} could not be loaded here ({type(exc).__name__}); the server's log says why"
                    ) from None
            return self._loaded[key]

    def locate(self, photo: str | None, label: str, protocol: str) -> Answer:
        if not photo:
            raise DemoError("upload a photo first")
        jpeg = _bounded_jpeg(photo)
        predictor = self.predictor(label or next(iter(self.offered)), protocol or self.protocol)
        started = time.perf_counter()
        item = EvalItem(id="photo", lat=0.0, lon=0.0, image=jpeg)
        if hasattr(predictor, "apredict"):
            import asyncio

            text, error = asyncio.run(predictor.apredict(item))
        else:
            text, error = predictor.predict(item)
        seconds = time.perf_counter() - started
        if error:
            LOG.warning("%s gave no answer: %s", label, error)
            raise DemoError("the model gave no answer (the server's log says why); try again")
        answer = parse_answer(text)
        located = answer_location(answer)
        predicted = (located[0], located[1]) if located else None
        true = exif_gps(photo)
        place = ", ".join(x for x in (answer.city, answer.country) if x) or "no answer in the model's reply"
        lines = [f"**{place}**"]
        if predicted:
            osm = f"https://www.openstreetmap.org/?mlat={predicted[0]:.4f}&mlon={predicted[1]:.4f}#map=10/"
            osm += f"{predicted[0]:.4f}/{predicted[1]:.4f}"
            lines.append(f"Predicted point {predicted[0]:.4f}, {predicted[1]:.4f} ([OpenStreetMap]({osm}))")
        if true:
            lines.append(f"Photo's GPS (EXIF) {true[0]:.4f}, {true[1]:.4f}")
            if predicted:
                from mp16_reason.distance import haversine_km

                lines.append(f"Distance: {float(haversine_km(*predicted, *true)):,.1f} km")
        lines.append(f"Answered in {seconds:.1f} s by {label}")
        reasoning = answer.think or text
        return Answer(text, highlight(reasoning), place, draw_map(predicted, true), "\n\n".join(lines))


class DemoError(ValueError):
    """What a caller is told: the fix, never a path or URL of the server."""


def _bounded_jpeg(photo: str) -> bytes:
    """The upload, upright, as a JPEG; its size is read from the header and bounded before any pixel is
    decoded (a decompression bomb is refused, not decoded)."""
    import io
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(photo)
    except (OSError, Image.DecompressionBombError, Image.DecompressionBombWarning, ValueError) as exc:
        if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
            raise DemoError(f"the photo is over {MAX_PIXELS:,} pixels: send a smaller one") from None
        raise DemoError("the upload is not an image this demo can read: send a JPEG, PNG or WebP photo") from None
    with img:
        if img.width * img.height > MAX_PIXELS:
            raise DemoError(f"{img.width}x{img.height} is over {MAX_PIXELS:,} pixels: send a smaller photo")
        img.draft("RGB", (2048, 2048))  # a JPEG decodes at 1/2 to 1/8 scale when that still covers 2048 px
        try:
            upright = ImageOps.exif_transpose(img).convert("RGB")
        except (OSError, ValueError):
            raise DemoError("the photo could not be decoded (a truncated or damaged file?)") from None
    buf = io.BytesIO()
    upright.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def build_app(
    models: list[str] | str | None = None,
    protocol: str = "ours",
    examples: list[str] | None = None,
    endpoint: str = "",
    endpoint_model: str = "",
):
    """The Gradio Blocks app over the operator's models (released checkpoints, Hub ids, local folders) and
    endpoint; callers pick one by name from that list, and give a photo."""
    import gradio as gr

    offered = choices([models] if isinstance(models, str) else list(models or []), endpoint, endpoint_model)
    locator = Locator(offered, protocol)
    labels = [c.label for c in offered]
    examples = examples if examples is not None else sorted(str(p) for p in EXAMPLES.glob("*.jpg"))

    def run(photo, model_choice=labels[0], protocol_choice=protocol):
        try:
            a = locator.locate(photo, model_choice, protocol_choice)
        except DemoError as exc:
            raise gr.Error(str(exc), duration=None) from None  # stays until closed
        return a.reasoning, a.place, a.map, a.details

    with gr.Blocks(title="GLOBE: where was this photo taken?") as app:
        gr.Markdown(
            "# GLOBE: where was this photo taken?\n"
            "A vision-language model reasons about the visual cues in a photo, then names its country and city "
            "([Recognition through Reasoning](https://arxiv.org/abs/2506.14674), NeurIPS 2025). Geolocating "
            "photos of people or private places can reveal where someone lives or travels: use it on your own "
            "photos or public scenes."
        )
        with gr.Row():
            with gr.Column():
                # image_mode=None: the upload reaches us as a file, undecoded, whatever its mode
                photo = gr.Image(type="filepath", image_mode=None, label="Photo", sources=["upload", "clipboard"])
                with gr.Accordion("Model", open=False):
                    model_choice = gr.Dropdown(labels, value=labels[0], label="Model")
                    protocol_choice = gr.Dropdown(list(PROTOCOL_NAMES), value=protocol, label="Protocol")
                button = gr.Button("Where was it taken?", variant="primary")
                if examples:
                    gr.Examples(examples, inputs=[photo])
            with gr.Column():
                place = gr.Textbox(label="Answer", elem_id="answer")
                world = gr.Image(
                    label="Map: predicted (red), photo's GPS (green)", type="pil", format="png", elem_id="map"
                )
                details = gr.Markdown(elem_id="details")
                reasoning = gr.HighlightedText(label="Reasoning, visual cues highlighted", combine_adjacent=True)
        button.click(
            run,
            inputs=[photo, model_choice, protocol_choice],
            outputs=[reasoning, place, world, details],
            api_name="predict",
        )
    return app


def launch(
    models: list[str] | None = None,
    protocol: str = "ours",
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    max_file_size: str = MAX_FILE_SIZE,
    endpoint: str = "",
    endpoint_model: str = "",
) -> None:
    build_app(models, protocol, endpoint=endpoint, endpoint_model=endpoint_model).queue(max_size=16).launch(
        server_name=host, server_port=port, share=share, max_file_size=max_file_size, show_error=True
    )
