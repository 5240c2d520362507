"""The GLOBE task prompt and answer format, shared by streaming, training and evaluation.

A model answers ``<think>reasoning</think><answer>country: X\ncity: Y</answer>``. The wording below is ours;
its content follows the paper's prompt: study the visible clues, reason step by step, answer with two lines.
"""

from __future__ import annotations

from typing import Any

INSTRUCTION = (
    "Where was this photo taken? Study the location clues it shows: architecture, signs and writing, vehicles, "
    "vegetation, terrain and landmarks. Reason step by step about the country and the city inside "
    "<think> </think>, then give your answer inside <answer> </answer> as exactly two lines:\n"
    "country: [country name]\ncity: [city name]"
)


def target(reasoning: str, country: str, city: str) -> str:
    """The completion a perfect answer would be (the SFT target)."""
    return f"<think>{reasoning}</think><answer>country: {country}\ncity: {city}</answer>"


def trl_row(image: Any, record: dict) -> dict:
    """One TRL-ready row: a conversational prompt, the image, and the columns the rewards read."""
    return {
        "image": image,
        "prompt": [{"role": "user", "content": INSTRUCTION}],
        "country": record.get("country", ""),
        "city": record.get("city", ""),
        "lat": record.get("lat"),
        "lon": record.get("lon"),
        "entities": [e["text"] for e in record.get("entities", [])],
        "solution": f"{record.get('country', '')}\t{record.get('city', '')}",
        "reasoning": record.get("reasoning", ""),
        "id": record.get("id", ""),
    }
