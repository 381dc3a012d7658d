"""Secrets: a run against a SCRAM-protected role writes its password into no file and no terminal line."""

from __future__ import annotations

import itertools
import shutil
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from helpers import EXAMPLES, Project, require_password
from pytest_phase4.db.embedded import EmbeddedPostgres, start_embedded

PASSWORD = "Tr0ub4dor&3-horse?"
ROLE = "dba"


@pytest.fixture(scope="module")
def scram_server() -> Iterator[EmbeddedPostgres]:
    server = start_embedded()
    if server.kind != "local":
        server.stop()
        pytest.skip("pg_hba.conf is written from here, so this needs a local cluster")
    require_password(server, ROLE, PASSWORD)
    yield server
    server.stop()


_databases = itertools.count(1)


@pytest.fixture
def url(pytester: pytest.Pytester, scram_server: EmbeddedPostgres) -> Callable[[str | None], str]:
    """A fresh database owned by the password role, the mini example copied, and its URL with a password."""
    name = f"crm{next(_databases)}"
    with psycopg.connect(scram_server.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(ROLE)))
    shutil.copytree(EXAMPLES / "mini", pytester.path, dirs_exist_ok=True)
    params = conninfo_to_dict(scram_server.dsn)

    def make(password: str | None) -> str:
        auth = f"{ROLE}:{urllib.parse.quote(password, safe='')}" if password else ROLE
        return f"postgresql://{auth}@/{name}?host={params['host']}&port={params['port']}"

    return make


def leaks(project: Path, *outputs: str) -> list[str]:
    """Every place where the password, raw or percent-encoded, appears."""
    forms = {PASSWORD, urllib.parse.quote(PASSWORD, safe=""), urllib.parse.quote_plus(PASSWORD)}
    found = [f"output #{i}" for i, text in enumerate(outputs) if any(f in text for f in forms)]
    for path in project.rglob("*"):
        if path.is_file() and any(f.encode() in path.read_bytes() for f in forms):
            found.append(str(path.relative_to(project)))
    return found


def test_full_run_with_a_password_dsn_leaks_it_nowhere(pytester: pytest.Pytester,
                                                       url: Callable[[str | None], str]) -> None:
    p = Project(pytester, url(PASSWORD))
    result = p.run("-v", "-rA", "--phase4-confirm-destructive", "--junitxml=junit.xml", seed=True)
    result.assert_outcomes(passed=25)
    assert "password=***" in result.stdout.str()
    assert (p.path / "junit.xml").exists()
    assert leaks(p.path, result.stdout.str(), result.stderr.str()) == []


def test_wrong_password_fails_in_one_message_without_it(pytester: pytest.Pytester,
                                                        url: Callable[[str | None], str]) -> None:
    p = Project(pytester, url(PASSWORD + "x"))
    result = p.run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(['ERROR: cannot connect to PostgreSQL at *: *password authentication failed for '
                                 'user "dba"*', "HINT: check the user and password*"])
    assert leaks(p.path, result.stdout.str(), result.stderr.str()) == []


def test_password_from_pgpassword_is_kept_out_too(pytester: pytest.Pytester, url: Callable[[str | None], str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    p = Project(pytester, url(None))
    result = p.run("-m", "preflight", "--junitxml=junit.xml", seed=True)
    result.assert_outcomes(passed=8, deselected=17)
    assert leaks(p.path, result.stdout.str(), result.stderr.str()) == []
