"""The offline sample's scenes are distinct places to a perceptual hash, as different photos are: its own
leakage audit finds its three deliberate near copies and nothing else."""

from __future__ import annotations

import pytest

pytest.importorskip("faiss", reason="the audit needs faiss-cpu (pip install -e '.[build]')")
from builders.audit.audit import against_side, audit
from builders.sample.scenes import near_copies, write_sample


def test_the_samples_audit_finds_its_deliberate_near_copies_and_nothing_else(tmp_path):
    n = 200
    write_sample(tmp_path, n)
    # Only the drawn scenes and their copies (the bad rows' files are not scenes).
    folder = tmp_path / "scenes"
    folder.mkdir()
    for p in (tmp_path / "images").glob("[0-9]*.jpg"):
        (folder / p.name).write_bytes(p.read_bytes())
    side = against_side(f"sample={folder}", progress=False)
    assert len(side) == n + 3
    found = audit(side, [], 10, 12, progress=False)  # the audit's default thresholds
    pairs = {frozenset((r["a"], r["b"])) for r in found.rows if r["kind"] in ("exact", "near")}
    assert pairs == {frozenset((f"{i:05d}.jpg", f"{i:05d}-again.jpg")) for i in near_copies(n)}
