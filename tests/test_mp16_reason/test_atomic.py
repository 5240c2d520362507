"""Crash-safe writes: what a commit leaves behind, and the writeback hint that speeds up its fsync."""

import os
import sys

import pytest

from mp16_reason.atomic import atomic_file, start_writeback

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")


@linux
def test_writeback_is_asked_of_the_kernel_for_a_file_and_refused_for_a_pipe(tmp_path):
    with open(tmp_path / "f", "wb") as fh:
        fh.write(os.urandom(1 << 20))
        fh.flush()
        assert start_writeback(fh.fileno())
    read, write = os.pipe()
    try:
        assert not start_writeback(write)  # ESPIPE: the kernel answered, and said no
    finally:
        os.close(read)
        os.close(write)


def test_a_commit_appears_whole_or_not_at_all(tmp_path):
    with atomic_file(tmp_path / "a.bin") as fh:
        fh.write(b"x" * 5000)
        start_writeback(fh.fileno())  # a hint only: the file is not there until the commit
        assert not (tmp_path / "a.bin").exists()
    assert (tmp_path / "a.bin").read_bytes() == b"x" * 5000
    with pytest.raises(RuntimeError), atomic_file(tmp_path / "b.bin") as fh:
        fh.write(b"y")
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
