"""Every standard client gets exactly the right data: ``datasets``, ``webdataset`` and ``huggingface_hub``
called through their own documented APIs, each in a fresh process (our imports cannot hide a failure there),
on a fresh build folder, through the Hub (olah) and offline from the cache, and across ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hub_servers import OlahHub, free_port, olah_cli

from builders.publish.card import write_card

pytest.importorskip("datasets")


def client(code: str, tmp_path: Path, **env: str) -> dict:
    """Run ``code`` in a fresh Python with a cache of its own; it prints one JSON object, returned here."""
    home = tmp_path / "hf-home"
    full = {**os.environ, "HF_HOME": str(home), "HF_DATASETS_CACHE": str(home / "datasets"), **env}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full,
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> tuple[Path, dict]:
    """A build folder just as the quick start's `mp16-reason build --sample` leaves it (no `card` step), with
    both configs and enough training samples for 24 equal shards."""
    from click.testing import CliRunner

    from builders.cli import main

    out = tmp_path_factory.mktemp("clients") / "sample-build"
    res = CliRunner().invoke(main, ["build", "--sample", "--sample-size", "140", "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    return out, json.loads((out / "manifest.json").read_text())


def _count(manifest: dict, config: str, split: str) -> int:
    return sum(s["samples"] for s in manifest["shards"] if s.get("config", "default") == config and s["split"] == split)


@pytest.mark.slow
def test_load_dataset_on_a_fresh_build_folder_reads_exactly_the_manifests_configs(fresh, tmp_path):
    out, manifest = fresh
    assert manifest["totals"]["configs"]["localizability"]  # the folder holds a second config
    got = client(
        f"""
        import json, datasets
        ds = datasets.load_dataset({str(out)!r})
        loc = datasets.load_dataset({str(out)!r}, "localizability")
        wds = datasets.load_dataset("webdataset", data_dir={str(out / "data")!r}, split="train")
        print(json.dumps({{"splits": {{k: len(v) for k, v in ds.items()}},
                          "ids": len(set(ds["train"]["json"][i]["id"] for i in range(len(ds["train"])))),
                          "loc": {{k: len(v) for k, v in loc.items()}},
                          "configs": datasets.get_dataset_config_names({str(out)!r}),
                          "wds": len(wds)}}))
    """,
        tmp_path,
    )
    assert got["splits"] == {s: _count(manifest, "default", s) for s in ("train", "test")}
    assert got["ids"] == got["splits"]["train"]  # every sample once: no config mixed in
    assert got["loc"] == {s: _count(manifest, "localizability", s) for s in ("train", "test")}
    assert got["configs"] == ["default", "localizability"]
    # The webdataset builder over data/ reads that folder's shards; the other config's live in a subfolder.
    assert got["wds"] >= got["splits"]["train"]


@pytest.mark.slow
def test_shards_are_equal_and_third_party_splitters_balance_ranks(fresh, tmp_path):
    out, manifest = fresh
    train = sorted(
        (s for s in manifest["shards"] if s["split"] == "train" and "config" not in s), key=lambda s: s["path"]
    )
    counts = [s["samples"] for s in train]
    assert len(train) == 24 and max(counts) - min(counts) <= 1
    files = [str(out / s["path"]) for s in train]
    got = client(
        f"""
        import json
        import datasets, webdataset as wds
        from datasets.distributed import split_dataset_by_node
        files = {files!r}
        ds = datasets.load_dataset("webdataset", data_files={{"train": files}}, split="train", streaming=True)
        result = {{}}
        for world in (2, 3, 4):
            by_datasets = [[r["__key__"] for r in split_dataset_by_node(ds, rank, world)] for rank in range(world)]
            by_wds = []
            for rank in range(world):
                def nodes(urls, rank=rank, world=world):
                    yield from list(urls)[rank::world]
                keys = [s["__key__"] for s in wds.WebDataset(files, nodesplitter=nodes, shardshuffle=False,
                                                             empty_check=False)]
                by_wds.append(keys)
            result[world] = {{"datasets": [len(k) for k in by_datasets], "wds": [len(k) for k in by_wds],
                             "unique": len({{k for ks in by_datasets for k in ks}}),
                             "unique_wds": len({{k for ks in by_wds for k in ks}})}}
        print(json.dumps(result))
    """,
        tmp_path,
    )
    n = sum(counts)
    for world, r in got.items():
        assert r["unique"] == r["unique_wds"] == n, (world, r)  # every sample once
        assert max(r["datasets"]) - min(r["datasets"]) <= 1 and max(r["wds"]) - min(r["wds"]) <= 1, (world, r)


def test_dataset_card_meets_the_hubs_metadata_rules(fresh, tmp_path):
    """``license: other`` comes with ``license_name`` and ``license_link`` (the Hub asks for both), the main
    config is marked default, and no local path is published."""
    out, _ = fresh
    write_card(out)
    got = client(
        f"""
        import json
        from huggingface_hub import DatasetCard
        card = DatasetCard.load({str(out / "README.md")!r})  # the Hub's own parser of card metadata
        d = card.data.to_dict()
        print(json.dumps({{"license": d.get("license"), "link": d.get("license_link"), "name": d.get("license_name"),
                          "configs": [c["config_name"] for c in d["configs"]],
                          "default": [c["config_name"] for c in d["configs"] if c.get("default")]}}))
    """,
        tmp_path,
    )
    assert got["license"] == "other" and got["link"] == "LICENSE.md" and got["name"]
    assert (out / "LICENSE.md").exists()
    assert got["configs"] == ["default", "localizability"] and got["default"] == ["default"]
    text = (out / "README.md").read_text() + (out / "manifest.json").read_text()
    assert str(out.parent) not in text and str(Path.home()) not in text  # no local path is published


@pytest.mark.skipif(olah_cli() is None, reason="olah not installed: run scripts/setup.sh")
@pytest.mark.slow
def test_the_readmes_call_works_offline_after_both_configs_were_cached(fresh, tmp_path):
    out, manifest = fresh
    write_card(out)
    with OlahHub(tmp_path / "olah") as hub:
        hub.add("datasets", "globe/mp16-reason", out)
        online = client(
            """
            import json, datasets
            a = datasets.load_dataset("globe/mp16-reason", "default", split="train")
            b = datasets.load_dataset("globe/mp16-reason", "localizability", split="train")
            print(json.dumps({"default": len(a), "localizability": len(b)}))
        """,
            tmp_path,
            HF_ENDPOINT=hub.endpoint,
        )
    assert online == {
        "default": _count(manifest, "default", "train"),
        "localizability": _count(manifest, "localizability", "train"),
    }
    offline = client(
        """
        import json, datasets
        ds = datasets.load_dataset("globe/mp16-reason", "default", split="train")
        print(json.dumps({"n": len(ds), "ids": len(set(r["id"] for r in ds["json"]))}))
    """,
        tmp_path,
        HF_HUB_OFFLINE="1",
        HF_ENDPOINT="http://127.0.0.1:9",
    )
    assert offline["n"] == offline["ids"] == online["default"]
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert 'load_dataset("globe/mp16-reason", "default", split="train")' in readme


# -- the CLIs answer like their users expect -------------------------------------------------------------------
def cli(args: list[str], tmp_path: Path, timeout: int = 120, **env: str) -> subprocess.CompletedProcess:
    home = tmp_path / "hf-home"
    full = {**os.environ, "HF_HOME": str(home), **env}
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, env=full, cwd=tmp_path, timeout=timeout
    )


def _one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and done.stderr.startswith("Error: "), done.stderr
    return done.stderr


@pytest.mark.slow
def test_eval_names_the_file_and_line_of_unusable_predictions(fresh, tmp_path):
    out, _ = fresh
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "x"}\nnot json at all\n')
    err = _one_line_error(
        cli(
            [
                "globe_train.cli",
                "eval",
                "mp16-reason-test",
                "--data",
                str(out),
                "--predictions",
                str(bad),
                "--out",
                str(tmp_path / "e1"),
            ],
            tmp_path,
        )
    )
    assert "bad.jsonl, line 2: not JSON" in err
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"id": f"im2gps/{i}.jpg", "text": "country: France"}) + "\n" for i in range(5)))
    err = _one_line_error(
        cli(
            [
                "globe_train.cli",
                "eval",
                "mp16-reason-test",
                "--data",
                str(out),
                "--predictions",
                str(other),
                "--out",
                str(tmp_path / "e2"),
            ],
            tmp_path,
        )
    )
    assert "other.jsonl: none of its 5 ids is an id of mp16-reason-test" in err
    assert not (tmp_path / "e2" / "metrics.json").exists()


@pytest.mark.slow
def test_predict_and_push_fail_at_once_in_one_line_when_the_hub_is_out_of_reach(fresh, tmp_path):
    out, _ = fresh
    photo = next((out / "sample-input" / "images").glob("*.jpg"))
    err = _one_line_error(cli(["globe_train.cli", "predict", str(photo)], tmp_path, HF_HUB_OFFLINE="1"))
    assert "globe-project/GLOBE-Qwen2.5VL-7B is not in the local Hub cache and HF_HUB_OFFLINE is set" in err
    assert "--model DIR" in err and "--endpoint URL" in err  # what to do instead
    closed = f"http://127.0.0.1:{free_port()}"
    err = _one_line_error(cli(["globe_train.cli", "predict", str(photo)], tmp_path, HF_ENDPOINT=closed, timeout=60))
    assert f"the Hub at {closed} does not answer" in err and "--model DIR" in err
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"x")
    (run / "README.md").write_text("---\nlicense: apache-2.0\n---\n")
    err = _one_line_error(
        cli(
            ["globe_train.cli", "push", str(run), "--repo", "me/x"],
            tmp_path,
            HF_ENDPOINT=closed,
            HF_TOKEN="hf_x",
            timeout=60,
        )
    )
    assert "the Hub at" in err and "does not answer" in err


@pytest.mark.slow
def test_train_help_is_quick_and_flags_and_recipes_are_checked(tmp_path):
    probe = (
        "import json, sys\n"
        "from click.testing import CliRunner\n"
        "from globe_train.cli import main\n"
        "r = CliRunner().invoke(main, ['train', 'grpo', '--help'])\n"
        "print(json.dumps({'code': r.exit_code, 'out': r.output, 'heavy': sorted(m for m in ('torch', 'trl',\n"
        "    'transformers', 'peft') if m in sys.modules)}))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    got = json.loads(done.stdout.splitlines()[-1])
    assert got["code"] == 0 and got["heavy"] == []  # no TRL, torch or transformers imported for the help
    first = got["out"].splitlines()
    assert first[0].startswith("Usage: globe train grpo --recipe") and "tiny-cpu" in got["out"]
    assert "--help-all" in got["out"] and "--reward_funcs" in got["out"]
    err = _one_line_error(
        cli(["globe_train.cli", "train", "grpo", "--recipe", "tiny-cpu", "--learning_rte", "1"], tmp_path)
    )
    assert "unknown flag --learning_rte; did you mean --learning_rate?" in err
    err = _one_line_error(cli(["globe_train.cli", "train", "sft", "--recipe", "tiny-cpu"], tmp_path))
    assert "recipe tiny-cpu.yaml is for `globe train grpo`" in err and "globe train grpo --recipe tiny-cpu" in err


@pytest.mark.skipif(olah_cli() is None, reason="olah not installed: run scripts/setup.sh")
@pytest.mark.slow
def test_eval_pins_a_hub_benchmarks_revision_and_records_it(fresh, tmp_path):
    out, manifest = fresh
    write_card(out)
    ids = []
    for shard in manifest["shards"]:
        if shard["split"] == "test" and "config" not in shard:
            import tarfile

            with tarfile.open(out / shard["path"]) as tar:
                ids += [json.load(tar.extractfile(m))["id"] for m in tar if m.name.endswith(".json")]
    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(json.dumps({"id": i, "country": "France", "city": "Paris"}) + "\n" for i in ids))
    with OlahHub(tmp_path / "olah") as hub:
        sha = hub.add("datasets", "globe/mp16-reason", out)
        done = cli(
            [
                "globe_train.cli",
                "eval",
                "mp16-reason-test",
                "--revision",
                sha,
                "--predictions",
                str(preds),
                "--out",
                str(tmp_path / "e"),
                "--bootstrap",
                "0",
                "--quiet",
            ],
            tmp_path,
            HF_ENDPOINT=hub.endpoint,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert report["dataset"] == {"hub_id": "globe/mp16-reason", "revision": sha} and report["n"] == len(ids)


def test_eval_of_the_hubs_test_set_offline_says_what_to_use_in_one_line(tmp_path):
    """Offline, the Hub's MP16-Reason-Test is one line naming the build-folder flag, at once."""
    preds = tmp_path / "p.jsonl"
    preds.write_text('{"id": "a", "text": ""}\n')
    started = time.monotonic()
    err = _one_line_error(
        cli(
            ["globe_train.cli", "eval", "mp16-reason-test", "--predictions", str(preds), "--out", "o"],
            tmp_path,
            HF_HUB_OFFLINE="1",
        )
    )
    assert "HF_HUB_OFFLINE is set" in err and "--data for globe eval" in err and err.count("\n") == 1
    assert time.monotonic() - started < 30  # the interpreter and its imports; no retries
