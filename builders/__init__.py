"""The stages of ``mp16-reason build``: ingest, prepare images, geocode, distil, curate, split, write shards."""
