"""Attacks on the rollback (issue 10), each a hole found on real PostgreSQL: the test asserts the SAFE behaviour
(nothing lost without being listed and consented to, no false "proven", no migration applied twice), so it fails
while the hole is open. Plain SQL outside the plugin checks the outcome."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable

import psycopg
import pytest
from test_rollback import schema_of

from helpers import Project, append, ledger_files, migrated, seeded

M1 = "checks/migrations/20250101000001_create_views.sql"
M2 = "checks/migrations/20250101000002_drop_denormalized.sql"
M3 = "checks/migrations/20250101000003_add_indexes.sql"
SETUP = "checks/setup/schema.sql"
# The application writes between two rollback steps (in the run's own process: a teardown hook of the step).
APP_AFTER = """
import psycopg
STEPS = {steps!r}
def pytest_runtest_teardown(item):
    if item.name in STEPS:
        with psycopg.connect({dsn!r}, autocommit=True) as conn:
            conn.execute(STEPS[item.name])
"""


def non_transactional_indexes(p: Project) -> None:
    """Migration 3 as people write it for a big table: CREATE INDEX CONCURRENTLY, transaction = false."""
    plan = p.path / "checks/phase4.toml"
    plan.write_text(plan.read_text().replace('title = "Add performance indexes"',
                                             'title = "Add performance indexes"\ntransaction = false'))
    m3 = p.path / M3
    m3.write_text(m3.read_text().replace("CREATE INDEX", "CREATE INDEX CONCURRENTLY"))


def out(result: pytest.RunResult) -> str:
    text = result.stdout.str()
    return text[text.find("phase4 rollback"):] or text[-3000:]


def test_revert_of_a_table_swapped_in_two_migrations_brings_the_original_table_back(
        project: Callable[..., Project]) -> None:
    """Expand/contract: m1 builds events_new (partitioned) and copies the rows, m2 drops events and renames
    events_new to events. The records fold under one key, the original table is forgotten: the revert drops the
    new table, never restores the old one, and says "COMPLETE and proven" with public.events gone."""
    p = project("mini", "safe")
    append(p, SETUP, "CREATE TABLE events (id bigint PRIMARY KEY, at timestamptz NOT NULL, what text);\n"
                     "INSERT INTO events SELECT g, '2025-01-01'::timestamptz + g * interval '1 hour', 'e' || g"
                     " FROM generate_series(1, 30) g;\n")
    append(p, M1, "CREATE TABLE events_new (id bigint NOT NULL, at timestamptz NOT NULL, what text,"
                  " PRIMARY KEY (id, at)) PARTITION BY RANGE (at);\n"
                  "CREATE TABLE events_2025 PARTITION OF events_new FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');\n"
                  "CREATE TABLE events_default PARTITION OF events_new DEFAULT;\n"
                  "INSERT INTO events_new SELECT * FROM events;\n")
    append(p, M2, "DROP TABLE events;\nALTER TABLE events_new RENAME TO events;\n"
                  "ALTER TABLE events RENAME CONSTRAINT events_new_pkey TO events_pkey;\n")
    seeded(p)
    before, rows = schema_of(p), p.query("SELECT * FROM events ORDER BY id")
    after = schema_of(migrated(p, seed=False))
    result = p.run("-v", "--phase4-rollback")
    if result.ret != 0:  # a refusal is safe only if it changed nothing
        assert schema_of(p) == after
        return
    assert p.query("SELECT to_regclass('public.events')::text") == [("events",)], out(result)
    assert p.query("SELECT * FROM events ORDER BY id") == rows
    assert schema_of(p) == before


def test_revert_does_not_drop_what_other_sessions_created_during_a_non_transactional_migration(
        project: Callable[..., Project]) -> None:
    """A transaction = false migration is diffed with every object counted as its own: what the application
    created while CREATE INDEX CONCURRENTLY waited (a column on customers, a function, a table) is recorded as
    the plan's, and the revert drops it, exit 0, "proven"."""
    p = project("mini", "safe")
    non_transactional_indexes(p)
    seeded(p)
    started = threading.Event()

    def application() -> None:
        with psycopg.connect(p.dsn) as report, psycopg.connect(p.dsn, autocommit=True) as app:
            report.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            report.execute("SELECT 1")  # a long report: CREATE INDEX CONCURRENTLY waits for its snapshot
            started.set()
            for _ in range(400):
                row = app.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                                  " AND query LIKE 'CREATE INDEX CONCURRENTLY%'").fetchone()
                if row and row[0]:
                    break
                time.sleep(0.02)
            app.execute("ALTER TABLE customers ADD COLUMN vip boolean NOT NULL DEFAULT false;"
                        "CREATE FUNCTION public.app_fn() RETURNS int LANGUAGE sql AS 'SELECT 42';"
                        "CREATE TABLE public.app_jobs (id int PRIMARY KEY);")
            report.commit()

    thread = threading.Thread(target=application, daemon=True)
    thread.start()
    started.wait()
    p.run("--phase4-confirm-destructive")
    thread.join()
    assert len(ledger_files(p)) == 3
    result = p.run("-v", "--phase4-rollback")
    assert "vip" in p.columns("customers"), out(result)
    assert p.query("SELECT to_regprocedure('public.app_fn()')::text, to_regclass('public.app_jobs')::text") == [
        ("app_fn()", "app_jobs")]


def test_restore_loses_nothing_written_after_its_assess_step_or_created_after_its_dump(
        project: Callable[..., Project]) -> None:
    """Restore mode lists the loss in `assess`, locks in `safety_dump`, and never looks again: 21 customers
    inserted after assess are overwritten without being listed, and a table the application created after the
    pre-rollback dump is dropped by `drop_created` (CASCADE) and is in no dump at all."""
    p = migrated(project("mini", "safe"))
    p.pytester.makeconftest(APP_AFTER.format(dsn=p.dsn, steps={
        "assess": "INSERT INTO customers SELECT g, 'late customer' FROM generate_series(100, 120) g",
        "safety_dump": "CREATE SCHEMA app; CREATE TABLE app.orders (id int PRIMARY KEY, total numeric);"
                       " INSERT INTO app.orders SELECT g, g FROM generate_series(1, 500) g"}))
    result = p.run("-v", "--phase4-rollback=restore", "--phase4-accept-loss")
    text = result.stdout.str()
    kept = p.query("SELECT count(*) FROM customers WHERE name = 'late customer'") == [(21,)]
    assert kept or "21 row(s) added" in text, out(result)
    dumps = list(p.path.glob("_backups/*/*/before-rollback-*/full.dump"))
    listing = "".join(subprocess.run([str(shutil.which("pg_restore")), "--list", str(d)], capture_output=True,
                                     text=True, check=True).stdout for d in dumps)
    orders = p.query("SELECT to_regclass('app.orders')::text") == [("app.orders",)]
    assert orders or ("TABLE DATA app orders" in listing and "app.orders" in text), out(result)


def test_revert_brings_a_dropped_table_back_with_the_rows_of_the_newest_backup_before_its_drop(
        project: Callable[..., Project]) -> None:
    """Dropped columns are refilled from the newest backup taken before their migration; dropped tables always
    come from the oldest one: the 5 notes written between the two backups are gone, "proven", and they are in no
    pre-rollback dump (the table did not exist then)."""
    p = project("mini", "safe")
    append(p, SETUP, "CREATE TABLE notes (id int PRIMARY KEY, body text);\n"
                     "INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 10) g;\n")
    m2 = p.path / M2
    good = m2.read_text() + "DROP TABLE notes;\n"
    m2.write_text(good + "SELECT 1 / 0;\n")
    assert p.run("--phase4-confirm-destructive", seed=True).ret == 1  # first backup; migration 2 fails
    p.execute("INSERT INTO notes SELECT g, 'written after the first backup' FROM generate_series(11, 15) g")
    m2.write_text(good)
    migrated(p, seed=False)  # second backup, then migrations 2 and 3
    result = p.run("-v", "--phase4-rollback")
    if result.ret != 0:
        assert p.query("SELECT to_regclass('public.notes')") == [(None,)]
        return
    assert p.query("SELECT count(*) FROM notes") == [(15,)], out(result)


def test_revert_keeps_rows_the_application_wrote_into_a_plan_table_when_another_migration_had_no_transaction(
        project: Callable[..., Project]) -> None:
    """One transaction = false migration in the plan switches the "rows written since" test from xmin to row
    counts: the application's update, delete and insert in the plan's `settings` table keep the count at 2, and
    the revert drops them without a word."""
    p = project("mini", "safe")
    non_transactional_indexes(p)
    append(p, M1, "CREATE TABLE settings (key text PRIMARY KEY, value text NOT NULL);\n"
                  "INSERT INTO settings VALUES ('theme', 'light'), ('lang', 'en');\n")
    migrated(p)
    p.execute("UPDATE settings SET value = 'dark' WHERE key = 'theme'; DELETE FROM settings WHERE key = 'lang';"
              " INSERT INTO settings VALUES ('tz', 'Europe/Paris')")
    result = p.run("-v", "--phase4-rollback")
    assert result.ret != 0, out(result)
    assert p.query("SELECT * FROM settings ORDER BY key") == [("theme", "dark"), ("tz", "Europe/Paris")]


def test_revert_of_a_widened_column_never_truncates_values_written_since(project: Callable[..., Project]) -> None:
    """`ALTER COLUMN ... TYPE <old> USING col::<old>` casts explicitly: varchar(8) and numeric(8,2) truncate and
    round silently. The application's code 'customer-specific-code-123' comes back as 'customer', 1.2345 as 1.23,
    "proven"."""
    p = project("mini", "safe")
    append(p, SETUP, "CREATE TABLE codes (id int PRIMARY KEY, code varchar(8) NOT NULL, amount numeric(8, 2));\n"
                     "INSERT INTO codes SELECT g, 'c' || g, g + 0.25 FROM generate_series(1, 30) g;\n")
    append(p, M1, "ALTER TABLE codes ALTER COLUMN code TYPE text;\n"
                  "ALTER TABLE codes ALTER COLUMN amount TYPE numeric(12, 4);\n")
    migrated(p)
    p.execute("INSERT INTO codes VALUES (31, 'customer-specific-code-123', 1.2345)")
    result = p.run("-v", "--phase4-rollback")
    assert p.query("SELECT code, amount::text FROM codes WHERE id = 31") == [
        ("customer-specific-code-123", "1.2345")], out(result)


def test_a_normal_run_after_a_revert_does_not_apply_a_data_migration_twice(project: Callable[..., Project]) -> None:
    """The revert keeps what a data migration did to kept rows (a note), forgets the migration in the ledger and
    says "proven"; the next normal run applies it again: amounts in cents become cents of cents (x10,000)."""
    p = project("mini", "safe")
    append(p, M1, "UPDATE sales SET value = value * 100;  -- amounts in cents\n")
    seeded(p)
    total = p.query("SELECT sum(value) FROM sales")[0][0]
    migrated(p, seed=False)
    result = p.run("-v", "--phase4-rollback")
    p.run("--phase4-confirm-destructive")
    assert p.query("SELECT sum(value) FROM sales") == [(total * 100,)], out(result)


def test_revert_does_not_undo_what_other_sessions_altered_during_a_migration(project: Callable[..., Project]) -> None:
    """Only created objects are filtered by "written by the migration's own transaction": an ALTER committed by
    the application while the migration waited for a row lock (a new function body, a column default) is recorded
    as the plan's, and the revert puts the old versions back, exit 0, "proven"."""
    p = project("mini", "safe")
    append(p, SETUP, "CREATE FUNCTION public.app_version() RETURNS text LANGUAGE sql AS $$SELECT 'v1'$$;\n")
    append(p, M1, "UPDATE customers SET name = initcap(name);  -- a data migration\n")
    seeded(p)
    started = threading.Event()

    def application() -> None:
        with psycopg.connect(p.dsn) as request, psycopg.connect(p.dsn, autocommit=True) as deploy:
            request.execute("SELECT * FROM customers WHERE id = 3 FOR UPDATE")  # a request holding a row
            started.set()
            for _ in range(400):
                row = deploy.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                                     " AND query LIKE 'UPDATE customers SET name%'").fetchone()
                if row and row[0]:
                    break
                time.sleep(0.02)
            deploy.execute("CREATE OR REPLACE FUNCTION public.app_version() RETURNS text LANGUAGE sql AS"
                           " $$SELECT 'v2'$$; ALTER TABLE tickets ALTER COLUMN title SET DEFAULT 'untitled';")
            request.commit()

    thread = threading.Thread(target=application, daemon=True)
    thread.start()
    started.wait()
    p.run("--phase4-confirm-destructive")
    thread.join()
    assert len(ledger_files(p)) == 3
    result = p.run("-v", "--phase4-rollback")
    assert p.query("SELECT public.app_version(), (SELECT column_default FROM information_schema.columns"
                   " WHERE table_name = 'tickets' AND column_name = 'title')") == [("v2", "'untitled'::text")], \
        out(result)


def test_a_renamed_backup_folder_does_not_make_the_rollback_refill_stale_values(
        project: Callable[..., Project]) -> None:
    """Backups are ordered by folder name: the first backup, renamed to label it, sorts as the newest and is
    chosen; the 100 customer names written between the two backups are refilled with the first backup's."""
    p = migrated(project("mini", "safe"))
    first = next(p.path.glob("_backups/*/*/BACKUP_INFO.txt")).parent
    assert p.run("--phase4-rollback").ret == 0
    p.execute("UPDATE sales SET customer_name = 'renamed customer ' || id")
    first.rename(first.parent / "pre-release")  # the DBA labels the first backup
    migrated(p, seed=False)  # a second backup, then the plan again
    result = p.run("-v", "--phase4-rollback")
    if result.ret != 0:
        return
    assert p.query("SELECT count(*) FROM sales WHERE customer_name LIKE 'renamed customer %'") == [(100,)], \
        out(result)


def test_revert_asks_consent_before_dropping_values_the_application_wrote_into_a_column_the_plan_added(
        project: Callable[..., Project]) -> None:
    """Rows the application wrote into a table the plan created need --phase4-accept-loss; values it wrote into
    a column the plan added are dropped with a note only."""
    p = project("mini", "safe")
    append(p, M1, "ALTER TABLE customers ADD COLUMN email text;\n")
    migrated(p)
    p.execute("UPDATE customers SET email = 'c' || id || '@example.com'")
    result = p.run("-v", "--phase4-rollback")
    assert result.ret != 0, out(result)
    assert p.query("SELECT count(email) FROM customers") == [(10,)]


def test_revert_does_not_overwrite_what_the_application_changed_after_the_plan(
        project: Callable[..., Project]) -> None:
    """The plan changed a function and a policy; the application changed both again after the migration. The
    revert puts the pre-plan versions back over the application's, without naming them, "proven"."""
    p = project("mini", "safe")
    append(p, SETUP, "CREATE FUNCTION public.sale_total(c int) RETURNS numeric LANGUAGE sql STABLE"
                     " AS 'SELECT sum(value) FROM sales WHERE customer_id = c';\n"
                     "ALTER TABLE sales ENABLE ROW LEVEL SECURITY;\n"
                     "CREATE POLICY sales_read ON sales FOR SELECT USING (true);\n")
    append(p, M1, "CREATE OR REPLACE FUNCTION public.sale_total(c int) RETURNS numeric LANGUAGE sql STABLE"
                  " AS 'SELECT coalesce(sum(value), 0) FROM sales WHERE customer_id = c';\n"
                  "ALTER POLICY sales_read ON sales USING (value > 0);\n")
    migrated(p)
    p.execute("CREATE OR REPLACE FUNCTION public.sale_total(c int) RETURNS numeric LANGUAGE sql STABLE"
              " AS 'SELECT coalesce(sum(value), 0) * 1.2 FROM sales WHERE customer_id = c';"
              "ALTER POLICY sales_read ON sales USING (value > 10);")
    result = p.run("-v", "--phase4-rollback")
    if result.ret != 0:
        return
    assert p.query("SELECT prosrc FROM pg_proc WHERE proname = 'sale_total'") == [
        ("SELECT coalesce(sum(value), 0) * 1.2 FROM sales WHERE customer_id = c",)], out(result)
    assert p.query("SELECT qual FROM pg_policies WHERE policyname = 'sales_read'") == [("(value > (10)::numeric)",)]


def test_restore_lists_every_definition_it_would_put_back(project: Callable[..., Project]) -> None:
    """Restore lists objects not in the backup and changed rows, not objects whose definition changed since: a new
    function body, a GRANT and a table added to a publication (Supabase Realtime's way) are put back to the
    backup's, silently, once --phase4-accept-loss is given for the listed loss."""
    p = project("mini", "safe")
    append(p, SETUP, "CREATE FUNCTION public.sale_total(c int) RETURNS numeric LANGUAGE sql STABLE"
                     " AS 'SELECT sum(value) FROM sales WHERE customer_id = c';\n"
                     "DO $$ BEGIN CREATE ROLE reporting_ro; EXCEPTION WHEN duplicate_object THEN NULL; END $$;\n"
                     "CREATE PUBLICATION app_realtime FOR TABLE customers;\n")
    migrated(p)
    p.execute("CREATE OR REPLACE FUNCTION public.sale_total(c int) RETURNS numeric LANGUAGE sql STABLE"
              " AS 'SELECT coalesce(sum(value), 0) * 1.2 FROM sales WHERE customer_id = c';"
              "GRANT SELECT ON customers TO reporting_ro; ALTER PUBLICATION app_realtime ADD TABLE tickets;")
    result = p.run("-v", "--phase4-rollback=restore")
    assert result.ret == 1
    listed = [line for line in result.stdout.lines if line.startswith("  ")]
    for name in ("sale_total", "reporting_ro", "app_realtime"):
        assert any(name in line for line in listed), (name, listed)


def test_revert_brings_back_the_large_objects_a_migration_unlinked(project: Callable[..., Project]) -> None:
    """The catalog inventory has no large objects: a migration that unlinks them and drops their oid column is
    reverted with the column refilled with the old oids, pointing at nothing, "proven" (the backup holds them)."""
    p = project("mini", "safe")
    append(p, SETUP, "CREATE TABLE docs (id int PRIMARY KEY, body oid);\n"
                     "INSERT INTO docs SELECT g, lo_from_bytea(0, convert_to('document ' || g, 'UTF8'))"
                     " FROM generate_series(1, 5) g;\n")
    append(p, M2, "SELECT lo_unlink(body) FROM docs;\nALTER TABLE docs DROP COLUMN body;\n")
    migrated(p)
    result = p.run("-v", "--phase4-rollback")
    if result.ret != 0:
        return
    assert p.query("SELECT count(*) FROM docs WHERE body IN (SELECT oid FROM pg_largeobject_metadata)") == [(5,)], \
        out(result)


def test_a_migration_that_grants_on_an_existing_table_can_be_reverted(project: Callable[..., Project]) -> None:
    """A table with default privileges (relacl NULL) that a migration GRANTs on: the revert REVOKEs, which leaves
    an explicit owner ACL, and prove_catalog fails on every attempt: the revert can never complete, and the user is
    left with restore mode, which loses every write made since."""
    p = project("mini", "safe")
    append(p, SETUP, "DO $$ BEGIN CREATE ROLE reporting_ro; EXCEPTION WHEN duplicate_object THEN NULL; END $$;\n")
    append(p, M1, "GRANT SELECT ON customers TO reporting_ro;\n")
    seeded(p)
    before = schema_of(p)
    migrated(p, seed=False)
    result = p.run("-v", "--phase4-rollback")
    assert result.ret == 0, out(result)
    assert schema_of(p) == before
    assert p.query("SELECT has_table_privilege('reporting_ro', 'customers', 'SELECT')") == [(False,)]


def test_rows_a_migration_inserted_inside_a_do_block_with_an_exception_handler_are_the_plans(
        project: Callable[..., Project]) -> None:
    """Rows written in a subtransaction carry its xid, not the migration's: with no application write at all the
    revert refuses, claiming '1 row(s) written or changed since by others'."""
    p = project("mini", "safe")
    append(p, M1, "CREATE TABLE settings (key text PRIMARY KEY, value text NOT NULL);\n"
                  "DO $$ BEGIN INSERT INTO settings VALUES ('theme', 'light');"
                  " EXCEPTION WHEN unique_violation THEN NULL; END $$;\n")
    seeded(p)
    before = schema_of(p)
    migrated(p, seed=False)
    result = p.run("-v", "--phase4-rollback")
    assert "written or changed since by others" not in result.stdout.str()
    assert result.ret == 0, out(result)
    assert schema_of(p) == before


def test_revert_gives_a_row_inserted_since_the_backup_no_value_of_a_deleted_row_with_the_same_key(
        project: Callable[..., Project]) -> None:
    """The refill matches by primary key only: 'alice' deleted her account, another person signed up as 'alice'
    after the backup, and the revert gives the newcomer the first Alice's phone number ("proven"), where the README
    promises rows inserted since the backup the column's default or NULL."""
    p = project("mini", "safe")
    append(p, SETUP, "CREATE TABLE profiles (username text PRIMARY KEY, display_name text NOT NULL, phone text);\n"
                     "INSERT INTO profiles VALUES ('alice', 'Alice A.', '+33 6 12 34 56 78'),"
                     " ('bob', 'Bob B.', '+33 6 98 76 54 32');\n")
    append(p, M2, "ALTER TABLE profiles DROP COLUMN phone;  -- phones move to a verified table\n")
    migrated(p)
    p.execute("DELETE FROM profiles WHERE username = 'alice';"
              " INSERT INTO profiles VALUES ('alice', 'Another Alice')")
    result = p.run("-v", "--phase4-rollback")
    if result.ret != 0:
        return
    assert p.query("SELECT display_name, phone FROM profiles ORDER BY username") == [
        ("Another Alice", None), ("Bob B.", "+33 6 98 76 54 32")], out(result)
