"""Configuration errors, found before a build writes anything: each names the flag or recipe key and the fix.

A build that would fail on a missing file, a column the input format needs, an unset API key or a missing
package fails here, at once, rather than after the output folder, the lock or the work folder were made (or
after hours of image preparation).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from builders.recipe import Recipe
from mp16_reason.storage import location


class ConfigError(ValueError):
    """A setting to fix before the build can start."""


def check_extras(recipe: Recipe) -> None:
    """The optional packages this recipe needs are installed; else ModuleNotFoundError naming one (which the CLI
    turns into the ``pip install "mp16-reason[extra]"`` line)."""
    from mp16_reason.cli import require
    from mp16_reason.storage import is_url

    needed = []
    if recipe.teachers:
        needed += ["openai", "aiolimiter"]
        c = recipe.curation
        if c.agreement.enabled or c.grounding.enabled:
            needed += ["torch", "transformers", "sentence_transformers"]
    if recipe.split.group_by:
        needed.append("faiss")
    if recipe.distributor == "ray":
        needed.append("ray")
    if any(str(p).startswith("s3://") for p in (recipe.out, recipe.input.metadata, *recipe.input.images)):
        needed.append("s3fs")
    elif is_url(recipe.out) and recipe.out.startswith("gs://"):
        needed.append("gcsfs")
    require(*needed)


def check(recipe: Recipe) -> None:
    check_extras(recipe)
    inp = recipe.input
    if not location(inp.metadata).is_file():
        raise ConfigError(f"metadata file {inp.metadata} does not exist; fix --metadata or input.metadata")
    for path in inp.join:
        if not location(path).is_file():
            raise ConfigError(
                f"join file {path} does not exist (input.join gives coordinates the metadata lacks): pass --join PATH "
                "to the file that has them (MP16-Pro's MP16_Pro_filtered.csv for the official release), or --no-join "
                "(input.join: []) when the metadata has its own coordinates"
            )
    from builders.sources import image_sources

    image_sources(inp.images)  # each source exists, or a SourceError naming --images / input.images
    _columns(recipe)
    for spec in recipe.teachers:  # keys, packages: each kind checks what it needs
        spec.check(recipe.distill.offline)
    if recipe.teachers and recipe.distill.cache:
        _reply_cache(recipe.distill.cache)
    if recipe.teachers or recipe.input.curate:
        _model(recipe.curation.grounding.model, "curation.grounding.model")


def _model(model: str, key: str) -> None:
    """A model the recipe needs is on this machine (a folder, a bundled model, the Hub cache's copy) or the Hub
    answers: found now, in one line, not when curation first loads it after every image is prepared."""
    from huggingface_hub import try_to_load_from_cache

    from builders.curation.grounding import BUNDLED_PREFIX, model_path
    from mp16_reason.reach import HubUnreachable, require_hub

    if model.startswith(BUNDLED_PREFIX):
        try:
            model_path(model)
        except FileNotFoundError as exc:
            raise ConfigError(f"{key}: {exc}") from None
        return
    if Path(model).expanduser().is_dir() or isinstance(try_to_load_from_cache(model, "config.json"), str):
        return
    instead = (
        f"download it where the Hub answers (hf download {model}), give a local folder, or use "
        f"{BUNDLED_PREFIX}scene-segmenter (it knows the offline sample's drawings only)"
    )
    try:
        require_hub(f"get {key} {model!r}", instead)
    except HubUnreachable as exc:
        raise ConfigError(str(exc)) from None


def _reply_cache(path: str) -> None:
    """The reply cache given is a SQLite file (or not there yet): found now, not after every image is prepared."""
    import sqlite3

    if not Path(path).exists():
        return
    try:
        with contextlib.closing(sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)) as db:
            db.execute("PRAGMA schema_version").fetchone()
    except sqlite3.DatabaseError as exc:
        raise ConfigError(
            f"reply cache {path} is not a SQLite reply cache ({exc}); give distill.cache (--teacher-cache) a new "
            "file name, or the cache an earlier build wrote"
        ) from None


def _columns(recipe: Recipe) -> None:
    """The metadata has every column its ``input.format`` needs (a missing one: the file's columns and the
    ``input.columns`` line to write)."""
    import pyarrow.parquet as pq

    from builders.plane.ingest import _header, resolve_columns

    path = location(recipe.input.metadata)
    parquet = path.name.lower().endswith((".parquet", ".pq"))
    resolve_columns(
        pq.read_schema(path.source()).names if parquet else _header(path, recipe.input.encoding), recipe.input
    )
