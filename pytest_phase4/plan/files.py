"""Every file a run of the plan depends on, each with its sha256: what the evidence lists and the promotion gate
compares. No database, no pytest.

The plan itself, each migration, the [setup] files, the query files [[app_queries]] names, the files a `command`
check names (its program or script, in its cwd resolved as the run resolves it), and the Python the custom checks
run: every module under the plan's folder, the
conftest.py files from there up to the rootdir, and the local modules those import (found by their import lines,
not by importing them). Paths are relative to the plan's folder, as the plan names them (a symlink is hashed by
what it points to now, and the migration runner checks the bytes it applies against the same hash)."""

from __future__ import annotations

import ast
import fnmatch
import glob
import hashlib
import os
import shlex
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pytest_phase4.plan.model import Plan, expand_env

# pytest's default norecursedirs and what never holds a plan's Python
_NOT_SEARCHED = ("*.egg", ".*", "_darcs", "build", "CVS", "dist", "node_modules", "venv", "{arch}", "__pycache__",
                 "site-packages")


@dataclass(frozen=True)
class FileHash:
    path: str  # relative to the plan's folder, with "/" separators
    sha256: str
    role: str  # plan, migration, setup, sql, command, check, conftest, python

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "sha256": self.sha256, "role": self.role}


def sha256_of(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"


def plan_files(plan: Plan, rootdir: Path) -> list[FileHash]:
    """Every file the run depends on, in a stable order (by path), each once (its first role)."""
    folder = plan.folder
    found: dict[Path, str] = {}

    def add(path: Path, role: str) -> None:
        key = Path(os.path.abspath(path))  # not resolved: a symlink keeps the name the plan gives it
        found.setdefault(key, role)

    add(plan.path, "plan")
    for m in plan.migrations:
        add(m.path, "migration")
    for f in plan.setup_files:
        add(f, "setup")
    for spec in (s for checks in plan.stages.values() for s in checks):
        if spec.kind == "app_queries" and spec.params.get("file"):
            for p in sorted(glob.glob(str(folder / str(spec.params["file"])), recursive=True)):
                add(Path(p), "sql")
        elif spec.kind == "command":
            for path in command_files(str(spec.params["run"]), spec.params.get("cwd"), folder):
                add(path, "command")
    python = list(_python_under(folder)) + list(_conftests_above(folder, rootdir))
    for path in python:
        add(path, "conftest" if path.name == "conftest.py" else "check")
    for path in _local_imports(python, folder, rootdir):
        add(path, "python")
    return sorted((FileHash(_relative(p, folder), sha256_of(p), role) for p, role in found.items()),
                  key=lambda f: f.path)


def command_cwd(cwd: object, folder: Path) -> Path:
    """The working directory of a `command` check as the run resolves it: ${NAME} from the environment (an unset
    one stays as written: the check is skipped saying so, and no file of it is listed), ~ expanded, relative to
    the plan's folder."""
    if not cwd:
        return folder
    expanded, _, _ = expand_env(str(cwd))
    return folder / Path(expanded).expanduser()


def command_files(run: str, cwd: object, folder: Path) -> list[Path]:
    """The files a `command` check names (its program when it is a path, a script it is given: bash ./verify.sh),
    as the run will find them: what the evidence lists and what is checked again right before the command runs."""
    where = command_cwd(cwd, folder)
    try:
        argv = shlex.split(run)
    except ValueError:
        return []
    return [where / Path(arg).expanduser() for arg in argv
            if not arg.startswith("-") and (where / Path(arg).expanduser()).is_file()]


def _relative(path: Path, folder: Path) -> str:
    return Path(os.path.relpath(path, os.path.abspath(folder))).as_posix()


def _python_under(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*.py")):
        parts = path.relative_to(folder).parts
        if not any(fnmatch.fnmatch(part, pat) for part in parts[:-1] for pat in _NOT_SEARCHED):
            yield path


def _conftests_above(folder: Path, rootdir: Path) -> Iterator[Path]:
    root = Path(os.path.abspath(rootdir))
    here = Path(os.path.abspath(folder))
    for directory in here.parents:
        if directory != root and root not in directory.parents:
            break
        if (directory / "conftest.py").is_file():
            yield directory / "conftest.py"
        if directory == root:
            break


def _local_imports(sources: Iterable[Path], folder: Path, rootdir: Path) -> list[Path]:
    """Modules the sources import (transitively) that are files under the rootdir or the plan's folder: a helper
    module a check imports decides what it checks as much as the check's own file."""
    bases = list(dict.fromkeys(Path(os.path.abspath(p)) for p in (folder, rootdir)))
    seen: set[Path] = set()
    todo = [Path(os.path.abspath(p)) for p in sources]
    found: list[Path] = []
    while todo:
        source = todo.pop()
        if source in seen:
            continue
        seen.add(source)
        for module in _imported(source):
            for base in [source.parent, *bases]:
                hit = _module_file(base, module)
                if hit is not None and not any(fnmatch.fnmatch(part, pat) for part in hit.parts
                                               for pat in _NOT_SEARCHED):
                    if hit not in seen:
                        found.append(hit)
                        todo.append(hit)
                    break
    return found


def _imported(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_bytes(), str(path))
    except (SyntaxError, ValueError, OSError):
        return []
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            names += [f"{base}.{a.name}" if base else a.name for a in node.names]
            if base:
                names.append(base)
    return names


def _module_file(base: Path, module: str) -> Path | None:
    relative = Path(*module.split("."))
    for candidate in (base / relative.with_suffix(".py"), base / relative / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None
