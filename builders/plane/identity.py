"""What a build's inputs are, by content: the same bytes at another path, bucket or machine are the same input.

The recipe hash covers these identities, never locations, so a rebuild anywhere can be compared with a
published manifest shard by shard. The manifest records each input's identity next to its location:

- a metadata or join file: its size and sha256;
- an archive or URL list: its kind, member count and the sha256 of its index (names, offsets, sizes, URLs);
- a folder: the sha256 of its listing (relative names and sizes).
"""

from __future__ import annotations

from pathlib import Path

from builders.sources import image_sources
from builders.sources.identity import file_identity
from mp16_reason.storage import location


def input_identities(spec, work_dir: Path) -> dict:
    """``{"metadata": …, "join": […], "images": […]}``: identities, with each input's location beside it
    (locations are left out of the recipe hash; see :func:`content_only`)."""
    images = []
    for source in image_sources(spec.images):
        images.append({"kind": source.kind, "location": source.location, **source.identity(work_dir)})
    return {
        "metadata": {"location": spec.metadata, **file_identity(spec.metadata)},
        "join": [{"location": p, **file_identity(p)} for p in spec.join],
        "images": images,
    }


def published(identities: dict) -> dict:
    """The identities as the manifest publishes them: a local input named by its file or folder name (no local
    path leaves the machine), a URL as it is; beside each, its content identity."""
    from mp16_reason.storage import is_url

    def name(entry: dict) -> dict:
        where = entry["location"]
        return {**entry, "location": where if is_url(where) else location(where).name}

    return {
        "metadata": name(identities["metadata"]),
        "join": [name(e) for e in identities["join"]],
        "images": [name(e) for e in identities["images"]],
    }


def content_only(identities: dict) -> dict:
    """The identities without their locations: what the recipe hash covers."""

    def strip(entry: dict) -> dict:
        return {k: v for k, v in entry.items() if k != "location"}

    return {
        "metadata": strip(identities["metadata"]),
        "join": [strip(e) for e in identities["join"]],
        "images": [strip(e) for e in identities["images"]],
    }
