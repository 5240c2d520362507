"""The ``globe`` command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import click

from mp16_reason.cli import ExtrasGroup, require
from mp16_reason.reach import HubUnreachable


class _GlobeGroup(ExtrasGroup):
    extra_of: ClassVar[dict[str, str]] = {**ExtrasGroup.extra_of, "torch": "train", "transformers": "train"}


@click.group(cls=_GlobeGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Train, evaluate and run GLOBE geo-localization models."""


@main.command()
@click.option("--pred-country", required=True, help="Predicted country.")
@click.option("--pred-city", default="", help="Predicted city.")
@click.option("--true-country", required=True, help="True country.")
@click.option("--true-city", default="", help="True city.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def match(pred_country: str, pred_city: str, true_country: str, true_city: str, as_json: bool) -> None:
    """Score a predicted location under both matching rules (the R_geo reward).

    \b
    `official` is the released GLOBE string rule; `alias` (the default everywhere else) knows
    country aliases and city alternate names:
      globe match --pred-country USA --pred-city NYC --true-country "United States" --true-city "New York City"
    """
    from mp16_reason.matching import RULES, city_match, country_match, location_score

    result = {
        rule: {
            "country": country_match(pred_country, true_country, rule),
            "city": city_match(pred_city, true_city, true_country, rule),
            "r_geo": location_score(pred_country, pred_city, true_country, true_city, rule),
        }
        for rule in RULES
    }
    if as_json:
        click.echo(json.dumps(result))
        return
    for rule, r in result.items():
        click.echo(
            f"{rule:>8}: country {'yes' if r['country'] else 'no ':3}  city {'yes' if r['city'] else 'no ':3}"
            f"  R_geo {r['r_geo']:.1f}"
        )


def _model_options(task: str):
    """The options that choose what answers: a model (the released GLOBE by default), an endpoint, a protocol."""
    from .protocols import PROTOCOLS
    from .released import DEFAULT_MODEL

    def decorate(f):
        for option in reversed(
            [
                click.option(
                    "--model",
                    default=DEFAULT_MODEL,
                    show_default=True,
                    help="A Hub id or local folder run with transformers; the paper's released checkpoints "
                    "are globe-project/GLOBE-Qwen2.5VL-7B and globe-project/GLOBE-InternVL3-8B.",
                ),
                click.option(
                    "--model-revision" if task == "eval" else "--revision",
                    "model_revision",
                    help="Pin the model's revision (branch, tag or commit).",
                ),
                click.option(
                    "--endpoint",
                    help="Base URL of an OpenAI-compatible server (vLLM, transformers serve) "
                    "to ask instead of running the model here, e.g. http://localhost:8000/v1.",
                ),
                click.option("--endpoint-model", help="Model name to request from --endpoint (default: --model)."),
                click.option(
                    "--api-key-env",
                    metavar="VAR",
                    help="Variable holding --endpoint's API key, e.g. OPENAI_API_KEY; leave out for local "
                    "servers without keys.",
                ),
                click.option(
                    "--protocol",
                    type=click.Choice(list(PROTOCOLS[task])),
                    default="ours",
                    show_default=True,
                    help="How the model is asked: ours (the training prompt, greedy), or globe-release (the "
                    "official release's prompt, message order, image encoding and sampling, exactly).",
                ),
                click.option("--max-new-tokens", type=int, help="Tokens to generate (default: the protocol's, 512)."),
            ]
        ):
            f = option(f)
        return f

    return decorate


def _predictor(
    task: str,
    model,
    model_revision,
    endpoint,
    endpoint_model,
    api_key_env,
    protocol,
    max_new_tokens,
    concurrency: int = 16,
):
    """The predictor the options name; a model that cannot be had or run here is one line naming the fix."""
    from .predictors import EndpointPredictor, TransformersPredictor
    from .protocols import protocol as preset
    from .released import ModelUnavailable

    chosen = preset(protocol, task, max_new_tokens)
    try:
        if endpoint:
            return EndpointPredictor(endpoint, endpoint_model or model, api_key_env, concurrency, protocol=chosen)
        return TransformersPredictor(model, revision=model_revision, protocol=chosen)
    except ModelUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot load model {model!r}: {str(exc).splitlines()[0]}") from None


@main.command("eval")
@click.argument("benchmark", type=click.Choice(["mp16-reason-test", "im2gps3k", "yfcc4k", "osv5m", "csv"]))
@click.option(
    "--data",
    help="The benchmark's CSV (IMG_ID/id, LAT/latitude, LON/longitude); for mp16-reason-test "
    "a local build folder, or nothing for the Hub dataset.",
)
@click.option("--revision", help="Pin the Hub benchmark's revision (mp16-reason-test without --data).")
@click.option("--images", type=click.Path(file_okay=False), help="Folder of the images (default: beside --data).")
@_model_options("eval")
@click.option("--concurrency", default=16, show_default=True, help="Requests in flight against --endpoint.")
@click.option(
    "--predictions",
    type=click.Path(exists=True, dir_okay=False),
    help="Score an existing predictions file (JSONL, or the CSV of the released GLOBE evaluation).",
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for predictions and metrics.")
@click.option("--limit", type=int, help="Only the first N items.")
@click.option(
    "--exclude-overlap",
    "exclude_overlap",
    type=click.Path(exists=True),
    metavar="AUDIT",
    help="An audit of the training build against this benchmark (its audit.json, or the build folder): "
    "also report the scores without the items the training set already holds.",
)
@click.option("--overlap-name", help="The benchmark's name in that audit (default: the benchmark's, e.g. im2gps3k).")
@click.option("--bootstrap", default=1000, show_default=True, help="Bootstrap resamples for 95% intervals (0: off).")
@click.option("--seed", default=0, show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def eval_cmd(
    benchmark,
    data,
    revision,
    images,
    model,
    model_revision,
    endpoint,
    endpoint_model,
    api_key_env,
    protocol,
    max_new_tokens,
    concurrency,
    predictions,
    out,
    limit,
    exclude_overlap,
    overlap_name,
    bootstrap,
    seed,
    quiet,
) -> None:
    """Evaluate a model, an endpoint or a predictions file on a geo-localization benchmark, offline.

    \b
    The model is the paper's released GLOBE unless told otherwise. Writes OUT/predictions.jsonl as answers
    arrive (re-run the same command to resume), then OUT/metrics.json (which records the protocol),
    OUT/scores.csv and OUT/error_map.png, and prints the table: accuracy within 1/25/200/750/2500 km, median
    error, GeoScore, country/city accuracy (alias and official rules), unparseable answers, bootstrap 95%
    intervals and a per-continent breakdown.
    \b
    Examples:
      globe eval mp16-reason-test --protocol globe-release --out runs/released   # the paper's model, as released
      globe eval im2gps3k --data im2gps3k_places365.csv --images im2gps3ktest \\
          --endpoint http://localhost:8000/v1 --endpoint-model globe --out runs/im2gps3k
      globe eval mp16-reason-test --model runs/globe --out runs/globe/eval/mp16-reason-test
      globe eval csv --data mp16-reason-test-12k.csv --predictions official_output.csv --out runs/official
      globe eval im2gps3k --data im2gps3k_places365.csv --model runs/globe --out runs/im2gps3k \\
          --exclude-overlap mp16-reason/audit.json          # also without what the training set holds
    """
    from .benchmarks import load_benchmark
    from .evaluate import evaluate, overlapping_ids, table
    from .predictors import FilePredictor

    try:
        exclude = overlapping_ids(exclude_overlap, overlap_name or benchmark) if exclude_overlap else None
        bench = load_benchmark(benchmark, data, images, limit, revision)
        if predictions:
            predictor = FilePredictor(predictions)
        else:
            predictor = _predictor(
                "eval",
                model,
                model_revision,
                endpoint,
                endpoint_model,
                api_key_env,
                protocol,
                max_new_tokens,
                concurrency,
            )
        report = evaluate(bench, predictor, out, bootstrap=bootstrap, seed=seed, progress=not quiet, exclude=exclude)
    except (FileNotFoundError, ValueError, HubUnreachable) as exc:
        raise click.ClickException(str(exc)) from None
    if report["n"] == 0:
        raise click.ClickException(f"{benchmark}: no items to evaluate")
    click.echo(table(report, f"{benchmark} - {predictor.name}"))
    if bench.skipped:
        click.echo(f"  ({bench.skipped} rows without valid coordinates were left out)")
    click.echo(f"wrote {out}/metrics.json, scores.csv, error_map.png, predictions.jsonl")


# -- training --------------------------------------------------------------------------------------------------
@main.group()
def train() -> None:
    """Train GLOBE (grpo), its localizability reward model (rm) or the supervised baseline (sft).

    \b
    Each method takes a recipe (--recipe NAME or --config PATH) and any of its fields as flags on top:
      globe train grpo --recipe tiny-cpu                       # CPU, tiny random model, sample build
      globe train grpo --recipe tiny-cpu --use_peft --lora_r 8 --output_dir runs/lora
      globe train rm --recipe rm-qwen2.5-vl-7b                 # the localizability reward model
      globe train sft --recipe sft-qwen2.5-vl-7b               # the CoT-SFT baseline
    \b
    Shipped recipes: globe-qwen2.5-vl-7b, tiny-cpu (grpo); rm-qwen2.5-vl-7b, rm-tiny-cpu (rm);
    sft-qwen2.5-vl-7b, sft-tiny-cpu (sft). `globe train METHOD --help` lists every field. On several GPUs:
      accelerate launch --config_file globe_train/recipes/accelerate/zero3.yaml -m globe_train.grpo --recipe ...
    """


def card_hint(out: str | Path) -> str:
    """The command that renders a run's model card, runnable as printed (the repository id is a placeholder
    the card only names)."""
    import shlex

    return f"globe card {shlex.quote(str(out))} --repo me/{Path(out).name}"


def _train_command(method: str):
    @train.command(
        method,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
        add_help_option=False,
        help=f"Run `{method}` training (flags: --recipe NAME | --config PATH, then any recipe field; --help lists "
        "them).",
    )
    @click.pass_context
    def command(ctx: click.Context) -> None:
        args = list(ctx.args)
        if ({"--help", "-h"} & set(args)) and "--help-all" not in args:
            click.echo(quick_help(method))  # no TRL import: under a second
            return
        from importlib import import_module

        from .configs import RecipeError
        from .data import DatasetError
        from .runs import end_distributed, parse

        if "--help-all" in args:
            args = [a for a in args if a != "--help-all"] + ["--help"]
        require("torch", "transformers", "trl", "peft", "accelerate")  # the [train] extra, before any work
        if not ({"--recipe", "--config", "--help", "-h"} & set(args)):
            raise click.UsageError(f"give a recipe: globe train {method} --recipe NAME (see `globe train --help`)")
        module = import_module(f"globe_train.{method}")
        try:
            parsed = parse(module.ARGS, args, prog=f"globe train {method}")
        except (FileNotFoundError, ValueError) as exc:  # a missing recipe, an unknown or inconsistent field
            raise click.ClickException(str(exc)) from None
        try:
            out = module.main(*parsed)
        except (RecipeError, DatasetError, HubUnreachable) as exc:  # settings, data, the Hub; the rest keeps its trace
            raise click.ClickException(str(exc)) from None
        end_distributed()
        click.echo(f"saved {out}; its model card: {card_hint(out)}")

    return command


for _method in ("grpo", "rm", "sft"):
    _train_command(_method)


COMMON_FLAGS = {
    "all": [
        ("--output_dir DIR", "where the weights, processor, run_info.json and logs.jsonl go"),
        ("--model_name_or_path ID", "the model to start from: a Hub id, a folder, or bundled:tiny-qwen2.5-vl"),
        ("--learning_rate LR", "peak learning rate"),
        ("--num_train_epochs N / --max_steps N", "how long (max_steps wins when > 0)"),
        ("--per_device_train_batch_size N", "completions (grpo) or rows (sft, rm) per device and step"),
        ("--gradient_accumulation_steps N", "steps per optimizer update"),
        ("--use_peft --lora_r R --lora_alpha A", "LoRA instead of a full fine-tune (lora_target_modules too)"),
        ("--bf16 / --use_cpu", "precision and device"),
        ("--seed N", "everything random: data order, sampling, initialisation"),
    ],
    "grpo": [
        ("--num_generations G", "completions per photo; advantages are taken within each group"),
        ("--max_completion_length N", "new tokens per completion"),
        ("--temperature T / --beta B", "sampling temperature; KL weight"),
        ("--reward_funcs A B ... --reward_weights x y ...", "rewards by name (see below) and their weights"),
        ("--use_vllm", "generate on a vLLM server (trl vllm-serve) or colocated"),
    ],
}


def quick_help(method: str) -> str:
    """``globe train METHOD --help``: the recipe, the common flags and this project's fields, without importing
    TRL; ``--help-all`` gives TRL's full list."""
    from dataclasses import MISSING, fields

    from . import configs

    script = {"grpo": configs.GRPOScriptArguments, "sft": configs.SFTScriptArguments, "rm": configs.RMScriptArguments}[
        method
    ]
    lines = [
        f"Usage: globe train {method} --recipe NAME | --config PATH [--FIELD VALUE ...]",
        "",
        f"Runs {method} training from a recipe (a YAML file of fields); any field can be set as a flag on top.",
        f"Recipes shipped for {method}: {', '.join(configs.shipped_recipes(method))}",
        "",
        "Common flags:",
        "  --recipe NAME / --config PATH".ljust(52) + "the recipe (required)",
    ]
    lines += [f"  {flag}".ljust(52) + text for flag, text in COMMON_FLAGS["all"] + COMMON_FLAGS.get(method, [])]
    lines += ["", "This project's fields:"]
    for f in fields(script):
        default = (
            f.default if f.default is not MISSING else f.default_factory() if f.default_factory is not MISSING else ""
        )
        lines.append(f"  --{f.name}".ljust(34) + f"{f.metadata.get('help', '')} [default: {default}]")
    if method == "grpo":
        from .rewards import rewards

        lines += ["", "Rewards (reward_funcs):"]
        lines += [f"  {name}".ljust(22) + reward.describe() for name, reward in rewards().items()]
    lines += ["", f"`globe train {method} --help-all` lists every field of TRL's config as well (it imports TRL)."]
    return "\n".join(lines)


# -- cards, push, predict --------------------------------------------------------------------------------------
@main.command()
@click.argument("ckpt", type=click.Path(exists=True, file_okay=False))
@click.option("--repo", required=True, help="The Hub id the card speaks of, e.g. me/GLOBE-Qwen2.5-VL-7B.")
@click.option(
    "--eval",
    "evals",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="A `globe eval` metrics.json to report (repeatable); CKPT/eval/*/metrics.json too.",
)
@click.option(
    "--baseline",
    "baselines",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The released checkpoint's metrics.json from the same `globe eval` command, shown beside this "
    "model's (repeatable).",
)
def card(ckpt: str, repo: str, evals: tuple[str, ...], baselines: tuple[str, ...]) -> None:
    """Render CKPT/README.md, the model card, from the run record and evaluation reports.

    \b
    It holds the base model, dataset and revision, the recipe's settings, rewards and weights, the evaluation
    table, intended use, limitations and the citation:
      globe eval mp16-reason-test --model runs/globe --protocol globe-release --out runs/globe/eval/mp16-reason-test
      globe eval mp16-reason-test --protocol globe-release --out runs/released      # the released checkpoint
      globe card runs/globe --repo me/GLOBE-Qwen2.5-VL-7B --baseline runs/released/metrics.json
    """
    from .card import write_card

    try:
        path = write_card(ckpt, repo, list(evals), list(baselines))
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {path}")


@main.command()
@click.argument("ckpt", required=False, type=click.Path(exists=True, file_okay=False))
@click.option("--repo", required=True, help="Hub id, e.g. me/GLOBE-Qwen2.5-VL-7B (a model, or with --space a Space).")
@click.option("--space", is_flag=True, help="Upload the demo app as a Gradio Space (no CKPT).")
@click.option("--revision", help="Branch to upload to (created from main when missing).")
@click.option("--private", is_flag=True, help="Create the repository private.")
@click.option("--no-card", is_flag=True, help="Do not render a card when CKPT has none.")
@click.option("--message", help="Commit message.")
def push(ckpt, repo, space, revision, private, no_card, message) -> None:
    """Upload a trained model (weights, processor, card, run record), or the demo Space, to the Hub.

    \b
    The token comes from HF_TOKEN or `hf auth login`; HF_ENDPOINT points at another Hub.
      globe push runs/globe --repo me/GLOBE-Qwen2.5-VL-7B --private
      globe push --space --repo me/globe-demo        # app.py, requirements.txt, examples and our packages
    """
    from .push import push as do_push
    from .push import push_space
    from .released import ModelUnavailable

    if bool(space) == bool(ckpt):
        raise click.UsageError("give CKPT to push a model, or --space (and no CKPT) to push the demo")
    try:
        if space:
            url = push_space(repo, private)
        else:
            url = do_push(ckpt, repo, revision, private, card=not no_card, commit_message=message)
    except (FileNotFoundError, ValueError, ModelUnavailable) as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:  # huggingface_hub's and httpx's errors carry the server's message, never the token
        if isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in ("huggingface_hub", "httpx", "httpx2"):
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise click.ClickException(f"push to {repo} failed: {first}") from None
        raise
    click.echo(f"pushed {'the demo Space' if space else ckpt} to {repo}: {url}")


@main.command()
@click.option(
    "--model",
    "models",
    multiple=True,
    help="A model the demo offers (repeatable; the first is the "
    "default): a released checkpoint, a Hub id or a local folder. Default: the released ones.",
)
@click.option(
    "--protocol",
    type=click.Choice(["ours", "globe-release"]),
    default="globe-release",
    show_default=True,
    help="How the model is asked (globe-release: as the release's own demo asks).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (0.0.0.0 to serve others).")
@click.option("--port", default=7860, show_default=True)
@click.option("--share", is_flag=True, help="Also open a temporary public gradio.live link.")
@click.option("--max-file-size", default="20mb", show_default=True, help="Largest upload accepted.")
@click.option("--endpoint", default="", help="Also offer an OpenAI-compatible server (vLLM), first.")
@click.option("--endpoint-model", default="", help="Model name to request from --endpoint.")
def demo(models, protocol, host, port, share, max_file_size, endpoint, endpoint_model) -> None:
    """Open the GLOBE demo in the browser: a photo in, reasoning, country, city and a map out.

    \b
    The models are yours to choose: callers pick one of them by name (a local folder shows as its name only)
    and give a photo; nothing they send names a path or URL the server loads or calls. Binds to 127.0.0.1
    unless --host says otherwise; uploads over --max-file-size and images over 40 MP are refused. Scripts can
    call its first API endpoint with a photo alone:
      from gradio_client import Client, handle_file
      Client("http://127.0.0.1:7860").predict(handle_file("photo.jpg"), api_name="/predict")
    \b
    Examples:
      globe demo                                             # the released checkpoints (downloads on first use)
      globe demo --model runs/globe --model globe-project/GLOBE-Qwen2.5VL-7B
      globe demo --endpoint http://localhost:8000/v1 --endpoint-model globe --host 0.0.0.0
    """
    from mp16_reason.cli import require

    require("gradio")
    from .demo import launch

    try:
        launch(list(models), protocol, host, port, share, max_file_size, endpoint, endpoint_model)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@_model_options("predict")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image and line.")
def predict(
    images, model, model_revision, endpoint, endpoint_model, api_key_env, protocol, max_new_tokens, as_json
) -> None:
    """Where was each photo taken? Prints the reasoning, country, city and coordinates.

    \b
    The model is the paper's released GLOBE (globe-project/GLOBE-Qwen2.5VL-7B), downloaded once:
      globe predict photo.jpg                                  # on the GPU when there is one
      globe predict photo.jpg --protocol globe-release         # asked exactly as the release asks it
      globe predict *.jpg --model runs/globe --json            # a local checkpoint, JSON lines
      globe predict photo.jpg --endpoint http://localhost:8000/v1 --endpoint-model globe
    Coordinates are the answer's own lat/lon lines, else its city (or country) geocoded offline.
    """
    from .predict import predict as run

    predictor = _predictor(
        "predict", model, model_revision, endpoint, endpoint_model, api_key_env, protocol, max_new_tokens
    )
    results = run(list(images), predictor)
    for p in results:
        click.echo(json.dumps(p.as_dict(), ensure_ascii=False) if as_json else "\n".join(p.lines()))
    if any(p.error for p in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
