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
    from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor

    for cls in (Qwen2VLProcessor, Qwen2_5_VLProcessor):
        base = cls.get_attributes.__func__
        cls.get_attributes = classmethod(lambda c, _b=base: [a for a in _b(c) if a != "video_processor"])
    _applied = True
    return True


def save_processor(processor: Any, out: str | Path) -> None:
    """``processor.save_pretrained(out)``, with every saved config naming the processor's own class:
    tokenizers built in memory are saved under a backend class name that ``AutoProcessor`` cannot map back."""
    out = Path(out)
    processor.save_pretrained(out)
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        path = out / name
        if path.exists():
            data = json.loads(path.read_text())
            data["processor_class"] = type(processor).__name__
            path.write_text(json.dumps(data, indent=2))
