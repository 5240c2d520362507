"""Card templates: the dataset card (rendered by ``mp16-reason card``) and the GLOBE model card (``globe card``)."""

from __future__ import annotations

from importlib import resources


def template(name: str) -> str:
    """The text of a template in this folder, e.g. ``template("dataset_card.md")``."""
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
