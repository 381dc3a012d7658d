"""Third round on the rollback (issue 10 follow-ups): what the revert cannot undo is found by its assess step,
before anything changes, and refused with one line that says what and what to do; a backup marker copied from
another database is not this database's. Each test fails while its hole is open. Plain SQL checks the outcome."""

from __future__ import annotations

from collections.abc import Callable

from test_rollback import schema_of
from test_rollback_attacks import M1, SETUP, out

from helpers import Project, append, migrated, outcomes_of, seeded


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
