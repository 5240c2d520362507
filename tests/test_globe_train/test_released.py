"""GLOBE's released checkpoints first-class: the default model, both backbones laid out like their Hub
repositories (served by a local Hub), and the released inference protocol, request by request."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hub_servers import OlahHub, olah_cli
from PIL import Image
from teacher_server import TeacherServer

pytest.importorskip("transformers")

from globe_train.protocols import PROMPT_COT, PROMPT_DEMO, SYSTEM
from globe_train.released import DEFAULT_MODEL, RELEASED

needs_olah = pytest.mark.skipif(olah_cli() is None, reason="olah not installed: run scripts/setup.sh")
INTERNVL = "globe-project/GLOBE-InternVL3-8B"


def globe(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**{k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}, "HF_HOME": str(tmp_path / "hf"), **env}
    return subprocess.run(
        [sys.executable, "-m", "globe_train.cli", *args],
        capture_output=True,
        text=True,
        env=full,
        cwd=tmp_path,
        timeout=600,
    )


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (320, 240), (200, 120, 40)).save(path, quality=88)
    return path


def test_the_released_checkpoints_are_named_and_the_default():
    assert DEFAULT_MODEL == "globe-project/GLOBE-Qwen2.5VL-7B"
    assert set(RELEASED) == {DEFAULT_MODEL, INTERNVL}


@needs_olah
@pytest.mark.slow
def test_internvl_in_transformers_format_predicts_here(tmp_path, photo):
    from globe_train.tiny import make_tiny_internvl

    repo = make_tiny_internvl(tmp_path / "internvl")
    with OlahHub(tmp_path / "olah") as hub:
        hub.add("models", INTERNVL, repo)
        done = globe(
            ["predict", str(photo), "--model", INTERNVL, "--max-new-tokens", "6", "--json"],
            tmp_path,
            HF_ENDPOINT=hub.endpoint,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    (answer,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert answer["image"] == str(photo) and not answer["error"]


@needs_olah
@pytest.mark.slow
def test_internvl_in_its_remote_code_layout_is_refused_with_the_vllm_command_before_any_weight(tmp_path, photo):
    repo = tmp_path / "remote"
    repo.mkdir()
    (repo / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["InternVLChatModel"],
                "model_type": "internvl_chat",
                "auto_map": {
                    "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
                    "AutoModel": "modeling_internvl_chat.InternVLChatModel",
                },
            }
        )
    )
    (repo / "modeling_internvl_chat.py").write_text("# the repository's own model code\n")
    (repo / "model.safetensors").write_bytes(b"\0" * 4096)
    with OlahHub(tmp_path / "olah") as hub:
        hub.add("models", INTERNVL, repo)
        done = globe(["predict", str(photo), "--model", INTERNVL], tmp_path, HF_ENDPOINT=hub.endpoint)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "not in transformers' own format (InternVLChatModel" in done.stderr
    assert f"vllm serve {INTERNVL} --trust-remote-code --served-model-name internvl3" in done.stderr
    assert "--endpoint http://localhost:8000/v1 --endpoint-model internvl3" in done.stderr
    assert not list((tmp_path / "hf").rglob("*.safetensors"))  # refused before the weights came down


@pytest.mark.slow
def test_the_release_protocol_is_sent_exactly_in_eval_and_predict(tmp_path, photo):
    (tmp_path / "images").mkdir()
    raw = photo.read_bytes()
    (tmp_path / "images" / "a.jpg").write_bytes(raw)
    (tmp_path / "bench.csv").write_text("IMG_ID,LAT,LON,city,country\na.jpg,48.8566,2.3522,Paris,France\n")
    answer = "<think>Zinc roofs.</think><answer>country: France\ncity: Paris</answer>"
    with TeacherServer(lambda image, request: answer) as server:
        done = globe(
            [
                "eval",
                "csv",
                "--data",
                str(tmp_path / "bench.csv"),
                "--images",
                str(tmp_path / "images"),
                "--endpoint",
                server.url,
                "--endpoint-model",
                "qwen2.5-vl",
                "--protocol",
                "globe-release",
                "--out",
                str(tmp_path / "eval"),
                "--bootstrap",
                "0",
                "--quiet",
            ],
            tmp_path,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        done = globe(
            [
                "predict",
                str(photo),
                "--endpoint",
                server.url,
                "--endpoint-model",
                "qwen2.5-vl",
                "--protocol",
                "globe-release",
                "--json",
            ],
            tmp_path,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        evaluation, prediction = server.bodies
    for body, prompt in ((evaluation, PROMPT_COT), (prediction, PROMPT_DEMO)):
        system, user = body["messages"]
        assert system == {"role": "system", "content": SYSTEM} and user["role"] == "user"
        image, text = user["content"]  # the image before the text, as released
        assert image["type"] == "image_url" and text == {"type": "text", "text": prompt}
        prefix, data = image["image_url"]["url"].split(",", 1)
        assert prefix == "data:image;base64" and base64.b64decode(data) == raw  # the file's own bytes
        assert body["model"] == "qwen2.5-vl" and body["max_tokens"] == 512
    assert evaluation["temperature"] == 0.1
    assert evaluation["frequency_penalty"] == evaluation["presence_penalty"] == 0.7
    assert prediction["temperature"] == 0.6 and "frequency_penalty" not in prediction
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["protocol"]["name"] == "globe-release" and report["protocol"]["prompt"] == PROMPT_COT
    assert report["metrics"]["acc_25km"] == 100.0


def test_frequency_and_presence_penalties_are_vllms():
    import torch

    from globe_train.predictors import OpenAIPenalties

    prompt = torch.tensor([[5, 5, 5]])  # the prompt's tokens are not penalised
    generated = torch.tensor([[5, 5, 5, 1, 2, 2]])
    scores = torch.zeros(1, 4)
    out = OpenAIPenalties(prompt.shape[1], frequency=0.7, presence=0.5)(generated, scores)
    assert torch.allclose(out, torch.tensor([[0.0, -1.2, -1.9, 0.0]]))
