"""Qwen2(.5)-VL processors without torchvision.

transformers' Qwen2-VL processors carry a video processor that needs torchvision; where torchvision is not
installed (or has no build for this torch), loading the processor fails even for images. Dropping the video
processor from the processor's attributes lets the image path work through ``AutoProcessor``, ``save_pretrained``,
TRL and ``transformers serve``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

_applied = False


def patch_processors_without_torchvision() -> bool:
    """Apply the workaround when torchvision is absent; returns whether it was applied. Idempotent."""
    global _applied
    if _applied or importlib.util.find_spec("torchvision") is not None:
        return _applied
    from transformers import InternVLProcessor, Qwen2_5_VLProcessor, Qwen2VLProcessor

    for cls in (Qwen2VLProcessor, Qwen2_5_VLProcessor, InternVLProcessor):
        base = cls.get_attributes.__func__
        cls.get_attributes = classmethod(lambda c, _b=base: [a for a in _b(c) if a != "video_processor"])
    _applied = True
    return True


def save_processor(processor: Any, out: str | Path, base: str | None = None, revision: str | None = None) -> None:
    """``processor.save_pretrained(out)``, with every saved config naming the processor's own class (tokenizers
    built in memory are saved under a backend class name that ``AutoProcessor`` cannot map back), and with the
    processor's files complete (:func:`complete_processor_files`) wherever it was saved."""
    out = Path(out)
    processor.save_pretrained(out)
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        path = out / name
        if path.exists():
            data = json.loads(path.read_text())
            data["processor_class"] = type(processor).__name__
            path.write_text(json.dumps(data, indent=2))
    complete_processor_files(out, base, revision)


def complete_processor_files(out: str | Path, base: str | None = None, revision: str | None = None) -> bool:
    """Give a checkpoint saved without torchvision the video processor config the workaround above dropped, so
    that stock transformers (where torchvision is installed) loads it with ``AutoProcessor``: the base model's
    own (``base``: a folder or a Hub id), or else one derived from the image processor's, as transformers
    derives its defaults. Returns whether the files were changed."""
    out = Path(out)
    path = out / "processor_config.json"
    if not path.exists() or (out / "video_preprocessor_config.json").exists():
        return False
    data = json.loads(path.read_text())
    if "video_processor" in data:
        return False
    video = _base_video_config(base, revision) if base else None
    if video is None and isinstance(data.get("image_processor"), dict):
        video_class = _video_processor_class(out)
        if video_class is None:
            return False
        video = {k: v for k, v in data["image_processor"].items() if k != "image_processor_type"}
        video["video_processor_type"] = video_class
    if video is None:
        return False
    data["video_processor"] = video
    path.write_text(json.dumps(data, indent=2))
    return True


# The video processor transformers pairs with each model type we train. Its own table (VIDEO_PROCESSOR_MAPPING_
# NAMES) blanks the names out where torchvision is missing, which is exactly where this is needed.
VIDEO_PROCESSORS = {
    "qwen2_vl": "Qwen2VLVideoProcessor",
    "qwen2_5_vl": "Qwen2VLVideoProcessor",
    "qwen3_vl": "Qwen3VLVideoProcessor",
    "internvl": "InternVLVideoProcessor",
}


def _video_processor_class(folder: Path) -> str | None:
    """The video processor class transformers pairs with the checkpoint's model type (a name: no import)."""
    try:
        model_type = json.loads((folder / "config.json").read_text())["model_type"]
    except (OSError, ValueError, KeyError):
        return None
    return VIDEO_PROCESSORS.get(model_type)


def _base_video_config(base: str, revision: str | None) -> dict | None:
    """The base model's video processor config, from its folder or its Hub repository (cached), if it has one."""
    from huggingface_hub import hf_hub_download

    def read(name: str) -> dict | None:
        local = Path(base) / name
        try:
            path = local if local.exists() else Path(hf_hub_download(base, name, revision=revision))
            return json.loads(path.read_text())
        except Exception:  # not there, not a repository, offline: the derived config is used instead
            return None

    if (video := read("video_preprocessor_config.json")) is not None:
        return video
    processor = read("processor_config.json") or {}
    return processor.get("video_processor") if isinstance(processor.get("video_processor"), dict) else None
