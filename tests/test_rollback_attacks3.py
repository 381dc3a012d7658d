"""Third round on the rollback (issue 10 follow-ups): what the revert cannot undo is found by its assess step,
before anything changes, and refused with one line that says what and what to do; a backup marker copied from
another database is not this database's. Each test fails while its hole is open. Plain SQL checks the outcome."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from test_rollback import schema_of
from test_rollback_attacks import M1, SETUP, out

from helpers import Project, append, migrated, outcomes_of, seeded
from pytest_phase4.db.embedded import EmbeddedPostgres


def _assess(result_lines: dict[str, str]) -> str:
    return next(v for k, v in result_lines.items() if k.endswith("::assess"))


def test_an_enum_value_the_application_uses_is_refused_by_assess_before_anything_changes(
        project: Callable[..., Project]) -> None:
    """The plan adds a value to an enum, the application writes it into 3 rows; PostgreSQL cannot drop an enum
    value. The revert found that only in alter_back, mid-rollback (after the pre-rollback dump), with "labels
    changed"; assess must refuse, naming the type, the value and where it is used."""
    p = project("mini", "safe")
    append(p, SETUP, "CREATE TYPE mood AS ENUM ('happy', 'sad');\nALTER TABLE tickets ADD COLUMN mood mood;\n")
    append(p, M1, "ALTER TYPE mood ADD VALUE 'ecstatic';\n")
    migrated(p)
    p.execute("UPDATE tickets SET mood = 'ecstatic' WHERE id <= 3")
    before = schema_of(p)
    result = p.run("-v", "--phase4-rollback")
    assert result.ret != 0
    assert _assess(outcomes_of(result)) == "FAILED", out(result)
    result.stdout.fnmatch_lines([
        "*type public.mood: value 'ecstatic' (added by 20250101000001_create_views.sql) is used by 3 row(s) of "
        "public.tickets.mood; PostgreSQL cannot drop an enum value*--phase4-rollback=restore*"])
    assert not list(p.path.glob("_backups/*/*/before-rollback-*")), "assess refuses before the pre-rollback dump"
    assert schema_of(p) == before
    assert p.query("SELECT count(*) FROM tickets WHERE mood = 'ecstatic'") == [(3,)]


def test_a_legacy_inheritance_child_of_a_table_the_plan_changed_is_refused_by_assess(
        project: Callable[..., Project]) -> None:
    """A table that INHERITS from one the plan changes (table partitioning before PostgreSQL 10, still in old
    schemas): the revert ended with a raw SQL error mid-rollback. Assess must refuse, naming the child."""
    p = project("mini", "safe")
    append(p, SETUP, "CREATE TABLE sales_archive (archived_at timestamptz, PRIMARY KEY (id)) INHERITS (sales);\n"
                     "INSERT INTO sales_archive VALUES (1001, 1, 'customer 2', 5, now());\n")
    p = seeded(p)
    before = schema_of(p)
    migrated(p, seed=False)
    after = schema_of(p)
    result = p.run("-v", "--phase4-rollback")
    if result.ret == 0:  # handled: the child is back as it was, with the parent
        assert schema_of(p) == before, out(result)
        return
    assert _assess(outcomes_of(result)) == "FAILED", out(result)
    result.stdout.fnmatch_lines(["*public.sales_archive inherits from public.sales*"])
    assert "SQLSTATE" not in out(result)
    assert schema_of(p) == after


@pytest.fixture
def twin_cluster() -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres("local").start()
    yield server
    server.stop()


def test_a_backup_marker_restored_from_another_databases_dump_does_not_prove_the_backup_is_of_this_one(
        project: Callable[..., Project], twin_cluster: EmbeddedPostgres) -> None:
    """Staging refreshed from production's dump (pg_dump, pg_restore): same name, same oid, and production's backup
    marker row in it. Checked by a role that may not read pg_control_system(), the rollback took production's
    backup as staging's (the marker's id is there) where a baseline is refused: the marker row must be the one
    the backup wrote (its transaction), not a copy."""
    prod = migrated(project("mini", "safe"))
    name, oid = prod.query("SELECT current_database()::text, oid::int FROM pg_database"
                           " WHERE datname = current_database()")[0]
    with psycopg.connect(twin_cluster.dsn, autocommit=True) as conn:  # PostgreSQL 15+: the OID option
        conn.execute(sql.SQL("CREATE DATABASE {} OID {}").format(sql.Identifier(name), sql.Literal(oid)))
        conn.execute("CREATE ROLE staging_reader LOGIN; GRANT pg_read_all_data TO staging_reader")
    staging_dsn = make_conninfo(twin_cluster.dsn, dbname=name)
    dump = subprocess.run([str(shutil.which("pg_dump")), "-Fc", "-d", prod.dsn], capture_output=True, check=True)
    subprocess.run([str(shutil.which("pg_restore")), "--no-owner", "-d", staging_dsn], input=dump.stdout,
                   capture_output=True, check=True)
    with psycopg.connect(staging_dsn, autocommit=True) as conn:
        conn.execute("REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC")
        assert conn.execute("SELECT count(*) FROM pytest_phase4.backups").fetchone() == (1,)  # production's marker
    staging = Project(prod.pytester, make_conninfo(staging_dsn, user="staging_reader"))
    result = staging.run("-v", "--phase4-rollback")
    assert outcomes_of(result)["checks/phase4.toml::rollback::locate_backup"] == "FAILED", out(result)
    result.stdout.fnmatch_lines([f"*a backup of a database named {name} (oid {oid}), not proven to be this one: the "
                                 "cluster's system identifier was not readable*and this database does not hold its "
                                 "backup marker * as written then (a copy restored from another database's dump)*"])
