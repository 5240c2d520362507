"""Training rows from MP16-Reason: the Hub dataset, a local build folder, or ``mp16_reason.stream()``.

Each method turns one record into rows (TRL's conversational format; TRL puts the image into the first user
turn itself):

- ``grpo``: the GLOBE prompt, the image, and the columns the rewards read (country, city, lat, lon, entities);
- ``sft``: the prompt and the target completion ``<think>reasoning</think><answer>country: …\\ncity: …</answer>``;
- ``rm``: for every parsed teacher answer with a verdict, the reward model's conversation about that answer's
  reasoning and the verdict, ``yes`` or ``no``: the ``localizability`` config holds every judged image,
  rejected ones included, so both answers occur.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mp16_reason.hub import load, shard_entries, stream
from mp16_reason.prompt import INSTRUCTION, target, trl_row

from .configs import DataArguments
from .localizability import NO, SYSTEM, YES

KINDS = ("grpo", "sft", "rm")


class DatasetError(ValueError):
    """The training data named cannot be used (a clear message says why and what to do)."""


def rows_for(kind: str, image: Any, record: dict) -> list[dict]:
    """The training rows one record gives for ``kind``; ``image`` is passed through untouched."""
    if kind == "grpo":
        row = trl_row(image, record)
        return [{k: row[k] for k in ("image", "prompt", "country", "city", "lat", "lon", "entities", "id")}]
    if kind == "sft":
        if not record.get("reasoning"):
            return []
        return [
            {
                "image": image,
                "prompt": [{"role": "user", "content": INSTRUCTION}],
                "completion": [
                    {"role": "assistant", "content": target(record["reasoning"], record["country"], record["city"])}
                ],
            }
        ]
    if kind == "rm":
        rows = []
        for answer in record.get("teachers") or []:
            if not answer.get("parsed") or answer.get("localizable") is None or not answer.get("reasoning"):
                continue
            text = target(answer["reasoning"], answer.get("country", ""), answer.get("city", ""))
            rows.append(
                {
                    "image": image,
                    "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
                    "completion": [{"role": "assistant", "content": YES if answer["localizable"] else NO}],
                }
            )
        return rows
    raise ValueError(f"kind={kind!r}: use one of {KINDS}")


def local_build(name: str) -> Path | None:
    """``name`` as a local build folder, when it is one."""
    path = Path(name).expanduser()
    return path if (path / "manifest.json").exists() else None


def stream_length(args: DataArguments) -> int:
    """Records one epoch of ``mp16_reason.stream()`` yields for these arguments (the manifest's count)."""
    local = local_build(args.dataset_name)
    where = {"path": local} if local else {"repo_id": args.dataset_name, "revision": args.dataset_revision}
    total = sum(s.samples for s in shard_entries(args.dataset_split, args.dataset_config, **where))
    return min(total, args.max_samples) if args.max_samples else total


def training_dataset(args: DataArguments, kind: str, seed: int = 0):
    """A ``datasets`` Dataset (or IterableDataset when streaming) of ``kind`` rows, as the arguments say."""
    import datasets

    local = local_build(args.dataset_name)
    if local is None and (Path(args.dataset_name).expanduser().exists() or "/" not in args.dataset_name):
        raise DatasetError(
            f"dataset_name {args.dataset_name!r} is not a build folder (no manifest.json) nor a Hub id (org/name); "
            f"make one with `mp16-reason build --sample --out {args.dataset_name}` or name a Hub dataset"
        )
    where = {"path": local} if local else {"repo_id": args.dataset_name, "revision": args.dataset_revision}
    # A stream is read alike, epoch by epoch, by every process, and the trainer keeps each process's slice of
    # each batch (accelerate's IterableDatasetShard; TRL's GRPO needs that to keep a prompt's generations
    # together). So the stream must not split by node as well (half of each process's data would be lost),
    # and it is one generator: accelerate would hand the shards of a multi-shard dataset to different
    # processes instead, which TRL's batching of an iterable dataset does not expect.
    if args.dataset_loader == "webdataset":
        pairs = stream(args.dataset_split, args.dataset_config, seed=seed, split_by_node=False, **where)
        return _iterable_rows(lambda: pairs, kind, args.max_samples)
    if args.dataset_streaming:
        ds = load(args.dataset_split, args.dataset_config, streaming=True, **where)
        return _iterable_rows(lambda: ((row["jpg"], row["json"]) for row in ds), kind, args.max_samples)

    ds = load(args.dataset_split, args.dataset_config, **where)
    if args.max_samples:
        ds = ds.select(range(min(args.max_samples, len(ds))))
    # Images stay encoded while rows are made (no decode/re-encode round trip), then decode lazily again.
    ds = ds.cast_column("jpg", datasets.Image(decode=False))

    columns = list(rows_for(kind, None, _ONE_ROW[kind])[0])  # also the columns of a batch that gives no rows

    def expand(batch: dict) -> dict:
        rows = [r for jpg, rec in zip(batch["jpg"], batch["json"]) for r in rows_for(kind, jpg, rec)]
        return {k: [r[k] for r in rows] for k in columns}

    ds = ds.map(expand, batched=True, remove_columns=ds.column_names)
    if len(ds) == 0:
        raise DatasetError(
            f"{args.dataset_name} ({args.dataset_config}/{args.dataset_split}) gives no {kind} training rows"
            + (": the rm method needs the localizability config with parsed teacher verdicts" if kind == "rm" else "")
        )
    return ds.cast_column("image", datasets.Image())


def _iterable_rows(pairs: Callable[[], Iterable[tuple[Any, dict]]], kind: str, max_samples: int | None):
    """An IterableDataset of one generator: the ``kind`` rows of each (image, record) of a pass over
    ``pairs()``, from its first ``max_samples`` records."""
    import datasets

    def generate():
        for n, (image, record) in enumerate(pairs(), 1):
            yield from rows_for(kind, image, record)
            if max_samples and n >= max_samples:
                return

    return datasets.IterableDataset.from_generator(generate)


# A record that gives one row of each kind.
_ONE_ROW = {
    "grpo": {"country": "", "city": "", "lat": 0.0, "lon": 0.0},
    "sft": {"reasoning": "-", "country": "", "city": ""},
    "rm": {"teachers": [{"parsed": True, "localizable": True, "reasoning": "-"}]},
}
