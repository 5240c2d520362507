"""Reading MP16-Reason: ``load()`` through ``datasets`` and ``stream()`` as a webdataset pipeline.

Both work on the Hub repository (``HF_ENDPOINT`` and the usual token apply) or on a local build folder.
``load_dataset("globe/mp16-reason")`` needs no loading script: the card's ``configs`` and ``features`` say
everything, so ``load()`` is only that call with the repository filled in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .manifest import Manifest, Shard, hub_manifest, read_manifest
from .storage import location

REPO_ID = "globe/mp16-reason"  # the dataset on the Hub


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

    if path is not None and (location(path).remote or not (location(path) / "README.md").exists()):
        # A build without its card, or on an object store: the manifest says which shards make the config (a
        # folder scan would mix them); datasets opens remote shards through fsspec.
        from .schema import features

        splits = sorted({s.split for s in _manifest(repo_id, revision, path).shards if s.config == config})
        if not splits:
            raise ValueError(f"{path}: the build has no config {config!r}")
        files = {name: shard_paths(name, config, path=path) for name in splits}
        with _object_store_online(location(path).remote):
            return datasets.load_dataset(
                "webdataset", data_files=files, split=split, streaming=streaming, features=features(), **kwargs
            )
    if path is not None:
        return datasets.load_dataset(str(path), config, split=split, streaming=streaming, revision=revision, **kwargs)
    from huggingface_hub import constants

    from .reach import USE_A_BUILD, HubUnreachable, require_hub

    instead = USE_A_BUILD
    if not constants.HF_HUB_OFFLINE:
        require_hub(f"load {repo_id}", instead)
    try:
        return datasets.load_dataset(repo_id, config, split=split, streaming=streaming, revision=revision, **kwargs)
    except ConnectionError as exc:  # offline, and not in datasets' cache
        raise HubUnreachable(f"cannot load {repo_id} ({str(exc)[:160]}); {instead}") from None


@contextlib.contextmanager
def _object_store_online(remote: bool) -> Iterator[None]:
    """``HF_HUB_OFFLINE`` is about the Hub, but ``datasets`` refuses every remote URL under it, an S3 bucket's
    too: while it reads an object store's shards, its flag is lifted (the Hub is never asked on this path)."""
    import datasets

    if not (remote and datasets.config.HF_HUB_OFFLINE):
        yield
        return
    datasets.config.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = True


def _manifest(repo_id: str, revision: str | None, path: str | Path | None) -> Manifest:
    return read_manifest(path) if path is not None else hub_manifest(repo_id, revision)


def shard_entries(
    split: str = "train",
    config: str = "default",
    revision: str | None = None,
    repo_id: str = REPO_ID,
    path: str | Path | None = None,
) -> list[Shard]:
    """The manifest's entries (``path``, ``samples``, ``bytes``, ``sha256``) for the shards of one split."""
    manifest = _manifest(repo_id, revision, path)
    shards = manifest.shards_of(split, config)
    if not shards:
        have = sorted({(s.config, s.split) for s in manifest.shards})
        raise ValueError(f"no shards for config {config!r}, split {split!r}; the dataset has {have}")
    return shards


def shard_paths(
    split: str = "train",
    config: str = "default",
    revision: str | None = None,
    repo_id: str = REPO_ID,
    path: str | Path | None = None,
) -> list[str]:
    """The shards of one split, from the manifest: local file paths, or paths inside the Hub repository."""
    shards = [s.path for s in shard_entries(split, config, revision, repo_id, path)]
    return [str(location(path) / s) for s in shards] if path is not None else shards


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


def open_location(url: str):
    """A shard for reading: a local file, or an object through its filesystem (credentials from the usual
    environment and config files)."""
    return location(url).open("rb", block_size=16 << 20) if "://" in url else open(url, "rb")


def stream(
    split: str = "train",
    config: str = "default",
    revision: str | None = None,
    repo_id: str = REPO_ID,
    path: str | Path | None = None,
    shuffle: int = 1000,
    shard_shuffle: bool = True,
    resampled: bool = False,
    seed: int = 0,
    rows: str = "pairs",
    decode: bool = True,
    split_by_node: bool = True,
):
    """A webdataset pipeline over the dataset's shards, split across ranks and ``DataLoader`` workers.

    - Each epoch (each iteration; ``set_epoch(n)`` sets it) reads every sample of the split once across all
      ranks × workers, in an order drawn from ``seed`` and the epoch, so all ranks agree without talking.
      Every rank yields the same number of samples (``N // ranks``; the few left over go unread that epoch,
      see ``mp16_reason.partition``), so DDP steps stay in lockstep. Wrap it in a ``DataLoader`` as is.
    - ``shuffle``: size of the sample shuffle buffer (0: keep shard order); ``shard_shuffle``: a new shard
      order each epoch.
    - ``resampled``: draw shards with replacement, endlessly, each rank and worker from a seed of its own
      (multi-epoch training; stop by step count).
    - ``split_by_node=False``: every rank reads the whole split in the same order, for trainers that shard
      the stream themselves (TRL's GRPO with an iterable dataset does).
    - ``rows="pairs"`` yields ``(PIL image, record dict)``; ``rows="raw"`` yields webdataset's sample dicts.
    - ``rows="trl"`` returns a ``datasets.IterableDataset`` of TRL-ready rows (a conversational prompt, the
      image, and the columns the GLOBE rewards read) that TRL's trainers take as ``train_dataset``. It is not
      split by rank (``split_by_node`` does not apply): under accelerate every process reads the same stream
      and accelerate hands each its part of every batch, which is how TRL keeps a prompt's generations
      together; each prompt is used once per epoch across the processes.
    """
    import webdataset as wds

    from .streaming import EpochShards, HubOpener, ReadPieces, SampleShuffle, Stream, pair, trl_pair

    if rows not in ("pairs", "trl", "raw"):
        raise ValueError(f"rows={rows!r}: use 'pairs', 'trl' or 'raw'")
    if rows == "trl":  # read alike by every process: accelerate, not the stream, splits it
        split_by_node = False
    entries = shard_entries(split, config, revision, repo_id, path)
    if path is not None:
        shards = [(str(location(path) / s.path), s.samples) for s in entries]
        open_shard: Callable[[str], Any] = open_location
    else:
        shards = [(s.path, s.samples) for s in entries]
        open_shard = HubOpener(repo_id, revision)
    # Every stage is picklable, so DataLoader workers may be spawned as well as forked.
    source = EpochShards(shards, seed, shard_shuffle, resampled, split_by_node)
    stages: list[Any] = [source, ReadPieces(open_shard)]
    if shuffle:
        stages.append(SampleShuffle(source, shuffle))
    if decode:
        stages.append(wds.decode("pil"))
    if rows == "pairs":
        stages.append(wds.map(pair))
    elif rows == "trl":
        stages.append(wds.map(trl_pair))
        return _trl_dataset(Stream(*stages))
    return Stream(*stages)


def _trl_dataset(rows):
    """``rows`` (a TRL-row stream) as the ``datasets.IterableDataset`` TRL's trainers take: one generator, so that
    accelerate splits its batches, not its shards; each pass over it is the stream's next epoch."""
    import datasets

    def generate():
        yield from rows

    return datasets.IterableDataset.from_generator(generate)
