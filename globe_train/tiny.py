"""Tiny, randomly initialised Qwen2.5-VL and InternVL models with their own offline-trained tokenizers.

They have the real architectures, processors and chat templates (GLOBE's two backbones) at well under a
million parameters, so the whole training, serving and evaluation path runs on a CPU in seconds without
downloading anything. Their answers are random text; they exist to exercise code, not to geolocate.

    python -m globe_train.tiny OUT_DIR [--internvl]
"""

from __future__ import annotations

import sys
from pathlib import Path

SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Text to train the byte-level BPE on: the task's own vocabulary, so prompts tokenize into few pieces.
CORPUS = [
    "Where was this photo taken? Study the location clues: architecture, signs, vegetation, terrain, landmarks.",
    "<think>The signs are in French and the buildings look Haussmann style.</think>",
    "<answer>country: France\ncity: Paris</answer> <answer>country: Japan\ncity: Tokyo</answer>",
    "country: United States city: New York City country: Brazil city: Rio de Janeiro lat: 48.85 lon: 2.35",
    "You are a helpful assistant. The answer is yes or no. localizable reasoning grounded entities",
]


def make_tiny_qwen25vl(out: str | Path, seed: int = 0) -> Path:
    """Write the tiny model, tokenizer and processor to ``out`` and return it."""
    import torch
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessorPil,
    )

    from .compat import patch_processors_without_torchvision, save_processor

    patch_processors_without_torchvision()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = _tokenizer(
        SPECIAL,
        PreTrainedTokenizerFast,
        {
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_start_token": "<|vision_start|>",
            "vision_end_token": "<|vision_end|>",
        },
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL}
    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "vocab_size": len(tokenizer),
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
            "bos_token_id": None,
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [1],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=224 * 224)
    processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    model.save_pretrained(out)
    save_processor(processor, out)
    for path in out.glob("*.safetensors"):
        path.chmod(0o644)  # written 0600; a server or another user must be able to read it
    return out


INTERNVL_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
INTERNVL_TEMPLATE = CHAT_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<IMG_CONTEXT>\n")


def make_tiny_internvl(out: str | Path, seed: int = 0) -> Path:
    """A tiny random InternVL in transformers' own format (``InternVLForConditionalGeneration``, a Qwen2 text
    model, ``InternVLProcessor``): laid out like an InternVL3 checkpoint converted for transformers."""
    import torch
    from transformers import (
        GotOcr2ImageProcessorPil,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        PreTrainedTokenizerFast,
    )

    from .compat import patch_processors_without_torchvision, save_processor

    patch_processors_without_torchvision()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer(
        INTERNVL_SPECIAL,
        PreTrainedTokenizerFast,
        {
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
    )
    tokenizer.chat_template = INTERNVL_TEMPLATE
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in INTERNVL_SPECIAL}
    config = InternVLConfig(
        vision_config={
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "image_size": [56, 56],
            "patch_size": [14, 14],
        },
        text_config={
            "model_type": "qwen2",
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 4096,
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        image_token_id=ids["<IMG_CONTEXT>"],
        image_seq_length=4,
        downsample_ratio=0.5,
    )
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    image_processor = GotOcr2ImageProcessorPil(size={"height": 56, "width": 56}, crop_to_patches=False)
    processor = InternVLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_length=4, chat_template=INTERNVL_TEMPLATE
    )
    model.save_pretrained(out)
    save_processor(processor, out)
    for path in out.glob("*.safetensors"):
        path.chmod(0o644)
    return out


def _tokenizer(special: list[str], fast_class, extra: dict):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(CORPUS * 20, trainer)
    return fast_class(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", extra_special_tokens=extra
    )


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or (len(sys.argv) == 3 and sys.argv[2] != "--internvl"):
        raise SystemExit("usage: python -m globe_train.tiny OUT_DIR [--internvl]")
    print(make_tiny_internvl(sys.argv[1]) if len(sys.argv) == 3 else make_tiny_qwen25vl(sys.argv[1]))
