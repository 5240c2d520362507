"""A wheel of the project (what `pip install git+URL` or `pip install .` builds) holds every file its packages
read at run time: recipes, cards, the bundled segmenter, the demo's Space folder."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mp16_reason", "builders", "globe_train", "cards")


def test_the_wheel_holds_every_tracked_file_of_the_packages(tmp_path):
    tracked = subprocess.run(["git", "ls-files", *PACKAGES], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    wanted = {p for p in tracked.stdout.split() if not p.endswith("/.gitignore")}
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            str(ROOT),
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("mp16_reason-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert not wanted - names, f"missing from the wheel (add them to package-data): {sorted(wanted - names)}"
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "mp16-reason = builders.cli:run" in entry_points and "globe = globe_train.cli:main" in entry_points
