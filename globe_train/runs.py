"""What every training entry shares: argument parsing, resuming, a JSONL log, and the run record.

``run_info.json`` (written next to the weights) records what a checkpoint is: method, base model, dataset and
revision, recipe, rewards and weights, the settings that matter and the final metrics. ``globe card`` renders
the model card from it.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from mp16_reason.atomic import atomic_file

from .configs import recipe_path
from .data import local_build

log = logging.getLogger(__name__)
RUN_INFO = "run_info.json"
LOGS = "logs.jsonl"


def parse(dataclass_types: tuple, argv: list[str] | None = None, prog: str | None = None) -> tuple:
    """TRL's parser over ``dataclass_types``: ``--recipe NAME_OR_PATH`` (or ``--config PATH``) gives the
    defaults, other flags override them, unknown keys fail (naming the nearest field, or the method a recipe
    of another method is for)."""
    from trl import TrlParser

    args = list(sys.argv[1:] if argv is None else argv)
    if "--recipe" in args:
        i = args.index("--recipe")
        args[i : i + 2] = ["--config", str(recipe_path(args[i + 1]))]
    check_names(dataclass_types, args, prog)
    return TrlParser(dataclass_types, prog=prog).parse_args_and_config(args)


def field_names(dataclass_types: tuple) -> set[str]:
    """Every field, and the ``no_`` form argparse gives boolean fields."""
    from dataclasses import fields

    names = {f.name for t in dataclass_types for f in fields(t)}
    return names | {f"no_{n}" for n in names}


def check_names(dataclass_types: tuple, args: list[str], prog: str | None) -> None:
    """Every flag and recipe key is a field: else a ValueError naming the nearest one, or, for a recipe whose
    keys are another method's, that method."""
    import difflib

    import yaml

    known = field_names(dataclass_types) | {"config", "help", "help_all"}
    flags = [a[2:].split("=", 1)[0].replace("-", "_") for a in args if a.startswith("--")]
    for flag in flags:
        if flag not in known:
            near = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
            hint = f"; did you mean --{near[0]}?" if near else f"; `{prog or 'globe train'} --help` lists the fields"
            raise ValueError(f"unknown flag --{flag}{hint}")
    if "--config" not in args:
        return
    path = Path(args[args.index("--config") + 1])
    keys = set((yaml.safe_load(path.read_text()) or {}).keys())
    stray = sorted(keys - known)
    if not stray:
        return
    from .configs import recipe_method

    method = recipe_method(path)
    this = (prog or "").split()[-1] if prog else ""
    if method != this:
        raise ValueError(
            f"recipe {path.name} is for `globe train {method}` (it sets {', '.join(stray[:4])}, which "
            f"`{prog}` does not have): run `globe train {method} --recipe {path.stem}`"
        )
    near = {k: difflib.get_close_matches(k, known, n=1, cutoff=0.6) for k in stray}
    said = ", ".join(f"{k}" + (f" (did you mean {m[0]}?)" if m else "") for k, m in near.items())
    raise ValueError(f"recipe {path.name} sets keys `{prog}` does not have: {said}")


def setup(training_args: Any) -> str | None:
    """Seed and logging; returns the checkpoint to resume from (the last one in ``output_dir``), if any."""
    import transformers
    from transformers.trainer_utils import get_last_checkpoint

    transformers.set_seed(training_args.seed)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    quiet_libraries()
    out = Path(training_args.output_dir)
    last = get_last_checkpoint(str(out)) if out.is_dir() else None
    if last and training_args.resume_from_checkpoint is None:
        log.info("resuming from %s", last)
    return training_args.resume_from_checkpoint or last


def quiet_libraries() -> None:
    """One progress line for the training, and each library warning once: TRL and transformers repeat their
    deprecation warnings every step, and datasets and transformers draw a bar for every file they read or
    write. ``GLOBE_VERBOSE=1`` keeps all of it."""
    import os
    import warnings

    if os.environ.get("GLOBE_VERBOSE") == "1":
        return
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("once", category=category)
    import datasets
    import transformers
    from huggingface_hub.utils import disable_progress_bars

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    disable_progress_bars()


def end_distributed() -> None:
    """Tear the process group down, its threads with it, before the interpreter does. Left to interpreter exit,
    gloo's threads can outlive it and abort a run that has already finished and saved (``terminate called
    without an active exception``, SIGABRT). ``destroy_process_group`` alone does not end them: the trainer's
    DDP wrapper still holds the group, through reference cycles, until a garbage collection frees it. Called
    only after a run succeeds, once the trainer is out of scope: a rank that failed must not wait on the others.

    A barrier first. The group's destructor joins gloo's worker threads while holding the GIL, and a worker
    still letting go of a finished collective may need the GIL for it (tensors whose Python objects it now
    owns): one rank of a test run hung there, in ``gc.collect``, with the other rank done. Waiting in the
    barrier (without the GIL) lets every rank's collectives finish and their workers release them first."""
    import gc

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        gc.collect()  # the last holder of the group goes here, and the group's destructor joins its threads


class JsonlLogs(TrainerCallback):
    """Appends every log the trainer emits (losses, per-reward means, KL, lengths) to ``output_dir/logs.jsonl``."""

    def __init__(self, output_dir: str | Path) -> None:
        self.path = Path(output_dir) / LOGS

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        if state.is_world_process_zero and logs:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as fh:
                fh.write(json.dumps({"step": state.global_step, **logs}) + "\n")


class CompleteCheckpoints(TrainerCallback):
    """Every intermediate checkpoint gets the processor files a save without torchvision leaves out (see
    :func:`~globe_train.compat.complete_processor_files`), so any of them loads with stock transformers."""

    def __init__(self, base: str | None) -> None:
        self.base = base

    def on_save(self, args, state, control, **kwargs) -> None:
        from .compat import complete_processor_files

        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            complete_processor_files(folder, self.base)


def public(value: Any) -> Any:
    """``value`` with every local path replaced by its last part (a folder or file name): what a run record or
    a card may say about this machine. Hub ids (``org/name``) and URLs are kept."""
    if isinstance(value, dict):
        return {k: public(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [public(v) for v in value]
    if isinstance(value, str) and value and "://" not in value:
        path = Path(value).expanduser()
        if path.is_absolute() or value.startswith(("./", "../", "~")) or (path.exists() and len(path.parts) > 1):
            return path.name
    return value


def is_hub_id(name: str | None) -> bool:
    """An ``org/name`` that is not a local path (what the Hub's metadata fields may name)."""
    return bool(name) and name.count("/") == 1 and not Path(name).expanduser().exists() and ":" not in name


def dataset_info(script_args: Any) -> dict:
    """Where the training data came from; a local build also gives its version and recipe hash."""
    info = {
        "name": script_args.dataset_name,
        "config": script_args.dataset_config,
        "split": script_args.dataset_split,
        "revision": script_args.dataset_revision,
    }
    if local := local_build(script_args.dataset_name):
        from mp16_reason.manifest import read_manifest

        manifest = read_manifest(local)
        info |= {"local": True, "version": manifest.version, "recipe_sha256": manifest.recipe_sha256}
    return info


SETTINGS = (
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_generations",
    "temperature",
    "beta",
    "loss_type",
    "max_completion_length",
    "max_length",
    "bf16",
    "use_vllm",
    "seed",
)


def write_run_info(
    method: str,
    output_dir: str | Path,
    script_args: Any,
    training_args: Any,
    model_args: Any,
    metrics: dict,
    parameters: int,
    rewards: list[str] | None = None,
) -> Path:
    import torch
    import transformers
    import trl

    from mp16_reason import __version__

    settings = {k: getattr(training_args, k) for k in SETTINGS if hasattr(training_args, k)}
    weights = getattr(training_args, "reward_weights", None)
    info = {
        "method": method,
        "base_model": model_args.model_name_or_path,
        "base_model_revision": model_args.model_revision,
        "parameters": parameters,
        "lora": {"r": model_args.lora_r, "alpha": model_args.lora_alpha} if model_args.use_peft else None,
        "dataset": dataset_info(script_args),
        "script_args": asdict(script_args),
        "training_args": training_args.to_dict(),  # tokens are already masked by to_dict
        "settings": settings,
        "rewards": None if rewards is None else dict(zip(rewards, weights or [1.0] * len(rewards))),
        "metrics": metrics,
        "versions": {
            "mp16-reason": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
        },
    }
    # Pushed with the weights: local paths (base model, data, output folders) become their names.
    info = public(json.loads(json.dumps(info, default=str)))
    path = Path(output_dir) / RUN_INFO
    with atomic_file(path, "w") as fh:
        fh.write(json.dumps(info, indent=2))
    return path
