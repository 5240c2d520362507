"""The writeback request that lets a commit's fsync find the disk's work done (Linux's sync_file_range)."""

import os
import sys

import pytest

from mp16_reason.atomic import start_writeback

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
