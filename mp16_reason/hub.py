"""Reading MP16-Reason: ``load()`` through ``datasets`` and ``stream()`` as a webdataset pipeline.

Both work on the Hub repository (``HF_ENDPOINT`` and the usual token apply) or on a local build folder.
``load_dataset("globe/mp16-reason")`` needs no loading script: the card's ``configs`` and ``features`` say
everything, so ``load()`` is only that call with the repository filled in.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO_ID = "globe/mp16-reason"  # the dataset on the Hub
DEFAULT_CONFIG = "default"


def config_of(shard: dict) -> str:
    """The config a manifest shard entry belongs to (entries without one are the default config's)."""
    return shard.get("config", DEFAULT_CONFIG)


def load(
    split: str | None = None,
    config: str = "default",
    streaming: bool = False,
    revision: str | None = None,
    repo_id: str = REPO_ID,
    path: str | Path | None = None,
    **kwargs: Any,
):
    """``datasets.load_dataset`` of the Hub repository, or of a local build folder given as ``path`` (its card
    when rendered, else its manifest)."""
    import datasets

    if path is not None and not (Path(path) / "README.md").exists():
        # A build without its card: the manifest says which shards make the config (a folder scan would mix them).
        from .schema import features

        splits = sorted({s["split"] for s in _manifest(repo_id, revision, path)["shards"] if config_of(s) == config})
        if not splits:
            raise ValueError(f"{path}: the build has no config {config!r}")
        files = {name: shard_paths(name, config, path=path) for name in splits}
        return datasets.load_dataset(
            "webdataset", data_files=files, split=split, streaming=streaming, features=features(), **kwargs
        )
    source = str(path) if path is not None else repo_id
    return datasets.load_dataset(source, config, split=split, streaming=streaming, revision=revision, **kwargs)


def _manifest(repo_id: str, revision: str | None, path: str | Path | None) -> dict:
    if path is not None:
        return json.loads((Path(path) / "manifest.json").read_text())
    from huggingface_hub import hf_hub_download

    local = hf_hub_download(repo_id, "manifest.json", repo_type="dataset", revision=revision)
    return json.loads(Path(local).read_text())


def shard_paths(
    split: str = "train",
    config: str = "default",
    revision: str | None = None,
    repo_id: str = REPO_ID,
    path: str | Path | None = None,
) -> list[str]:
    """The shards of one split, from the manifest: local file paths, or paths inside the Hub repository."""
    manifest = _manifest(repo_id, revision, path)
    shards = [s["path"] for s in manifest["shards"] if s["split"] == split and config_of(s) == config]
    if not shards:
        have = sorted({(config_of(s), s["split"]) for s in manifest["shards"]})
        raise ValueError(f"no shards for config {config!r}, split {split!r}; the dataset has {have}")
    return [str(Path(path) / s) for s in shards] if path is not None else shards


def shard_urls(
    split: str = "train",
    config: str = "default",
    revision: str | None = None,
    repo_id: str = REPO_ID,
    path: str | Path | None = None,
) -> list[str]:
    """Shard URLs for ``webdataset`` (``HF_ENDPOINT`` honoured), or local paths when ``path`` is a build folder."""
    if path is not None:
        return shard_paths(split, config, revision, repo_id, path)
    from huggingface_hub import hf_hub_url

    return [
        hf_hub_url(repo_id, p, repo_type="dataset", revision=revision)
        for p in shard_paths(split, config, revision, repo_id)
    ]


def _hub_opener(repo_id: str, revision: str | None) -> Callable[[Iterator[dict]], Iterator[dict]]:
    """A webdataset stage that opens repository paths through ``HfFileSystem`` (auth and endpoint handled,
    and no token ever placed in a URL or command line)."""
    from huggingface_hub import HfFileSystem

    fs = HfFileSystem()
    prefix = f"datasets/{repo_id}@{revision}" if revision else f"datasets/{repo_id}"

    def opener(shards: Iterator[dict]) -> Iterator[dict]:
        for shard in shards:
            with fs.open(f"{prefix}/{shard['url']}", "rb", block_size=16 << 20) as stream:
                yield {**shard, "stream": stream}

    return opener


def _local_opener(shards: Iterator[dict]) -> Iterator[dict]:
    for shard in shards:
        with open(shard["url"], "rb") as stream:
            yield {**shard, "stream": stream}


def stream(
    split: str = "train",
    config: str = "default",
    revision: str | None = None,
    repo_id: str = REPO_ID,
    path: str | Path | None = None,
    shuffle: int = 1000,
    shard_shuffle: bool = True,
    resampled: bool = False,
    seed: int | None = None,
    rows: str = "pairs",
    decode: bool = True,
):
    """A webdataset pipeline over the dataset's shards.

    - ``shuffle``: size of the sample shuffle buffer (0: keep shard order); ``shard_shuffle`` shuffles the
      shard list each epoch.
    - ``resampled``: draw shards with replacement, endlessly (multi-epoch training; stop by step count).
    - Shards are split across nodes and ``DataLoader`` workers, so wrap it in a ``DataLoader`` as is.
    - ``rows="pairs"`` yields ``(PIL image, record dict)``; ``rows="trl"`` yields TRL-ready rows (prompt,
      image, and the columns the GLOBE rewards read); ``rows="raw"`` yields webdataset's sample dicts.
    """
    import webdataset as wds

    from .prompt import trl_row

    if rows not in ("pairs", "trl", "raw"):
        raise ValueError(f"rows={rows!r}: use 'pairs', 'trl' or 'raw'")
    shards = shard_paths(split, config, revision, repo_id, path)
    stages: list[Any] = []
    if resampled:
        stages.append(wds.ResampledShards(shards, seed=seed or 0, deterministic=seed is not None))
    else:
        stages.append(wds.SimpleShardList(shards))
        if shard_shuffle:
            stages.append(wds.shuffle(len(shards), initial=len(shards), rng=random.Random(seed)))
        stages += [wds.split_by_node, wds.split_by_worker]
    stages += [
        _local_opener if path is not None else _hub_opener(repo_id, revision),
        wds.tariterators.tar_file_expander,
        wds.tariterators.group_by_keys,
    ]
    if shuffle:
        stages.append(wds.shuffle(shuffle, rng=random.Random(seed)))
    if decode:
        stages.append(wds.decode("pil"))
    if rows == "pairs":
        stages.append(wds.map(lambda s: (s["jpg"], s["json"])))
    elif rows == "trl":
        stages.append(wds.map(lambda s: trl_row(s["jpg"], s["json"])))
    return wds.DataPipeline(*stages)
