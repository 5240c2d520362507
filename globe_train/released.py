"""GLOBE's published checkpoints, and getting any checkpoint onto this machine (or failing at once, saying why).

The authors of the paper publish two models on the Hub: ``globe-project/GLOBE-Qwen2.5VL-7B`` (the default
of ``globe predict``, ``globe eval`` and the demo) and ``globe-project/GLOBE-InternVL3-8B``. A checkpoint in
transformers' own format runs here with ``AutoModelForImageTextToText``; one that needs the custom code in its
repository (InternVL's original layout) is refused before any weight is downloaded, with the vLLM command
that serves it and the ``--endpoint`` flags that use it. Which layout a repository has is read from its
``config.json``, so either works.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Released:
    repo_id: str
    backbone: str
    served_name: str  # the --served-model-name of the release's own vLLM command


RELEASED = {
    r.repo_id: r
    for r in (
        Released("globe-project/GLOBE-Qwen2.5VL-7B", "Qwen2.5-VL-7B-Instruct", "qwen2.5-vl"),
        Released("globe-project/GLOBE-InternVL3-8B", "InternVL3-8B", "internvl3"),
    )
}
DEFAULT_MODEL = "globe-project/GLOBE-Qwen2.5VL-7B"


class ModelUnavailable(RuntimeError):
    """The model cannot be had or run here; the message says what to do instead."""


USE_INSTEAD = "use a model on this machine (--model DIR) or an OpenAI-compatible server (--endpoint URL)"


def check_hub_reachable(what: str, instead: str = USE_INSTEAD, timeout_s: float = 10.0) -> None:
    """Raise :class:`ModelUnavailable` at once when the Hub (``HF_ENDPOINT``) does not answer at all, saying
    what to use instead; any HTTP answer, an error included, means it is there."""
    from mp16_reason.reach import HubUnreachable, require_hub

    try:
        require_hub(what, instead, timeout_s)
    except HubUnreachable as exc:
        raise ModelUnavailable(str(exc)) from None


def serve_command(model: str, served: str = "globe") -> str:
    return (
        f"vllm serve {model} --trust-remote-code --served-model-name {served} --max-model-len 8096, then add "
        f"--endpoint http://localhost:8000/v1 --endpoint-model {served}"
    )


def local_copy(model: str, revision: str | None = None) -> Path:
    """A folder holding ``model``: the folder itself, the Hub cache's copy, or a fresh download. Fails at once,
    in one line, when the Hub cannot be reached (offline mode, no network) and the cache has no copy."""
    from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    folder = Path(model).expanduser()
    if folder.is_dir():
        return folder
    if model.count("/") != 1:
        raise ModelUnavailable(f"model {model!r} is neither a local folder nor a Hub id (org/name)")
    try:
        return Path(snapshot_download(model, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        pass
    if constants.HF_HUB_OFFLINE:
        raise ModelUnavailable(
            f"model {model} is not in the local Hub cache and HF_HUB_OFFLINE is set: {USE_INSTEAD}, or "
            f"download it first (hf download {model}) where the Hub is reachable"
        ) from None
    check_hub_reachable(f"download model {model}")
    try:
        sha = HfApi().model_info(model, revision=revision or "main", timeout=15).sha
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        first = str(exc).splitlines()[0]
        raise ModelUnavailable(f"no model {model}{f'@{revision}' if revision else ''} on the Hub ({first})") from None
    # Its config first: a checkpoint that cannot run here is refused before gigabytes of weights come down.
    config = Path(hf_hub_download(model, "config.json", revision=sha))
    check_transformers_format(config.parent, model)
    return Path(snapshot_download(model, revision=sha))


def check_transformers_format(folder: Path, model: str) -> None:
    """Refuse, before the weights are read, a checkpoint transformers cannot load by itself: one whose config
    names custom code (``auto_map``) or an architecture transformers does not have."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        raise ModelUnavailable(f"{model}: no readable config.json in {folder.name}") from None
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    architectures = config.get("architectures") or []
    if config.get("auto_map") or config.get("model_type") not in CONFIG_MAPPING_NAMES:
        served = RELEASED[model].served_name if model in RELEASED else "globe"
        raise ModelUnavailable(
            f"{model} is not in transformers' own format ({', '.join(architectures) or config.get('model_type')} "
            f"with custom code in its repository), so it cannot be loaded here; serve it with vLLM instead: "
            f"{serve_command(model, served)}"
        )
