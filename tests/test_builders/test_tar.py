"""Our shard tar writer against webdataset's TarWriter, byte for byte, at member sizes that cross every block
and record boundary."""

import io
import random
import tarfile

import pyarrow as pa
import pytest
import webdataset as wds
from hypothesis import given, settings
from hypothesis import strategies as st

from builders.plane.shards import TAR_MTIME, TarWriter, tar_file_bytes

keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-é", min_size=1, max_size=100)
# Sizes around the 512-byte block and the 10,240-byte record, and a few large ones.
sizes = st.one_of(
    st.integers(0, 1100), st.sampled_from([511, 512, 513, 10239, 10240, 10241]), st.integers(1100, 70_000)
)
samples = st.lists(st.tuples(keys, sizes, sizes), max_size=8, unique_by=lambda s: s[0])


def reference(items: list[tuple[str, bytes, bytes]]) -> bytes:
    buf = io.BytesIO()
    writer = wds.TarWriter(buf, user="mp16", group="mp16", mtime=TAR_MTIME)
    for key, jpg, js in items:
        writer.write({"__key__": key, "jpg": jpg, "json": js})
    writer.tarstream.close()  # TarWriter.close() would close the BytesIO too
    return buf.getvalue()


def ours(items: list[tuple[str, object, object]]) -> bytes:
    buf = io.BytesIO()
    writer = TarWriter(buf)
    for key, jpg, js in items:
        writer.write(key, {"jpg": jpg, "json": js})
    writer.close()
    return buf.getvalue()


@settings(max_examples=80, deadline=None)
@given(samples, st.integers(0, 2**32))
def test_tar_bytes_equal_webdatasets(spec, seed):
    rnd = random.Random(seed)  # the bytes themselves matter little, and drawing them from hypothesis is slow
    items = [(key, rnd.randbytes(a), rnd.randbytes(b)) for key, a, b in spec]
    want = reference(items)
    got = ours(items)
    assert got == want
    if all(key.isascii() and len(key) <= 95 for key, _, _ in spec):  # one header block a member
        member_bytes = sum(2 * 512 + -(-a // 512) * 512 + -(-b // 512) * 512 for _, a, b in spec)
        assert len(got) == tar_file_bytes(member_bytes)
    # Values handed over as Arrow buffers (as the shard writer does) write the same bytes.
    arrow = pa.array([jpg for _, jpg, _ in items], pa.binary())
    assert ours([(key, arrow[i].as_buffer(), js) for i, (key, _, js) in enumerate(items)]) == want


def test_tar_reads_back_with_tarfile_and_webdataset(tmp_path):
    items = [(f"sample_{i}", bytes([i]) * (300 * i + 1), b'{"id": %d}' % i) for i in range(5)]
    path = tmp_path / "a.tar"
    path.write_bytes(ours(items))
    with tarfile.open(path) as tar:
        assert [m.name for m in tar.getmembers()] == [f"sample_{i}.{e}" for i in range(5) for e in ("jpg", "json")]
        assert all(m.mode == 0o444 and m.uname == "mp16" and m.mtime == TAR_MTIME for m in tar.getmembers())
    read = list(wds.WebDataset(str(path), shardshuffle=False))
    assert [(s["__key__"], s["jpg"], s["json"]) for s in read] == items


@pytest.mark.parametrize("key_length", [1, 94, 95, 96, 97])
@pytest.mark.parametrize("size", [0, 1, 511, 512, 8**7, 8**8 + 3])
def test_tar_headers_at_the_name_and_size_boundaries(key_length, size):
    """Names of 99 to 102 bytes ("k" * 96 + ".jpg" is exactly ustar's 100; longer ones take a pax record),
    non-ASCII ones (pax records too) and sizes with more octal digits."""
    items = [("k" * key_length, b"\xff" * size, b"{}"), ("é" * key_length, b"", b"")]
    assert ours(items) == reference(items)


@settings(max_examples=25, deadline=None)
@given(spec=samples, batch=st.sampled_from([1, 600, 20_000, 1 << 22]), seed=st.integers(0, 2**16))
def test_a_shard_handed_over_in_batches_is_webdatasets_bytes_and_hash(tmp_path_factory, spec, batch, seed):
    """A shard's parts go to its hashing and writing threads a batch at a time; whatever the batch size, its
    file is webdataset's bytes for the same samples and its entry names their size and sha256."""
    import hashlib

    from builders.plane.shards import _Shard, _Threads
    from mp16_reason.storage import location

    rnd = random.Random(seed)
    items = [(key, rnd.randbytes(a), rnd.randbytes(b)) for key, a, b in spec]
    out = location(tmp_path_factory.mktemp("shard"))
    (out / "data").mkdir()
    threads = _Threads()
    shard = _Shard(out, "data/train-000000.tar", "train", "default", threads)
    shard.later.batch_bytes = batch
    for key, jpg, js in items:
        shard.add(key, jpg, js)
    entry = shard.close()
    threads.close()
    written = (out / "data/train-000000.tar").read_bytes()
    assert written == reference(items)
    assert entry["bytes"] == len(written) and entry["sha256"] == hashlib.sha256(written).hexdigest()


def test_a_local_shard_is_handed_to_the_disk_as_its_batches_are_written(tmp_path, monkeypatch):
    """Each batch written starts the writeback of the shard's file (so its commit's fsync finds the disk's
    work done); a file that is not local (here, in memory) is never asked for a descriptor."""
    import os

    from builders.plane import shards
    from builders.threads import Behind
    from mp16_reason.storage import location

    seen = []
    monkeypatch.setattr(shards, "start_writeback", lambda fd: seen.append(os.fstat(fd)))
    out = location(tmp_path)
    (out / "data").mkdir()
    threads = shards._Threads()
    shard = shards._Shard(out, "data/train-000000.tar", "train", "default", threads)
    shard.later.batch_bytes = 30_000
    for i in range(10):
        shard.add(f"k{i}", b"j" * 10_000, b"{}")
    shard.close()
    threads.close()
    final = tmp_path / "data/train-000000.tar"
    assert len(seen) >= 4 and {st.st_ino for st in seen} == {final.stat().st_ino}
    assert [st.st_size for st in seen] == sorted(st.st_size for st in seen)
    asked, hasher, behind = len(seen), Behind(), Behind()
    later = shards._Later(io.BytesIO(), hasher, behind, local=False, batch_bytes=1)
    later.writelines([b"abc"])
    later.flush()
    hasher.close()
    behind.close()
    assert later.fh.getvalue() == b"abc" and len(seen) == asked  # no descriptor asked of a BytesIO
