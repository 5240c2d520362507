"""Script arguments of the training entries, beside TRL's own configs.

A run is ``(ScriptArguments, GRPOConfig | SFTConfig, ModelConfig)`` parsed by TRL's ``TrlParser`` from a YAML
recipe (``--config``) with command-line flags on top; an unknown key is an error. Every field has a default
and a help line, so ``globe train grpo --help`` lists them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mp16_reason.hub import REPO_ID

RECIPES = Path(__file__).parent / "recipes"
DEFAULT_REWARDS = ["geo_accuracy", "localizability", "visual_grounding", "format"]


class RecipeError(ValueError):
    """Settings that contradict each other (found once all three argument groups are known)."""


def check_reward_weights(reward_funcs: list[str], reward_weights: list[float] | None) -> None:
    if reward_weights is not None and len(reward_weights) != len(reward_funcs):
        raise RecipeError(
            f"reward_weights {reward_weights} has {len(reward_weights)} entries for {len(reward_funcs)} "
            f"reward_funcs {reward_funcs}: give one weight per reward, in the same order"
        )


def recipe_method(path: Path) -> str:
    """The method a recipe is for, as the shipped recipes name it: ``method:`` in a ``# globe train`` comment,
    else by the file name (rm-*, sft-*, otherwise grpo)."""
    for line in path.read_text().splitlines():
        if line.startswith("# method:"):
            return line.split(":", 1)[1].strip()
    name = path.stem
    return "rm" if name.startswith("rm-") else "sft" if name.startswith("sft-") else "grpo"


def shipped_recipes(method: str) -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.yaml") if recipe_method(p) == method)


def recipe_path(name: str) -> Path:
    """A recipe file: a path, or the name of one shipped in ``globe_train/recipes`` (``tiny-cpu``)."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    shipped = RECIPES / f"{name}.yaml"
    if shipped.exists():
        return shipped
    names = sorted(p.stem for p in RECIPES.glob("*.yaml"))
    raise FileNotFoundError(f"recipe {name!r} is neither a YAML file nor one of the shipped recipes: {names}")


@dataclass
class DataArguments:
    dataset_name: str = field(
        default=REPO_ID, metadata={"help": "Hub dataset id, or a local build folder (one with manifest.json)."}
    )
    dataset_config: str = field(default="default", metadata={"help": "Dataset config (default or localizability)."})
    dataset_revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit)."})
    dataset_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_loader: str = field(
        default="datasets",
        metadata={
            "help": "datasets: load_dataset (map-style, or streaming with dataset_streaming); webdataset: "
            "mp16_reason.stream(), a new shard order each epoch. Streams have no length: grpo derives max_steps "
            "from num_train_epochs and the manifest's sample count; sft and rm need max_steps."
        },
    )
    dataset_streaming: bool = field(default=False, metadata={"help": "Stream with datasets instead of caching."})
    max_samples: int | None = field(default=None, metadata={"help": "Train on the first N samples only."})
    freeze_vision: bool = field(default=False, metadata={"help": "Keep the vision encoder's weights fixed."})
    merge_adapter: bool = field(
        default=True, metadata={"help": "With LoRA, save the merged model (loadable without peft), not the adapter."}
    )

    def __post_init__(self) -> None:
        if self.dataset_loader not in ("datasets", "webdataset"):
            raise ValueError(f"dataset_loader={self.dataset_loader!r}: use 'datasets' or 'webdataset'")


@dataclass
class GRPOScriptArguments(DataArguments):
    reward_funcs: list[str] = field(
        default_factory=lambda: list(DEFAULT_REWARDS),
        metadata={"help": "Rewards by name, in order (the list below: the shipped ones and any a package adds)."},
    )
    geo_rule: str = field(
        default="alias", metadata={"help": "R_geo matching: alias (country aliases, city names) or official."}
    )
    format_rule: str = field(
        default="strict",
        metadata={"help": "format reward: strict (non-empty country: and city: lines) or official (as released)."},
    )
    visual_rule: str = field(
        default="strict",
        metadata={"help": "visual_grounding: strict (a closed <think> only) or official (as released)."},
    )
    geo_city_reward: float = field(default=1.0, metadata={"help": "R_geo when country and city match."})
    geo_country_reward: float = field(default=0.2, metadata={"help": "R_geo when only the country matches."})
    coordinate_scale_km: float = field(default=750.0, metadata={"help": "Coordinate reward: exp(-km / scale)."})
    rm_model: str | None = field(
        default=None, metadata={"help": "Localizability reward model run in-process: a local folder or Hub id."}
    )
    rm_revision: str | None = field(default=None, metadata={"help": "Revision of rm_model."})
    rm_endpoint: str | None = field(
        default=None, metadata={"help": "Base URL of an OpenAI-compatible server with logprobs serving the RM."}
    )
    rm_endpoint_model: str | None = field(default=None, metadata={"help": "Model name to request from rm_endpoint."})
    rm_api_key_env: str | None = field(
        default=None, metadata={"help": "Variable holding rm_endpoint's key; leave out for servers without keys."}
    )
    rm_concurrency: int = field(default=32, metadata={"help": "Requests in flight against rm_endpoint."})
    rm_batch_size: int = field(default=8, metadata={"help": "Batch size of the in-process reward model."})
    rm_on_failure: str = field(
        default="raise",
        metadata={"help": "raise: stop training; skip: leave the prompt's group out of R_loc (counted, logged)."},
    )
    rm_max_failure_rate: float = field(
        default=0.05, metadata={"help": "With skip, stop once this share of judged completions has failed."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        from .rewards import rewards

        known = list(rewards())
        unknown = [r for r in self.reward_funcs if r not in known]
        if unknown:
            raise ValueError(f"unknown reward(s) {unknown}; known: {known}")
        if self.geo_rule not in ("alias", "official"):
            raise ValueError(f"geo_rule={self.geo_rule!r}: use 'alias' or 'official'")
        for key in ("format_rule", "visual_rule"):
            if getattr(self, key) not in ("strict", "official"):
                raise ValueError(f"{key}={getattr(self, key)!r}: use 'strict' or 'official'")
        if "localizability" in self.reward_funcs:
            if bool(self.rm_model) == bool(self.rm_endpoint):
                raise ValueError(
                    "the localizability reward needs exactly one reward model: rm_model (in-process) or "
                    "rm_endpoint with rm_endpoint_model (a server returning logprobs, e.g. vLLM); or drop "
                    "'localizability' from reward_funcs and its weight from reward_weights"
                )
            if self.rm_endpoint and not self.rm_endpoint_model:
                raise ValueError("rm_endpoint needs rm_endpoint_model (the model name the server expects)")


@dataclass
class SFTScriptArguments(DataArguments):
    freeze_vision: bool = field(default=True, metadata={"help": "Keep the vision encoder's weights fixed."})


@dataclass
class RMScriptArguments(DataArguments):
    dataset_config: str = field(
        default="localizability", metadata={"help": "Dataset config with the teachers' localizability verdicts."}
    )
    freeze_vision: bool = field(default=True, metadata={"help": "Keep the vision encoder's weights fixed."})
