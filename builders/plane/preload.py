"""What the fork server loads once, before it forks any worker: the unit code and the default gazetteer.

Workers forked from it start with both in memory and share the gazetteer's pages (~120 MB and ~0.25 s of
CPU each, otherwise paid once per worker). Imported only by the fork server (``distributor.PRELOAD``).
"""

import os

# OpenBLAS on one thread in the server and so in every process forked from it (the workers and the shard
# writer), unless the caller chose otherwise. Its threads start with the import and spin for a while: ~0.2 s
# of CPU in the server alone, taken from the build's own start-up on the other core. The workers' BLAS work
# (the hashes' small products) is single-threaded either way (units.one_blas_thread).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from builders.plane import units  # noqa: F401  # imported for the workers
from mp16_reason.gazetteer import default_gazetteer

default_gazetteer()
