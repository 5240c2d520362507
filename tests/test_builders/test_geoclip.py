"""GeoCLIP as the paper's coordinate teacher: the real bundled location encoder and 100K GPS gallery of the
``geoclip`` wheel, with a tiny randomly initialised CLIP image tower saved locally (no downloads), inside real
builds: coordinates and confidence in the records, cache hits on a re-run, curation decisions by distance and by
agreement with the LVLM teachers, and the card's accuracy row."""

from __future__ import annotations

import asyncio
import io
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from helpers import scripted_replies, teacher_recipe
from teacher_server import TeacherServer

from builders.build import build
from builders.curation.curator import Curator
from builders.publish.card import write_card
from builders.recipe import CurationSpec, Recipe
from builders.teachers.base import Job
from builders.teachers.geoclip import GeoclipRunner, GeoclipTeacher, scorer
from mp16_reason.distance import haversine_km
from mp16_reason.schema import Sample, TeacherAnswer

pytest.importorskip("geoclip")
pytest.importorskip("openai")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    """A CLIP with GeoCLIP's projection width (768) and a one-layer image tower of width 32, random weights."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    path = tmp_path_factory.mktemp("tiny-clip")
    config = CLIPConfig(
        projection_dim=768,
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 2,
            "num_hidden_layers": 1,
            "vocab_size": 99,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 2,
            "num_hidden_layers": 1,
            "patch_size": 32,
            "image_size": 224,
        },
    )
    import torch

    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(path)
    CLIPImageProcessor().save_pretrained(path)
    return str(path)


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (96, 64), colour).save(out, format="JPEG")
    return out.getvalue()


@pytest.mark.slow
def test_the_scorer_is_geoclips_predict_over_the_bundled_gallery(tiny_clip, tmp_path):
    import geoclip

    spec = GeoclipTeacher(name="g", clip_model=tiny_clip, top_k=3)
    s = scorer(spec.clip_model, spec.device)
    assert len(s.points) == 100_000  # the wheel's gallery, encoded by the wheel's location encoder
    images = [_jpeg((200, 30, 30)), _jpeg((20, 120, 220))]
    ours = s(images, 3)
    assert [len(g) for g in ours] == [3, 3]
    for guesses in ours:
        assert [g.probability for g in guesses] == sorted((g.probability for g in guesses), reverse=True)
    # The package's own predict (the whole gallery through the location encoder, per image) agrees.
    (tmp_path / "a.jpg").write_bytes(images[0])
    gps, prob = s.model.predict(str(tmp_path / "a.jpg"), top_k=3)
    assert [[round(x, 4) for x in p] for p in gps.tolist()] == [[round(g.lat, 4), round(g.lon, 4)] for g in ours[0]]
    assert prob.tolist() == pytest.approx([g.probability for g in ours[0]], abs=1e-5)
    assert isinstance(s.model, geoclip.GeoCLIP)

    async def ask() -> list:
        teacher = GeoclipRunner(spec)
        replies = await asyncio.gather(*(teacher.ask(Job(f"sha{i}", img, 64, 48)) for i, img in enumerate(images)))
        await teacher.close()
        return replies

    replies = asyncio.run(ask())
    answer = spec.answer(replies[0])
    assert replies[0].origin == "local" and answer.origin == "local" and answer.parsed
    assert (answer.lat, answer.lon, answer.confidence) == (ours[0][0].lat, ours[0][0].lon, ours[0][0].probability)
    assert answer.top_k == ours[0] and answer.country  # the gazetteer's country at the point


def _records(out: Path) -> dict[str, dict]:
    urls = sorted(str(p) for p in (out / "data").rglob("*.tar") if "localizability" not in str(p))
    return {s["__key__"]: json.loads(s["json"]) for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)}


def _with_geoclip(recipe: Recipe, tiny_clip: str, **curation) -> Recipe:
    data = recipe.model_dump(mode="json", exclude_defaults=True)
    data["teachers"].append({"name": "geoclip", "kind": "geoclip", "clip_model": tiny_clip, "top_k": 4})
    data.setdefault("curation", {})["geoclip"] = curation
    return Recipe.model_validate(data)


@pytest.mark.slow
def test_builds_record_geoclip_answers_reuse_them_and_curate_by_distance(
    sample_input, tiny_clip, tmp_path, monkeypatch
):
    monkeypatch.setenv("MP16_TEST_KEY", "key")
    cache = tmp_path / "cache.sqlite"
    base = teacher_recipe(sample_input, tmp_path / "a", "http://unused/v1", cache)
    reply, _ = scripted_replies(sample_input, base)
    logs: list[str] = []
    with TeacherServer(reply) as srv:
        first = _with_geoclip(teacher_recipe(sample_input, tmp_path / "a", srv.url, cache), tiny_clip)
        build(first, progress=False, log=logs.append)
        kept = _records(tmp_path / "a")
        assert kept
        km = {}
        for key, rec in kept.items():
            g = next(t for t in rec["teachers"] if t["teacher"] == "geoclip")
            assert g["origin"] == "local" and g["model"] == "GeoCLIP" and len(g["top_k"]) == 4
            assert 0 < g["confidence"] <= 1 and (g["lat"], g["lon"]) == (g["top_k"][0]["lat"], g["top_k"][0]["lon"])
            assert rec["reasoning"] and rec["reasoning"] != g["reasoning"]  # the reasoning is an LVLM's
            km[key] = float(haversine_km(g["lat"], g["lon"], rec["lat"], rec["lon"]))
        assert any("geoclip" in line and "sent" in line for line in logs)

        # Again, into another folder with a distance limit: every GeoCLIP answer comes from the cache.
        limit = sorted(km.values())[len(km) // 2]
        logs.clear()
        second = _with_geoclip(teacher_recipe(sample_input, tmp_path / "b", srv.url, cache), tiny_clip, max_km=limit)
        asked = srv.n
        build(second, progress=False, log=logs.append)
        assert srv.n == asked  # the LVLM replies are cached too
    line = next(x for x in logs if x.startswith("teacher replies"))
    assert "geoclip 0 sent" in line
    kept_b = _records(tmp_path / "b")
    assert set(kept_b) == {k for k, d in km.items() if d <= limit} and 0 < len(kept_b) < len(kept)
    rejected = pq.read_table(tmp_path / "b" / "rejections.parquet").to_pylist()
    by_geoclip = [r for r in rejected if r["stage"] == "geoclip"]
    # Every sample kept before and not now was dropped by this filter (it runs before grounding, so it may also
    # drop images grounding dropped before), each with its distance, beyond the limit.
    assert {kept[k]["id"] for k in set(kept) - set(kept_b)} <= {r["id"] for r in by_geoclip}
    for r in by_geoclip:
        assert float(re.search(r"point is ([\d,.]+) km from the photo", r["reason"])[1].replace(",", "")) > limit - 1

    # The card has GeoCLIP's own accuracy row beside the teachers'.
    card = Path(write_card(tmp_path / "a", "me/x")).read_text()
    row = next(x for x in card.splitlines() if x.startswith("| geoclip |"))
    assert row.count("%") == 5 and "≤ 2500 km" in card


def test_a_geoclip_that_cannot_load_stops_the_build_with_the_fix(sample_input, tmp_path, monkeypatch):
    monkeypatch.setenv("MP16_TEST_KEY", "key")
    base = teacher_recipe(sample_input, tmp_path / "a", "http://unused/v1", tmp_path / "c.sqlite")
    reply, _ = scripted_replies(sample_input, base)
    with TeacherServer(reply) as srv:
        recipe = _with_geoclip(
            teacher_recipe(sample_input, tmp_path / "a", srv.url, tmp_path / "c.sqlite"), str(tmp_path / "no-such-clip")
        )
        with pytest.raises(ValueError, match=r"GeoCLIP could not be loaded \(clip_model .*no-such-clip"):
            build(recipe, progress=False, log=lambda *_: None)
    assert not (tmp_path / "a" / "manifest.json").exists()


def _answer(name: str, country: str, city: str, lat: float | None = None, lon: float | None = None) -> TeacherAnswer:
    return TeacherAnswer(
        teacher=name,
        model="m",
        parsed=True,
        country=country,
        city=city,
        lat=lat,
        lon=lon,
        localizable=True,
        localizability=0.9,
        reasoning="r",
    )


@pytest.mark.parametrize(
    ("rule", "a_city", "b_coords", "kept"),
    [
        ("any", "Paris", None, True),  # a names the point's city
        ("all", "Paris", None, False),  # b does not
        ("all", "Paris", (48.86, 2.35), True),  # b's coordinates are 0 km from the point
        ("any", "Lyon", (45.76, 4.84), False),  # nobody agrees at city level, and Lyon is 390 km away
    ],
)
def test_agreement_with_the_geoclip_point(rule, a_city, b_coords, kept):
    spec = CurationSpec.model_validate(
        {
            "localizability": {"enabled": False},
            "ground_truth": {"enabled": False},
            "agreement": {"enabled": False},
            "grounding": {"enabled": False},
            "geoclip": {"teachers": rule, "teacher_km": 25},
        }
    )
    curator = Curator(spec, 2, frozenset({"geo"}))
    sample = Sample(id="x", lat=48.85, lon=2.35, country="France", city="Paris")
    point = _answer("geo", "France", "Paris", 48.8566, 2.3522)
    b = _answer("b", "France", "Lyon", *(b_coords or (None, None)))
    decision = curator.curate(sample, lambda: b"", [_answer("a", "France", a_city), b, point], [])
    assert decision.kept is kept and (kept or decision.stage == "geoclip")
    assert decision.record.reasoning == "r" and len(decision.record.teachers) == 3
