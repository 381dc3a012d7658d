"""The custom checks of a plan's folder as their source defines them (no pytest here).

pytest collects what its ini says (python_files, python_functions, python_classes, norecursedirs), and an
override of those (`-o`, PYTEST_ADDOPTS, a project ini) changes what it sees without a word. A run must know
what it did not see, so this reads the files with a rule of its own: pytest's default names plus the ini's
patterns, never fewer. The pytest layer requires each file, and each test it defines, to be collected; for one
that is not, this says the earliest step its checks can belong to, so that only the migrations after that step
are refused.
"""

from __future__ import annotations

import ast
import fnmatch
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_FILES = ("test_*.py", "*_test.py")
DEFAULT_FUNCTIONS = ("test",)
DEFAULT_CLASSES = ("Test",)
# pytest's default norecursedirs (plus __pycache__): folders no plan keeps its checks in
NOT_SEARCHED = ("*.egg", ".*", "_darcs", "build", "CVS", "dist", "node_modules", "venv", "{arch}", "__pycache__")
DEFAULTS = {"python_files": DEFAULT_FILES, "python_functions": DEFAULT_FUNCTIONS, "python_classes": DEFAULT_CLASSES}
MARKER = "phase4_after"


def files_with_tests(folder: Path, ini_patterns: Iterable[str]) -> Iterator[Path]:
    """Files under `folder` that hold tests by their name: pytest's default patterns and the ini's."""
    patterns = (*DEFAULT_FILES, *ini_patterns)
    for path in sorted(folder.rglob("*.py")):
        parts = path.relative_to(folder).parts
        if any(fnmatch.fnmatch(part, pat) for part in parts[:-1] for pat in NOT_SEARCHED):
            continue
        if matches_file(path.name, patterns):
            yield path


def matches_file(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatch(name, pat) for pat in patterns)


def matches(name: str, patterns: Iterable[str]) -> bool:
    """pytest's rule for python_functions and python_classes: a prefix, or a glob when it has one."""
    return any(fnmatch.fnmatch(name, p) if any(c in p for c in "*?[") else name.startswith(p) for p in patterns)


@dataclass(frozen=True)
class Module:
    """What a test module defines: its tests by top-level name, each with the arguments of its test functions
    (one set per function: a class holds several), and every phase4_after step it names (None: one that cannot
    be read from the source, e.g. a variable)."""

    tests: dict[str, list[frozenset[str]]]
    marked: tuple[str | None, ...]
    parsed: bool = True  # false: the source could not be read as Python (pytest reports that when it collects it)


def read_module(path: Path, functions: Iterable[str], classes: Iterable[str]) -> Module:
    """The module's top-level test functions, and its test classes that hold test methods, by pytest's default
    names and the given ini patterns. Empty when the file does not parse (pytest reports that itself)."""
    function_patterns = (*DEFAULT_FUNCTIONS, *functions)
    class_patterns = (*DEFAULT_CLASSES, *classes)
    try:
        tree = ast.parse(path.read_bytes(), str(path))
    except (SyntaxError, ValueError, OSError):
        return Module({}, (None,), parsed=False)  # what it holds cannot be known: as if marked unreadably
    tests: dict[str, list[frozenset[str]]] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if matches(node.name, function_patterns) and not _fixture(node):
                tests[node.name] = [_arguments(node)]
        elif isinstance(node, ast.ClassDef) and matches(node.name, class_patterns):
            methods = [_arguments(n) for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
                       and matches(n.name, function_patterns) and not _fixture(n)]
            if methods:
                tests[node.name] = methods
    return Module(tests, _marked(tree))


def earliest(module: Module, names: Iterable[str], fixtures: Mapping[str, int], unmarked: int,
             group_of: Callable[[str], int | None], marker_elsewhere: bool) -> int:
    """The earliest step (group) the named tests can belong to: their place is the latest migration they ask
    for, or a later step their phase4_after marker names; one that asks for no migration directly may ask
    through a fixture, so `unmarked` (the first migration's step) bounds it. 0 when a marker cannot be read, or
    when a conftest on the way may add one (`marker_elsewhere`)."""
    if marker_elsewhere:
        return 0
    bound = min((max((fixtures[a] for a in arguments if a in fixtures), default=unmarked)
                 for name in names for arguments in module.tests.get(name, ())), default=unmarked)
    for step in module.marked:
        group = group_of(step) if step is not None else None
        if group is None:
            return 0
        bound = min(bound, group)
    return bound


def marker_in_conftests(folder: Path, root: Path) -> bool:
    """Whether a conftest.py from `folder` up to `root` names phase4_after (it could mark any test)."""
    for directory in (folder, *folder.parents):
        conftest = directory / "conftest.py"
        try:
            if conftest.is_file() and MARKER in conftest.read_text(errors="replace"):
                return True
        except OSError:
            return True
        if directory == root or root not in directory.parents:
            break
    return False


def _arguments(node: ast.FunctionDef | ast.AsyncFunctionDef) -> frozenset[str]:
    a = node.args
    return frozenset(x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs))


def _marked(tree: ast.Module) -> tuple[str | None, ...]:
    """Each use of phase4_after: its step when it is called with a literal string, else None."""
    called: dict[int, str | None] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _is_marker(node.func):
            first = node.args[0] if node.args else None
            called[id(node.func)] = first.value if isinstance(first, ast.Constant) and isinstance(
                first.value, str) else None
    found: list[str | None] = []
    for node in ast.walk(tree):
        if _is_marker(node):
            found.append(called.get(id(node)))  # not called (an alias, getattr): None
        elif isinstance(node, ast.Constant) and node.value == MARKER:
            found.append(None)
    return tuple(found)


def _is_marker(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == MARKER) or (
        isinstance(node, ast.Name) and node.id == MARKER)


def _fixture(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Decorated with pytest.fixture (or fixture, with or without arguments): not a test."""
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        name = target.attr if isinstance(target, ast.Attribute) else target.id if isinstance(target, ast.Name) else ""
        if name == "fixture":
            return True
    return False
