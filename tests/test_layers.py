"""The packages stack: ``mp16_reason`` at the bottom, ``builders`` and ``globe_train`` on it, neither importing
the other, and no module of a package importing one that imports it back (lazy imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mp16_reason", "builders", "globe_train")


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it, as dotted absolute names."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module.removesuffix(".__init__")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found |= {f"{base}.{alias.name}" for alias in node.names} | {base}
    return found


def graph() -> dict[str, set[str]]:
    """module -> the project modules it imports."""
    files = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
        for pkg in PACKAGES
        for p in (ROOT / pkg).rglob("*.py")
    }
    return {m: {i for i in imports(p) if i in files and i != m} for m, p in files.items()}


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("mp16_reason", ("builders", "globe_train")),
        ("builders", ("globe_train",)),
        ("globe_train", ("builders",)),
    ],
)
def test_packages_stack(package, forbidden):
    bad = {
        m: sorted(i for i in deps if i.split(".")[0] in forbidden)
        for m, deps in graph().items()
        if m.split(".")[0] == package
    }
    assert {m: d for m, d in bad.items() if d} == {}


def test_no_module_imports_one_that_imports_it_back():
    g = graph()
    cycles = set()

    def visit(node: str, path: list[str]) -> None:
        for nxt in g[node]:
            if nxt in path:
                cycles.add(tuple(path[path.index(nxt) :]))
            elif len(path) < 12:
                visit(nxt, [*path, nxt])

    for start in g:
        visit(start, [start])
    assert not {min(c[i:] + c[:i] for i in range(len(c))) for c in cycles}
