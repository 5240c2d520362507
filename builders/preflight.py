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
