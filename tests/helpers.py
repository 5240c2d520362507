"""Small helpers shared by the test modules."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from builders.plane.images import prepare
from builders.recipe import Recipe, load_recipe
from builders.sample.replies import replies
from builders.teachers.prompt import reply_problem

MODELS = ("vendor/teacher-a", "vendor/teacher-b")


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


def teacher_recipe(sample_input: Path, out: Path, url: str, cache: Path, **overrides) -> Recipe:
    teachers = [
        {
            "name": f"t{i}",
            "base_url": url,
            "model": m,
            "api_key_env": "MP16_TEST_KEY",
            "max_concurrency": 4,
            "timeout_s": 0.6,
            "backoff_s": 0.01,
            "max_retries": 6,
            "price_input_per_1k": 0.001,
            "price_output_per_1k": 0.002,
        }
        for i, m in enumerate(MODELS)
    ]
    return sample_recipe(
        sample_input,
        out,
        teachers=teachers,
        **{"distill.cache": str(cache), "curation.grounding.model": "bundled:scene-segmenter", **overrides},
    )


def scripted_replies(sample_input: Path, recipe: Recipe):
    """The server's answers: the authored replies of the scene whose prepared image was sent."""
    spec = recipe.image
    by_digest = {}
    scenes = [json.loads(x) for x in (sample_input / "scenes.jsonl").read_text().splitlines()]
    for i, scene in enumerate(scenes):
        data = (sample_input / "images" / scene["file"]).read_bytes()
        jpeg = prepare(data, spec.max_pixels, spec.jpeg_quality, spec.max_source_pixels, spec.min_side, spec.resample)
        by_digest[hashlib.sha256(jpeg.jpeg).hexdigest()] = replies(scene, i)

    def reply(image: bytes, request: dict) -> str:
        texts = by_digest[hashlib.sha256(image).hexdigest()]
        text = texts[MODELS.index(request["model"])]
        # The sample's one unusable reply (a refusal) exercises the offline rejection path; an endpoint sending
        # it would have it quarantined as a failed request, so the scripted endpoint answers instead.
        return text if reply_problem(text) is None else texts[0]

    return reply, sorted(by_digest)
