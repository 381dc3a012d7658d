"""Guards: non-transactional migrations and invalid indexes, Supabase's migration history, read-only checks."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest

from helpers import Project, outcomes_of
from pytest_phase4.db import guard
from pytest_phase4.errors import TargetError

M3 = "checks/phase4.toml::20250101000003_add_indexes"


def concurrent(p: Project, sql: str) -> None:
    """Make the mini example's index migration non-transactional, with the given SQL, and check indexes."""
    plan = p.path / "checks/phase4.toml"
    text = plan.read_text().replace('title = "Add performance indexes"',
                                    'title = "Add performance indexes"\ntransaction = false')
    plan.write_text(text + '\n[[preflight]]\ncheck = "no_invalid_indexes"\n')
    (p.path / "checks/migrations/20250101000003_add_indexes.sql").write_text(sql)


def test_non_transactional_migration_runs_statement_by_statement(project: Callable[..., Project]) -> None:
    p = project("mini")
    concurrent(p, "CREATE INDEX CONCURRENTLY idx_sales_customer ON sales (customer_id);\n"
                  "CREATE INDEX CONCURRENTLY idx_tickets_customer ON tickets (customer_id);\n")
    result = p.run("--phase4-confirm-destructive", seed=True)
    result.assert_outcomes(passed=26)
    assert p.query("SELECT count(*) FROM pytest_phase4.ledger") == [(3,)]


def test_failed_concurrent_index_is_named_with_the_fix(project: Callable[..., Project]) -> None:
    p = project("mini")
    concurrent(p, "CREATE INDEX CONCURRENTLY idx_sales_customer ON sales (customer_id);\n\n"
                  "CREATE UNIQUE INDEX CONCURRENTLY idx_tickets_customer ON tickets (customer_id);\n")
    result = p.run("-v", "--phase4-confirm-destructive", seed=True)
    assert outcomes_of(result)[f"{M3}::apply"] == "FAILED"
    result.stdout.fnmatch_lines([
        "*20250101000003_add_indexes.sql:3: could not create unique index \"idx_tickets_customer\" "
        "[[]SQLSTATE 23505[]]",
        "detail: Key (customer_id)=(*) is duplicated.; transaction = false: 1 of 2 statement(s) were committed "
        "before this point and stay applied; the ledger does not list the file, so make its statements "
        "idempotent (IF NOT EXISTS) before rerunning; INVALID index(es) left behind: idx_tickets_customer: DROP INDEX "
        "CONCURRENTLY idx_tickets_customer",
    ])
    assert "the migration's transaction was rolled back" not in result.stdout.str()
    assert p.query("SELECT file FROM pytest_phase4.ledger ORDER BY 1") == [
        ("20250101000001_create_views.sql",), ("20250101000002_drop_denormalized.sql",)]
    rerun = p.run("-v", "--phase4-confirm-destructive")
    assert outcomes_of(rerun)["checks/phase4.toml::preflight::no_invalid_indexes[schema]"] == "FAILED"
    rerun.stdout.fnmatch_lines([
        "expected: no INVALID index", "found:    1: idx_tickets_customer", "where:    schema public",
        "hint:     a failed CREATE INDEX CONCURRENTLY leaves an invalid index that is maintained but never used: "
        "DROP INDEX CONCURRENTLY idx_tickets_customer; then create it again"])


def test_supabase_migration_history_is_kept_in_step(project: Callable[..., Project]) -> None:
    p = project("mini")
    p.execute("CREATE SCHEMA supabase_migrations; CREATE TABLE supabase_migrations.schema_migrations "
              "(version text PRIMARY KEY, statements text[], name text)")
    result = p.run("--phase4-confirm-destructive", seed=True)
    result.assert_outcomes(passed=25)
    assert p.query("SELECT version, name, statements[1] LIKE 'CREATE INDEX%' FROM "
                   "supabase_migrations.schema_migrations ORDER BY 1") == [
        ("20250101000001", "create_views", False), ("20250101000002", "drop_denormalized", False),
        ("20250101000003", "add_indexes", True)]


def test_supabase_history_rolls_back_with_a_failed_migration(project: Callable[..., Project]) -> None:
    p = project("mini")
    p.execute("CREATE SCHEMA supabase_migrations; CREATE TABLE supabase_migrations.schema_migrations "
              "(version text PRIMARY KEY, name text)")
    (p.path / "checks/migrations/20250101000003_add_indexes.sql").write_text("CREATE INDEX idx_x ON nope (id);\n")
    assert p.run("--phase4-confirm-destructive", seed=True).ret == 1
    assert p.query("SELECT version FROM supabase_migrations.schema_migrations ORDER BY 1") == [
        ("20250101000001",), ("20250101000002",)]


def test_the_run_lock_names_a_lost_lock_and_the_parent_run_for_what_they_are(
        scratch_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run checks its lock before each write; a rehearsal's child that reaches its parent's database is not told
    that 'another run' holds it (the pid named would be the parent's own lock session)."""
    holder = psycopg.connect(scratch_dsn, autocommit=True)
    guard.take_run_lock(holder, "db")
    pid = holder.info.backend_pid
    assert guard.run_lock_lost(holder, pid) is None
    with psycopg.connect(scratch_dsn, autocommit=True) as child:
        monkeypatch.setenv(guard.PARENT_LOCK_ENV, str(pid))
        with pytest.raises(TargetError, match=rf"^this rehearsal reached db, which the run that started it holds "
                                              rf"\(pid {pid} \(application .*\), its own run lock session\)"):
            guard.take_run_lock(child, "db")
        child.execute("SELECT pg_terminate_backend(%s)", (pid,))
    assert str(guard.run_lock_lost(holder, pid)).startswith(f"the session that held it (pid {pid}) ended (")
    assert guard.run_lock_lost(holder, pid) == f"the session that held it (pid {pid}) is closed"
    holder.close()
