"""The layout is the architecture: read from the source with ast (nothing imported), file by file, the imports of
pytest_phase4 form no cycle, only pytest_phase4/plugin/ imports pytest, and README's layout table names every
module where it is."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from helpers import REPO

PACKAGE = REPO / "pytest_phase4"
# The modules the run imports that name Phase4Run in annotations only (`if TYPE_CHECKING:`): the kinds that take the
# whole run (the backup stage and the comparisons, the row-level security and blast radius kinds), the baselines,
# the personas and the blast radius. A type-only import is no import at run time; this list may only shrink.
TYPED_AGAINST_THE_RUN = {"pytest_phase4.blast.checks", "pytest_phase4.blast.radius", "pytest_phase4.rls.checks",
                         "pytest_phase4.rls.personas", "pytest_phase4.safety.baselines", "pytest_phase4.safety.checks"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _type_only(tree: ast.Module) -> set[int]:
    """The ids of the nodes under `if TYPE_CHECKING:`."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            found.update(id(n) for n in ast.walk(node))
    return found


def imports(path: Path) -> Iterator[tuple[str, bool]]:
    """(module imported, whether only for type checking), for every import anywhere in the file."""
    tree = ast.parse(path.read_text())
    typing_only = _type_only(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, id(node) in typing_only
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: a relative import"
            for alias in node.names:  # `from pytest_phase4.kinds import relations` imports a module
                submodule = f"{node.module}.{alias.name}"
                yield (submodule if submodule in MODULES else node.module), id(node) in typing_only


def graph(with_type_only: bool) -> dict[str, set[str]]:
    return {name: {m for m, typing_only in imports(path) if m in MODULES and m != name
                   and (with_type_only or not typing_only)} for name, path in MODULES.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append(sorted([v, *component]))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in edges[todo.pop()] - seen:
            seen.add(w)
            todo.append(w)
    return seen


def test_no_module_imports_one_that_imports_it_back() -> None:
    assert len(MODULES) > 70
    assert cycles(graph(with_type_only=False)) == []
    # With annotations too, only type-only references to the run close a loop: those of the modules the run
    # imports, listed above (the list may only shrink).
    typed = graph(with_type_only=True)
    run = "pytest_phase4.run"
    closing = {name for name in reachable(typed, run) if run in typed[name]}
    assert closing == TYPED_AGAINST_THE_RUN
    for name in closing:
        typed[name].discard(run)
    assert cycles(typed) == []


def test_only_the_plugin_folder_imports_pytest() -> None:
    plugin = PACKAGE / "plugin"
    offenders = {name for name, path in MODULES.items() if plugin not in path.parents
                 and any(m.split(".")[0] in ("pytest", "_pytest") for m, _ in imports(path))}
    assert offenders == set()
    assert not any(m.split(".")[0] == "_pytest" for path in MODULES.values() for m, _ in imports(path))


def test_the_readme_layout_table_matches_the_tree() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("## Layout"):readme.index("## Development")]
    rows = re.findall(r"^\| `(pytest_phase4/[^`]*)`([^|]*)\|", table, re.M)
    named: set[str] = set()
    for folder, rest in rows:
        files = re.findall(r"`([\w.]+\.py)`", rest)
        named |= {f"{folder}{f}" for f in files} if folder.endswith("/") else {folder}
    tree = {str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py")
            if p.stem != "__init__" or p.parent.name == "plugin"}  # the other __init__.py are empty
    assert sorted(tree - named) == [], "modules the README's layout table does not name"
    assert sorted(named - tree) == [], "the README's layout table names modules that do not exist"
