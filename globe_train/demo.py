"""``globe demo``: a Gradio app that asks GLOBE where a photo was taken.

Upload a photo (or pick an example) and see the model's reasoning with its visual cues highlighted, its
country and city, a map with the predicted point and, when the photo's EXIF carries GPS, the true one and the
distance between them, and the time it took. The model is one of the paper's released checkpoints, a local
folder, or any OpenAI-compatible endpoint. The map is drawn here on our own world map (GeoNames' places make
the land), so the app needs no tile server and runs offline; a link opens the point on OpenStreetMap.

The first API endpoint, ``/predict``, answers a photo given alone (every other input has a default), so
``gradio_client`` scripts can call ``Client(url).predict(handle_file("photo.jpg"), api_name="/predict")``.
It binds to 127.0.0.1 unless told otherwise, and refuses uploads over ``max_file_size`` and images over
``max_pixels``.
"""

from __future__ import annotations

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
from .released import DEFAULT_MODEL, RELEASED

MAX_PIXELS = 40_000_000  # a photo, not a decompression bomb
MAX_FILE_SIZE = "20mb"
EXAMPLES = Path(__file__).parent / "space" / "examples"
LOCAL, ENDPOINT = "a local folder", "an OpenAI-compatible endpoint"

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


class Locator:
    """The predictors the app has loaded, one per model choice, loaded on first use."""

    def __init__(self, default_model: str, protocol: str, endpoint: str = "", endpoint_model: str = "") -> None:
        self.default_model, self.protocol = default_model, protocol
        self.endpoint, self.endpoint_model = endpoint, endpoint_model
        self._loaded: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    def predictor(self, model: str, folder: str, endpoint: str, endpoint_model: str, protocol: str):
        from .predictors import EndpointPredictor, TransformersPredictor

        chosen = preset(protocol or self.protocol, "predict")
        if model == ENDPOINT:
            endpoint, endpoint_model = endpoint or self.endpoint, endpoint_model or self.endpoint_model
            if not endpoint:
                raise ValueError("give the endpoint's URL, e.g. http://localhost:8000/v1")
            return EndpointPredictor(endpoint, endpoint_model or "globe", protocol=chosen)
        name = folder if model == LOCAL else model
        if not name:
            raise ValueError("give the model's folder")
        key = (name, chosen.name)
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = TransformersPredictor(name, protocol=chosen)
            return self._loaded[key]

    def locate(self, photo: str | None, model: str, folder: str, endpoint: str, endpoint_model: str,
               protocol: str) -> Answer:  # fmt: skip
        if not photo:
            raise ValueError("upload a photo first")
        with Image.open(photo) as img:
            if img.width * img.height > MAX_PIXELS:
                raise ValueError(f"{img.width}x{img.height} is over {MAX_PIXELS:,} pixels: send a smaller photo")
            upright = ImageOps.exif_transpose(img).convert("RGB")
        import io

        buf = io.BytesIO()
        upright.save(buf, "JPEG", quality=92)
        predictor = self.predictor(model or self.default_model, folder, endpoint, endpoint_model, protocol)
        started = time.perf_counter()
        item = EvalItem(id=Path(photo).name, lat=0.0, lon=0.0, image=buf.getvalue())
        if hasattr(predictor, "apredict"):
            import asyncio

            text, error = asyncio.run(predictor.apredict(item))
        else:
            text, error = predictor.predict(item)
        seconds = time.perf_counter() - started
        if error:
            raise RuntimeError(f"the model gave no answer: {error}")
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
        lines.append(f"Answered in {seconds:.1f} s by {predictor.name}")
        reasoning = answer.think or text
        return Answer(text, highlight(reasoning), place, draw_map(predicted, true), "\n\n".join(lines))


def build_app(
    model: str = DEFAULT_MODEL,
    protocol: str = "ours",
    examples: list[str] | None = None,
    endpoint: str = "",
    endpoint_model: str = "",
):
    """The Gradio Blocks app. ``model`` is the default choice (a released checkpoint, a folder or a Hub id), or
    ``endpoint`` (an OpenAI-compatible server) when given."""
    import gradio as gr

    locator = Locator(model, protocol, endpoint, endpoint_model)
    choices = list(dict.fromkeys([model, *RELEASED, LOCAL, ENDPOINT]))
    model = ENDPOINT if endpoint else model
    examples = examples if examples is not None else sorted(str(p) for p in EXAMPLES.glob("*.jpg"))

    def run(photo, model_choice=model, folder="", url=endpoint, url_model=endpoint_model, protocol_choice=protocol):
        try:
            a = locator.locate(photo, model_choice, folder, url, url_model, protocol_choice)
        except (ValueError, RuntimeError, OSError) as exc:
            raise gr.Error(str(exc)) from None
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
                photo = gr.Image(type="filepath", label="Photo", sources=["upload", "clipboard"])
                with gr.Accordion("Model", open=False):
                    model_choice = gr.Dropdown(choices, value=model, label="Model")
                    folder = gr.Textbox("", label="Local folder (when the model is a local folder)")
                    endpoint_box = gr.Textbox(endpoint, label="Endpoint URL (vLLM, transformers serve)")
                    endpoint_model_box = gr.Textbox(endpoint_model, label="Endpoint model name")
                    protocol_choice = gr.Dropdown(["ours", "globe-release"], value=protocol, label="Protocol")
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
        button.click(run, inputs=[photo, model_choice, folder, endpoint_box, endpoint_model_box, protocol_choice],
                     outputs=[reasoning, place, world, details], api_name="predict")  # fmt: skip
    return app


def launch(model: str = DEFAULT_MODEL, protocol: str = "ours", host: str = "127.0.0.1", port: int = 7860,
           share: bool = False, max_file_size: str = MAX_FILE_SIZE, endpoint: str = "",
           endpoint_model: str = "") -> None:  # fmt: skip
    build_app(model, protocol, endpoint=endpoint, endpoint_model=endpoint_model).queue(max_size=16).launch(
        server_name=host, server_port=port, share=share, max_file_size=max_file_size, show_error=True
    )
