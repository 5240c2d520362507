"""The base of every settings model of a recipe: unknown keys are errors, never ignored."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
