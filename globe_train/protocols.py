"""How a model is asked about a photo: the messages and the sampling, as named presets.

``ours`` is this project's: the training prompt (:data:`mp16_reason.prompt.INSTRUCTION`), greedy decoding.
``globe-release`` is exactly what the official GLOBE release does, so that scoring its checkpoints gives the
numbers users compare with the paper: the system prompt "You are a helpful assistant.", one user message with
the image (the file's own bytes as a ``data:image;base64,`` URL) before the text, and

- in evaluation, the released ``eval.py``: ``PROMPT_COT``, temperature 0.1, 512 tokens, frequency and
  presence penalties 0.7 (``globe-release-no-cot``: its ``PROMPT_NO_COT``);
- in prediction, the release README's example: the same prompt opened by "You are a geolocation expert.",
  temperature 0.6, 512 tokens.

The prompts are quoted from the release (github.com/lingli1996/GLOBE, ``examples/train/grpo/globe/eval.py``
and ``README.md``, Apache-2.0) because the protocol is only the protocol with their exact wording.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from mp16_reason.prompt import INSTRUCTION

SYSTEM = "You are a helpful assistant."

# The release's eval.py, verbatim.
PROMPT_COT = """You are participating in a geolocation challenge. Based on the provided image:
1. Carefully analyze the image for clues about its location (architecture, signage, vegetation, terrain, etc.)
2. Think step-by-step about what country, and city this is likely to be in and why
Your final answer include these two lines somewhere in your response:
country: [country name]
city: [city name]

You MUST output the thinking process in <think> </think> and give answer in <answer> </answer> tags."""

PROMPT_NO_COT = (
    "Based on the provided image, please output its location (country and city) directly without any explanation."
    "\nYour final answer include these two lines in your response:\ncountry: [country name]\ncity: [city name]"
)

# The release README's inference example, verbatim.
PROMPT_DEMO = (
    "You are a geolocation expert. You are participating in a geolocation challenge. Based on the provided "
    "image:\n1. Carefully analyze the image for clues about its location (architecture, signage, vegetation, "
    "terrain, etc.)\n2. Think step-by-step about what country, and city this is likely to be in and why\n\nYour "
    "final answer include these two lines somewhere in your response:\ncountry: [country name]\ncity: [city name]"
    "\n\nYou MUST output the thinking process in <think> </think> and give answer in <answer> </answer> tags."
)


@dataclass(frozen=True)
class Protocol:
    """One way of asking. ``temperature`` 0 is greedy decoding; ``raw_image``: the file's bytes as they are (as
    released), rather than a JPEG within ``max_pixels``."""

    name: str
    prompt: str
    system: str = SYSTEM
    temperature: float = 0.0
    max_tokens: int = 512
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    raw_image: bool = False
    data_url_prefix: str = "data:image/jpeg;base64,"

    def record(self) -> dict:
        """What ``metrics.json`` and predictions record of it."""
        return asdict(self)


_RELEASE = {"raw_image": True, "data_url_prefix": "data:image;base64,"}
_RELEASE_EVAL = {**_RELEASE, "temperature": 0.1, "frequency_penalty": 0.7, "presence_penalty": 0.7}
PROTOCOLS: dict[str, dict[str, Protocol]] = {
    "eval": {
        "ours": Protocol("ours", INSTRUCTION),
        "globe-release": Protocol("globe-release", PROMPT_COT, **_RELEASE_EVAL),
        "globe-release-no-cot": Protocol("globe-release-no-cot", PROMPT_NO_COT, **_RELEASE_EVAL),
    },
    "predict": {
        "ours": Protocol("ours", INSTRUCTION),
        "globe-release": Protocol("globe-release", PROMPT_DEMO, temperature=0.6, **_RELEASE),
    },
}


def protocol(name: str, task: str, max_tokens: int | None = None) -> Protocol:
    """The preset ``name`` for ``task`` (``eval`` or ``predict``), with ``max_tokens`` when given."""
    presets = PROTOCOLS[task]
    if name not in presets:
        raise ValueError(f"unknown protocol {name!r} for {task}; use one of {', '.join(presets)}")
    chosen = presets[name]
    if max_tokens is not None and max_tokens != chosen.max_tokens:
        from dataclasses import replace

        chosen = replace(chosen, max_tokens=max_tokens)
    return chosen
