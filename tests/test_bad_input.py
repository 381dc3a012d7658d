"""The bad-input catalogue: each mistake is one clear message, pytest's exit status, no traceback, and nothing
changed in the database."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from helpers import Project, outcomes_of


def public_tables(p: Project) -> list[str]:
    return [r[0] for r in p.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]


def test_hostile_identifiers_are_quoted_and_harmless(project: Callable[..., Project]) -> None:
    p = project("hostile")
    result = p.run("-v", seed=True)
    outcomes = outcomes_of(result)
    pre = "checks/phase4.toml::preflight"
    assert outcomes[f"{pre}::table_exists[customers\"; DROP TABLE customers; --]"] == "FAILED"
    assert outcomes[f"{pre}::table_exists[it's]"] == "FAILED"
    assert outcomes[f"{pre}::table_exists[ünïcødé]"] == "FAILED"
    assert outcomes[f"{pre}::table_exists[odd \"name\" ü]"] == "PASSED"
    assert outcomes[f"{pre}::tables_have_rows[odd \"name\" ü]"] == "PASSED"
    assert outcomes[f"{pre}::no_orphans[odd \"name\" ü.customer id->customers.id]"] == "PASSED"
    result.stdout.fnmatch_lines([
        "expected: table public.customers\"; DROP TABLE customers; -- to exist",
        "found:    no such relation",
        "where:    public.customers\"; DROP TABLE customers; --",
        "hint:     check the name in the plan, or that an earlier migration creates customers\"; DROP TABLE "
        "customers; --",
        "plan:     checks/phase4.toml:8 *preflight* #1 check=table_exists",
    ])
    assert result.ret == 1
    assert public_tables(p) == ["customers", 'odd "name" ü']
    assert p.query("SELECT count(*) FROM customers") == [(2,)]
    assert p.query("SELECT to_regclass('pytest_phase4.ledger')") == [(None,)]  # halted before migrating


def test_plan_naming_a_missing_table_is_a_failed_check_with_a_hint(project: Callable[..., Project]) -> None:
    p = project("mini")
    plan = p.path / "checks/phase4.toml"
    plan.write_text(plan.read_text().replace('tables = ["customers", "sales"]',
                                             'tables = ["customers", "sale", "recent_sales"]'))
    p.execute("CREATE VIEW recent_sales AS SELECT 1 AS id")  # a view, where the plan expects a table
    result = p.run(seed=True)
    result.stdout.fnmatch_lines(["expected: table public.sale to exist", "found:    no such relation",
                                 "hint:     check the name in the plan, or that an earlier migration creates sale"])
    result.stdout.fnmatch_lines(["expected: table public.recent_sales to exist", "found:    a view, not a table"])
    assert result.ret == 1
    assert "Traceback" not in result.stdout.str()
    assert "customer_name" in p.columns("sales")


def test_empty_migration_file_fails_preflight_and_nothing_runs(project: Callable[..., Project]) -> None:
    p = project("mini")
    (p.path / "checks/migrations/20250101000003_add_indexes.sql").write_text("  \n")
    result = p.run("-v", "--phase4-confirm-destructive", seed=True)
    result.stdout.fnmatch_lines(["expected: SQL statements", "found:    an empty file",
                                 "where:    */20250101000003_add_indexes.sql",
                                 "hint:     the file must hold the migration's SQL"])
    assert outcomes_of(result)["checks/phase4.toml::20250101000001_create_views::apply"] == "SKIPPED"
    assert p.query("SELECT to_regclass('pytest_phase4.ledger')") == [(None,)]


def test_duplicated_migration_is_a_plan_error(project: Callable[..., Project]) -> None:
    p = project("mini")
    plan = p.path / "checks/phase4.toml"
    plan.write_text(plan.read_text() + '\n[[migration]]\nfile = "20250101000003_add_indexes.sql"\n')
    result = p.run(seed=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["  checks/phase4.toml:* 20250101000003_add_indexes.sql: "
                                 "20250101000003_add_indexes.sql is listed twice (first at checks/phase4.toml:*); "
                                 "list each migration once"])
    assert public_tables(p) == []  # the seed did not run either: the plan is validated first


@pytest.mark.parametrize(("dsn", "expected"), [
    ("postgresql://postgres@/no_such_db?host={host}&port={port}",
     ['ERROR: cannot connect to PostgreSQL at *no_such_db*: *database "no_such_db" does not exist*',
      'HINT: database "no_such_db" does not exist: create it (createdb no_such_db) or fix the dbname in the DSN.']),
    ("postgresql//postgres@localhost/x",
     ["ERROR: could not parse the PostgreSQL DSN *",
      "HINT: write it as a URL like postgresql://user@host:5432/dbname or key=value pairs like host=* port=5432 "
      "dbname=*"]),
    ("host=127.0.0.1 port=1 dbname=x user=u password=hunter2-secret",
     ["ERROR: cannot connect to PostgreSQL at 127.0.0.1:1/x (*password=*** *): *Connection refused",
      "HINT: is a PostgreSQL server running on 127.0.0.1 port 1? Check --dsn / PHASE4_DSN."]),
])
def test_bad_targets_fail_in_one_clear_message(project: Callable[..., Project], dsn: str,
                                                 expected: list[str]) -> None:
    from psycopg.conninfo import conninfo_to_dict

    p = project("mini")
    params = conninfo_to_dict(p.dsn)
    result = p.run(f"--dsn={dsn.format(host=params['host'], port=params['port'])}", dsn=False)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(expected)
    output = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in output
    assert "hunter2-secret" not in output
    assert len(result.stderr.lines) <= 4
