"""The stages of ``mp16_reason.stream()``, and which samples each reader of a split reads, so that an epoch
covers every sample once across all readers.

A reader is one (rank, DataLoader worker) pair. Each epoch the shards are put in an order drawn from a seed
that every rank shares plus the epoch number, so all ranks agree on it without talking to each other. That
order, read as one sequence of samples (the manifest gives each shard's count), is cut into one contiguous
range per rank, and each rank's range into one per worker. A range may start or end inside a shard: its
reader skips the samples before its start. So:

- every rank yields the same number of samples, ``N // ranks``, and a DDP run cannot hang at its last
  collective. When ``ranks`` does not divide ``N``, the last ``N % ranks`` samples of the epoch's order (fewer
  than the number of ranks, and others each epoch) are left out;
- the shard count need not divide ``ranks × workers``. With fewer shards than readers, several readers share a
  shard and each reads past the samples it skips: correct, but slower, so it is warned about with the numbers.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import webdataset as wds
from webdataset.pytorch import IterableDataset
from webdataset.utils import pytorch_worker_info


@dataclass(frozen=True)
class Piece:
    """Samples ``[skip, skip + take)`` of one shard (``take`` None: to its end)."""

    url: str
    skip: int = 0
    take: int | None = None


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """The shard order of one epoch: the same on every rank for the same seed and epoch."""
    order = list(range(n))
    if shuffle:
        random.Random(f"shards:{seed}:{epoch}").shuffle(order)
    return order


def reader_range(total: int, ranks: int, rank: int, workers: int, worker: int) -> tuple[int, int]:
    """The half-open range of sample positions one reader takes from an epoch of ``total`` samples."""
    per_rank = total // ranks
    start = rank * per_rank
    return start + per_rank * worker // workers, start + per_rank * (worker + 1) // workers


def pieces(shards: Sequence[tuple[str, int]], start: int, stop: int) -> list[Piece]:
    """The pieces of ``shards`` (url, sample count; in reading order) that cover positions ``[start, stop)``."""
    out, offset = [], 0
    for url, count in shards:
        lo, hi = max(start, offset), min(stop, offset + count)
        if lo < hi:
            out.append(Piece(url, lo - offset, hi - lo))
        offset += count
        if offset >= stop:
            break
    return out


class EpochShards(IterableDataset):
    """The first stage of ``mp16_reason.stream()``: the pieces this reader reads, one epoch per iteration.

    ``split_by_node=False`` makes every rank read the whole split in the same order (for trainers that shard
    the stream themselves); ``resampled=True`` draws whole shards with replacement, endlessly, from a seed of
    this reader's own, so every rank has its own stream. Iterating again starts the next epoch;
    ``set_epoch`` sets it explicitly, which is what a DataLoader whose workers are recreated each epoch needs
    (accelerate and the transformers Trainer call it).
    """

    def __init__(
        self,
        shards: Sequence[tuple[str, int]],
        seed: int = 0,
        shuffle: bool = True,
        resampled: bool = False,
        split_by_node: bool = True,
        split_by_worker: bool = True,
    ) -> None:
        super().__init__()
        if not shards:
            raise ValueError("no shards to read")
        self.shards, self.seed, self.shuffle = list(shards), seed, shuffle
        self.resampled, self.split_by_node, self.split_by_worker = resampled, split_by_node, split_by_worker
        self.epoch = 0
        self.node: tuple[int, int] | None = None  # (rank, ranks) of the process that sent this to a worker

    def __getstate__(self) -> dict:
        # A DataLoader worker started by spawn has no process group and maybe no RANK: it learns its node from
        # the process that pickled it.
        rank, ranks, _, _ = pytorch_worker_info()
        return {**self.__dict__, "node": (rank, ranks) if ranks > 1 else self.node}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def reader(self) -> tuple[int, int, int, int]:
        """(rank, ranks, worker, workers) of the calling process, as this stream splits."""
        rank, ranks, worker, workers = pytorch_worker_info()
        if ranks == 1 and self.node is not None:
            rank, ranks = self.node
        if not self.split_by_node:
            rank, ranks = 0, 1
        if not self.split_by_worker:
            worker, workers = 0, 1
        return rank, ranks, worker, workers

    def sample_seed(self, epoch: int) -> str:
        """A seed for this reader's sample shuffle buffer in ``epoch``."""
        rank, _, worker, _ = self.reader()
        return f"samples:{self.seed}:{epoch}:{rank}:{worker}"

    def plan(self, epoch: int) -> list[Piece]:
        """This reader's pieces in ``epoch`` (not for ``resampled``)."""
        rank, ranks, worker, workers = self.reader()
        readers = ranks * workers
        if len(self.shards) < readers:
            warnings.warn(
                f"{len(self.shards)} shards for {ranks} rank(s) × {workers} DataLoader worker(s) = {readers} "
                f"readers: readers share shards and read past each other's samples. Build with smaller "
                f"shards (shards.max_bytes) so the split has at least {readers}, or use fewer workers.",
                stacklevel=2,
            )
        ordered = [self.shards[i] for i in epoch_order(len(self.shards), self.seed, epoch, self.shuffle)]
        total = sum(count for _, count in ordered)
        return pieces(ordered, *reader_range(total, ranks, rank, workers, worker))

    def __iter__(self) -> Iterator[Piece]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        if self.resampled:
            rank, _, worker, _ = self.reader()
            rng = random.Random(f"resampled:{self.seed}:{epoch}:{rank}:{worker}")
            while True:
                yield Piece(rng.choice(self.shards)[0])
        yield from self.plan(epoch)


class ReadPieces:
    """The samples of each piece: a shard's samples ``[skip, skip + take)``, as webdataset groups them."""

    def __init__(self, open_shard: Callable[[str], Any]) -> None:
        self.open_shard = open_shard

    def __call__(self, pieces: Iterator[Piece]) -> Iterator[dict]:
        for piece in pieces:
            stop = None if piece.take is None else piece.skip + piece.take
            with self.open_shard(piece.url) as fh:
                samples = wds.tariterators.group_by_keys(
                    wds.tariterators.tar_file_expander(iter([{"url": piece.url, "stream": fh}]))
                )
                got = 0
                for sample in islice(samples, piece.skip, stop):
                    got += 1
                    yield sample
            if piece.take is not None and got < piece.take:
                raise ValueError(
                    f"{piece.url} holds fewer samples than its manifest entry says ({piece.skip + got} < {stop}); "
                    "run `mp16-reason validate` on the build"
                )


class SampleShuffle:
    """A shuffle buffer seeded per reader and epoch, so a stream is reproducible from its seed."""

    def __init__(self, source: EpochShards, bufsize: int) -> None:
        self.source, self.bufsize = source, bufsize

    def __call__(self, samples: Iterator[dict]) -> Iterator[dict]:
        # Runs before the shard stage starts its epoch (stages are lazy), so source.epoch is that epoch.
        rng = random.Random(self.source.sample_seed(self.source.epoch))
        yield from wds.shuffle(self.bufsize, rng=rng)(samples)


class HubOpener:
    """Opens repository paths through ``HfFileSystem`` (auth and endpoint handled, and no token ever placed in
    a URL or command line)."""

    def __init__(self, repo_id: str, revision: str | None) -> None:
        self.prefix = f"datasets/{repo_id}@{revision}" if revision else f"datasets/{repo_id}"
        self.fs = None

    def __call__(self, url: str):
        if self.fs is None:
            from huggingface_hub import HfFileSystem

            self.fs = HfFileSystem()
        return self.fs.open(f"{self.prefix}/{url}", "rb", block_size=16 << 20)


def pair(sample: dict) -> tuple:
    return sample["jpg"], sample["json"]


def collate(batch: Sequence[tuple[Any, dict]]) -> dict[str, list]:
    """``collate_fn`` for a ``DataLoader`` over ``stream()``'s pairs: ``{"images": [...], "records": [...]}``.

    PyTorch's default collate stacks each field across the batch, and a record's fields are not all stackable:
    ``lat`` may be None, ``entities`` and ``teachers`` have a length of their own per sample. Images stay PIL
    images for the model's processor, which batches them its own way."""
    return {"images": [image for image, _ in batch], "records": [record for _, record in batch]}


def trl_pair(sample: dict) -> dict:
    from .prompt import trl_row

    return trl_row(sample["jpg"], sample["json"])


class Stream(wds.DataPipeline):
    """``stream()``'s pipeline: ``set_epoch`` reaches its shard stage (accelerate and the Trainer call it)."""

    def set_epoch(self, epoch: int) -> None:
        self.pipeline[0].set_epoch(epoch)
