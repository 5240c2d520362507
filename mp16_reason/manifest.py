"""A build's ``manifest.json``, as one model read in one place: the build writes it last (its presence means a
finished build), and the card, validation, publishing, ``load()``/``stream()`` and training all read it here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_serializer

from .storage import Location, location

NAME = "manifest.json"
DEFAULT_CONFIG = "default"
LOCALIZABILITY_CONFIG = "localizability"  # a second view of the same images (builds with teachers)
OTHER_CONFIGS = (LOCALIZABILITY_CONFIG,)


def config_folder(config: str) -> str:
    """Where a config's shards lie: the default config's in ``data/``, another's in a folder of its own name
    beside it, never under ``data/`` (``load_dataset(build, data_dir="data")`` then reads one config's rows)."""
    return "data" if config == DEFAULT_CONFIG else config


SHARD_FOLDERS = tuple(config_folder(c) for c in (DEFAULT_CONFIG, *OTHER_CONFIGS))


class Shard(BaseModel):
    """One shard: a tar of ``samples`` WebDataset samples of one config and split."""

    model_config = ConfigDict(extra="forbid")

    path: str
    split: str
    samples: int
    bytes: int = 0
    sha256: str = ""
    config: str = DEFAULT_CONFIG

    @model_serializer(mode="wrap")
    def _default_config_unsaid(self, handler: Any) -> Any:
        data = handler(self)  # a shard of the default config is written without the key, as it always was
        if isinstance(data, dict) and data.get("config") == DEFAULT_CONFIG:
            data.pop("config")
        return data


class Totals(BaseModel):
    model_config = ConfigDict(extra="allow")

    input_rows: int = 0
    written: int = 0
    rejected: int = 0
    splits: dict[str, int] = Field(default_factory=dict)
    rejected_by_stage: dict[str, int] = Field(default_factory=dict)
    bytes: int = 0
    shards: int = 0
    configs: dict[str, dict[str, int]] = Field(default_factory=dict)  # the other configs: split -> samples


class Manifest(BaseModel):
    """What a build writes. Readers of the data need only ``shards``: a hand-made folder with a manifest of its
    shards alone streams and loads too."""

    model_config = ConfigDict(extra="allow")

    name: str = "MP16-Reason"
    version: str = ""
    recipe_sha256: str = ""
    recipe: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    totals: Totals = Field(default_factory=Totals)
    shards: list[Shard]
    prompt_version: str | None = None  # builds with teachers only
    teachers: list[dict[str, Any]] | None = None

    def shards_of(self, split: str, config: str = DEFAULT_CONFIG) -> list[Shard]:
        return [s for s in self.shards if s.split == split and s.config == config]

    def groups(self) -> dict[str, dict[str, list[Shard]]]:
        """config -> split -> shards, in path order."""
        out: dict[str, dict[str, list[Shard]]] = {}
        for shard in sorted(self.shards, key=lambda s: s.path):
            out.setdefault(shard.config, {}).setdefault(shard.split, []).append(shard)
        return out

    def dumps(self) -> str:
        return json.dumps(self.model_dump(mode="json", exclude_none=True), indent=2, ensure_ascii=False) + "\n"


def read_manifest(root: str | Path | Location) -> Manifest:
    """The manifest of a build folder (local or on object storage)."""
    path = location(root) / NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {root} a finished `mp16-reason build --out` folder?")
    return Manifest.model_validate_json(path.read_bytes())


def hub_manifest(repo_id: str, revision: str | None = None) -> Manifest:
    """The manifest of a dataset repository on the Hub (``HF_ENDPOINT`` honoured; cached). Offline, the cached
    copy; no copy, or no Hub answering: one line naming ``path=`` instead, within seconds."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    from .reach import USE_A_BUILD, require_hub

    instead = USE_A_BUILD
    if constants.HF_HUB_OFFLINE:
        try:
            local = hf_hub_download(repo_id, NAME, repo_type="dataset", revision=revision, local_files_only=True)
        except (LocalEntryNotFoundError, FileNotFoundError):
            require_hub(f"read {repo_id}'s manifest", instead)  # raises: offline
    else:
        require_hub(f"read {repo_id}'s manifest", instead)
        local = hf_hub_download(repo_id, NAME, repo_type="dataset", revision=revision)
    return Manifest.model_validate_json(Path(local).read_bytes())
