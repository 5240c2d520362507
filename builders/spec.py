"""The base of every settings model of a recipe: unknown keys are errors, never ignored."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

# Pillow's resampling filters by name: the recipe's image.resample (the image stage maps them to Pillow's).
ResampleFilter = Literal["box", "bilinear", "hamming", "bicubic", "lanczos"]


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
