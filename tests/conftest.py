from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# A test that uses one of these builds a dataset, loads or serves a model, or starts a cluster: it is `slow`,
# left out of the fast lane (`pytest -m "not slow"`). Tests slow for other reasons say so themselves.
SLOW_FIXTURES = frozenset({"sample_build", "served", "grpo_run", "cluster", "extras"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def gaz():
    from mp16_reason.gazetteer import default_gazetteer

    return default_gazetteer()


@pytest.fixture(scope="session")
def mp16_coordinates():
    """Real MP-16 coordinates (the shared 100k gallery) when present, else skip."""
    import pandas as pd

    path = Path(os.environ.get("MP16_COORDS", SHARED_DATA / "mp16_coordinates_100k.csv"))
    if not path.exists():
        pytest.skip(f"{path} not found")
    return pd.read_csv(path)


@pytest.fixture(scope="session")
def sample_input(tmp_path_factory) -> Path:
    """A ``write_sample`` folder of 24 drawn scenes (metadata.csv, images/, scenes.jsonl), shared read-only."""
    from builders.sample.scenes import write_sample

    root = tmp_path_factory.mktemp("sample-input")
    write_sample(root, 24)
    return root


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A real S3-compatible server (``rclone serve s3``) for one module, its credentials in the environment."""
    from s3_server import S3Server

    with S3Server(tmp_path_factory.mktemp("s3") / "buckets") as server:
        yield server


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random Qwen2.5-VL checkpoint (real architecture and processor), built offline."""
    pytest.importorskip("transformers")
    from globe_train.tiny import make_tiny_qwen25vl

    return make_tiny_qwen25vl(tmp_path_factory.mktemp("tiny-qwen25vl"))


@pytest.fixture(scope="session")
def sample_build(tmp_path_factory) -> Path:
    """``mp16-reason build --sample`` at 48 images: curated reasoning and the localizability config, no card."""
    pytest.importorskip("openai")
    from click.testing import CliRunner

    from builders.cli import main

    out = tmp_path_factory.mktemp("sample-build")
    result = CliRunner().invoke(main, ["build", "--sample", "--sample-size", "48", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def served(tiny_model, tmp_path):
    """The tiny checkpoint behind a real ``transformers serve`` (our launcher) on 127.0.0.1; yields its URL."""
    from hub_servers import free_port

    port = free_port()
    home = tmp_path / "hf"
    (home / "hub").mkdir(parents=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(home)}
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "globe_train.serve", str(tiny_model), "--port", str(port), "--device", "cpu"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError((tmp_path / "serve.log").read_text()[-3000:]) from None
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()
