"""A reproducible environment: ranges in the metadata, every package pinned in the lock that set-up installs,
the GPU stack's extra declared, and the no-torchvision workaround reaching processes the launcher spawns."""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
DEV_EXTRAS = ("build", "ray", "s3", "train", "demo", "audit", "dev")


def lock(name: str) -> dict[str, tuple[str, list[str]]]:
    """``requirements/NAME.txt`` as name -> (version, hashes)."""
    text = (ROOT / "requirements" / f"{name}.txt").read_text()
    entries = re.findall(r"^([A-Za-z0-9._-]+)==(\S+)((?:\s*\\\n\s*--hash=sha256:[0-9a-f]{64})*)", text, re.M)
    return {canonicalize_name(n): (v, re.findall(r"[0-9a-f]{64}", h)) for n, v, h in entries}


def requirements(*extras: str) -> list[Requirement]:
    reqs = [Requirement(r) for r in PYPROJECT["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in PYPROJECT["optional-dependencies"][extra]]
    return reqs


def test_the_metadata_states_ranges_never_pins():
    every = requirements(*PYPROJECT["optional-dependencies"])
    pinned = [str(r) for r in every if any(s.operator in ("==", "===") for s in r.specifier)]
    assert not pinned, f"pins belong in the lock (scripts/lock.sh), not in pyproject.toml: {pinned}"


@pytest.mark.parametrize("name", ["dev", "olah"])
def test_every_line_of_a_lock_is_a_pin_with_hashes(name):
    text = (ROOT / "requirements" / f"{name}.txt").read_text()
    requirement_lines = [line for line in text.splitlines() if line and not line.startswith(("#", " "))]
    locked = lock(name)
    assert len(locked) == len(requirement_lines) > 10
    assert all(hashes for _, hashes in locked.values())


def test_the_dev_lock_holds_every_range_of_the_development_extras():
    locked = lock("dev")
    # No CPU torchvision exists for this torch: it (or trl[vlm], which brings it) breaks every processor load.
    assert "torchvision" not in locked
    for key in ("torch", "transformers", "trl", "datasets", "huggingface-hub", "webdataset", "accelerate"):
        assert key in locked, key
    env = default_environment()
    for req in requirements(*DEV_EXTRAS):
        if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
            continue
        name = canonicalize_name(req.name)
        assert name in locked, f"{req} is not in requirements/dev.txt: run scripts/lock.sh"
        assert req.specifier.contains(locked[name][0], prereleases=True), f"{req}: locked {locked[name][0]}"


def test_no_dependency_file_names_what_breaks_the_cpu_machines():
    """The gpu extra asks TRL for vLLM and DeepSpeed (CI checks it resolves); no lock or extra names the image
    stack that has no CPU build for our torch, nor TRL's extra that brings it."""
    gpu = [Requirement(r) for r in PYPROJECT["optional-dependencies"]["gpu"]]
    assert any(r.name == "trl" and {"vllm", "deepspeed"} <= r.extras for r in gpu)
    banned = "torchvision"
    files = [ROOT / "pyproject.toml", *sorted((ROOT / "requirements").glob("*.txt"))]
    assert not [f.name for f in files if banned in f.read_text() or "trl[vlm" in f.read_text()]


@pytest.mark.skipif(bool(os.environ.get("MP16_UNLOCKED")), reason="scripts/test-latest.sh: newest releases on purpose")
def test_this_environment_is_the_lock():
    """What scripts/setup.sh made is exactly the lock: a package installed by hand, or a lock edited without a
    new set-up, shows here."""
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        pytest.skip("not running in the .venv scripts/setup.sh makes")
    differ = {}
    for name, (version, _) in lock("dev").items():
        try:
            installed = md.version(name)
        except md.PackageNotFoundError:
            installed = None
        if installed != version:
            differ[name] = (version, installed)
    assert not differ, f"locked vs installed (re-run scripts/setup.sh): {differ}"


def test_the_dev_lock_is_closed_under_dependencies():
    """Set-up installs with --no-deps, so whatever a locked package requires (on this platform, extras aside)
    must be locked too: a torch build whose nvidia-* libraries are missing fails at its first import."""
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        pytest.skip("not running in the .venv scripts/setup.sh makes")
    locked = lock("dev")
    # GeoCLIP declares torchvision, which its inference code never imports and which has no CPU build here.
    left_out = {("geoclip", "torchvision")}
    env = default_environment() | {"extra": ""}
    missing = {
        f"{name} needs {req}"
        for name in locked
        for req in map(Requirement, md.requires(name) or [])
        if (req.marker is None or req.marker.evaluate(env))
        and canonicalize_name(req.name) not in locked
        and (name, canonicalize_name(req.name)) not in left_out
    }
    assert not missing, sorted(missing)


def test_a_local_build_is_locked_with_its_label_and_its_one_hash(tmp_path, monkeypatch):
    """torch 2.13.0+cpu: an unlabelled pin with PyPI's hashes beside it lets pip take PyPI's CUDA build."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import lock as locker
    finally:
        sys.path.pop(0)
    asked = []
    monkeypatch.setattr(locker, "pypi_hashes", lambda name, version: asked.append(name) or {"f" * 64})

    def item(name, version, sha):
        return {
            "metadata": {"name": name, "version": version},
            "download_info": {"archive_info": {"hashes": {"sha256": sha}}},
        }

    report = tmp_path / "report.json"
    report.write_text(
        __import__("json").dumps({"install": [item("torch", "2.13.0+cpu", "a" * 64), item("numpy", "2.4.6", "b" * 64)]})
    )
    out = tmp_path / "dev.txt"
    locker.main(str(out), str(report))
    text = out.read_text()
    assert f"torch==2.13.0+cpu \\\n    --hash=sha256:{'a' * 64}\n" in text
    assert "f" * 64 not in text.split("numpy")[0]
    assert asked == ["numpy"]


CHILD = """
import multiprocessing as mp
import sys
{launcher}

def processor_class(path):
    from transformers import AutoProcessor
    try:
        return type(AutoProcessor.from_pretrained(path)).__name__
    except Exception as e:
        return f"failed: {{type(e).__name__}}"

if __name__ == "__main__":
    with mp.get_context("spawn").Pool(1) as pool:
        print(pool.apply(processor_class, (sys.argv[1],)))
"""


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("torchvision") is not None, reason="torchvision installed: no workaround"
)
def test_the_serve_launcher_patches_processes_it_spawns(tiny_model, tmp_path):
    """transformers serve (5.25 on) loads the model in a spawned child, which re-imports only the launching
    module: importing globe_train.serve is what patches that child. Without it, the same child fails."""
    results = {}
    for case, launcher in {"with": "import globe_train.serve  # noqa: F401", "without": ""}.items():
        script = tmp_path / f"{case}.py"
        script.write_text(CHILD.format(launcher=launcher))
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        command = [sys.executable, str(script), str(tiny_model)]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        results[case] = proc.stdout.strip().splitlines()[-1]
    assert results["with"] == "Qwen2_5_VLProcessor"
    assert results["without"].startswith("failed")
