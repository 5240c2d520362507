"""Small helpers shared by the test modules."""

from __future__ import annotations

from pathlib import Path

from builders.recipe import Recipe, load_recipe


def sample_recipe(sample_input: Path, out: Path, **overrides) -> Recipe:
    """A quick recipe over a ``write_sample`` folder: small images, units and shards, one worker."""
    base = {
        "input.metadata": str(sample_input / "metadata.csv"),
        "input.images": str(sample_input / "images"),
        "out": str(out),
        "unit_size": 16,
        "shards.max_bytes": 150_000,
        "workers": 1,
        "image.max_pixels": 160 * 120,
        "split.test_fraction": 0.25,
    }
    base.update(overrides)
    return load_recipe(None, base)
