"""The README leads to the task and its links hold: two commands first, the CI's test command is the README's,
every relative link and anchor in the README and docs/ points at something that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in page.read_text().splitlines():
        if line.startswith("#") and not line.startswith("#!"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def test_the_readme_starts_with_the_two_commands_and_ci_runs_its_test_command():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    first = re.search(r"```bash\n(.*?)```", text, re.S).group(1).splitlines()
    assert first[0].startswith("bash scripts/setup.sh && .venv/bin/mp16-reason build --sample")
    test_command = first[1].split("#")[0].strip()
    assert test_command == ".venv/bin/python -m pytest -q"
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_exists(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: link to {target} points at nothing"
        if anchor:
            assert anchor in anchors(dest), f"{page.name}: no heading for #{anchor} in {dest.name}"


def test_every_column_of_every_published_table_is_documented():
    """docs/dataset.md names each column of the parquet files a build publishes: a column added to a schema
    without a word in the docs fails here."""
    from builders.audit.audit import PAIR_SCHEMA
    from builders.plane.shards import HASHES_SCHEMA
    from builders.workfolder import REJECTION_SCHEMA

    text = (ROOT / "docs" / "dataset.md").read_text()
    for file, schema in (
        ("rejections.parquet", REJECTION_SCHEMA),
        ("hashes.parquet", HASHES_SCHEMA),
        ("audit-pairs.parquet", PAIR_SCHEMA),
    ):
        row = next(line for line in text.splitlines() if line.startswith("| ") and f"`{file}`" in line.split("|")[1])
        missing = [name for name in schema.names if f"`{name}`" not in row]
        assert not missing, f"{file}: {missing} not in docs/dataset.md"


def test_the_architecture_map_names_every_module():
    """docs/architecture.md's tree: each folder line names its modules; a module added without a word there
    fails here."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    tree = text.split("```\n", 2)[1]
    named, folder = set(), []
    for line in tree.splitlines():
        head = re.match(r"^( *)([\w]+)/ ", line)
        if head:  # a folder line: its depth is its indent (two spaces a level)
            depth = len(head.group(1)) // 2
            folder = [*folder[:depth], head.group(2)]
        named |= {"/".join([*folder, m]) for m in re.findall(r"\b([\w]+\.py)\b", line)}
    modules = {
        p.relative_to(ROOT).as_posix()
        for pkg in ("mp16_reason", "builders", "globe_train")
        for p in (ROOT / pkg).rglob("*.py")
        if p.name != "__init__.py" or p.parent.name in ("sources", "filters")
    }
    assert not modules - named, sorted(modules - named)
    assert not {m for m in named if not (ROOT / m).exists()}, "the map names modules that do not exist"
