from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


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
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random Qwen2.5-VL checkpoint (real architecture and processor), built offline."""
    pytest.importorskip("transformers")
    from globe_train.tiny import make_tiny_qwen25vl

    return make_tiny_qwen25vl(tmp_path_factory.mktemp("tiny-qwen25vl"))
