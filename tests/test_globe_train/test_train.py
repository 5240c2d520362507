"""`globe train grpo|rm|sft` on the tiny random Qwen2.5-VL and the offline sample build: real TRL steps, LoRA,
save and reload; the model card, push to a Hub write API, and `globe predict` through a real read-only Hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hub_servers import HubWriteServer, OlahHub, olah_cli

pytest.importorskip("trl")
from safetensors.torch import load_file
from trl import ModelConfig, SFTConfig

from globe_train import grpo, rm, sft
from globe_train.cli import main as globe
from globe_train.configs import GRPOScriptArguments, RMScriptArguments, SFTScriptArguments, recipe_path
from globe_train.data import training_dataset
from globe_train.localizability import LocalJudge
from globe_train.runs import parse

REWARDS = ["geo_accuracy", "localizability", "visual_grounding", "format", "coordinate"]
SECRET = "hf_THIS-MUST-NOT-LEAK-42"


def _weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def _changed(before: dict, after: dict, prefix: str) -> bool:
    keys = [k for k in before if prefix in k]
    assert keys, prefix
    return any(not before[k].equal(after[k]) for k in keys)


def _grpo_argv(tiny_model: Path, build: Path, out: Path, *extra: str) -> list[str]:
    """A short tiny-cpu GRPO run's flags (extra ones last, so they win)."""
    return [
        "--recipe",
        "tiny-cpu",
        "--model_name_or_path",
        str(tiny_model),
        "--rm_model",
        str(tiny_model),
        "--dataset_name",
        str(build),
        "--output_dir",
        str(out),
        "--max_steps",
        "2",
        "--max_completion_length",
        "16",
        "--log_completions",
        "false",
        *extra,
    ]


def _grpo(tiny_model: Path, build: Path, out: Path, *extra: str) -> Path:
    argv = _grpo_argv(tiny_model, build, out, *extra)
    return grpo.main(*parse(grpo.ARGS, argv))


@pytest.fixture(scope="module")
def grpo_run(tiny_model, sample_build, tmp_path_factory) -> Path:
    return _grpo(tiny_model, sample_build, tmp_path_factory.mktemp("grpo"))


def test_grpo_steps_with_all_five_rewards_save_and_reload(grpo_run, tiny_model):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    logs = [json.loads(line) for line in (grpo_run / "logs.jsonl").read_text().splitlines()]
    steps = [entry for entry in logs if "loss" in entry]
    assert len(steps) == 2
    for name in REWARDS:
        assert all(f"rewards/{name}/mean" in s for s in steps), name
    assert all("kl" in s and "completions/mean_length" in s for s in steps)
    assert all(s["localizability/failures"] == 0 for s in steps)
    assert all(0.0 < s["rewards/localizability/mean"] < 1.0 for s in steps)  # a probability, not a 0 fallback

    run = json.loads((grpo_run / "run_info.json").read_text())
    assert run["method"] == "grpo" and run["rewards"] == dict(zip(REWARDS, [1.0, 0.5, 0.2, 1.0, 0.5]))
    assert run["settings"]["loss_type"] == "grpo" and run["settings"]["beta"] == 0.001
    assert run["dataset"]["version"]  # the local build's version is recorded

    before, after = _weights(tiny_model), _weights(grpo_run)
    assert _changed(before, after, "model.layers.")
    # Save and reload: the saved folder loads with the Auto classes, weights identical.
    model = AutoModelForImageTextToText.from_pretrained(grpo_run)
    AutoProcessor.from_pretrained(grpo_run)
    reloaded = {k: v for k, v in model.state_dict().items() if k in after}
    assert reloaded and all(reloaded[k].equal(after[k]) for k in reloaded)


def test_grpo_lora_with_a_frozen_vision_encoder_merges(tiny_model, sample_build, tmp_path):
    out = _grpo(
        tiny_model,
        sample_build,
        tmp_path / "lora",
        "--use_peft",
        "--lora_r",
        "8",
        "--lora_alpha",
        "16",
        "--lora_target_modules",
        "all-linear",
        "--freeze_vision",
        "--reward_funcs",
        "format",
        "localizability",
        "--reward_weights",
        "1.0",
        "1.0",
        "--learning_rate",
        "1e-2",
    )
    before, after = _weights(tiny_model), _weights(out)
    assert not any("lora_" in k for k in after)  # merged: loadable without peft
    assert set(after) == set(before)
    assert not _changed(before, after, "visual.")  # no adapters reached the frozen encoder
    assert _changed(before, after, "model.layers.")
    run = json.loads((out / "run_info.json").read_text())
    assert run["lora"] == {"r": 8, "alpha": 16} and run["rewards"] == {"format": 1.0, "localizability": 1.0}


def test_globe_train_cli_with_the_shipped_cpu_recipe_on_the_webdataset_stream(sample_build, tmp_path):
    # The recipe as shipped (the bundled tiny model as policy and reward model), data from mp16_reason.stream().
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        globe,
        [
            "train",
            "grpo",
            "--recipe",
            "tiny-cpu",
            "--dataset_name",
            str(sample_build),
            "--output_dir",
            str(out),
            "--max_steps",
            "2",
            "--dataset_loader",
            "webdataset",
            "--log_completions",
            "false",
        ],
    )
    assert result.exit_code == 0, result.output
    steps = [e for e in map(json.loads, (out / "logs.jsonl").read_text().splitlines()) if "loss" in e]
    assert len(steps) == 2 and all(f"rewards/{name}/mean" in steps[0] for name in REWARDS)


def test_training_rows_from_a_build_without_its_card(sample_build):
    manifest = json.loads((sample_build / "manifest.json").read_text())
    train = sum(s["samples"] for s in manifest["shards"] if s["split"] == "train" and "config" not in s)
    rows = training_dataset(GRPOScriptArguments(dataset_name=str(sample_build), reward_funcs=["format"]), "grpo")
    assert len(rows) == train  # the default config only, not the localizability shards beside it
    row = rows[0]
    assert row["image"].size[0] > 0 and row["prompt"][0]["role"] == "user"
    assert {"country", "city", "lat", "lon", "entities"} <= set(row)
    sft_rows = training_dataset(SFTScriptArguments(dataset_name=str(sample_build)), "sft")
    assert sft_rows[0]["completion"][0]["content"].startswith("<think>")
    rm_rows = training_dataset(RMScriptArguments(dataset_name=str(sample_build)), "rm")
    assert {r[0]["content"] for r in rm_rows["completion"]} == {"yes", "no"}  # both verdicts occur


def test_sft_and_reward_model_runs(tiny_model, sample_build, tmp_path):
    common = ["--model_name_or_path", str(tiny_model), "--dataset_name", str(sample_build), "--max_steps", "2"]
    out = sft.main(
        *parse(
            (SFTScriptArguments, SFTConfig, ModelConfig),
            ["--recipe", "sft-tiny-cpu", *common, "--output_dir", str(tmp_path / "sft")],
        )
    )
    before, after = _weights(tiny_model), _weights(out)
    assert _changed(before, after, "model.layers.") and not _changed(before, after, "visual.")
    assert json.loads((out / "run_info.json").read_text())["method"] == "sft"

    out = rm.main(
        *parse(
            (RMScriptArguments, SFTConfig, ModelConfig),
            ["--recipe", "rm-tiny-cpu", *common, "--output_dir", str(tmp_path / "rm")],
        )
    )
    run = json.loads((out / "run_info.json").read_text())
    assert run["method"] == "rm" and run["dataset"]["config"] == "localizability" and run["lora"]["r"] == 16
    logs = [json.loads(x) for x in (out / "logs.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in logs if "loss" in e]
    assert len(losses) == 2
    # The trained reward model serves R_loc in-process.
    from PIL import Image

    (score,) = LocalJudge(str(out)).scores([Image.new("RGB", (64, 48), (90, 120, 200))], ["<think>a tram</think>"])
    assert 0.0 < score < 1.0


def test_train_cli_needs_a_recipe_and_names_the_shipped_ones(tmp_path, monkeypatch):
    runner = CliRunner()
    result = runner.invoke(globe, ["train", "grpo"])
    assert result.exit_code != 0 and "--recipe" in result.output
    result = runner.invoke(globe, ["train", "grpo", "--recipe", "no-such-recipe"])
    assert result.exit_code != 0 and "tiny-cpu" in result.output and "globe-qwen2.5-vl-7b" in result.output
    result = runner.invoke(globe, ["train", "grpo", "--recipe", "tiny-cpu", "--reward_funcs", "format"])
    assert result.exit_code != 0 and "one weight per reward" in result.output
    monkeypatch.chdir(tmp_path)  # no ./sample-build here
    result = runner.invoke(globe, ["train", "sft", "--recipe", "sft-tiny-cpu"])
    assert result.exit_code != 0 and "mp16-reason build --sample --out sample-build" in result.output


def test_shipped_recipes_parse_and_carry_the_paper_setting():
    cpu = ["--bf16", "false"]  # bf16 is refused where no GPU supports it
    _, cfg, model = parse(grpo.ARGS, ["--recipe", "globe-qwen2.5-vl-7b", *cpu])
    assert (cfg.learning_rate, cfg.num_generations, cfg.temperature, cfg.beta) == (1e-6, 16, 1.0, 0.001)
    assert (cfg.max_completion_length, cfg.num_train_epochs, cfg.use_vllm, cfg.loss_type) == (1024, 1, True, "grpo")
    assert yaml.safe_load(recipe_path("globe-qwen2.5-vl-7b").read_text())["bf16"] is True
    assert cfg.reward_weights == [1.0, 0.5, 0.2, 1.0] and model.model_name_or_path == "Qwen/Qwen2.5-VL-7B-Instruct"
    script, _, model = parse((RMScriptArguments, SFTConfig, ModelConfig), ["--recipe", "rm-qwen2.5-vl-7b", *cpu])
    assert (model.use_peft, model.lora_r, model.lora_alpha, script.freeze_vision) == (True, 16, 64, True)
    zero3 = yaml.safe_load((Path(grpo.__file__).parent / "recipes/accelerate/zero3.yaml").read_text())
    assert zero3["deepspeed_config"]["zero_stage"] == 3


# -- card, push, predict ---------------------------------------------------------------------------------------
def _front(text: str) -> dict:
    return yaml.safe_load(text[4 : text.index("\n---", 4)])


@pytest.mark.slow
def test_training_is_quiet_one_progress_line_and_each_warning_once(tiny_model, sample_build, tmp_path):
    import subprocess
    import sys

    argv = [
        sys.executable,
        "-m",
        "globe_train.cli",
        "train",
        "grpo",
        *_grpo_argv(tiny_model, sample_build, tmp_path / "run", "--max_steps", "4"),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in (done.stdout + done.stderr).replace("\r", "\n").splitlines() if line.strip()]
    warnings = [line for line in lines if "Warning:" in line]
    assert len(warnings) == len(set(warnings)), warnings  # each once, not once a step
    assert not [line for line in lines if "Downloading data" in line or "Loading weights" in line]
    assert len([line for line in lines if "'loss'" in line]) == 4 and "its model card: globe card" in done.stdout


def test_the_card_command_printed_after_training_runs_as_printed(grpo_run):
    import shlex

    from globe_train.cli import card_hint

    argv = shlex.split(card_hint(grpo_run))
    assert argv[:2] == ["globe", "card"]
    result = CliRunner().invoke(globe, argv[1:])
    assert result.exit_code == 0, result.output
    assert (grpo_run / "README.md").exists()


@pytest.mark.parametrize(
    ("front", "expected"),
    [
        ("license: mit", {"license": "mit"}),
        (
            "license: other\nlicense_name: internvl\nlicense_link: LICENSE",
            {"license": "other", "license_name": "internvl"},
        ),
    ],
)
def test_a_model_cards_license_is_its_base_models(grpo_run, tmp_path, front, expected):
    from globe_train.card import render

    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text(f"---\n{front}\n---\n# A base model\n")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    run = json.loads((grpo_run / "run_info.json").read_text())
    (ckpt / "run_info.json").write_text(json.dumps({**run, "base_model": str(base)}))
    text = render(ckpt, "me/GLOBE-tiny")
    meta = _front(text)
    assert {k: meta.get(k) for k in expected} == expected
    assert f"The base model's license (`{expected['license']}`)" in text


def test_model_card_from_the_run_and_an_evaluation(grpo_run, tmp_path):
    metrics = {
        "acc_1km": 9.8,
        "acc_25km": 40.2,
        "acc_200km": 56.2,
        "acc_750km": 71.5,
        "acc_2500km": 82.4,
        "median_km": 210.0,
        "country_alias": 71.0,
        "city_alias": 25.0,
    }
    sha = "0123456789abcdef0123456789abcdef01234567"
    hub = {
        "benchmark": "mp16-reason-test",
        "n": 2997,
        "metrics": metrics,
        "dataset": {"hub_id": "globe/mp16-reason", "revision": sha},
    }
    local = {"benchmark": "im2gps3k", "n": 2997, "metrics": {**metrics, "acc_1km": 1.0}}  # a local CSV: no Hub id
    (tmp_path / "hub.json").write_text(json.dumps(hub))
    (tmp_path / "local.json").write_text(json.dumps(local))
    evals = ["--eval", str(tmp_path / "hub.json"), "--eval", str(tmp_path / "local.json")]
    result = CliRunner().invoke(globe, ["card", str(grpo_run), "--repo", "me/GLOBE-tiny", *evals])
    assert result.exit_code == 0, result.output
    text = (grpo_run / "README.md").read_text()
    meta = _front(text)
    # The tiny base model has no card: its license is unknown, so "other", and the body says so.
    assert meta["pipeline_tag"] == "image-text-to-text" and meta["license"] == "other"
    assert "Unknown: the base model" in text
    # Only what is true of the published files: a local sample build and a local base model are not named.
    assert "datasets" not in meta and "base_model" not in meta
    (index,) = meta["model-index"]
    datasets = {r["dataset"]["type"] for r in index["results"]}
    assert datasets == {"globe/mp16-reason"} and {r["dataset"]["revision"] for r in index["results"]} == {sha}
    assert {m["value"] for r in index["results"] for m in r["metrics"]} == {9.8, 40.2, 56.2, 71.5, 82.4}
    assert "| im2gps3k | this model | - | 2,997 | 1.00 | 40.20 |" in text  # the local evaluation stays in the body
    assert "| `localizability` | 0.5 |" in text and "A test checkpoint" in text and "Privacy" in text
    assert "globe predict photo.jpg --model me/GLOBE-tiny" in text and "@inproceedings" in text
    run_info = (grpo_run / "run_info.json").read_text()
    assert str(tmp_path.parent.parent) not in text + run_info  # no local path is published
    # huggingface_hub's own parsers of card metadata and of the model-index, in a fresh process.
    code = (
        "import json, sys\n"
        "from huggingface_hub import ModelCard\n"
        "from huggingface_hub.repocard_data import model_index_to_eval_results\n"
        "card = ModelCard.load(sys.argv[1])\n"
        "name, results = model_index_to_eval_results(card.data.to_dict()['model-index'])\n"
        "print(json.dumps([name, sorted({(r.dataset_type, r.dataset_revision) for r in results}), len(results)]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(grpo_run / "README.md")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == ["GLOBE-tiny", [["globe/mp16-reason", sha]], 5]


def test_card_refuses_a_folder_that_is_not_a_run(tmp_path):
    result = CliRunner().invoke(globe, ["card", str(tmp_path), "--repo", "me/x"])
    assert result.exit_code != 0 and "run_info.json" in result.output


def test_push_uploads_what_a_user_needs_and_keeps_the_token_private(grpo_run, tmp_path):
    (grpo_run / "completions").mkdir(exist_ok=True)
    (grpo_run / "completions" / "completions_00001.parquet").write_bytes(b"x")
    with HubWriteServer() as hub:
        env = {
            **os.environ,
            "HF_ENDPOINT": hub.endpoint,
            "HF_HOME": str(tmp_path / "hf"),
            "HF_TOKEN": SECRET,
            "HF_HUB_DISABLE_XET": "1",
        }
        proc = subprocess.run(
            [sys.executable, "-m", "globe_train.cli", "push", str(grpo_run), "--repo", "me/GLOBE-tiny", "--private"],
            env=env,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        tree = hub.tree("models/me/GLOBE-tiny")
        assert hub.repos["models/me/GLOBE-tiny"]["private"] is True
    assert {"model.safetensors", "config.json", "README.md", "run_info.json", "tokenizer.json"} <= set(tree)
    assert not any(p.startswith("completions/") or p == "training_args.bin" for p in tree)
    assert set(hub.auth_headers) == {f"Bearer {SECRET}"}
    assert SECRET not in proc.stdout + proc.stderr


@pytest.mark.skipif(olah_cli() is None, reason="olah not installed: run scripts/setup.sh")
def test_predict_downloads_the_model_from_a_hub(grpo_run, sample_build, tmp_path):
    from globe_train.predict import predict
    from globe_train.predictors import TransformersPredictor

    images = sorted((sample_build / "sample-input" / "images").glob("*.jpg"))[:2]
    local = predict(images, TransformersPredictor(str(grpo_run), max_new_tokens=12))
    with OlahHub(tmp_path / "olah") as hub:
        sha = hub.add("models", "globe-project/GLOBE-Qwen2.5VL-7B", grpo_run)  # the default: the released model
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf")}
        env.pop("HF_HUB_OFFLINE", None)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "globe_train.cli",
                "predict",
                *map(str, images),
                "--revision",
                sha,
                "--max-new-tokens",
                "12",
                "--json",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [g["image"] for g in got] == [str(p) for p in images]
    assert [g["text"] for g in got] == [p.text for p in local]  # the same weights, greedy: the same answers
    assert (tmp_path / "hf" / "hub" / "models--globe-project--GLOBE-Qwen2.5VL-7B").exists()  # fetched from the Hub


def test_prediction_reads_answer_and_places_it():
    from globe_train.predict import to_prediction

    p = to_prediction("a.jpg", "<think>Haussmann facades</think><answer>country: France\ncity: Paris</answer>")
    assert (p.country, p.city, p.coordinate_source, p.reasoning) == ("France", "Paris", "city", "Haussmann facades")
    assert abs(p.lat - 48.86) < 0.1 and abs(p.lon - 2.35) < 0.1
    bad = to_prediction("b.jpg", "no idea")
    assert bad.lat is None and "no answer could be read" in "\n".join(bad.lines())


@pytest.mark.skipif(olah_cli() is None, reason="olah not installed: run scripts/setup.sh")
def test_training_rows_from_the_hub_dataset(sample_build, tmp_path):
    import shutil

    from builders.publish.card import write_card
    from builders.publish.upload import publish

    build = tmp_path / "build"
    shutil.copytree(sample_build, build, ignore=shutil.ignore_patterns("sample-input"))
    write_card(build)
    publish(build, "globe/mp16-reason", dry_run=True, staging=tmp_path / "stage")
    script = """
import json, sys
from globe_train.configs import GRPOScriptArguments, RMScriptArguments
from globe_train.data import training_dataset
grpo = training_dataset(GRPOScriptArguments(dataset_revision=sys.argv[1], reward_funcs=["format"]), "grpo")
rm = training_dataset(RMScriptArguments(dataset_revision=sys.argv[1]), "rm")
print(json.dumps({"ids": sorted(grpo["id"]), "size": list(grpo[0]["image"].size), "rm": len(rm)}))
"""
    with OlahHub(tmp_path / "olah") as hub:
        sha = hub.add("datasets", "globe/mp16-reason", tmp_path / "stage")
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf")}
        env.pop("HF_HUB_OFFLINE", None)
        proc = subprocess.run([sys.executable, "-c", script, sha], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    local = training_dataset(GRPOScriptArguments(dataset_name=str(sample_build), reward_funcs=["format"]), "grpo")
    assert got["ids"] == sorted(local["id"]) and got["size"][0] > 0
    assert got["rm"] == len(training_dataset(RMScriptArguments(dataset_name=str(sample_build)), "rm"))


def test_the_card_compares_with_the_released_checkpoint_only_on_the_same_command(grpo_run, tmp_path):
    metrics = {f"acc_{t}km": v for t, v in zip((1, 25, 200, 750, 2500), (1.0, 2.0, 3.0, 4.0, 5.0))}
    same = {
        "benchmark": "mp16-reason-test",
        "n": 12000,
        "protocol": {"name": "globe-release"},
        "dataset": {"hub_id": "globe/mp16-reason", "revision": "a" * 40},
    }
    ours = {**same, "model": "GLOBE-tiny", "metrics": metrics}
    released = {**same, "model": "globe-project/GLOBE-Qwen2.5VL-7B", "metrics": {**metrics, "acc_25km": 62.85}}
    other = {**released, "protocol": {"name": "ours"}}
    for name, report in (("ours", ours), ("released", released), ("other", other)):
        (tmp_path / f"{name}.json").write_text(json.dumps(report))
    args = ["card", str(grpo_run), "--repo", "me/GLOBE-tiny", "--eval", str(tmp_path / "ours.json")]
    result = CliRunner().invoke(globe, [*args, "--baseline", str(tmp_path / "released.json")])
    assert result.exit_code == 0, result.output
    text = (grpo_run / "README.md").read_text()
    assert "| mp16-reason-test | this model | globe-release | 12,000 | 1.00 | 2.00 |" in text
    assert "| globe-project/GLOBE-Qwen2.5VL-7B (released) | globe-release | 12,000 | 1.00 | 62.85 |" in text
    result = CliRunner().invoke(globe, [*args, "--baseline", str(tmp_path / "other.json")])
    assert result.exit_code == 1 and "same benchmark, dataset revision, protocol and items" in result.output
