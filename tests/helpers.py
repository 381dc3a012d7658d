"""What the plugin's own tests share besides fixtures: the example projects run with pytest as a user would,
reading their outcomes, a SCRAM password for a role, and the small schema of the facts and read-ahead tests.
Tests import these from here (`from helpers import ...`); tests/conftest.py holds only the fixtures."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pytest_phase4.db.embedded import EmbeddedPostgres
from pytest_phase4.kinds.base import Column, Relation
from pytest_phase4.plan.model import CheckSpec

EXAMPLES = Path(__file__).parent / "examples"
REPO = Path(__file__).parent.parent


class Project:
    """A copy of one example project, run with pytest as a user would."""

    def __init__(self, pytester: pytest.Pytester, dsn: str) -> None:
        self.pytester, self.dsn, self.path = pytester, dsn, pytester.path

    def run(self, *args: str, dsn: bool = True, seed: bool = False, cache: bool = False) -> pytest.RunResult:
        """pytest --phase4 in the project, without the cache (--lf, --ff, --sw need cache=True) and without
        pytest-randomly unless the arguments name it (-p randomly)."""
        argv = ["--phase4", "-rs", *args]
        if not cache:
            argv[1:1] = ["-p", "no:cacheprovider"]
        if not any("randomly" in a for a in args):
            argv[1:1] = ["-p", "no:randomly"]
        if dsn:
            argv.append(f"--dsn={self.dsn}")
        if seed:
            argv.append("--phase4-seed")
        return self.pytester.runpytest(*argv)

    def query(self, text: str | sql.Composed, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute(text.encode() if isinstance(text, str) else text, params).fetchall()

    def execute(self, text: str | sql.Composed) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(text.encode() if isinstance(text, str) else text)

    def columns(self, table: str) -> list[str]:
        return [r[0] for r in self.query(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s ORDER BY 1", (table,))]

    def report(self) -> str:
        reports = sorted((self.path / "reports").glob("phase4-*.html"))
        assert reports, "no HTML report was written"
        return reports[-1].read_text()


def append(p: Project, path: str, text: str) -> None:
    """Add SQL at the end of one of the project's files (its setup, a migration)."""
    file = p.path / path
    file.write_text(file.read_text() + text)


def add_migration(p: Project, file: str, entry: str, text: str) -> None:
    """A migration file of the project's plan, and its [[migration]] entry before the plan's [[post]] checks."""
    (p.path / "checks/migrations" / file).write_text(text)
    plan = p.path / "checks/phase4.toml"
    plan.write_text(plan.read_text().replace("[[post]]", entry + "\n[[post]]", 1))


def seeded(p: Project) -> Project:
    """The project's database seeded by a preflight run that passes."""
    assert p.run("-m", "preflight", seed=True).ret == 0
    return p


def ledger_files(p: Project) -> list[str]:
    if p.query("SELECT to_regclass('pytest_phase4.ledger')") == [(None,)]:
        return []
    return [r[0] for r in p.query("SELECT file FROM pytest_phase4.ledger ORDER BY file")]


def migrated(p: Project, *, seed: bool = True, migrations: int = 3) -> Project:
    """The plan run with --phase4-confirm-destructive (seeding first unless seed=False): every migration applied."""
    result = p.run("--phase4-confirm-destructive", seed=seed)
    assert len(ledger_files(p)) == migrations, result.stdout.str()[-3000:]
    return p


def outcomes_of(result: pytest.RunResult) -> dict[str, str]:
    """node id -> outcome, from the verbose lines of a run made with -v."""
    found = {}
    for line in result.outlines:
        m = re.match(r"^(\S+::.+?) (PASSED|FAILED|SKIPPED|ERROR)\b", line)
        if m:
            found[m.group(1)] = m.group(2)
    return found


def require_password(server: EmbeddedPostgres, role: str, password: str) -> None:
    """Make ``role`` log in with a SCRAM password while every other role stays on trust."""
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("SET password_encryption = 'scram-sha-256'")
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
        hba_file = str(conn.execute("SHOW hba_file").fetchone()[0])  # type: ignore[index]
        rules = f"local all {role} scram-sha-256\nhost all {role} all scram-sha-256\nlocal all all trust\n"
        rules += "host all all all trust\n"
        Path(hba_file).write_text(rules)
        conn.execute("SELECT pg_reload_conf()")
    # The postmaster rereads pg_hba.conf asynchronously after the signal.
    deadline = time.monotonic() + 10
    wrong = make_conninfo(server.dsn, user=role, password="not-" + password)
    while time.monotonic() < deadline:
        try:
            psycopg.connect(wrong).close()
        except psycopg.OperationalError:
            return
        time.sleep(0.05)
    raise AssertionError("pg_hba.conf reload did not take effect")


# A small schema for the facts and read-ahead tests (tests/test_facts.py, tests/test_readahead.py): child has 100
# rows, parent_id NULL in 10, 99 (no such parent) in 13, else 1..9; parent has RLS with a permissive policy.
FACTS_SCHEMA = """
CREATE TABLE parent (id int PRIMARY KEY, code text UNIQUE);
CREATE TABLE child (id int PRIMARY KEY, parent_id int, code text);
CREATE TABLE other (id int PRIMARY KEY, parent_id int);
INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 10) g;
INSERT INTO child SELECT g, CASE WHEN g % 10 = 0 THEN NULL WHEN g % 7 = 0 THEN 99 ELSE g % 10 END, 'p1'
  FROM generate_series(1, 100) g;
INSERT INTO other SELECT g, 1 FROM generate_series(1, 5) g;
CREATE INDEX idx_child_parent ON child (parent_id);
CREATE VIEW child_view AS SELECT c.id FROM child c JOIN parent p ON p.id = c.parent_id;
ALTER TABLE parent ENABLE ROW LEVEL SECURITY;
CREATE POLICY parent_read ON parent FOR SELECT USING (true);
CREATE VIEW slow AS SELECT 1 AS x FROM pg_sleep(30);
"""
TO_PARENT = Relation(Column("child", "parent_id"), Column("parent", "id"))
BAD_TYPES = Relation(Column("child", "parent_id"), Column("parent", "code"))  # int = text: an SQL error
OTHER = Relation(Column("other", "parent_id"), Column("parent", "id"))


def spec(kind: str, element: Any) -> CheckSpec:
    return CheckSpec(kind, f"{kind}[{element}]", {}, element, "post", "post", "plan.toml:1", 1)


def pass_steps_before(run: Any, migration: Any) -> None:
    """For tests that drive Phase4Run.migrate without pytest: record every earlier step as passed in this run."""
    from pytest_phase4.steps import PASSED

    for group in range(run.group_of(migration.file)):
        for key in run.book.required[group]:
            run.book.record(key, PASSED)
