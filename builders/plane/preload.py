"""What the fork server loads once, before it forks any worker: the unit code and the default gazetteer.

Workers forked from it start with both in memory and share the gazetteer's pages (~120 MB and ~0.25 s of
CPU each, otherwise paid once per worker). Imported only by the fork server (``distributor.PRELOAD``).
"""

from builders.plane import units  # noqa: F401  # imported for the workers
from mp16_reason.gazetteer import default_gazetteer

default_gazetteer()
