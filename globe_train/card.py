"""``globe card CKPT``: the model card (``CKPT/README.md``) from the run record and evaluation reports.

The card's metadata (base model, dataset, license, pipeline tag and the evaluation results as a model-index)
is huggingface_hub's ``ModelCardData``; the text is ``cards/model_card.md``.
"""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from cards import template
from mp16_reason import THRESHOLDS_KM
from mp16_reason.atomic import atomic_file
from mp16_reason.prompt import INSTRUCTION

from .modeling import TINY
from .rewards import rewards as registered_rewards
from .runs import RUN_INFO, is_hub_id

DEFAULT_REPO = "me/GLOBE-Qwen2.5-VL-7B"  # the user's own repository: cards and pushes always name one
TEST_SIZE = 10_000_000  # parameters: below this a checkpoint can only be a test model
EVAL_DIR = "eval"  # CKPT/eval/<benchmark>/metrics.json is picked up without --eval
METHODS = {
    "grpo": "GRPO (group relative policy optimisation) with TRL",
    "sft": "supervised fine-tuning on the curated reasoning traces, with TRL",
    "rm": "supervised yes/no training as the localizability reward model, with TRL",
}


def load_run(ckpt: str | Path) -> dict:
    path = Path(ckpt) / RUN_INFO
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: CKPT must be a folder written by `globe train` (its run record)")
    return json.loads(path.read_text())


def find_evals(ckpt: str | Path, extra: list[str | Path] = ()) -> list[dict]:
    """Evaluation reports (``globe eval``'s metrics.json): those given, then any under ``CKPT/eval/``."""
    paths = [Path(p) for p in extra] + sorted((Path(ckpt) / EVAL_DIR).glob("*/metrics.json"))
    reports = []
    for p in paths:
        report = json.loads(p.read_text())
        if "metrics" not in report:
            raise ValueError(f"{p} is not a `globe eval` metrics.json (no 'metrics')")
        reports.append(report)
    return reports


def _eval_row(report: dict, model: str = "this model") -> dict:
    m = report["metrics"]
    protocol = (report.get("protocol") or {}).get("name", "-")
    row = {"name": report.get("benchmark", "?"), "n": report.get("n", 0), "model": model, "protocol": protocol}
    for t in THRESHOLDS_KM:
        row[f"acc_{t:g}km"] = f"{m.get(f'acc_{t:g}km', 0):.2f}"
    row["median_km"] = "n/a" if m.get("median_km") is None else f"{m['median_km']:,.0f}"
    row["country"], row["city"] = f"{m.get('country_alias', 0):.2f}", f"{m.get('city_alias', 0):.2f}"
    return row


def base_license(base: str) -> tuple[dict[str, str], str]:
    """The base model's licence, as its own card's metadata says it (``license``, and ``license_name`` and
    ``license_link`` for ``other``), read from the local folder's README.md or the Hub's copy; and a note for
    the card. Unknown (no card, offline, the tiny test model): ``other``, and a note saying so."""
    readme = Path(base) / "README.md"
    try:
        card = ModelCard.load(readme if readme.is_file() else base) if base != TINY else None
    except Exception as exc:  # not on the Hub, offline, no README: the licence is unknown, never assumed
        reason = f"its card could not be read ({type(exc).__name__})"
    else:
        found = {k: getattr(card.data, k, None) for k in ("license", "license_name", "license_link")} if card else {}
        if found.get("license"):
            return {k: v for k, v in found.items() if v}, f"The base model's license (`{found['license']}`)"
        reason = "its card names no license" if card else "it is a test model"
    name = base if is_hub_id(base) else Path(base).name
    return (
        {"license": "other"},
        f"Unknown: the base model `{name}`'s license could not be read ({reason}); "
        "check its terms before using or sharing this model",
    )


def card_data(run: dict, model_name: str, evals: list[dict], license: dict[str, str] | None = None) -> ModelCardData:
    """The Hub metadata: only what is true of the published files. The base model and the training data are
    named only when they are Hub repositories (a local folder or the tiny test model are not); the
    model-index lists only evaluations on a Hub dataset, by its id and revision."""
    base = run["base_model"]
    data = run["dataset"]
    results = [
        EvalResult(
            task_type="image-text-to-text",
            task_name="Image geo-localization",
            dataset_type=r["dataset"]["hub_id"],
            dataset_name=r.get("benchmark", r["dataset"]["hub_id"]),
            dataset_revision=r["dataset"].get("revision"),
            metric_type="accuracy",
            metric_name=f"accuracy within {t:g} km",
            metric_value=r["metrics"][f"acc_{t:g}km"],
        )
        for r in evals
        if (r.get("dataset") or {}).get("hub_id")
        for t in THRESHOLDS_KM
        if f"acc_{t:g}km" in r["metrics"]
    ]
    hub_data = not data.get("local") and is_hub_id(data.get("name"))
    return ModelCardData(
        **(license or {"license": "other"}),
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        base_model=base if base != TINY and is_hub_id(base) else None,
        datasets=[data["name"]] if hub_data else None,
        tags=["geolocation", "geo-localization", "reasoning", "grpo", "trl", "qwen2.5-vl"],
        model_name=model_name,
        eval_results=results or None,
    )


def comparable(report: dict, baseline: dict) -> bool:
    """Scored by the same command on the same thing: benchmark, dataset (and revision), protocol, item count."""

    def key(r: dict) -> tuple:
        return (
            r.get("benchmark"),
            json.dumps(r.get("dataset"), sort_keys=True),
            (r.get("protocol") or {}).get("name"),
            r.get("n"),
        )

    return key(report) == key(baseline)


def render(
    ckpt: str | Path, repo_id: str = DEFAULT_REPO, evals: list[str | Path] = (), baselines: list[str | Path] = ()
) -> str:
    """The card; ``baselines`` are evaluation reports of the released checkpoint, each shown beside this model's
    report on the same benchmark, dataset revision and protocol (a report with no such twin is an error)."""
    run = load_run(ckpt)
    reports = find_evals(ckpt, evals)
    compared = []
    for path in baselines:
        base = json.loads(Path(path).read_text())
        twin = [r for r in reports if comparable(r, base)]
        if not twin:
            raise ValueError(
                f"{path}: no evaluation of this model on the same benchmark, dataset revision, protocol and items "
                f"({base.get('benchmark')}, {(base.get('protocol') or {}).get('name')}, {base.get('n')}): score both "
                "with the same `globe eval` command"
            )
        compared.append(_eval_row(base, (base.get("model") or "released").split(" @ ")[0] + " (released)"))
    method = run["method"]
    model_name = repo_id.split("/")[-1]
    args = run.get("script_args", {})
    d = run["dataset"]
    dataset_text = f"`{d['name']}`, config `{d['config']}`, split `{d['split']}`"
    if d.get("revision"):
        dataset_text += f" @ `{d['revision']}`"
    if d.get("version"):
        dataset_text += f" (build version {d['version']})"
    rewards = []
    known = registered_rewards()
    for name, weight in (run.get("rewards") or {}).items():
        rewards.append((name, weight, known[name].describe(args) if name in known else ""))
    summary = {
        "grpo": f"{model_name} is GLOBE: a vision-language model trained with reinforcement learning to work out "
        "where a photo was taken and to explain why, on the MP16-Reason dataset.",
        "sft": f"{model_name} is the supervised baseline of GLOBE, fine-tuned on MP16-Reason's reasoning traces.",
        "rm": f"{model_name} is GLOBE's localizability reward model: given a photo and a reasoning about where it "
        "was taken, it answers yes when the place can be worked out from what the photo shows.",
    }[method]
    license, license_note = base_license(run["base_model"])
    card = ModelCard.from_template(
        card_data(run, model_name, reports, license),
        license_note=license_note,
        template_str=template("model_card.md"),
        model_name=model_name,
        repo_id=repo_id,
        instruction=json.dumps(INSTRUCTION),  # the training prompt, as a Python string literal
        summary=summary,
        tiny=run.get("parameters", 0) < TEST_SIZE,
        parameters=f"{run.get('parameters', 0):,}",
        method=method,
        method_text=METHODS[method],
        base_model=f"`{run['base_model']}`",
        base_model_revision=run.get("base_model_revision") if run.get("base_model_revision") != "main" else None,
        dataset_text=dataset_text,
        lora=run.get("lora"),
        merged=args.get("merge_adapter", True),
        settings=[(k, v) for k, v in run.get("settings", {}).items() if v is not None],
        versions=list(run.get("versions", {}).items()),
        rewards=rewards,
        num_generations=run.get("settings", {}).get("num_generations"),
        train_metrics=[
            (k, round(v, 4) if isinstance(v, float) else v)
            for k, v in run.get("metrics", {}).items()
            if k in ("train_loss", "train_runtime", "train_samples_per_second")
        ],
        evals=[_eval_row(r) for r in reports] + compared,
        baselines=bool(compared),
    )
    return str(card)


def write_card(
    ckpt: str | Path, repo_id: str = DEFAULT_REPO, evals: list[str | Path] = (), baselines: list[str | Path] = ()
) -> Path:
    path = Path(ckpt) / "README.md"
    text = render(ckpt, repo_id, evals, baselines)
    with atomic_file(path, "w") as fh:
        fh.write(text)
    return path
