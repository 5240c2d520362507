"""`mp16-reason card DIR`: render the dataset card (``DIR/README.md``) from the build's manifest and shards.

The YAML front matter is what makes ``load_dataset("globe/mp16-reason")`` work without a loading script:
``configs`` maps every config and split to its shard files, and ``dataset_info.features`` declares the types
from the schema module, so neither the Hub viewer nor ``datasets`` infers them from the first samples.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from huggingface_hub import DatasetCard, DatasetCardData

from builders.publish.stats import Stats, compute, reason_class, size_category, world_map
from cards import template
from mp16_reason import REPO_ID, schema
from mp16_reason.distance import THRESHOLDS_KM
from mp16_reason.manifest import DEFAULT_CONFIG, Manifest, Shard, read_manifest
from mp16_reason.storage import Location, location

MAP_PATH = "assets/world_map.png"
LICENSE_PATH = "LICENSE.md"  # the card's license_link: what `license: other` is made of
TASK_CATEGORIES = ["image-text-to-text", "visual-question-answering"]
TAGS = ["geolocation", "geo-localization", "reasoning", "webdataset", "mp16", "flickr", "grpo"]


def shard_groups(manifest: Manifest) -> dict[str, dict[str, list[Shard]]]:
    """config -> split -> the manifest's shard entries, in path order."""
    return manifest.groups()


def data_files_pattern(shards: list[Shard]) -> str | list[str]:
    """``data/train-*.tar`` when every shard of the split follows the naming scheme, else the exact list."""
    paths = [s.path for s in shards]
    prefix = paths[0].rsplit("-", 1)[0]
    return f"{prefix}-*.tar" if all(p.rsplit("-", 1)[0] == prefix for p in paths) else paths


def preload() -> None:
    """Import what :func:`card_data` imports on its first call (datasets' card metadata, ~0.15 s), so that a
    build can do it while its workers run rather than at its end."""
    import datasets.info
    import datasets.utils.metadata  # noqa: F401


def card_data(manifest: Manifest, n_samples: int) -> DatasetCardData:
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs

    groups = shard_groups(manifest)
    data = DatasetCardData(
        license="other",
        license_name="mixed-flickr-cc",
        license_link=LICENSE_PATH,
        pretty_name="MP16-Reason",
        language=["en"],
        task_categories=TASK_CATEGORIES,
        size_categories=[size_category(n_samples)],
        tags=TAGS,
    )
    configs = {
        name: {
            "data_files": [{"split": split, "path": data_files_pattern(shards)} for split, shards in splits.items()],
            **({"default": True} if name == DEFAULT_CONFIG else {}),
        }
        for name, splits in sorted(groups.items(), key=lambda kv: kv[0] != DEFAULT_CONFIG)
    }
    MetadataConfigs(configs).to_dataset_card_data(data)
    DatasetInfosDict(
        {name: DatasetInfo(features=schema.features(), config_name=name) for name in configs}
    ).to_dataset_card_data(data)
    return data


def _field_rows() -> list[tuple[str, str]]:
    return [(name, f.description or "") for name, f in schema.Sample.model_fields.items()]


def render(root: str | Path, repo_id: str = REPO_ID) -> str:
    """The card's text for the build in ``root``; also writes the world map PNG there."""
    root = location(root)
    manifest = read_manifest(root)
    stats: Stats = compute(root, manifest)
    n_samples = sum(stats.samples.values())
    world_map(stats, root / MAP_PATH)
    groups = shard_groups(manifest)
    split_rows = [
        {
            "config": config,
            "split": split,
            "samples": sum(s.samples for s in shards),
            "shards": len(shards),
            "bytes": sum(s.bytes for s in shards),
            "per_shard": _per_shard(shards),
            "readers": ", ".join(str(d) for d in range(1, min(len(shards), 64) + 1) if len(shards) % d == 0),
        }
        for config, splits in groups.items()
        for split, shards in sorted(splits.items(), key=lambda kv: kv[0] != "train")
    ]
    bins = stats.localizability_bins
    localizability_rows = [(f"{i / 10:.1f}–{(i + 1) / 10:.1f}", n) for i, n in enumerate(bins)] if any(bins) else []
    recipe = manifest.recipe
    release = recipe["input"].get("format") in ("globe-release", "globe-release-test")
    from builders.audit.audit import read_audit

    audit = read_audit(root)
    card = DatasetCard.from_template(
        card_data(manifest, n_samples),
        template_str=template("dataset_card.md"),
        repo_id=repo_id,
        version=manifest.version,
        sample="sample" in manifest.version or "offline sample" in recipe["input"].get("dataset", ""),
        map_path=MAP_PATH,
        extra_configs=[c for c in groups if c != DEFAULT_CONFIG],
        split_rows=split_rows,
        fields=_field_rows(),
        recipe=recipe,
        recipe_sha256=manifest.recipe_sha256,
        teachers=manifest.teachers or [],
        authored=sum(t.get("authored", 0) for t in manifest.teachers or []),
        curation=recipe.get("curation", {}),
        localizability_total=sum(manifest.totals.configs.get("localizability", {}).values()),
        prompt_version=manifest.prompt_version or "",
        totals=manifest.totals,
        rejected=sorted(Counter(manifest.totals.rejected_by_stage).items(), key=lambda kv: -kv[1]),
        n_countries=len([c for c in stats.countries if c]),
        n_cities=len(stats.cities),
        continents=stats.continent_rows(),
        top_countries=stats.top_countries(),
        localizability_rows=localizability_rows,
        multi_teacher=stats.multi_teacher,
        teachers_agree=stats.teachers_agree,
        teacher_accuracy=stats.teacher_accuracy(),
        thresholds=THRESHOLDS_KM,
        release=release,
        served=sorted(stats.image_sources.items(), key=lambda kv: -kv[1]) if release else [],
        rejected_reasons=_reason_rows(root) if release else [],
        release_answers=stats.release_answers,
        release_country=stats.release_country,
        release_city=stats.release_city,
        has_test="test" in {split for _, split in stats.samples},
        audit=audit,
        audit_rows=_audit_rows(audit),
        audit_compared=_audit_compared(audit),
    )
    return str(card)


def _audit_rows(audit: dict | None) -> list[tuple[str, dict]]:
    """The audit summary's places as card rows: pairs by kind, and the share of the second set paired."""
    if not audit:
        return []
    rows = []
    for where, row in audit["summary"]["places"].items():
        second = where.split("-", 1)[1]
        pairs = row["pairs"]
        share = row.get(f"{second}_share")
        rows.append(
            (
                where,
                {
                    "exact": pairs.get("exact", 0),
                    "near": pairs.get("near", 0),
                    "same_photo": pairs.get("same-photo", 0),
                    "same_author": pairs.get("same-author", 0),
                    "share": "—" if share is None else f"{row[f'{second}_with_a_pair']:,} ({100 * share:.2f} %)",
                },
            )
        )
    return rows


def _audit_compared(audit: dict | None) -> str:
    """What the audit read: each set's image count, and what it could not read."""
    if not audit:
        return ""
    summary = audit["summary"]
    unreadable = summary.get("unreadable", {})
    sets = [
        f"{n:,} {name} images" + (f" ({unreadable[name]:,} more unreadable, left out)" if unreadable.get(name) else "")
        for name, n in summary["images"].items()
    ]
    return ", ".join(sets[:-1]) + f" and {sets[-1]}" if len(sets) > 1 else sets[0] if sets else "no images"


def _per_shard(shards: list[Shard]) -> str:
    counts = [s.samples for s in shards]
    low, high = min(counts), max(counts)
    return f"{low:,}" if low == high else f"{low:,}–{high:,}"


def _reason_rows(root: Location) -> list[tuple[str, str, int]]:
    """(stage, reason class, rows) over the build's rejections, most frequent first."""
    import pyarrow.parquet as pq

    with (root / "rejections.parquet").open() as fh:
        table = pq.read_table(fh, columns=["stage", "reason"]).to_pylist()
    counts = Counter((r["stage"], reason_class(r["reason"])) for r in table)
    return [(stage, why, n) for (stage, why), n in counts.most_common()]


FRONT_ONLY = "<!-- front matter only: `mp16-reason card` writes the full card -->"


def write_front_matter(root: str | Path | Location, manifest: Manifest) -> None:
    """``README.md`` with the card's front matter alone (configs and features, from the manifest), written by
    the build itself: from its first moment a build folder is a dataset that ``load_dataset(folder)`` and the
    Hub's viewer read exactly as the manifest says, with no folder scan to mix its configs. A full card, once
    ``mp16-reason card`` has written one, is left alone."""
    path = location(root) / "README.md"
    if path.exists() and FRONT_ONLY not in path.read_text():
        return
    write_license(root)
    data = card_data(manifest, manifest.totals.written)
    body = f"# MP16-Reason\n\n{FRONT_ONLY}\nRun `mp16-reason card` on this folder for the dataset card.\n"
    path.write_text(f"---\n{data.to_yaml()}\n---\n\n{body}")


def write_license(root: str | Path | Location) -> None:
    (location(root) / LICENSE_PATH).write_text(template("dataset_license.md"))


def write_card(root: str | Path | Location, repo_id: str = REPO_ID) -> Path | Location:
    write_license(root)
    path = location(root) / "README.md"
    path.write_text(render(root, repo_id))
    return path.local or path
