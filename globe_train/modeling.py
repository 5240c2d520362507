"""Loading the policy (or reward model) and its processor for training.

``model_name_or_path`` is a local folder, a Hub id, or ``bundled:tiny-qwen2.5-vl``: the tiny random
Qwen2.5-VL of ``globe_train.tiny``, built once into the cache, so the CPU recipes run with no download.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mp16_reason.gazetteer import cache_dir

from .compat import save_processor

log = logging.getLogger(__name__)

TINY = "bundled:tiny-qwen2.5-vl"
VISION_NAMES = ("visual", "vision_tower", "vision_model")


def resolve_model(name: str) -> str:
    """A loadable folder or Hub id for ``name``; builds the bundled tiny model on first use."""
    if name != TINY:
        return name
    from .tiny import make_tiny_qwen25vl

    path = cache_dir() / "tiny-qwen2.5-vl"
    if not (path / "config.json").exists():
        log.info("building %s in %s", TINY, path)
        make_tiny_qwen25vl(path)
    return str(path)


def vision_module_name(model: Any) -> str:
    """The dotted name of the model's vision encoder (``model.visual`` for Qwen2.5-VL)."""
    for name, _ in model.named_modules():
        if name.rsplit(".", 1)[-1] in VISION_NAMES:
            return name
    raise ValueError(f"{type(model).__name__} has no vision encoder named one of {VISION_NAMES}")


def freeze_vision(model: Any) -> int:
    """Keep the vision encoder fixed; returns the number of frozen parameters."""
    module = model.get_submodule(vision_module_name(model))
    n = 0
    for p in module.parameters():
        p.requires_grad_(False)
        n += p.numel()
    return n


def load_for_inference(name: str, revision: str | None = None, device: str | None = None) -> tuple[Any, Any, str]:
    """A model to run (not train): ``(model, processor, device)``, on the GPU in bf16 when there is one."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from .compat import patch_processors_without_torchvision
    from .released import check_transformers_format, local_copy

    patch_processors_without_torchvision()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    # The whole checkpoint first (cache, or one download that fails at once when the Hub is unreachable), its
    # format checked before any weight is read; then everything loads from that folder.
    path = local_copy(resolve_model(name), revision)
    check_transformers_format(path, name)
    processor = AutoProcessor.from_pretrained(path)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
    return model.to(device).eval(), processor, device


def load_model(model_args: Any, training_args: Any, padding_side: str = "left") -> tuple[Any, Any]:
    """The model and processor that ``model_args`` (TRL's ``ModelConfig``) names, in the run's precision."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from .compat import patch_processors_without_torchvision

    patch_processors_without_torchvision()
    name = resolve_model(model_args.model_name_or_path)
    revision = model_args.model_revision
    processor = AutoProcessor.from_pretrained(name, revision=revision, padding_side=padding_side)
    dtype = model_args.dtype if model_args.dtype not in (None, "auto") else None
    if dtype is None:
        dtype = "bfloat16" if getattr(training_args, "bf16", False) else "float32"
    model = AutoModelForImageTextToText.from_pretrained(
        name,
        revision=revision,
        dtype=getattr(torch, dtype),
        attn_implementation=model_args.attn_implementation,
    )
    return model, processor


def peft_config(model_args: Any, model: Any, vision_frozen: bool):
    """TRL's LoRA config from ``model_args`` (None without ``use_peft``); with a frozen vision encoder, its
    layers get no adapters either (``all-linear`` would otherwise reach them)."""
    from trl import get_peft_config

    config = get_peft_config(model_args)
    if config is not None and vision_frozen:
        config.exclude_modules = rf"{vision_module_name(model)}\..*"
    return config


def save_final(
    trainer: Any, processor: Any, output_dir: str | Path, merge_adapter: bool, base: str | None = None
) -> Path:
    """Save the trained model and processor to ``output_dir``; a LoRA model is merged first when asked. The
    processor's files are complete (``base``'s video processor config too), so stock transformers loads it."""
    output_dir = Path(output_dir)
    model = trainer.model
    if hasattr(model, "peft_config") and merge_adapter:
        model = model.merge_and_unload()
        model.save_pretrained(output_dir)
    else:
        trainer.save_model(str(output_dir))
    save_processor(processor, output_dir, base)
    for path in output_dir.glob("*.safetensors"):
        path.chmod(0o644)  # written 0600; a server or another user must be able to read it
    return output_dir
