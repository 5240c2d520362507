"""`mp16-reason publish DIR --repo globe/mp16-reason`: stage the repository tree, then upload it to the Hub.

Staging hard-links (or copies) exactly the files a user of the dataset needs into one folder, so that
``--dry-run`` shows the very tree that would be uploaded. The upload is ``HfApi.upload_folder``: with
``hf_xet`` installed (a dependency of huggingface_hub) it streams in several commits and resumes when re-run.
The token comes from ``HF_TOKEN`` or ``hf auth login``; it is handed to huggingface_hub and never printed.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from builders.publish.card import FRONT_ONLY, LICENSE_PATH, MAP_PATH
from builders.publish.validate import validate_build
from mp16_reason.manifest import Manifest, read_manifest
from mp16_reason.storage import Location, location

# What a dataset repository holds; work files, inputs and caches stay behind. The image hashes and the audit
# let anyone audit the published dataset against their own sets without its images.
REPO_FILES = (
    "README.md",
    LICENSE_PATH,
    "manifest.json",
    "rejections.parquet",
    MAP_PATH,
    "hashes.parquet",
    "audit.json",
    "audit-pairs.parquet",
)


@dataclass
class PublishPlan:
    repo_id: str
    revision: str
    tag: str | None
    private: bool
    staging: Path
    files: list[tuple[str, int]] = field(default_factory=list)  # (path in repo, bytes)
    commit: str | None = None  # set after the upload

    @property
    def total_bytes(self) -> int:
        return sum(n for _, n in self.files)

    def lines(self) -> list[str]:
        head = f"{self.repo_id} (dataset) @ {self.revision}" + (f", tag {self.tag}" if self.tag else "")
        body = [f"  {n:>15,}  {p}" for p, n in self.files]
        return [head, *body, f"  {self.total_bytes:>15,}  bytes in {len(self.files)} files (staged in {self.staging})"]


def repo_paths(root: Path | Location, manifest: Manifest) -> list[str]:
    paths = [p for p in REPO_FILES if (root / p).exists()]
    return sorted(paths + [s.path for s in manifest.shards])


def stage(root: str | Path, staging: str | Path) -> list[tuple[str, int]]:
    """Build the repository tree in ``staging`` (hard links where possible; a build on an object store is
    downloaded) and return its files."""
    root, staging = location(root), Path(staging)
    manifest = read_manifest(root)
    if staging.exists():
        shutil.rmtree(staging)
    files = []
    for rel in repo_paths(root, manifest):
        src, dst = root / rel, staging / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.local is None:
            src.fs.get_file(src._path, str(dst))
            files.append((rel, dst.stat().st_size))
            continue
        try:
            os.link(src.local, dst)
        except OSError:  # another filesystem, or links not allowed
            shutil.copy2(src.local, dst)
        files.append((rel, dst.stat().st_size))
    return files


def _default_staging(root: Location) -> Path:
    if root.local is not None:
        return root.local / ".work" / "publish"
    import hashlib
    import tempfile

    return Path(tempfile.gettempdir()) / f"mp16-reason-publish-{hashlib.sha1(root.url.encode()).hexdigest()[:12]}"


def publish(
    root: str | Path,
    repo_id: str,
    revision: str | None = None,
    tag: str | None = None,
    private: bool = False,
    dry_run: bool = False,
    staging: str | Path | None = None,
    token: str | None = None,
) -> PublishPlan:
    """Validate the build, stage the tree, and (unless ``dry_run``) upload it and tag the release."""
    root = location(root)
    validate_build(root, require_card=True)  # never publish what does not check out
    if FRONT_ONLY in (root / "README.md").read_text():
        raise ValueError(f"{root}/README.md is the build's front matter only: run `mp16-reason card {root}` first")
    manifest = read_manifest(root)
    plan = PublishPlan(
        repo_id=repo_id,
        revision=revision or "main",
        tag=tag,
        private=private,
        staging=Path(staging) if staging else _default_staging(root),
    )
    plan.files = stage(root, plan.staging)
    if dry_run:
        return plan

    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    if plan.revision != "main":
        api.create_branch(repo_id, branch=plan.revision, repo_type="dataset", exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        repo_type="dataset",
        folder_path=plan.staging,
        revision=plan.revision,
        commit_message=f"MP16-Reason {manifest.version}",
        commit_description=f"Built by mp16-reason; recipe sha256 {manifest.recipe_sha256}.",
    )
    plan.commit = getattr(info, "oid", None)
    if tag:
        api.create_tag(
            repo_id,
            tag=tag,
            tag_message=f"MP16-Reason {manifest.version}",
            revision=plan.commit or plan.revision,
            repo_type="dataset",
            exist_ok=True,
        )
    return plan
