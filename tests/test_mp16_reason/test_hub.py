"""Dataset card, validation, publishing and consumption, against a real read-only Hub (olah) and a local
server for the Hub's write endpoints."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from helpers import sample_recipe
from hub_servers import HubWriteServer, OlahHub, olah_cli
from PIL import Image

from builders.build import build
from builders.cli import main
from builders.publish.card import MAP_PATH, write_card
from builders.publish.upload import publish, repo_paths
from builders.publish.validate import ValidationFailed, validate_build
from builders.sample.scenes import write_sample
from mp16_reason import schema
from mp16_reason.hub import shard_paths, stream
from mp16_reason.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[2]
SECRET = "hf_testSECRETtoken0123456789"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A small finished build with its card."""
    inputs = tmp_path_factory.mktemp("hub-input")
    write_sample(inputs, 48)
    out = tmp_path_factory.mktemp("hub-build")
    build(sample_recipe(inputs, out, **{"shards.max_bytes": 120_000, "split.test_fraction": 0.3}), progress=False)
    write_card(out)
    return out


def local_records(root: Path) -> dict[str, tuple[bytes, dict]]:
    """id -> (jpg bytes, record) straight from the tar files."""
    out = {}
    for tar_path in sorted((root / "data").glob("*.tar")):
        for parts in _tar_samples(tar_path):
            rec = json.loads(parts["json"])
            out[rec["id"]] = (parts["jpg"], rec)
    return out


def front_matter(path: Path) -> dict:
    text = path.read_text()
    return yaml.safe_load(text[4 : text.index("\n---", 4)])


def _copy(built: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(built, dst, ignore=shutil.ignore_patterns(".work"))
    return dst


# -- card ---------------------------------------------------------------------------------------------------
def test_card_declares_configs_and_schema_features(built):
    meta = front_matter(built / "README.md")
    manifest = json.loads((built / "manifest.json").read_text())
    (config,) = meta["configs"]
    assert config["config_name"] == "default"
    declared = {f["split"]: f["path"] for f in config["data_files"]}
    assert declared == {s["split"]: f"data/{s['split']}-*.tar" for s in manifest["shards"]}
    import datasets

    assert datasets.Features._from_yaml_list(meta["dataset_info"]["features"]) == schema.features()
    assert meta["license"] == "other" and meta["size_categories"] == ["n<1K"] and "geolocation" in meta["tags"]


def test_card_body_reports_the_builds_numbers(built):
    text = (built / "README.md").read_text()
    manifest = json.loads((built / "manifest.json").read_text())
    records = [r for _, r in local_records(built).values()]
    t = manifest["totals"]
    for split, n in t["splits"].items():
        assert f"| default | {split} | {n:,} |" in text
    for stage, n in t["rejected_by_stage"].items():
        assert f"| {stage} | {n:,} | {100 * n / t['input_rows']:.2f} % |" in text
    countries = {r["country"] for r in records}
    assert f"{len(countries):,} countries" in text
    assert "This is the offline sample" not in text  # only the embedded sample's recipe says so
    assert "Limitations and privacy" in text and "@inproceedings{li2025globe" in text
    assert "/tmp" not in text.split("---", 2)[2]  # no machine paths in the card body
    with Image.open(built / MAP_PATH) as img:
        assert img.size == (1200, 600)
        # A sample point is drawn in red or orange at its place on the map.
        lat, lon = records[0]["lat"], records[0]["lon"]
        x, y = int((lon + 180) / 360 * 1199), int((90 - lat) / 180 * 599)
        assert img.convert("RGB").getpixel((x, y)) in ((235, 64, 52), (255, 176, 0))


# -- validate -----------------------------------------------------------------------------------------------
def test_validate_passes_on_a_fresh_build(built):
    summary = validate_build(built)
    assert summary["samples"] == json.loads((built / "manifest.json").read_text())["totals"]["written"]
    result = CliRunner().invoke(main, ["validate", str(built)])
    assert result.exit_code == 0 and "is valid" in result.output


def test_validate_names_a_changed_shard_and_a_stray_one(built, tmp_path):
    copy = _copy(built, tmp_path)
    shard = sorted((copy / "data").glob("train-*.tar"))[0]
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF  # inside the first member's data
    shard.write_bytes(bytes(data))
    shutil.copy(shard, copy / "data" / "train-999999.tar")
    result = CliRunner().invoke(main, ["validate", str(copy)])
    assert result.exit_code == 1
    assert f"data/{shard.name}: sha256" in result.output
    assert "data/train-999999.tar: in data/ but not in manifest.json" in result.output


def test_validate_rejects_a_bad_record_and_a_bad_card(built, tmp_path):
    copy = _copy(built, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    entry = next(s for s in manifest["shards"] if s["split"] == "train")
    path = copy / entry["path"]
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(path, "w") as tar:
        for i, (m, data) in enumerate(members):
            if i == 1 and m.name.endswith(".json"):
                rec = json.loads(data)
                rec["lat"] = 123.0  # out of range
                data = json.dumps(rec).encode()
                m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    entry["bytes"] = path.stat().st_size
    entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    card = (copy / "README.md").read_text().replace("dtype: float64", "dtype: float32", 1)
    (copy / "README.md").write_text(card)
    with pytest.raises(ValidationFailed) as err:
        validate_build(copy)
    text = str(err.value)
    assert "record fails the schema" in text and "lat" in text
    assert "dataset_info.features of config 'default' differ from the schema" in text
    (copy / "README.md").unlink()
    with pytest.raises(ValidationFailed, match=r"README.md: .*run `mp16-reason card"):
        validate_build(copy)


# -- consume, locally ---------------------------------------------------------------------------------------
def test_load_and_stream_a_local_build(built, tmp_path):
    from mp16_reason import load

    local = local_records(built)
    ds = load(path=built, split="train", cache_dir=str(tmp_path / "cache"))
    train_ids = {i for i, (_, r) in local.items() if r["split"] == "train"}
    assert {row["json"]["id"] for row in ds} == train_ids
    rows = list(stream(path=built, split="train", rows="raw", decode=False, shuffle=0, shard_shuffle=False))
    assert [json.loads(r["json"])["id"] for r in rows] == [
        json.loads(r["json"])["id"]
        for p in shard_paths("train", path=built)
        for r in _tar_samples(Path(p))  # shard order, sample order
    ]
    for r in rows:
        assert r["jpg"] == local[json.loads(r["json"])["id"]][0]
    shuffled = [rec["id"] for _, rec in stream(path=built, split="train", shuffle=20, seed=3)]
    assert sorted(shuffled) == sorted(train_ids) and shuffled != [json.loads(r["json"])["id"] for r in rows]
    trl = next(iter(stream(path=built, split="test", rows="trl", shuffle=0)))
    assert trl["prompt"][0]["role"] == "user" and "<answer>" in trl["prompt"][0]["content"]
    assert trl["image"].size[0] > 0 and trl["solution"] == f"{trl['country']}\t{trl['city']}"
    endless = stream(path=built, split="test", resampled=True, shuffle=0, seed=1)
    n_test = sum(1 for r in local.values() if r[1]["split"] == "test")
    assert len([x for _, x in zip(range(3 * n_test), endless)]) == 3 * n_test  # goes past one epoch
    with pytest.raises(ValueError, match="no shards for config 'default', split 'validation'"):
        stream(path=built, split="validation")


def _tar_samples(path: Path) -> list[dict]:
    samples: dict[str, dict] = {}
    with tarfile.open(path) as tar:
        for m in tar:
            key, _, ext = m.name.partition(".")
            samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return list(samples.values())


def test_stream_splits_shards_across_dataloader_workers(built):
    torch = pytest.importorskip("torch")
    pipeline = stream(path=built, split="train", shuffle=0, rows="raw", decode=False)
    loader = torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=2)
    ids = [json.loads(s["json"])["id"] for s in loader]
    expected = [r["id"] for _, r in local_records(built).values() if r["split"] == "train"]
    assert sorted(ids) == sorted(expected)  # each sample once: shards were divided, not duplicated


# -- publish ------------------------------------------------------------------------------------------------
def test_publish_dry_run_stages_exactly_the_repository_tree(built, tmp_path):
    result = CliRunner().invoke(
        main, ["publish", str(built), "--repo", "me/mp16-reason", "--dry-run", "--staging", str(tmp_path / "stage")]
    )
    assert result.exit_code == 0, result.output
    stage = tmp_path / "stage"
    staged = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
    assert staged == repo_paths(built, read_manifest(built))
    assert {"README.md", "manifest.json", "rejections.parquet", MAP_PATH} <= set(staged)
    assert not any(p.startswith((".work", "sample-input")) for p in staged)
    assert "dry run: nothing was uploaded" in result.output and "tag v0.1.0" in result.output


def test_publish_refuses_an_invalid_build(built, tmp_path):
    copy = _copy(built, tmp_path)
    (copy / "README.md").unlink()
    with pytest.raises(ValidationFailed):
        publish(copy, "me/x", dry_run=True)


def _env(endpoint: str, home: Path) -> dict:
    return {
        **os.environ,
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(home),
        "HF_TOKEN": SECRET,
        "HF_HUB_DISABLE_XET": "1",  # the test server speaks the Hub's LFS protocol, not Xet storage
        "MP16_REASON_CACHE": os.environ.get("MP16_REASON_CACHE", str(home / "mp16")),
    }


@pytest.mark.slow
def test_publish_uploads_the_staged_tree_and_tags_it(built, tmp_path):
    exe = [sys.executable, "-m", "builders.cli"]
    with HubWriteServer() as hub:
        env = _env(hub.endpoint, tmp_path / "hf")
        args = ["publish", str(built), "--repo", "globe/mp16-reason", "--staging", str(tmp_path / "stage")]
        first = subprocess.run(exe + args + ["--private"], env=env, capture_output=True, text=True)
        assert first.returncode == 0, first.stderr[-2000:]
        again = subprocess.run(exe + args + ["--revision", "rc", "--no-tag"], env=env, capture_output=True, text=True)
        assert again.returncode == 0, again.stderr[-2000:]
        repo = hub.repos["datasets/globe/mp16-reason"]
        staged = {
            p.relative_to(tmp_path / "stage").as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in (tmp_path / "stage").rglob("*")
            if p.is_file()
        }
        assert hub.tree("datasets/globe/mp16-reason", "main") == staged
        assert hub.tree("datasets/globe/mp16-reason", "rc") == staged
        version = json.loads((built / "manifest.json").read_text())["version"]
        assert list(repo["tags"]) == [f"v{version}"] and repo["private"] is True
        assert set(hub.auth_headers) == {f"Bearer {SECRET}"}  # the token was used ...
    for out in (first, again):
        assert SECRET not in out.stdout + out.stderr  # ... and never shown


# -- a real read-only Hub -----------------------------------------------------------------------------------
needs_olah = pytest.mark.skipif(olah_cli() is None, reason="olah not installed: run scripts/setup.sh")


@needs_olah
@pytest.mark.slow
def test_hub_load_dataset_streaming_and_stream_match_local_shards(built, tmp_path):
    publish(built, "globe/mp16-reason", dry_run=True, staging=tmp_path / "stage")
    local = local_records(built)
    expected = {i: r for i, (_, r) in local.items()}
    jpgs = {i: hashlib.sha256(j).hexdigest() for i, (j, _) in local.items()}
    script = """
import hashlib, json, sys
import datasets, mp16_reason
out = {}
ds = datasets.load_dataset("globe/mp16-reason")
out["load"] = {split: [dict(r["json"]) for r in ds[split]] for split in ds}
out["sizes"] = {r["json"]["id"]: list(r["jpg"].size) for split in ds for r in ds[split]}
st = datasets.load_dataset("globe/mp16-reason", split="train", streaming=True)
out["streaming"] = [r["json"]["id"] for r in st]
out["stream"] = {}
for split in ("train", "test"):
    for s in mp16_reason.stream(split=split, rows="raw", decode=False, shuffle=0):
        rec = json.loads(s["json"])
        out["stream"][rec["id"]] = [rec, hashlib.sha256(s["jpg"]).hexdigest()]
out["urls"] = mp16_reason.shard_urls(split="test")
json.dump(out, sys.stdout)
"""
    with OlahHub(tmp_path / "olah") as hub:
        hub.add("datasets", "globe/mp16-reason", tmp_path / "stage")
        env = _env(hub.endpoint, tmp_path / "hf")
        env.pop("HF_TOKEN")
        env.pop("HF_HUB_DISABLE_XET")
        proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    loaded = {r["id"]: r for split in got["load"].values() for r in split}
    assert loaded.keys() == expected.keys()
    for i, rec in loaded.items():
        assert schema.validate(rec).model_dump(mode="json") == schema.validate(expected[i]).model_dump(mode="json")
        assert got["sizes"][i] == [expected[i]["image"]["width"], expected[i]["image"]["height"]]
    assert sorted(got["streaming"]) == sorted(i for i, r in expected.items() if r["split"] == "train")
    assert {i: (r, h) for i, (r, h) in got["stream"].items()} == {i: (expected[i], jpgs[i]) for i in expected}
    assert all(u.startswith(hub.endpoint + "/datasets/globe/mp16-reason/resolve/") for u in got["urls"])


def test_cli_sample_build_card_validate(tmp_path):
    runner = CliRunner()
    out = tmp_path / "sample"
    result = runner.invoke(main, ["build", "--sample", "--sample-size", "30", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["card", str(out)])
    assert result.exit_code == 0 and (out / "README.md").exists()
    assert "This is the offline sample" in (out / "README.md").read_text()
    result = runner.invoke(main, ["validate", str(out)])
    assert result.exit_code == 0, result.output


def test_a_second_config_gets_its_own_configs_entry_and_loads(built, tmp_path):
    """The localizability config (every judged image) sits beside the default one in the same repository, in a
    folder of its own: ``load_dataset(build, data_dir="data")`` reads the default config's rows only."""
    copy = _copy(built, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "localizability").mkdir()
    extra = []
    for shard in [s for s in manifest["shards"] if s["split"] == "train"]:
        name = Path(shard["path"]).name
        shutil.copy(copy / shard["path"], copy / "localizability" / name)
        extra.append({**shard, "path": f"localizability/{name}", "config": "localizability"})
    manifest["shards"] += extra
    manifest["totals"]["configs"] = {"localizability": {"train": sum(s["samples"] for s in extra)}}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    write_card(copy)
    meta = front_matter(copy / "README.md")
    configs = {c["config_name"]: c for c in meta["configs"]}
    assert configs["localizability"]["data_files"] == [{"split": "train", "path": "localizability/train-*.tar"}]
    assert configs["default"]["default"] is True and "default" not in configs["localizability"]
    assert 'load_dataset("globe/mp16-reason", "localizability", split="train")' in (copy / "README.md").read_text()
    validate_build(copy)
    from mp16_reason import load

    ds = load(path=copy, config="localizability", split="train", cache_dir=str(tmp_path / "cache"))
    assert len(ds) == sum(s["samples"] for s in extra)
    import datasets

    plain = datasets.load_dataset(str(copy), data_dir="data", split="train", cache_dir=str(tmp_path / "cache2"))
    ids = [json.loads(j)["id"] if isinstance(j, (str, bytes)) else j["id"] for j in plain["json"]]
    assert len(ids) == len(set(ids)) == sum(s["samples"] for s in extra)
