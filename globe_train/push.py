"""``globe push CKPT --repo me/GLOBE-Qwen2.5-VL-7B``: upload weights, processor, card and run record.

The card is rendered first when the folder has none. Only what a user of the model needs is uploaded:
intermediate checkpoints, optimizer states, sample completions and the pickled trainer arguments stay behind.
The token comes from ``HF_TOKEN`` or ``hf auth login``; it is handed to huggingface_hub and never printed.
"""

from __future__ import annotations

from pathlib import Path

from .card import DEFAULT_REPO, write_card
from .runs import LOGS, RUN_INFO

ALLOW = [
    "*.safetensors",
    "*.safetensors.index.json",
    "*.json",
    "*.jinja",
    "*.txt",
    "*.model",
    "README.md",
    LOGS,
    RUN_INFO,
]
IGNORE = ["checkpoint-*/**", "completions/**", "eval/**/predictions.jsonl", "training_args.bin", "*.pt", "*.pth"]


def push(
    ckpt: str | Path,
    repo_id: str = DEFAULT_REPO,
    revision: str | None = None,
    private: bool = False,
    card: bool = True,
    commit_message: str | None = None,
) -> str:
    """Create the repository if needed and upload ``ckpt``; returns the commit URL."""
    from huggingface_hub import HfApi

    ckpt = Path(ckpt)
    if not list(ckpt.glob("*.safetensors")) and not (ckpt / "adapter_config.json").exists():
        raise FileNotFoundError(f"{ckpt} holds no weights (*.safetensors): is it the output_dir of `globe train`?")
    if card and not (ckpt / "README.md").exists():
        write_card(ckpt, repo_id)
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise ValueError(f"cannot push {ckpt.name} to {repo_id}: HF_HUB_OFFLINE is set (unset it to upload)")
    from .released import check_hub_reachable

    # at once, not after a round of upload retries
    check_hub_reachable(f"push {ckpt.name} to {repo_id}", "push once the Hub answers")
    api = HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        repo_type="model",
        folder_path=ckpt,
        revision=revision,
        allow_patterns=ALLOW,
        ignore_patterns=IGNORE,
        commit_message=commit_message or f"Upload {ckpt.name}",
    )
    return str(info.commit_url if hasattr(info, "commit_url") else info)


SPACE = Path(__file__).parent / "space"
SPACE_PACKAGES = ("mp16_reason", "globe_train", "cards")  # what app.py imports, uploaded beside it


def stage_space(folder: str | Path) -> list[str]:
    """The demo Space's repository tree in ``folder``: ``app.py``, ``requirements.txt``, the README with the
    Space's front matter, the example photos, and the packages the app imports (no bytecode, no tests)."""
    import shutil

    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(SPACE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    root = Path(__file__).resolve().parents[1]
    for package in SPACE_PACKAGES:
        shutil.copytree(
            root / package, folder / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "space")
        )
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def push_space(repo_id: str, private: bool = False, staging: str | Path | None = None) -> str:
    """Create (or update) the Gradio Space ``repo_id`` with the demo; returns the commit URL."""
    import tempfile

    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        raise ValueError(f"cannot push the Space {repo_id}: HF_HUB_OFFLINE is set (unset it to upload)")
    from .released import check_hub_reachable

    check_hub_reachable(f"push the Space {repo_id}", "push once the Hub answers")
    with tempfile.TemporaryDirectory(prefix="globe-space-") as tmp:
        folder = Path(staging or tmp) / "space"
        stage_space(folder)
        api = HfApi()
        api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, repo_type="space", folder_path=folder, commit_message="GLOBE demo")
    return str(info.commit_url if hasattr(info, "commit_url") else info)
