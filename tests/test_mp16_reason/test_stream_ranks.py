"""``mp16_reason.stream()`` across ranks and DataLoader workers: every sample once per epoch, every rank the same
number of samples, a new order each epoch; ranks simulated with RANK/WORLD_SIZE and real (torch.distributed,
gloo, two processes)."""

from __future__ import annotations

import io
import itertools
import json
import os
import warnings
from collections import Counter
from pathlib import Path

import pytest
import webdataset as wds

from mp16_reason.hub import stream
from mp16_reason.streaming import epoch_order, pieces, reader_range

torch = pytest.importorskip("torch")


def make_split(root: Path, counts: list[int], split: str = "train") -> list[str]:
    """A build folder whose ``split`` has one shard per entry of ``counts`` (that many samples each); the ids."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    ids, entries = [], []
    for n, count in enumerate(counts):
        rel = f"data/{split}-{n:06d}.tar"
        with wds.TarWriter(str(root / rel)) as tar:
            for i in range(count):
                ids.append(f"{n}-{i}")
                tar.write({"__key__": f"s{n}x{i}", "json": json.dumps({"id": ids[-1]}).encode(), "jpg": b"\xff"})
        entries.append({"path": rel, "split": split, "samples": count})
    (root / "manifest.json").write_text(json.dumps({"shards": entries}))
    return ids


def read(root: Path, workers: int, epoch: int = 0, **kwargs) -> list[str]:
    pipeline = stream(path=root, rows="raw", decode=False, shuffle=kwargs.pop("shuffle", 8), **kwargs)
    pipeline.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=workers)
    return [json.loads(s["json"])["id"] for s in loader]


def read_ranks(monkeypatch, root: Path, ranks: int, workers: int, epoch: int = 0, **kwargs) -> list[list[str]]:
    out = []
    for rank in range(ranks):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(ranks))
        out.append(read(root, workers, epoch, **kwargs))
    return out


# Shard counts: 8 shards (divides 2 ranks × 2 workers), 7 (does not), samples even (every sample read) and odd.
SPLITS = {"8 shards, 50 samples": [9, 3, 7, 5, 8, 6, 4, 8], "7 shards, 41 samples": [9, 3, 7, 5, 8, 6, 3]}


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("split", list(SPLITS))
def test_every_sample_once_per_epoch_across_simulated_ranks(monkeypatch, tmp_path, split, workers):
    ids = make_split(tmp_path, SPLITS[split])
    per_rank = read_ranks(monkeypatch, tmp_path, 2, workers)
    seen = Counter(i for rank in per_rank for i in rank)
    assert max(seen.values()) == 1  # none twice
    assert [len(r) for r in per_rank] == [len(ids) // 2] * 2  # same number of steps on every rank
    assert len(set(ids) - set(seen)) == len(ids) % 2  # all read but the N % ranks left over this epoch

    again = read_ranks(monkeypatch, tmp_path, 2, workers, epoch=1)
    assert max(Counter(i for rank in again for i in rank).values()) == 1
    assert again != per_rank  # a new order each epoch, agreed by every rank


def test_a_second_pass_without_workers_is_the_next_epoch(tmp_path):
    ids = make_split(tmp_path, [5, 6, 7, 4])
    pipeline = stream(path=tmp_path, rows="raw", decode=False, shuffle=4)
    first, second = ([json.loads(s["json"])["id"] for s in pipeline] for _ in range(2))
    assert sorted(first) == sorted(second) == sorted(ids) and first != second


def test_order_is_shared_by_ranks_and_follows_seed_and_epoch():
    assert epoch_order(20, seed=0, epoch=3) == epoch_order(20, seed=0, epoch=3)
    assert epoch_order(20, seed=0, epoch=3) != epoch_order(20, seed=0, epoch=4)
    assert epoch_order(20, seed=0, epoch=3, shuffle=False) == list(range(20))
    # Ranges tile [0, N - N % ranks) with equal shares per rank, whatever the worker count.
    spans = [reader_range(41, 3, r, 2, w) for r in range(3) for w in range(2)]
    assert spans[0][0] == 0 and spans[-1][1] == 39 and all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    assert [p.__dict__ for p in pieces([("a", 5), ("b", 5), ("c", 5)], 3, 12)] == [
        {"url": "a", "skip": 3, "take": 2},
        {"url": "b", "skip": 0, "take": 5},
        {"url": "c", "skip": 0, "take": 2},
    ]


def test_fewer_shards_than_readers_warns_with_the_numbers_and_still_reads_each_sample_once(monkeypatch, tmp_path):
    ids = make_split(tmp_path, [10, 10, 12])
    with pytest.warns(UserWarning, match=r"3 shards for 4 rank\(s\) × 1 DataLoader worker\(s\) = 4 readers"):
        per_rank = read_ranks(monkeypatch, tmp_path, 4, 0)
    assert [len(r) for r in per_rank] == [8] * 4
    assert sorted(i for r in per_rank for i in r) == sorted(ids)


def test_without_node_split_every_rank_reads_the_same_whole_stream(monkeypatch, tmp_path):
    ids = make_split(tmp_path, [5, 6, 7, 4])
    rank0, rank1 = read_ranks(monkeypatch, tmp_path, 2, 0, split_by_node=False)
    assert rank0 == rank1 and sorted(rank0) == sorted(ids)


def test_resampled_gives_each_rank_its_own_stream(monkeypatch, tmp_path):
    make_split(tmp_path, [5] * 12)
    firsts = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        pipeline = stream(path=tmp_path, rows="raw", decode=False, resampled=True, shuffle=0)
        firsts.append([json.loads(s["json"])["id"] for s, _ in zip(pipeline, range(30))])
    assert len(firsts[0]) == len(firsts[1]) == 30 and firsts[0] != firsts[1]


def test_a_shard_shorter_than_its_manifest_entry_is_a_clear_error(tmp_path):
    make_split(tmp_path, [4, 4])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["shards"][0]["samples"] = 6
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"train-000000.tar holds fewer samples than its manifest entry says"):
        list(stream(path=tmp_path, rows="raw", decode=False, shuffle=0, shard_shuffle=False))


# -- real torch.distributed ---------------------------------------------------------------------------------
def _distributed_reader(rank: int, world: int, port: int, root: str, workers: int, out: str) -> None:
    os.environ.pop("RANK", None)
    os.environ.pop("WORLD_SIZE", None)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ids = read(Path(root), workers)
        Path(out, f"rank{rank}.json").write_text(json.dumps(ids))
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("split", list(SPLITS))
@pytest.mark.slow
def test_every_sample_once_across_torch_distributed_ranks(tmp_path, split, workers):
    from hub_servers import free_port

    data = tmp_path / "build"
    ids = make_split(data, SPLITS[split])
    assert "RANK" not in os.environ  # the ranks come from the process group, not the environment
    torch.multiprocessing.spawn(
        _distributed_reader, args=(2, free_port(), str(data), workers, str(tmp_path)), nprocs=2, join=True
    )
    per_rank = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [len(r) for r in per_rank] == [len(ids) // 2] * 2
    seen = Counter(i for r in per_rank for i in r)
    assert max(seen.values()) == 1 and len(set(ids) - set(seen)) == len(ids) % 2


def test_stream_decodes_pairs(tmp_path):
    from PIL import Image

    (tmp_path / "data").mkdir()
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), "red").save(buf, format="JPEG")
    with wds.TarWriter(str(tmp_path / "data/train-000000.tar")) as tar:
        tar.write({"__key__": "a", "json": json.dumps({"id": "a"}).encode(), "jpg": buf.getvalue()})
    (tmp_path / "manifest.json").write_text(
        json.dumps({"shards": [{"path": "data/train-000000.tar", "split": "train", "samples": 1}]})
    )
    [(image, record)] = list(stream(path=tmp_path))
    assert image.size == (8, 6) and record == {"id": "a"}


def test_a_dataloader_batches_records_with_the_shipped_collate_where_the_default_fails(sample_build):
    import torch

    from mp16_reason import collate

    pipeline = stream(split="train", path=sample_build, shuffle=0)
    batches = list(torch.utils.data.DataLoader(pipeline, batch_size=4, collate_fn=collate))
    records = [r for b in batches for r in b["records"]]
    assert len(records) == len({r["id"] for r in records}) > 4
    assert all(len(b["images"]) == len(b["records"]) <= 4 and b["images"][0].mode == "RGB" for b in batches)
    # What it is for: PyTorch's own collate cannot stack the records' ragged and nullable fields.
    with pytest.raises((RuntimeError, TypeError)):
        list(torch.utils.data.DataLoader(stream(split="train", path=sample_build, shuffle=0), batch_size=4))
