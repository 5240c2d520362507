"""Turn pip's installation reports into a hashed lock (``pip install --require-hashes --no-deps -r LOCK``).

    python scripts/lock.py OUT REPORT.json [REPORT.json ...]

Each report comes from ``pip install --dry-run --ignore-installed --report``: the exact set pip resolved from the
project's ranges. Every package is pinned to that version with the hash of the file pip chose, plus the hashes of
every other file PyPI has for that version (other platforms and Pythons), as pip-compile's ``--generate-hashes``
does. A build with a local label (``torch 2.13.0+cpu``, PyTorch's CPU build) keeps its label and the one hash:
PyPI serves no such file, and an unlabelled pin would let pip take PyPI's CUDA build of the same version (pip
prefers a file whose index states its hash), whose ``nvidia-*`` libraries a ``--no-deps`` install never brings.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename
from packaging.version import Version

SIMPLE = "https://pypi.org/simple/{}/"


def pypi_hashes(name: str, version: Version) -> set[str]:
    """sha256 of every file PyPI serves for ``name==version`` (empty when PyPI cannot be asked)."""
    request = urllib.request.Request(SIMPLE.format(name), headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            files = json.load(response)["files"]
    except OSError as e:
        print(
            f"warning: {name}: PyPI's index not reached ({e}); only the resolved file's hash is kept", file=sys.stderr
        )
        return set()
    hashes = set()
    for f in files:
        try:
            parsed = parse_wheel_filename(f["filename"]) if f["filename"].endswith(".whl") else None
            file_version = parsed[1] if parsed else parse_sdist_filename(f["filename"])[1]
        except ValueError:  # an egg, an exe or a misnamed file: not installable by pip
            continue
        if file_version == version and "sha256" in f.get("hashes", {}):
            hashes.add(f["hashes"]["sha256"])
    return hashes


def pins(reports: list[Path]) -> dict[str, tuple[str, set[str]]]:
    """name -> (version, hashes) over every report; the project itself (a local folder) is left out."""
    out: dict[str, tuple[str, set[str]]] = {}
    for report in reports:
        for item in json.loads(report.read_text())["install"]:
            info = item["download_info"]
            if "archive_info" not in info:  # the project's own folder, installed editable on its own
                continue
            name = canonicalize_name(item["metadata"]["name"])
            version = Version(item["metadata"]["version"])
            hashes = {info["archive_info"]["hashes"]["sha256"]}
            if not version.local:
                hashes |= pypi_hashes(name, version)
            if name in out and out[name][0] != str(version):
                raise SystemExit(f"{name}: {out[name][0]} in one report, {version} in another")
            out[name] = (str(version), hashes | out.get(name, ("", set()))[1])
    return out


def main(out: str, *reports: str) -> None:
    locked = pins([Path(r) for r in reports])
    lines = [
        "# Written by scripts/lock.sh from pyproject.toml's ranges; do not edit by hand.",
        f"# {len(locked)} packages for CPython {sys.version_info.major}.{sys.version_info.minor} on Linux x86_64.",
    ]
    for name in sorted(locked):
        version, hashes = locked[name]
        lines.append(f"{name}=={version} \\")
        lines += [f"    --hash=sha256:{h} \\" for h in sorted(hashes)[:-1]]
        lines.append(f"    --hash=sha256:{sorted(hashes)[-1]}")
    Path(out).write_text("\n".join(lines) + "\n")
    print(f"{out}: {len(locked)} packages")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
