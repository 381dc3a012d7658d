"""Checks that never lie (issue 13): each check reads the moment it verifies, in the step's one snapshot, and a
view it cannot count says why instead of an SQL error. Each test failed before its fix."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any, cast

import psycopg

from helpers import Project, outcomes_of, spec
from pytest_phase4.db.facts import Facts
from pytest_phase4.db.pool import Pool
from pytest_phase4.errors import CheckFailed
from pytest_phase4.kinds import context as checkcontext

PLAN = "checks/phase4.toml"


def test_tables_have_rows_after_a_migration_reads_the_table_now_not_the_snapshot(
        project: Callable[..., Project]) -> None:
    p = project("mini")
    (p.path / "checks/migrations/20250101000004_purge_tickets.sql").write_text("DELETE FROM tickets;\n")
    with (p.path / PLAN).open("a") as plan:
        plan.write('\n[[migration]]\nfile = "20250101000004_purge_tickets.sql"\n'
                   '  [[migration.verify]]\n  check = "tables_have_rows"\n  tables = ["tickets"]\n'
                   '  min_rows = 50\n')
    result = p.run("-v", "--phase4-confirm-destructive", seed=True)
    outcomes = outcomes_of(result)
    # before the fix: PASSED with "public.tickets: 50 rows (recorded)", the pre-migration count; the table is empty
    assert outcomes[f"{PLAN}::20250101000004_purge_tickets::tables_have_rows[tickets]"] == "FAILED"
    result.stdout.fnmatch_lines(["expected: >= 50 rows", "found:    0", "where:    public.tickets"])
    # in preflight it reads the table as it is then, and says nothing of a recording
    assert "public.customers: 10 rows (recorded)" not in p.report()
    assert "public.customers: 10 rows" in p.report()


EVENTS = """
CREATE TABLE events (id int NOT NULL, at date NOT NULL) PARTITION BY RANGE (at);
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
INSERT INTO events SELECT g, '2024-03-01' FROM generate_series(1, 100) g;
CREATE VIEW all_events AS SELECT * FROM events;
"""


def test_a_view_over_a_partitioned_table_is_counted_in_the_steps_snapshot(scratch_dsn: str,
                                                                         conn: psycopg.Connection[Any]) -> None:
    conn.execute(EVENTS)
    pool = Pool(lambda: psycopg.connect(scratch_dsn, autocommit=True), 2)
    try:
        facts = Facts(conn, "public", (spec("view_rowcount_matches", ("all_events", "events")),), pool)
        assert facts.count("events") == 100
        # the application inserts after the step's snapshot was taken, before the view's count is asked for
        conn.execute("INSERT INTO events SELECT g, '2024-04-01' FROM generate_series(101, 193) g")
        # before the fix: 193, "93 extra": its plan reads the one partition, which was counted outside the snapshot
        assert facts.count("all_events") == 100
        assert facts.rows_of("all_events") == "events_2024"
        facts.close()
    finally:
        pool.close()


def test_with_one_worker_a_view_and_its_base_table_are_counted_at_one_moment(conn: psycopg.Connection[Any],
                                                                             scratch_dsn: str) -> None:
    conn.execute(EVENTS)
    # a view whose count waits on an advisory lock the test holds: the application inserts while it waits
    conn.execute("CREATE VIEW waiting_events AS SELECT * FROM events WHERE pg_advisory_xact_lock_shared(4242) "
                 "IS NOT NULL")
    pair = spec("view_rowcount_matches", ("waiting_events", "events"))
    pair = dataclasses.replace(pair, params={"pairs": {"waiting_events": "events"}, "where": {}})
    with psycopg.connect(scratch_dsn, autocommit=True) as app, \
            psycopg.connect(scratch_dsn, autocommit=True, options="-c default_transaction_read_only=on") as ro:
        app.execute("SELECT pg_advisory_lock(4242)")
        ctx = checkcontext.Context(ro, cast(Any, SimpleNamespace(schema="public")),
                                   lambda: checkcontext.BaselineCounts({}, False))
        with ThreadPoolExecutor(1) as executor:
            running = executor.submit(checkcontext.run_check, ctx, pair)
            while app.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'",
                              (ro.info.backend_pid,)).fetchone() != (1,):
                time.sleep(0.01)
            app.execute("INSERT INTO events SELECT g, '2024-04-01' FROM generate_series(101, 193) g")
            app.execute("SELECT pg_advisory_unlock(4242)")
            # before the fix: CheckFailed "expected view waiting_events to have as many rows as events (193), found
            # 100 (93 missing)": the base table was counted after the view, at another moment
            assert running.result() == "waiting_events: 100 rows = events: 100 rows"


LOCKING = """
CREATE TABLE accounts (id int PRIMARY KEY, deleted_at timestamptz);
INSERT INTO accounts SELECT g, CASE WHEN g % 10 = 0 THEN now() END FROM generate_series(1, 40) g;
CREATE VIEW locked_accounts AS SELECT * FROM accounts WHERE id > 0 FOR SHARE;
CREATE VIEW nested_lock AS SELECT * FROM (SELECT a.id FROM accounts a FOR NO KEY UPDATE OF a NOWAIT) s;
CREATE VIEW skipping AS SELECT * FROM accounts FOR UPDATE SKIP LOCKED;
"""


def _check(ro: psycopg.Connection[Any], view: str, base: str, facts: Facts | None = None) -> str:
    pair = dataclasses.replace(spec("view_rowcount_matches", (view, base)), params={"pairs": {view: base}})
    ctx = checkcontext.Context(ro, cast(Any, SimpleNamespace(schema="public")),
                               lambda: checkcontext.BaselineCounts({}, False), facts=facts)
    try:
        return checkcontext.run_check(ctx, pair)
    except CheckFailed as exc:
        return exc.render()


def test_a_view_that_locks_rows_is_counted_without_its_lock_or_says_why_it_cannot_be(
        scratch_dsn: str, conn: psycopg.Connection[Any]) -> None:
    conn.execute(LOCKING)
    readonly = "-c default_transaction_read_only=on"
    with psycopg.connect(scratch_dsn, autocommit=True, options=readonly) as ro:
        # before the fix: "found: SQL error: cannot execute SELECT FOR SHARE in a read-only transaction [SQLSTATE
        # 25006]", whatever the view holds
        assert _check(ro, "locked_accounts", "accounts") == (
            "locked_accounts: 40 rows = accounts: 40 rows (counted from its definition without FOR SHARE: a "
            "read-only check takes no row lock, and the lock decides which rows wait, not which rows there are)")
        assert _check(ro, "nested_lock", "accounts").startswith(
            "nested_lock: 40 rows = accounts: 40 rows (counted from its definition without FOR NO KEY UPDATE NOWAIT: ")
        pool = Pool(lambda: psycopg.connect(scratch_dsn, autocommit=True, options=readonly), 2)
        try:
            facts = Facts(ro, "public", (spec("view_rowcount_matches", ("locked_accounts", "accounts")),), pool)
            assert _check(ro, "locked_accounts", "accounts", facts).startswith("locked_accounts: 40 rows = accounts")
            facts.close()
        finally:
            pool.close()
        assert _check(ro, "skipping", "accounts") == (
            "expected: a row count of view public.skipping\n"
            "found:    none can be exact: its definition locks rows FOR UPDATE SKIP LOCKED, so the rows it returns "
            "depend on what other sessions lock at that moment\n"
            "where:    public.skipping\n"
            "hint:     drop SKIP LOCKED from the view, or check its rows with a query_runs or query_returns check that "
            "says what you expect of them\n"
            "plan:     plan.toml:1")
    conn.execute("CREATE ROLE checker LOGIN; GRANT SELECT ON ALL TABLES IN SCHEMA public TO checker")
    with psycopg.connect(scratch_dsn, autocommit=True, options=readonly, user="checker") as ro:
        assert _check(ro, "locked_accounts", "accounts") == (
            "expected: a row count of view public.locked_accounts\n"
            "found:    none in a read-only transaction: its definition locks rows (FOR SHARE), and counted without "
            "the lock it would read the tables with the rights of checker, not those of its owner postgres\n"
            "where:    public.locked_accounts\n"
            "hint:     check as postgres, who owns the view, or make it WITH (security_invoker = true), or drop "
            "FOR SHARE from it: a view that locks every row it returns blocks the application's writers\n"
            "plan:     plan.toml:1")
