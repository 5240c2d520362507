"""`mp16-reason validate DIR`: check a build (or a downloaded copy of the dataset) before anyone trusts it.

- every shard the manifest lists exists with the listed bytes, sha256 and sample count, and nothing else is
  in ``data/``;
- every sample has a dot-free key, a decodable image of the recorded size and a record that passes the
  schema, in the split its shard says; ids are unique;
- the totals add up;
- the card (``README.md``), when present or required, has YAML front matter whose ``configs`` cover exactly
  the manifest's shards and whose ``dataset_info.features`` equal the schema's.

Problems are collected, not raised one by one, so a single run lists everything that is wrong.
"""

from __future__ import annotations

import io
import tarfile
from collections import Counter
from fnmatch import fnmatch
from pathlib import Path

from PIL import Image

from mp16_reason import schema
from mp16_reason.atomic import HashingFile
from mp16_reason.manifest import DEFAULT_CONFIG, SHARD_FOLDERS, read_manifest
from mp16_reason.storage import Location, location

MAX_PROBLEMS = 50


class ValidationFailed(Exception):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        more = f"\n  ... and {len(problems) - MAX_PROBLEMS} more" if len(problems) > MAX_PROBLEMS else ""
        super().__init__(
            f"{len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems[:MAX_PROBLEMS]) + more
        )


def _check_sample(where: str, shard: dict, parts: dict[str, bytes], ids: Counter, problems: list[str]) -> None:
    if set(parts) != {"jpg", "json"}:
        problems.append(f"{where}: members {sorted(parts)}, expected exactly jpg and json")
        return
    try:
        record = schema.from_json_bytes(parts["json"])
    except (schema.SchemaError, ValueError) as exc:
        problems.append(f"{where}: record fails the schema: {exc}")
        return
    ids[(shard.config, record.id)] += 1  # unique within a config
    if record.split != shard.split:
        problems.append(f"{where}: record split {record.split!r} in a {shard.split!r} shard")
    try:
        with Image.open(io.BytesIO(parts["jpg"])) as img:
            img.verify()
            size_ok = img.size == (record.image.width, record.image.height)
    except Exception as exc:  # Pillow raises many types for a bad image
        problems.append(f"{where}: image does not decode ({exc})")
        return
    if not size_ok:
        problems.append(f"{where}: image size differs from the record's {record.image.width}x{record.image.height}")


def _check_shard(root: Location, shard: dict, ids: Counter, problems: list[str]) -> int:
    """Streams the shard once: its sha256 and every sample, one sample in memory at a time."""
    path = root / shard.path
    name = shard.path
    if not path.exists():
        problems.append(f"{name}: listed in manifest.json but missing; re-download or rebuild it")
        return 0
    size = path.size()
    if size != shard.bytes:
        problems.append(f"{name}: {size:,} bytes, manifest says {shard.bytes:,}; the file is truncated or changed")
    keys: set[str] = set()
    with path.open("rb") as fh:
        reader = HashingFile(fh)
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                key, parts = None, {}
                for member in tar:
                    if not member.isfile():
                        continue
                    member_key, _, ext = member.name.partition(".")
                    if member_key != key:  # a sample's members are adjacent, as webdataset reads them
                        if key is not None:
                            _check_sample(f"{name}:{key}", shard, parts, ids, problems)
                        if member_key in keys:
                            problems.append(f"{name}:{member_key}: members are not adjacent or the key repeats")
                        key, parts = member_key, {}
                        keys.add(member_key)
                    parts[ext] = tar.extractfile(member).read()
                if key is not None:
                    _check_sample(f"{name}:{key}", shard, parts, ids, problems)
        except (tarfile.TarError, OSError) as exc:
            problems.append(f"{name}: not a readable tar ({exc})")
            return 0
        while reader.read(1 << 20):  # the end-of-archive padding counts in the hash too
            pass
    digest = reader.sha256.hexdigest()
    if digest != shard.sha256:
        problems.append(f"{name}: sha256 {digest[:16]}... differs from the manifest's {shard.sha256[:16]}...")
    if len(keys) != shard.samples:
        problems.append(f"{name}: {len(keys)} samples, manifest says {shard.samples}")
    return len(keys)


def _front_matter(text: str) -> dict:
    import yaml

    if not text.startswith("---\n") or "\n---" not in text[4:]:
        raise ValueError("no YAML front matter (the card must start with a '---' block)")
    return yaml.safe_load(text[4 : text.index("\n---", 4)]) or {}


def _check_card(root: Location, manifest: dict, problems: list[str]) -> None:
    import datasets

    from builders.publish.card import shard_groups

    path = root / "README.md"
    try:
        meta = _front_matter(path.read_text())
    except (ValueError, OSError) as exc:
        problems.append(f"README.md: {exc}; run `mp16-reason card {root}`")
        return
    except Exception as exc:  # yaml.YAMLError and friends
        problems.append(f"README.md: front matter is not valid YAML ({exc})")
        return
    groups = shard_groups(manifest)
    declared = {c.get("config_name"): c for c in meta.get("configs", [])}
    if set(declared) != set(groups):
        problems.append(f"README.md: configs {sorted(declared)} but the manifest has {sorted(groups)}")
    for config, splits in groups.items():
        files = {f["split"]: f["path"] for f in declared.get(config, {}).get("data_files", [])}
        for split, shards in splits.items():
            patterns = files.get(split)
            if patterns is None:
                problems.append(f"README.md: config {config!r} has no data_files for split {split!r}")
                continue
            patterns = [patterns] if isinstance(patterns, str) else patterns
            listed = {s.path for s in shards}
            matched = {p for p in _all_shard_paths(manifest) if any(fnmatch(p, pat) for pat in patterns)}
            if matched != listed:
                problems.append(
                    f"README.md: {config}/{split} data_files {patterns} match {sorted(matched)[:3]}..., "
                    f"not the manifest's {sorted(listed)[:3]}..."
                )
    infos = meta.get("dataset_info")
    infos = infos if isinstance(infos, list) else [infos] if infos else []
    want = schema.features()
    for info in infos:
        try:
            got = datasets.Features._from_yaml_list(info.get("features", []))
        except Exception as exc:
            problems.append(f"README.md: dataset_info.features cannot be read ({exc})")
            continue
        if got != want:
            problems.append(
                f"README.md: dataset_info.features of config {info.get('config_name', 'default')!r} differ from "
                "the schema; re-render the card with `mp16-reason card`"
            )
    if not infos:
        problems.append("README.md: no dataset_info.features; types would be inferred from the first samples")


def _all_shard_paths(manifest: dict) -> list[str]:
    return [s.path for s in manifest.shards]


def validate_build(root: str | Path, require_card: bool = True) -> dict:
    """Check everything; returns a summary, or raises :class:`ValidationFailed` listing every problem."""
    root = location(root)
    manifest = read_manifest(root)
    problems: list[str] = []
    ids: Counter = Counter()
    per_split: Counter = Counter()  # default config: reconciles with the input
    per_config: dict[str, Counter] = {}  # other configs: a second view of the same images
    for shard in manifest.shards:
        n = _check_shard(root, shard, ids, problems)
        if shard.config == DEFAULT_CONFIG:
            per_split[shard.split] += n
        else:
            per_config.setdefault(shard.config, Counter())[shard.split] += n
    listed = set(_all_shard_paths(manifest))
    for folder in SHARD_FOLDERS:
        if not (root / folder).is_dir():
            continue
        for rel in sorted(f"{folder}/{r}" for r, _ in (root / folder).walk_files() if r.endswith(".tar")):
            if rel not in listed:
                problems.append(f"{rel}: in {folder}/ but not in manifest.json; delete it or rebuild")
    dupes = [key for key, n in ids.items() if n > 1]
    if dupes:
        config, first = dupes[0]
        problems.append(f"{len(dupes)} id(s) appear more than once in a config, e.g. {first!r} in {config!r}")
    totals = manifest.totals
    if sum(per_split.values()) != totals.written:
        problems.append(f"shards hold {sum(per_split.values())} samples, totals.written says {totals.written}")
    declared = {name: dict(c) for name, c in totals.configs.items()}
    if {name: dict(c) for name, c in per_config.items()} != declared:
        problems.append(f"shards of other configs hold {dict(per_config)}, totals.configs says {declared}")
    if totals.written + totals.rejected != totals.input_rows:
        problems.append(f"totals do not reconcile: {totals.input_rows} in != {totals.written} + {totals.rejected}")
    if require_card or (root / "README.md").exists():
        _check_card(root, manifest, problems)
    if problems:
        raise ValidationFailed(problems)
    return {"shards": len(manifest.shards), "samples": sum(per_split.values()), "splits": dict(per_split)}


__all__ = ["ValidationFailed", "validate_build"]
