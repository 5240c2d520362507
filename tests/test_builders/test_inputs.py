"""Inputs as users have them: files no row uses beside the images, paths no file system holds, FIFOs, a reply
cache that is not one, a grounding model neither here nor reachable. Each is a rejection or a one-line error,
never a stopped build or a refused resume."""

from __future__ import annotations

import csv
import os
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import sample_recipe, teacher_recipe

from builders.build import BuildError, build

pytest.importorskip("openai")
SECRET = "sk-live-THIS-MUST-NOT-LEAK-5a4b3c"
CLI = [sys.executable, "-m", "builders.cli"]


# -- the recipe is what the rows use ----------------------------------------------------------------------------
def _copy_input(sample_input: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(sample_input, to)
    return to


def test_files_no_row_uses_never_make_a_rerun_a_different_recipe(sample_input, tmp_path):
    src = _copy_input(sample_input, tmp_path / "in")
    build(sample_recipe(src, tmp_path / "o"), progress=False, log=lambda _: None)
    images = src / "images"
    for junk in (".DS_Store", "._00001.jpg", "Thumbs.db", "notes.txt", ".thumbnails/00001.jpg"):
        (images / junk).parent.mkdir(exist_ok=True)
        (images / junk).write_bytes(b"junk")
    said = []
    build(sample_recipe(src, tmp_path / "o"), progress=False, log=said.append)  # the same recipe: complete
    assert any("already complete" in s for s in said)
    # An image a row uses changes: refused, naming the input that changed.
    (images / "00002.jpg").write_bytes((images / "00002.jpg").read_bytes() + b"\0")
    with pytest.raises(BuildError, match=r"different recipe .*changed: input\.images\[0\]\.listing_sha256"):
        build(sample_recipe(src, tmp_path / "o"), progress=False, log=lambda _: None)


def test_a_nul_byte_path_a_fifo_and_a_name_that_is_not_utf8_are_rows_not_a_stopped_build(sample_input, tmp_path):
    src = _copy_input(sample_input, tmp_path / "in")
    images = src / "images"
    os.mkfifo(images / "pipe.jpg")  # a read would block forever
    fd = os.open(os.fsencode(images) + b"/caf\xe9.jpg", os.O_WRONLY | os.O_CREAT)  # an old camera's Latin-1 name
    os.write(fd, (images / "00003.jpg").read_bytes())
    os.close(fd)
    with (src / "metadata.csv").open("a", newline="") as fh:
        csv.writer(fh).writerows(
            [
                ["bad/nul.jpg", "48.85", "2.35", "00\x004.jpg", "", ""],
                ["bad/fifo.jpg", "48.85", "2.35", "pipe.jpg", "", ""],
            ]
        )
    with pytest.warns(UserWarning, match=r"skipped 1 special file.*pipe\.jpg"):
        summary = build(sample_recipe(src, tmp_path / "o"), progress=False, log=lambda _: None)
    reasons = dict(
        zip(*pq.read_table(tmp_path / "o" / "rejections.parquet", columns=["id", "reason"]).to_pydict().values())
    )
    assert "NUL byte" in reasons["bad/nul.jpg"] and "not a regular file" in reasons["bad/fifo.jpg"]
    assert summary.input_rows == summary.written + summary.rejected


def test_a_reply_cache_that_is_not_sqlite_is_refused_before_any_image_is_prepared(sample_input, tmp_path, monkeypatch):
    monkeypatch.setenv("MP16_TEST_KEY", "k")
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes, not a cache\n" * 100)
    recipe = teacher_recipe(sample_input, tmp_path / "o", "http://127.0.0.1:9/v1", notes)
    with pytest.raises(ValueError, match=r"reply cache .*notes\.txt is not a SQLite reply cache .*--teacher-cache"):
        build(recipe, progress=False, log=lambda _: None)
    assert not (tmp_path / "o").exists()


def test_a_grounding_model_neither_here_nor_reachable_is_refused_in_a_second(sample_input, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("MP16_TEST_KEY", "k")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    recipe = teacher_recipe(
        sample_input,
        tmp_path / "o",
        "http://127.0.0.1:9/v1",
        tmp_path / "c.sqlite",
        **{"curation.grounding.model": "nvidia/segformer-b2-finetuned-ade-512-512"},
    )
    started = time.monotonic()
    with pytest.raises(ValueError, match=r"curation\.grounding\.model .*HF_HUB_OFFLINE .*bundled:scene-segmenter"):
        build(recipe, progress=False, log=lambda _: None)
    assert time.monotonic() - started < 5 and not (tmp_path / "o").exists()
