"""The stages of ``mp16-reason build``: ingest, prepare images, geocode, distil, curate, split, write shards."""

import os

# Arrow's allocator (mimalloc) keeps freed pages for a while by default; ingest frees large columns as it goes,
# and without this a 4.65M-row ingest peaks ~40 % higher. Read when Arrow first allocates, so it is set here,
# before any build module imports pyarrow; a value the user set wins.
os.environ.setdefault("MIMALLOC_PURGE_DELAY", "0")
