"""The shard fold's record of first ids (builders.plane.firstseen) against a dict, the record it replaced, over
batches that cross its merges; and digests that share their first 8 bytes, which its sorted column keys on."""

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builders.plane.firstseen import FirstSeen


def reference(batches: list[list[tuple[bytes, str]]]) -> list[list[str | None]]:
    seen: dict[bytes, str] = {}
    out = []
    for batch in batches:
        firsts = []
        for digest, sid in batch:
            firsts.append(seen.get(digest))
            seen.setdefault(digest, sid)
        out.append(firsts)
    return out


def digest(i: int, shared_prefix: bool) -> bytes:
    """Distinct digests; with ``shared_prefix``, the first 8 bytes of them all are the same."""
    d = hashlib.sha256(str(i).encode()).digest()
    return b"\x07" * 8 + d[8:] if shared_prefix else d


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 40), max_size=30), max_size=25),
    st.integers(1, 50),
    st.booleans(),
)
def test_first_ids_are_those_of_a_dict_across_merges(picks, recent, shared_prefix):
    ids = iter(range(10**6))
    batches = [[(digest(i, shared_prefix), f"id{next(ids)}") for i in batch] for batch in picks]
    record = FirstSeen(recent=recent)
    got = [record.take([d for d, _ in b], [s for _, s in b]) for b in batches]
    assert got == reference(batches)
    assert len(record) == len({d for b in batches for d, _ in b})


def test_a_merge_keeps_every_digest_and_its_first_id():
    record = FirstSeen(recent=4)
    digests = [digest(i, False) for i in range(10)]
    assert record.take(digests, [f"a{i}" for i in range(10)]) == [None] * 10  # one merge, of ten
    assert record.take(digests[::-1], [f"b{i}" for i in range(10)]) == [f"a{i}" for i in range(9, -1, -1)]
    assert len(record) == 10 and not record._new


@pytest.mark.parametrize("merged", [False, True])
def test_a_digest_that_is_not_32_bytes_is_refused_and_nothing_of_its_call_is_taken(merged):
    record = FirstSeen(recent=1 if merged else 100)
    record.take([digest(0, False)], ["a"])
    with pytest.raises(ValueError, match="32 bytes"):
        record.take([digest(1, False), b"short"], ["b", "c"])
    assert len(record) == 1 and record.take([digest(1, False)], ["d"]) == [None]
