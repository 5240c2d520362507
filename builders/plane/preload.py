"""What the fork server loads once, before it forks any worker: the unit code and the default gazetteer.

Workers forked from it start with both in memory and share the gazetteer's pages (~120 MB and ~0.25 s of
CPU each, otherwise paid once per worker). Imported only by the fork server (``distributor.PRELOAD``).
"""

import atexit
import contextlib
import os
import sys

# OpenBLAS on one thread in the server and so in every process forked from it (the workers and the shard
# writer), unless the caller chose otherwise. Its threads start with the import and spin for a while: ~0.2 s
# of CPU in the server alone, taken from the build's own start-up on the other core. The workers' BLAS work
# (the hashes' small products) is single-threaded either way (units.one_blas_thread).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from builders.plane import units  # noqa: F401  # imported for the workers
from mp16_reason.gazetteer import default_gazetteer

default_gazetteer()


def leave_at_once() -> None:
    """End the fork server without its interpreter's teardown.

    The server ends when the build does, and tearing down pandas, scipy, pyarrow and the gazetteer took it
    ~0.2 s, which whoever reads the build's output through a pipe waited for: a pipe ends only when the last
    process holding it has exited, and the server holds the build's stdout and stderr. It has nothing to
    finalize (it writes no file, and its children end with ``os._exit``), so its streams are flushed and it
    exits."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # none, or a reader gone: nothing left to keep
            stream.flush()
    os._exit(0)


def in_fork_server() -> bool:
    """Whether this process is a multiprocessing fork server (its command line runs ``forkserver.main``)."""
    return "multiprocessing.forkserver" in " ".join(getattr(sys, "orig_argv", []))


if in_fork_server():  # never where this module was imported otherwise: that process keeps its exit status
    atexit.register(leave_at_once)
