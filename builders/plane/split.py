"""Deterministic splits and order from stable hashes (independent of input order, workers and machines)."""

from __future__ import annotations

import hashlib


def unit_interval(text: str, seed: str) -> float:
    """A stable pseudo-random number in [0, 1) for ``text``."""
    digest = hashlib.blake2b(f"{seed}\x00{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_key(sample_id: str, city_key: str, hold_out_cities: bool) -> str:
    """What decides a sample's split: its city with ``hold_out_cities`` (so no test city is in train), else its id."""
    return f"city:{city_key}" if hold_out_cities and city_key else f"id:{sample_id}"


def split_of(key: str, test_fraction: float, seed: str) -> str:
    """``"test"`` or ``"train"`` for a split key (a group's: its smallest member key, see builders.plane.groups)."""
    return "test" if unit_interval(key, seed) < test_fraction else "train"


def shuffle_key(sample_id: str, seed: str) -> str:
    """Sort key of the deterministic pre-shuffle."""
    return hashlib.blake2b(f"{seed}\x00{sample_id}".encode(), digest_size=8).hexdigest()


def shuffle_order(ids: list[str], rows, seed: str):
    """Positions of ``ids`` in pre-shuffle order: by :func:`shuffle_key`, then by input row (as unsigned
    64-bit numbers, which sort as the hex keys do)."""
    import numpy as np

    prefix = f"{seed}\x00".encode()
    blake2b, from_bytes = hashlib.blake2b, int.from_bytes

    def keys_of(part) -> list[int]:
        return [from_bytes(blake2b(prefix + i.encode(), digest_size=8).digest(), "big") for i in part]

    keys = np.empty(len(ids), dtype=np.uint64)
    step = 100_000  # Python strings for a slice at a time, not for millions of ids
    for start in range(0, len(ids), step):
        keys[start : start + step] = keys_of(ids[start : start + step])
    return np.lexsort((np.asarray(rows), keys))
