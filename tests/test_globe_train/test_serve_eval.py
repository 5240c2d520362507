"""End to end: the tiny Qwen2.5-VL behind a real `transformers serve`, evaluated by `globe eval` through the
openai client, and the same checkpoint evaluated in-process with transformers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from globe_train.cli import main
from mp16_reason.answer import parse_answer

PLACES = [("p1", 48.8566, 2.3522), ("p2", 35.6762, 139.6503), ("p3", -33.8688, 151.2093)]


def _benchmark(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    path = tmp_path / "gt.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["IMG_ID", "LAT", "LON"])
        for (ident, lat, lon), colour in zip(PLACES, ["red", "green", "blue"]):
            Image.new("RGB", (320, 240), colour).save(images / f"{ident}.jpg")
            w.writerow([ident, lat, lon])
    return path


def test_globe_eval_through_transformers_serve(served, tiny_model, tmp_path):
    gt = _benchmark(tmp_path)
    out = tmp_path / "run"
    images = str(tmp_path / "images")
    args = ["eval", "im2gps3k", "--data", str(gt), "--images", images, "--endpoint", served]
    args += ["--endpoint-model", str(tiny_model), "--max-new-tokens", "24", "--out", str(out), "--quiet"]
    args += ["--bootstrap", "100"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(p["id"] for p in preds) == ["p1", "p2", "p3"]
    assert all(p["error"] == "" and p["text"] for p in preds)  # real replies, no failures
    report = json.loads((out / "metrics.json").read_text())
    unparseable = sum(not parse_answer(p["text"]).parsed for p in preds) / 3 * 100
    assert report["n"] == 3 and report["metrics"]["failed"] == 0.0
    assert report["metrics"]["unparseable"] == pytest.approx(unparseable, abs=1e-3)
    assert set(report["per_continent"]) == {"Europe", "Asia", "Oceania"}
    # A second run finds every answer on disk and sends nothing.
    again = CliRunner().invoke(main, [*args[:-2], "--bootstrap", "100"])
    assert again.exit_code == 0 and len((out / "predictions.jsonl").read_text().splitlines()) == 3


def test_globe_eval_with_a_local_transformers_model(tiny_model, tmp_path):
    gt = _benchmark(tmp_path)
    out = tmp_path / "local"
    args = ["eval", "csv", "--data", str(gt), "--images", str(tmp_path / "images"), "--model", str(tiny_model)]
    args += ["--max-new-tokens", "12", "--out", str(out), "--quiet", "--bootstrap", "0"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 3 and all(p["text"] and p["model"] == str(tiny_model) for p in preds)


def test_globe_predict_through_an_endpoint(served, tiny_model, tmp_path):
    _benchmark(tmp_path)
    images = sorted(str(p) for p in (tmp_path / "images").iterdir())[:2]
    args = ["predict", *images, "--endpoint", served, "--endpoint-model", str(tiny_model), "--max-new-tokens", "12"]
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    got = [json.loads(line) for line in result.output.splitlines()]
    assert [g["image"] for g in got] == images and all(g["text"] and not g["error"] for g in got)
    text = CliRunner().invoke(main, args)
    assert text.exit_code == 0 and all(f"{p}\n  country:" in text.output for p in images)
