"""The packages stack: ``mp16_reason`` at the bottom, ``builders`` and ``globe_train`` on it, neither importing
the other, and no module of a package importing one that imports it back (lazy imports included; imports for
types alone make no cycle)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mp16_reason", "builders", "globe_train")


def imports(path: Path, tree: ast.Module | None = None) -> set[str]:
    """Every module ``path`` (or its parsed ``tree``) imports, anywhere in it, as dotted absolute names."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module.removesuffix(".__init__")
    found = set()
    for node in ast.walk(tree or ast.parse(path.read_text())):
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


def graph(runtime: bool = False) -> dict[str, set[str]]:
    """module -> the project modules it imports (``runtime``: those it imports when it runs, not for types)."""
    files = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
        for pkg in PACKAGES
        for p in (ROOT / pkg).rglob("*.py")
    }
    found = runtime_imports if runtime else imports
    return {m: {i for i in found(p) if i in files and i != m} for m, p in files.items()}


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
    """No cycle among the imports that run; a module may name another's type (``if TYPE_CHECKING:``) that
    imports it back when called, as ``plane/tasks.py`` runs ``plane/units.py``'s work."""
    g = graph(runtime=True)
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


# builders/, bottom to top: what every layer may lean on, the rooms, the recipe they make up, the rooms that take
# the recipe, and the orchestration (the build, the teacher stage's driving, preflight, the CLI). A module imports
# only its own layer or those below; TYPE_CHECKING imports (types only) are left out.
BUILDERS_LAYERS = (
    {"builders.spec", "builders.stops", "builders.threads", "builders.workfolder"},
    {"builders.sources", "builders.audit", "builders.teachers", "builders.curation", "builders.publish"},
    {"builders.recipe"},
    {"builders.plane", "builders.sample"},
    {"builders.build", "builders.teacher_stage", "builders.preflight", "builders.cli", "builders.__init__"},
)


def runtime_imports(path: Path) -> set[str]:
    """What ``path`` imports when it runs: ``imports`` without its ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = [ast.Pass()]
    return imports(path, tree)


def layer_of(module: str) -> int:
    parts = module.split(".")
    room = ".".join(parts[:2])
    for i, layer in enumerate(BUILDERS_LAYERS):
        if room in layer or module in layer:
            return i
    raise AssertionError(f"{module}: in no layer of BUILDERS_LAYERS (add it where it belongs)")


def test_builders_rooms_import_only_downward_and_no_two_rooms_import_each_other():
    upward, rooms = [], {}
    for path in (ROOT / "builders").rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for target in runtime_imports(path):
            if not target.startswith("builders.") or target == "builders":
                continue
            if layer_of(target) > layer_of(module):
                upward.append(f"{module} -> {target}")
            mine, theirs = ".".join(module.split(".")[:2]), ".".join(target.split(".")[:2])
            if mine != theirs:
                rooms.setdefault(mine, set()).add(theirs)
    assert not upward, upward
    both_ways = sorted({tuple(sorted((a, b))) for a, bs in rooms.items() for b in bs if a in rooms.get(b, set())})
    assert not both_ways, both_ways


def test_the_build_process_leaves_the_image_stack_to_its_workers():
    """The build's own process imports neither Pillow nor the gazetteer (scipy, pandas): its workers' fork
    server preloads them, and the build starts its first units once both are ready, not after both in turn."""
    code = (
        "import sys, builders.cli, builders.build\n"
        "print(sorted(m for m in ('PIL.Image', 'mp16_reason.gazetteer', 'scipy.spatial', 'builders.plane.units')"
        " if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_the_cards_preload_imports_all_its_front_matter_needs(sample_build):
    """A build imports the card's modules (``card.preload``) while its workers run; the front matter it writes
    at its end must then import nothing more of ``datasets``."""
    code = (
        "import sys\n"
        "from builders.publish.card import card_data, preload\n"
        "from mp16_reason.manifest import read_manifest\n"
        "preload()\n"
        "before = set(sys.modules)\n"
        f"manifest = read_manifest({str(sample_build)!r})\n"
        "card_data(manifest, manifest.totals.written).to_yaml()\n"
        "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] == 'datasets'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]", done.stdout
