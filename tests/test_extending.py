"""The worked example of docs/extending.md, run as a user runs it: the page's blocks become a package that pip
installs into a folder of its own, and `mp16-reason build` and `globe train grpo`, each in a fresh process,
find its teacher kind, image source, curation filter and reward through their entry points alone."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import MODELS, scripted_replies, teacher_recipe
from PIL import Image

pytest.importorskip("httpx", reason="the Ollama teacher example needs httpx (pip install -e '.[build]')")

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "extending.md"
BIN = Path(sys.executable).parent  # the console scripts, run as users run them
BLOCK = re.compile(r"```(?:python|toml|yaml)\n# file: (\S+)\n(.*?)```", re.S)


def blocks() -> dict[str, str]:
    found = {path: text for path, text in BLOCK.findall(DOC.read_text())}
    assert {"pyproject.toml", "recipe.yaml", "make_inputs.py", "geo_extras/ollama.py", "geo_extras/rewards.py"} <= set(
        found
    )
    return found


@pytest.fixture(scope="module")
def extras(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The page's package, installed by pip (its own build backend, its entry points) into a target folder."""
    root = tmp_path_factory.mktemp("extending")
    code = blocks()
    for path, text in code.items():
        (root / "pkg" / path).parent.mkdir(parents=True, exist_ok=True)
        (root / "pkg" / path).write_text(text)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(root / "site"),
            str(root / "pkg"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert list((root / "site").glob("geo_extras-0.1.0.dist-info/entry_points.txt"))
    return root, code


def env_with(site: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


class OllamaServer:
    """Ollama's ``POST /api/chat`` (non-streaming) as its API reference gives it, answering with ``reply``."""

    def __init__(self, reply) -> None:
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                if self.path != "/api/chat":
                    self.send_response(404)
                    self.end_headers()
                    return
                image = base64.b64decode(body["messages"][-1]["images"][0])
                out = json.dumps(
                    {
                        "model": body["model"],
                        "created_at": "2026-12-02T00:00:00Z",
                        "done": True,
                        "message": {"role": "assistant", "content": reply(image, body)},
                        "prompt_eval_count": 700,
                        "eval_count": 120,
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> OllamaServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.slow
def test_the_pages_teacher_source_and_filter_build_a_dataset(extras, sample_input, tmp_path):
    root, code = extras
    # The page's inputs, made as it says (the same drawn scenes as sample_input), then one photo swapped for a
    # flat grey frame, as a deleted Flickr photo downloads.
    (tmp_path / "make_inputs.py").write_text(code["make_inputs.py"])
    made = subprocess.run([sys.executable, "make_inputs.py"], capture_output=True, text=True, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    scenes = [json.loads(x) for x in (sample_input / "scenes.jsonl").read_text().splitlines()]
    scene_of_grey = scenes[5]
    grey = io.BytesIO()
    Image.new("RGB", (320, 240), (204, 204, 204)).save(grey, "JPEG", quality=90)
    with sqlite3.connect(tmp_path / "photos.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM images").fetchone()[0] == len(list((sample_input / "images").iterdir()))
        db.execute("UPDATE images SET data = ? WHERE name = ?", (grey.getvalue(), scene_of_grey["file"]))

    # The page's recipe, its two Ollama teachers pointed at the server, with the test's usual small settings.
    page = yaml.safe_load(code["recipe.yaml"])
    assert [t["kind"] for t in page["teachers"]] == ["ollama", "ollama"]
    settings = teacher_recipe(sample_input, tmp_path / "out", "http://unused/v1", tmp_path / "cache.sqlite")
    recipe = settings.model_dump(mode="json", exclude={"out"})
    recipe["teachers"] = page["teachers"]
    recipe["curation"]["filters"] = page["curation"]["filters"]
    recipe["curation"]["grounding"]["model"] = page["curation"]["grounding"]["model"]
    recipe["input"]["images"] = [str(tmp_path / page["input"]["images"][0])]
    recipe["input"]["metadata"] = str(tmp_path / page["input"]["metadata"])

    reply, _ = scripted_replies(sample_input, settings)
    models = [t["model"] for t in page["teachers"]]

    def answer(image: bytes, body: dict) -> str:
        try:
            return reply(image, {"model": MODELS[models.index(body["model"])]})
        except KeyError:  # the grey frame: the teachers reason about it anyway, and agree with the truth
            return json.dumps(
                {
                    "localizable": True,
                    "localizability": 0.9,
                    "reasoning": f"A sign reads {scene_of_grey['sign']}.",
                    "entities": [{"text": "sign", "category": "signage"}],
                    "country": scene_of_grey["country"],
                    "city": scene_of_grey["city"],
                    "lat": scene_of_grey["lat"],
                    "lon": scene_of_grey["lon"],
                }
            )

    with OllamaServer(answer) as srv:
        for t in recipe["teachers"]:
            t["base_url"] = srv.url
        (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
        done = subprocess.run(
            [
                str(BIN / "mp16-reason"),
                "build",
                str(tmp_path / "recipe.yaml"),
                "--out",
                str(tmp_path / "out"),
                "--quiet",
            ],
            capture_output=True,
            text=True,
            env=env_with(root / "site"),
            cwd=tmp_path,
        )
    assert done.returncode == 0, done.stdout + done.stderr
    assert srv.requests and all(r["format"]["type"] == "object" and not r["stream"] for r in srv.requests)

    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [t["name"] for t in manifest["recipe"]["teachers"]] == ["qwen2.5-vl-7b", "gemma3-12b"]
    rejected = pd.read_parquet(tmp_path / "out" / "rejections.parquet")
    flat = rejected[rejected["id"] == scene_of_grey["id"]]
    assert flat["stage"].tolist() == ["placeholder"] and "flat image" in flat["reason"].iloc[0]
    assert (rejected["stage"] == "placeholder").sum() == 1  # the photos themselves pass

    import webdataset as wds

    from mp16_reason.manifest import DEFAULT_CONFIG, read_manifest

    shards = [
        str(tmp_path / "out" / s.path) for s in read_manifest(tmp_path / "out").shards if s.config == DEFAULT_CONFIG
    ]
    records = [json.loads(s["json"]) for s in wds.WebDataset(shards, shardshuffle=False)]
    assert records
    for r in records:
        assert r["source"]["image_source"] == {"kind": "sqlite", "name": "photos.sqlite"}
        assert {t["model"] for t in r["teachers"]} == set(models) and r["reasoning"]
        assert all(t["input_tokens"] == 700 for t in r["teachers"])


@pytest.mark.slow
def test_the_pages_teacher_estimates_its_requests_through_its_own_hooks(extras, tmp_path):
    """`build --estimate` prices a plug-in kind through its hooks (request_tokens, cost), never through fields
    of the shipped OpenAI kind."""
    root, code = extras
    (tmp_path / "make_inputs.py").write_text(code["make_inputs.py"])
    made = subprocess.run([sys.executable, "make_inputs.py"], capture_output=True, text=True, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    recipe = yaml.safe_load(code["recipe.yaml"])
    recipe["distill"] = {"cache": str(tmp_path / "cache.sqlite")}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    done = subprocess.run(
        [str(BIN / "mp16-reason"), "build", "recipe.yaml", "--out", "out", "--estimate", "--quiet"],
        capture_output=True,
        text=True,
        env=env_with(root / "site"),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = {line.split(":")[0]: line for line in done.stdout.splitlines()}
    assert {"qwen2.5-vl-7b", "gemma3-12b"} <= set(lines), done.stdout
    assert all("requests" in lines[t] and "$0.00" in lines[t] for t in ("qwen2.5-vl-7b", "gemma3-12b"))


@pytest.mark.slow
def test_the_pages_reward_trains_a_grpo_step(extras, sample_build, tiny_model, tmp_path):
    root, _ = extras
    out = tmp_path / "run"
    done = subprocess.run(
        [
            str(BIN / "globe"),
            "train",
            "grpo",
            "--recipe",
            "tiny-cpu",
            "--model_name_or_path",
            str(tiny_model),
            "--dataset_name",
            str(sample_build),
            "--output_dir",
            str(out),
            "--max_steps",
            "1",
            "--max_completion_length",
            "16",
            "--log_completions",
            "false",
            "--reward_funcs",
            "format",
            "concise_reasoning",
            "--reward_weights",
            "1.0",
            "0.2",
        ],
        capture_output=True,
        text=True,
        env=env_with(root / "site"),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    steps = [e for e in map(json.loads, (out / "logs.jsonl").read_text().splitlines()) if "loss" in e]
    assert len(steps) == 1 and 0.0 <= steps[0]["rewards/concise_reasoning/mean"] <= 1.0
    # Without the package the name is unknown, and the error lists the names there are.
    done = subprocess.run(
        [
            str(BIN / "globe"),
            "train",
            "grpo",
            "--recipe",
            "tiny-cpu",
            "--reward_funcs",
            "concise_reasoning",
            "--reward_weights",
            "1.0",
            "--output_dir",
            str(tmp_path / "no"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "concise_reasoning" in done.stderr + done.stdout
    assert "geo_accuracy" in done.stderr + done.stdout


def test_an_unknown_kind_names_the_entry_point_group(tmp_path):
    from builders.recipe import load_recipe

    with pytest.raises(Exception, match=r"unknown curation filter kind 'nope'.*mp16_reason\.filters"):
        load_recipe(None, {"input.metadata": "m.csv", "curation.filters": [{"kind": "nope"}]})
    with pytest.raises(Exception, match=r"unknown teacher kind 'nope'"):
        load_recipe(None, {"input.metadata": "m.csv", "teachers": [{"name": "a", "kind": "nope"}]})


def test_the_page_is_what_the_test_installs():
    # Every python block of the page is a file of the package (none is prose-only code that could drift).
    code = blocks()
    text = DOC.read_text()
    assert text.count("```python") == sum(p.endswith(".py") for p in code)
