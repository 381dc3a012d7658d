"""Fixtures for the plugin's own tests: one real throwaway PostgreSQL per session, a fresh database per test,
and pytester runs of the example projects in tests/examples/ (one folder per scenario). What tests share besides
fixtures is in tests/helpers.py."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from fleets import Fleet

from helpers import EXAMPLES, FACTS_SCHEMA, REPO, Project
from pytest_phase4.db.embedded import EmbeddedPostgres, start_embedded

collect_ignore = ["examples"]  # example projects are run by pytester, never collected by this suite
_names = itertools.count(1)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres]:
    server = start_embedded()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pgss_server() -> Iterator[EmbeddedPostgres]:
    """A second throwaway cluster, with pg_stat_statements loaded (shared_preload_libraries), started only for the
    blast-radius tests that read it."""
    server = EmbeddedPostgres("local", settings={"shared_preload_libraries": "pg_stat_statements"}).start()
    yield server
    server.stop()


@pytest.fixture
def scratch_dsn(pg_server: EmbeddedPostgres) -> Iterator[str]:
    """An empty database of its own for each test."""
    name = f"scratch_{next(_names)}"
    dsn = pg_server.create_database(name)
    yield dsn
    pg_server.drop_database(name)


@pytest.fixture
def project(pytester: pytest.Pytester, scratch_dsn: str) -> Callable[[str], Project]:
    """project("mini", ...) copies tests/examples/mini (then the others, overlaid) into a temp dir, with an
    empty scratch database as target; "crm" is the bundled example in checks/, "supabase" the Supabase-shaped
    application in examples/supabase/ (both copied to checks/)."""

    def make(*names: str) -> Project:
        for name in names:  # later folders overlay earlier ones
            source = {"crm": REPO / "checks", "supabase": REPO / "examples" / "supabase"}.get(name, EXAMPLES / name)
            target = pytester.path / "checks" if name in ("crm", "supabase") else pytester.path
            shutil.copytree(source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
            if name == "crm":  # the fixtures of its custom checks
                shutil.copy(REPO / "conftest.py", pytester.path / "conftest.py")
        if not (pytester.path / "pyproject.toml").exists():
            (pytester.path / "pyproject.toml").write_text("[tool.pytest.ini_options]\ninitial_sort = \"original\"\n")
        return Project(pytester, scratch_dsn)

    return make


@pytest.fixture
def conn(scratch_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to a scratch database holding FACTS_SCHEMA."""
    with psycopg.connect(scratch_dsn, autocommit=True) as c:
        c.execute(FACTS_SCHEMA)
        yield c


@pytest.fixture
def fleet(pytester: pytest.Pytester, pg_server: EmbeddedPostgres,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int], Fleet]]:
    made: list[Fleet] = []

    def make(count: int) -> Fleet:
        made.append(Fleet(pytester, pg_server, monkeypatch, count))
        return made[-1]

    yield make
    for f in made:
        f.drop()
