"""Rollback that never loses data (issue 10), end to end on real PostgreSQL: revert keeps every write made since
the backup, restore only with consent, one transaction, proven; checked with SQL outside the plugin."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql

from helpers import Project, ledger_files, outcomes_of
from pytest_phase4.db import changes
from pytest_phase4.safety import checksums, pgscript, snapshot
from pytest_phase4.safety.checks import differences

SB = "checks/phase4.toml"
REVERT_STEPS = ["locate_backup", "assess", "safety_dump", "drop_created", "alter_back", "restore_dropped", "ledger",
                "prove_catalog", "prove_values", "prove_kept", "commit"]
RESTORE_STEPS = ["locate_backup", "assess", "safety_dump", "drop_created", "restore", "ledger", "row_counts",
                 "checksums", "fingerprint", "commit"]
DENORMALIZED = {  # the columns the destructive migration drops
    "profiles": [
        "tenant_name", "tenant_plan", "legacy_code", "legacy_flags", "signup_note",
    ],
    "projects": [
        "owner_name", "owner_email", "tenant_name", "tenant_plan", "budget_code", "archived_note",
    ],
    "tickets": [
        "reporter_name", "reporter_email", "reporter_role", "project_name", "project_status", "tenant_name",
        "tenant_plan", "legacy_state", "legacy_ref", "sla_hours", "external_url", "customer_tier",
    ],
    "comments": [
        "author_name", "author_email", "author_role", "ticket_title", "ticket_status", "project_name", "tenant_name",
        "edited_count",
    ],
}
# "The application": new tickets and comments, edits of kept columns, its own schema and table.
APP_WRITES = """
INSERT INTO public.tickets (id, tenant_id, project_id, reporter_id, title)
SELECT md5('app ticket' || g)::uuid, tenant_id, project_id, reporter_id, 'App ticket ' || g
FROM public.tickets, generate_series(1, 40) g WHERE title = 'Ticket 1';
INSERT INTO public.comments (tenant_id, ticket_id, author_id, body)
SELECT tenant_id, id, reporter_id, 'app comment' FROM public.tickets WHERE title LIKE 'App ticket %';
UPDATE public.tickets SET title = title || ' (edited)', status = 'closed' WHERE title LIKE 'Ticket 1_';
CREATE SCHEMA app;
CREATE TABLE app.uploads (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), ticket_id uuid REFERENCES public.tickets (id),
                          name text NOT NULL);
INSERT INTO app.uploads (ticket_id, name) SELECT id, 'file ' || title FROM public.tickets LIMIT 250;
"""
WRITES_DURING_BACKUP = """
import psycopg
def pytest_runtest_teardown(item):
    if item.name == "backup[dump]":  # the application writes between the backup's steps
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute("INSERT INTO sales SELECT 5000 + g, 1, 'x', g FROM generate_series(1, 17) g")
"""
VARCHAR_CHECK = "ALTER TABLE customers ADD COLUMN kind varchar(10) NOT NULL DEFAULT 'a' CHECK (kind IN ('a', 'b'));\n"
EVENTS = """CREATE TABLE events (id int PRIMARY KEY, at timestamptz, ratio float8);
INSERT INTO events VALUES (1, '2025-01-01 12:00+00', 0.1::float8 + 0.2::float8);
"""
EVENTS_ROUNDED = "UPDATE events SET ratio = 0.3;\n"
HOSTILE_SETUP = '''CREATE TABLE "we ""ird"" ü" (id int PRIMARY KEY, "co,l ""x""" text NOT NULL DEFAULT 'd');
INSERT INTO "we ""ird"" ü" SELECT g, 'v' || g FROM generate_series(1, 20) g;
'''
HOSTILE_MIGRATION = '''ALTER TABLE "we ""ird"" ü" DROP COLUMN "co,l ""x""";
CREATE SCHEMA "sch ""; DROP TABLE customers; --";
CREATE VIEW "sch ""; DROP TABLE customers; --"."v ü" AS SELECT id FROM "we ""ird"" ü";
'''
HALF_CONCURRENT = """CREATE INDEX CONCURRENTLY idx_sales_customer ON sales (customer_id);
CREATE INDEX CONCURRENTLY idx_tickets_customer ON tickets (customer_idd);
"""
PRIORITY = """CREATE TYPE priority AS ENUM ('low', 'high');
CREATE TABLE escalations (id int PRIMARY KEY, p priority);
INSERT INTO escalations VALUES (1, 'low'), (2, 'high');
"""
APP_ON_PLAN_OBJECTS = """CREATE TABLE public.app_uploads (id int PRIMARY KEY, body text);
INSERT INTO public.app_uploads SELECT g, 'x' FROM generate_series(1, 1000) g;
CREATE SCHEMA reporting;
CREATE FUNCTION reporting.ticket_stats(p public.priority) RETURNS int LANGUAGE sql AS 'SELECT 1';
"""


def schema_of(p: Project, but: str = "app") -> dict[str, Any]:
    """What a DBA compares, without the plugin: every column (type, NOT NULL, default), constraint, index,
    trigger, policy, view and schema of the database, by name; the application's own schema `but` aside."""
    def rows(query: str) -> list[tuple[Any, ...]]:
        return sorted(r for r in p.query(query) if not (r[0] == but or str(r[0]).startswith(f"{but}.")))

    return {
        "columns": rows("SELECT table_schema, table_name, column_name, data_type, is_nullable, column_default"
                        " FROM information_schema.columns WHERE table_schema NOT IN ('pg_catalog',"
                        " 'information_schema', 'pytest_phase4')"),
        "constraints": rows("SELECT conrelid::regclass::text, conname, contype FROM pg_constraint"
                            " WHERE connamespace::regnamespace::text NOT IN ('pg_catalog', 'information_schema',"
                            " 'pytest_phase4')"),
        "indexes": rows("SELECT schemaname, indexname, indexdef FROM pg_indexes WHERE schemaname NOT IN"
                        " ('pg_catalog', 'pytest_phase4')"),
        "triggers": rows("SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE NOT tgisinternal"),
        "policies": rows("SELECT schemaname, tablename, policyname, roles::text FROM pg_policies"),
        "views": rows("SELECT schemaname, viewname FROM pg_views WHERE schemaname NOT IN ('pg_catalog',"
                      " 'information_schema')"),
        "schemas": rows("SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%'"
                        " AND nspname <> 'pytest_phase4'"),
        "types": rows("SELECT typname FROM pg_type WHERE typnamespace = 'public'::regnamespace AND typtype = 'e'"),
    }


def denormalized(p: Project) -> dict[str, str]:
    """table -> digest of (id, every denormalized column) of the rows the application did not write."""
    return {t: str(p.query(sql.SQL("SELECT md5(string_agg(ROW(t.id, {})::text, ',' ORDER BY t.id)) FROM {} t"
                                   " WHERE t.id NOT IN (SELECT md5('app ticket' || g)::uuid FROM generate_series(1, 40)"
                                   " g) AND {} NOT LIKE 'app comment%'").format(
        sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in cols), sql.Identifier("public", t),
        sql.SQL("t.body" if t == "comments" else "''")))[0][0]) for t, cols in DENORMALIZED.items()}


def evidence(p: Project) -> dict[str, Any]:
    found = sorted((p.path / "reports").glob("phase4-*[0-9].json"))
    data: dict[str, Any] = json.loads(found[-1].read_text())
    return data


def test_revert_on_a_supabase_app_undoes_the_plan_and_keeps_every_write(project: Callable[..., Project]) -> None:
    p = project("supabase")
    assert p.run("-m", "preflight", seed=True).ret == 0
    before = schema_of(p)
    values = denormalized(p)
    result = p.run("--phase4-confirm-destructive")
    assert result.ret == 0, result.stdout.str()
    assert p.query("SELECT count(*) FROM information_schema.columns WHERE table_schema = 'public'"
                   " AND table_name = 'tickets'") == [(22 - 12 + 2,)]  # assignee_id and kind added
    assert p.query("SELECT count(*) FROM supabase_migrations.schema_migrations") == [(6,)]
    p.execute(APP_WRITES)
    app_tickets = p.query("SELECT id, title, status, updated_at FROM public.tickets ORDER BY id")

    # The application edited tickets the backfill had assigned: their assignee_id may be its own now, and the
    # revert drops the column: listed, and only with consent.
    result = p.run("-v", "--phase4-rollback")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["  column public.tickets.assignee_id (added by the plan): 7 value(s) in rows written "
                                 "since by others (the application may have written them) would be dropped with it"])
    assert p.query("SELECT id, title, status, updated_at FROM public.tickets ORDER BY id") == app_tickets
    result = p.run("-v", "--phase4-rollback", "--phase4-accept-loss")
    assert result.ret == 0, result.stdout.str()
    assert list(outcomes_of(result).items()) == [(f"{SB}::rollback::{s}", "PASSED") for s in REVERT_STEPS]
    out = result.stdout.str()
    result.stdout.fnmatch_lines([
        "*20250601000004_backfill_assignees.sql inserted 0, updated 200, deleted 0 row(s) of public.tickets: kept "
        "(undoing them would overwrite writes made since; --phase4-rollback=restore puts the backup's rows back)*",
        "drop_created     dropped 17 object(s) the plan created, none reaching anything else: *trigger "
        "tickets_audit_delete on public.tickets*view api.tickets*table audit.log, function audit.log_ticket_delete()"
        "*schema api, schema audit*",
        "restore_dropped  *public.tickets: re-added reporter_name, *, customer_tier; 300 row(s) refilled from the "
        "backup by (id), 40 inserted since the backup got the column default*",
        "rollback COMPLETE and proven (revert); the state before it: *before-rollback-*/full.dump"])
    assert "prove_values     values equal the backup's, by checksum: public.profiles(" in out
    # Outside the plugin: the schema is the one before the plan, column order aside ...
    after = schema_of(p)
    assert after == before
    # ... every dropped column holds its values again, the application's rows and table are all there ...
    assert denormalized(p) == values
    assert p.query("SELECT count(*) FROM public.tickets") == [(340,)]
    assert p.query("SELECT count(*) FROM public.comments") == [(640,)]
    assert p.query("SELECT count(*) FROM app.uploads") == [(250,)]
    assert p.query("SELECT count(*), min(legacy_state), max(legacy_state), count(reporter_name)"
                   " FROM public.tickets WHERE title LIKE 'App ticket %'") == [(40, "new", "new", 0)]
    # ... the refill fired no trigger: no updated_at moved, no edit was undone
    assert p.query("SELECT id, title, status, updated_at FROM public.tickets ORDER BY id") == app_tickets
    assert ledger_files(p) == []
    assert p.query("SELECT count(*) FROM supabase_migrations.schema_migrations") == [(0,)]  # `supabase migration list`
    assert p.query("SELECT mode, array_length(migrations, 1) FROM pytest_phase4.rollbacks") == [("revert", 6)]
    data = evidence(p)
    assert data["rollback_required"]["required"] is False
    assert [c["step"] for c in data["checks"]] == REVERT_STEPS
    assert data["issues"] == []

    # Nothing left to roll back: a second rollback is refused and changes nothing.
    result = p.run("-v", "--phase4-rollback")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["found:    none: no migration of the plan is applied (ledger); the last rollback "
                                 "(revert at * of 20250601000001_add_fk_columns.sql, *) completed",
                                 "rollback REFUSED: nothing to roll back: *; nothing was changed"])
    assert evidence(p)["rollback_required"]["required"] is False
    assert schema_of(p) == before
    assert p.query("SELECT count(*) FROM app.uploads") == [(250,)]


def test_revert_after_a_migration_that_failed_halfway(project: Callable[..., Project]) -> None:
    p = project("supabase")
    migration = p.path / "checks/migrations/20250601000004_backfill_assignees.sql"
    migration.write_text(migration.read_text() + "ALTER TABLE public.tickets ADD CONSTRAINT assigned CHECK "
                                                 "(assignee_id IS NOT NULL);\n")
    assert p.run("-m", "preflight", seed=True).ret == 0
    before = schema_of(p)
    result = p.run("--phase4-confirm-destructive")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["Rollback: * YES * 20250601000004_backfill_assignees.sql failed (its own "
                                 "transaction was rolled back); 3 migration(s) of the plan stay applied (3 of this "
                                 "run): roll back with --phase4-rollback (Part 7) or fix and rerun"])
    assert "assignee_id" in p.columns("tickets")
    p.execute(APP_WRITES)
    result = p.run("-v", "--phase4-rollback")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["assess           revert 3 migration(s), newest first (20250601000003_audit.sql, "
                                 "20250601000002_create_api_views.sql, 20250601000001_add_fk_columns.sql): *"])
    assert schema_of(p) == before
    assert p.query("SELECT count(*) FROM public.tickets") == [(340,)]
    assert p.query("SELECT count(*) FROM app.uploads") == [(250,)]
    assert ledger_files(p) == []


def test_revert_undoes_the_committed_part_of_a_failed_non_transactional_migration(
        project: Callable[..., Project]) -> None:
    p = project("mini", "safe")
    plan = p.path / "checks/phase4.toml"
    plan.write_text(plan.read_text().replace('title = "Add performance indexes"',
                                             'title = "Add performance indexes"\ntransaction = false'))
    (p.path / "checks/migrations/20250101000003_add_indexes.sql").write_text(HALF_CONCURRENT)
    assert p.run("-m", "preflight", seed=True).ret == 0
    before = schema_of(p)
    result = p.run("--phase4-confirm-destructive")
    assert result.ret == 1
    assert p.query("SELECT indexname FROM pg_indexes WHERE indexname LIKE 'idx_%'") == [("idx_sales_customer",)]
    assert len(ledger_files(p)) == 2
    result = p.run("-v", "--phase4-rollback")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["assess           revert 3 migration(s), newest first (20250101000003_add_indexes.sql,"
                                 " *", "drop_created     *index public.idx_sales_customer*"])
    assert schema_of(p) == before
    assert p.query("SELECT count(*) FROM pytest_phase4.partial") == [(0,)]


def test_a_column_is_refilled_from_the_newest_backup_taken_before_its_migration(
        project: Callable[..., Project]) -> None:
    p = project("mini", "safe")
    migration = p.path / "checks/migrations/20250101000002_drop_denormalized.sql"
    good = migration.read_text()
    migration.write_text(good + "SELECT 1 / 0;\n")
    assert p.run("--phase4-confirm-destructive", seed=True).ret == 1  # the first backup; migration 2 fails
    p.execute("INSERT INTO sales SELECT 200 + g, 1, 'written after the first backup', g FROM generate_series(1, 5) g")
    migration.write_text(good)
    # a second backup, then migrations 2 and 3 (post compares with the first run's baseline, before the 5 rows)
    assert p.run("--phase4-confirm-destructive", "-m", "not post").ret == 0
    result = p.run("-v", "--phase4-rollback")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["locate_backup    */20*: full.dump * taken before any migration of the plan",
                                 "restore_dropped  *public.sales: re-added customer_name; 105 row(s) refilled from "
                                 "the backup 20* (the newest taken before 20250101000002_drop_denormalized.sql) by "
                                 "(id), 0 inserted since the backup have no value (NULL)*"])
    assert p.query("SELECT count(*) FROM sales WHERE customer_name = 'written after the first backup'") == [(5,)]


def test_restore_mode_lists_the_loss_refuses_without_consent_and_keeps_a_dump(
        project: Callable[..., Project]) -> None:
    p = project("supabase")
    assert p.run("-m", "preflight", seed=True).ret == 0
    before = schema_of(p)
    counts = p.query("SELECT (SELECT count(*) FROM public.tickets), (SELECT count(*) FROM public.comments)")
    assert p.run("--phase4-confirm-destructive").ret == 0
    p.execute(APP_WRITES)
    migrated = schema_of(p)

    result = p.run("-v", "--phase4-rollback=restore")
    assert result.ret == 1
    result.stdout.fnmatch_lines([
        "expected: consent to what a full restore of the backup loses (--phase4-accept-loss)",
        "found:    * difference(s) since the backup that the restore would undo",
        "where:    the database now"])
    lines = [line.strip() for line in result.stdout.lines
             if line.startswith("  ") and ("not in the backup" in line or "since the backup (by" in line)]
    assert sorted(lines) == sorted([
        "schema api: not in the backup, dropped", "schema audit: not in the backup, dropped",
        "schema app: not in the backup, dropped",
        "index public.idx_tickets_assignee: not in the backup, dropped",
        "index public.idx_comments_ticket: not in the backup, dropped",
        "table audit.log: not in the backup, dropped with its 0 row(s)",
        "view api.tickets: not in the backup, dropped", "view api.accounts: not in the backup, dropped",
        "view public.tickets_with_details: not in the backup, dropped",
        "view public.comments_with_details: not in the backup, dropped",
        "table app.uploads: not in the backup, dropped with its 250 row(s)",
        "column public.tickets.assignee_id: not in the backup, dropped with its 200 value(s)",
        "column public.tickets.kind: not in the backup, dropped with its 340 value(s)",
        "column public.comments.reply_to_id: not in the backup, dropped with its 0 value(s)",
        "table constraint tickets_assignee_id_fkey on public.tickets: not in the backup, dropped",
        "table constraint comments_reply_to_id_fkey on public.comments: not in the backup, dropped",
        "trigger tickets_audit_delete on public.tickets: not in the backup, dropped",
        "function audit.log_ticket_delete(): not in the backup, dropped",
        "type public.ticket_kind: not in the backup, dropped",
        "table public.comments: 40 row(s) added, 0 changed, 0 deleted since the backup (by (id)): a restore undoes "
        "them",
        # 200 rows the backfill migration updated, 10 the application edited (7 of them both)
        "table public.tickets: 40 row(s) added, 203 changed, 0 deleted since the backup (by (id)): a restore "
        "undoes them",
        "table supabase_migrations.schema_migrations: 6 row(s) added, 0 changed, 0 deleted since the backup (by "
        "(version)): a restore undoes them"])
    assert outcomes_of(result)[f"{SB}::rollback::safety_dump"] == "SKIPPED"
    assert schema_of(p) == migrated
    assert not list(p.path.glob("_backups/*/*/before-rollback-*"))

    result = p.run("-v", "--phase4-rollback=restore", "--phase4-accept-loss")
    assert result.ret == 0, result.stdout.str()
    assert list(outcomes_of(result).values()) == ["PASSED"] * len(RESTORE_STEPS)
    assert schema_of(p) == before
    assert p.query("SELECT (SELECT count(*) FROM public.tickets), (SELECT count(*) FROM public.comments)") == counts
    dumps = list(p.path.glob("_backups/*/*/before-rollback-*/full.dump"))
    assert len(dumps) == 1
    listing = subprocess.run([str(shutil.which("pg_restore")), "--list", str(dumps[0])], capture_output=True,
                             text=True, check=True).stdout
    assert "TABLE DATA app uploads" in listing  # the application's table survives in the pre-rollback dump
    assert ledger_files(p) == []


class FailAt:
    """A plugin that makes one rollback step fail: after its work (commit: before it)."""

    def __init__(self, step: str) -> None:
        self.step = step

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Any:
        if item.name == self.step == "commit":
            raise RuntimeError(f"forced failure before {self.step}")
        result = yield
        if item.name == self.step:
            raise RuntimeError(f"forced failure after {self.step}")
        return result


@pytest.mark.parametrize("mode", ["revert", "restore"])
def test_a_rollback_failing_at_any_step_changes_nothing_and_says_failed(project: Callable[..., Project],
                                                                       mode: str) -> None:
    p = project("mini", "safe")
    migration = p.path / "checks/migrations/20250101000001_create_views.sql"
    migration.write_text(migration.read_text() + "CREATE SCHEMA api;\nCREATE VIEW api.sales AS SELECT id, value "
                                                 "FROM public.sales;\nALTER TABLE tickets ADD COLUMN sale_id int "
                                                 "REFERENCES sales (id);\n")
    p.run("--phase4-confirm-destructive", seed=True)  # catalog_diff fails: the plan does not expect these
    assert len(ledger_files(p)) == 3
    p.execute("INSERT INTO sales (id, customer_id, value) VALUES (1001, 1, 5)")
    state = (schema_of(p), ledger_files(p), p.query("SELECT count(*), sum(value) FROM sales"))
    steps = REVERT_STEPS if mode == "revert" else RESTORE_STEPS
    args = ["-v", f"--phase4-rollback={mode}", "--phase4-accept-loss", "--phase4-json=out.json"]
    for step in steps[1:]:
        result = p.pytester.runpytest("--phase4", "-p", "no:cacheprovider", f"--dsn={p.dsn}", *args,
                                      plugins=[FailAt(step)])
        assert result.ret == 1, step
        assert outcomes_of(result)[f"{SB}::rollback::{step}"] == "FAILED", step
        assert (schema_of(p), ledger_files(p), p.query("SELECT count(*), sum(value) FROM sales")) == state, step
        result.stdout.fnmatch_lines(["Rollback: * FAILED *", f"rollback FAILED at {step}: *"])
        data = json.loads((p.path / "out.json").read_text())
        assert data["rollback_required"]["required"] is True, step
        assert f"FAILED at {step}" in data["rollback_required"]["reason"] or step == "assess"
        assert data["issues"], step
        assert [c["step"] for c in data["checks"]] == steps
        assert "<td>Rollback</td><td><span class='phase4-badge phase4-bad'>FAILED</span>" in p.report()
    assert p.pytester.runpytest("--phase4", "-p", "no:cacheprovider", f"--dsn={p.dsn}", *args).ret == 0
    assert "sale_id" not in p.columns("tickets")
    assert p.query("SELECT to_regnamespace('api')") == [(None,)]


def test_revert_refuses_to_drop_what_the_application_built_on_the_plans_objects(
        project: Callable[..., Project]) -> None:
    p = project("mini", "safe")
    migration = p.path / "checks/migrations/20250101000001_create_views.sql"
    migration.write_text(migration.read_text() + PRIORITY)
    p.run("--phase4-confirm-destructive", seed=True)  # catalog_diff fails: the plan does not expect these
    assert len(ledger_files(p)) == 3
    p.execute(APP_ON_PLAN_OBJECTS)
    refusals = [
        ("CREATE INDEX app_idx ON public.escalations (p);", "DROP INDEX public.app_idx;",
         ["found:    1 object(s) the plan did not create",
          "  index public.app_idx (not created by the plan) would be dropped with table public.escalations"]),
        ("", "DROP FUNCTION reporting.ticket_stats(public.priority);",
         ["found:    1 object(s) that objects the plan did not create depend on",
          "  type public.priority: function reporting.ticket_stats(priority) depends on type priority",
          "hint:     nothing was changed: drop or change those objects first (they are not the plan's), or use "
          "--phase4-rollback=restore"]),
        # a delete and an insert keep the count: the rows' xmin still tells they are not the plan's
        ("DELETE FROM public.escalations WHERE id = 1; INSERT INTO public.escalations VALUES (7, 'high');", "",
         ["found:    1 loss(es)",
          "  public.escalations: 1 row(s) written or changed since by others (not by the plan's migrations) would "
          "be dropped with it"]),
    ]
    for before, after, lines in refusals:
        if before:
            p.execute(before)
        state = (schema_of(p), ledger_files(p), p.query("SELECT * FROM public.escalations ORDER BY id"))
        result = p.run("-v", "--phase4-rollback")
        assert result.ret == 1
        result.stdout.fnmatch_lines(lines)
        assert (schema_of(p), ledger_files(p), p.query("SELECT * FROM public.escalations ORDER BY id")) == state
        if after:
            p.execute(after)
    result = p.run("-v", "--phase4-rollback", "--phase4-accept-loss")
    assert result.ret == 0, result.stdout.str()
    assert p.query("SELECT count(*) FROM public.app_uploads") == [(1000,)]
    assert p.query("SELECT to_regtype('public.priority'), to_regclass('public.escalations')") == [(None, None)]
    dumps = sorted(p.path.glob("_backups/*/*/before-rollback-*/full.dump"), key=lambda f: f.stat().st_mtime)
    assert len(dumps) == 3  # one per rollback that reached its safety_dump step, none overwritten
    dump = dumps[-1]
    rows = subprocess.run([str(shutil.which("pg_restore")), "--data-only", "--table=escalations", "--file=-",
                           str(dump)], capture_output=True, text=True, check=True).stdout
    assert "7\thigh" in rows  # the application's row is in the pre-rollback dump


def test_only_the_migrations_own_objects_are_recorded(scratch_dsn: str) -> None:
    with psycopg.connect(scratch_dsn) as migration, psycopg.connect(scratch_dsn, autocommit=True) as app:
        seen = changes.before(migration)
        app.execute("CREATE TABLE app_meanwhile (id int)")  # committed by another session during the migration
        migration.execute("CREATE TABLE planned (id int); INSERT INTO planned VALUES (1), (2)")
        record = changes.store(migration, "m.sql", seen)
        migration.rollback()
    assert [c.describe() for c in record.changes] == ["created table public.planned",
                                                      "created table column public.planned.id"]
    assert record.rows == [changes.RowChange("public.planned", 2, 0, 0)]


def test_nothing_applied_is_nothing_to_roll_back_and_later_writes_stay(project: Callable[..., Project]) -> None:
    p = project("mini", "safe")
    (p.path / "checks/migrations/20250101000001_create_views.sql").write_text(
        "ALTER TABLE sales ADD CONSTRAINT small CHECK (value < 50);\n")
    result = p.run("--phase4-confirm-destructive", seed=True)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["Rollback: * NO * 20250101000001_create_views.sql failed (its own transaction was "
                                 "rolled back) and no migration of the plan is applied: nothing to roll back; fix "
                                 "it and rerun"])
    p.execute("INSERT INTO sales (id, customer_id, value) SELECT 1000 + g, 1, g FROM generate_series(1, 300) g")
    for _ in range(2):
        result = p.run("-v", "--phase4-rollback")
        assert result.ret == 1
        result.stdout.fnmatch_lines(["rollback REFUSED: nothing to roll back: no migration of the plan is applied "
                                     "(ledger); nothing was changed"])
        assert p.query("SELECT count(*) FROM sales") == [(400,)]
        assert evidence(p)["rollback_required"]["required"] is False


def test_a_backup_of_another_database_with_the_same_name_is_refused(project: Callable[..., Project],
                                                                    pg_server: Any) -> None:
    p = project("mini", "safe")
    assert p.run("--phase4-confirm-destructive", seed=True).ret == 0  # "staging": backed up and migrated
    staging = next(p.path.glob("_backups/*/*/BACKUP_INFO.txt")).parent
    name = p.query("SELECT current_database()")[0][0]
    pg_server.drop_database(name)
    pg_server.create_database(name)  # "production": same name, same cluster, never backed up into that folder
    assert p.run("--phase4-confirm-destructive", "--phase4-backup-dir=prod_backups", seed=True).ret == 0
    p.execute("CREATE TABLE precious (x int); INSERT INTO precious VALUES (42)")
    for args in (["--phase4-rollback"], [f"--phase4-backup-dir={staging}", "--phase4-rollback=restore",
                                         "--phase4-accept-loss"]):
        result = p.run("-v", *args)
        assert result.ret == 1, result.stdout.str()
        result.stdout.fnmatch_lines(["*whose marker * this database does not hold: another database of that name*"])
        assert p.query("SELECT x FROM precious") == [(42,)]
        assert "customer_name" not in p.columns("sales")


def test_revert_quotes_every_name_it_touches(project: Callable[..., Project]) -> None:
    p = project("mini", "safe")
    setup = p.path / "checks/setup/schema.sql"
    setup.write_text(setup.read_text() + HOSTILE_SETUP)
    migration = p.path / "checks/migrations/20250101000001_create_views.sql"
    migration.write_text(migration.read_text() + HOSTILE_MIGRATION)
    assert p.run("-m", "preflight", seed=True).ret == 0
    before = schema_of(p)
    p.run("--phase4-confirm-destructive")  # catalog_diff fails: the plan does not expect these
    assert len(ledger_files(p)) == 3
    p.execute('INSERT INTO "we ""ird"" ü" VALUES (21)')
    result = p.run("-v", "--phase4-rollback")
    assert result.ret == 0, result.stdout.str()
    assert schema_of(p) == before
    assert p.query('SELECT count(*), count(DISTINCT "co,l ""x"""), min("co,l ""x""") FROM "we ""ird"" ü"') == [
        (21, 21, "d")]  # 20 values back, the row inserted since got the default
    assert p.query("SELECT count(*) FROM customers") == [(10,)]


def test_pg_restore_listings_and_copy_lines_are_read_as_pg_restore_writes_them() -> None:
    trigger = pgscript.parse_entry("3223; 2620 16482 TRIGGER public t tt postgres")
    data = pgscript.parse_entry("3370; 0 16456 TABLE DATA public we ird ü postgres")
    assert trigger is not None
    assert (trigger.catalog, trigger.oid, trigger.desc, trigger.schema, trigger.tag) == (2620, 16482, "TRIGGER",
                                                                                         "public", "t tt")
    assert data is not None
    assert (data.desc, data.tag, data.owner) == ("TABLE DATA", "we ird ü", "postgres")
    assert pgscript.copy_columns(b'COPY public."we ""ird"" \xc3\xbc" (id, "co,l ""x""", "B") FROM stdin;') == (
        'public."we ""ird"" ü"', ["id", 'co,l "x"', "B"])


def test_differences_count_changes_not_table_lines() -> None:
    before = snapshot.Snapshot("public", {"a": 1}, fingerprint={"column a.x": "text"})
    after = snapshot.Snapshot("public", {"a": 1}, fingerprint={"column a.x": "integer"})
    count, lines = differences(before, after)
    assert count == 1
    assert len(lines) == 2  # the header and the one change


def test_a_varchar_check_survives_dump_and_restore_and_a_real_change_is_still_found() -> None:
    was = "CHECK (((name)::text = ANY ((ARRAY['a'::character varying, 'b'::character varying])::text[])))"
    restored = "CHECK (((name)::text = ANY (ARRAY[('a'::character varying)::text, ('b'::character varying)::text])))"
    changed = "CHECK (((name)::text = ANY (ARRAY[('a'::character varying)::text, ('c'::character varying)::text])))"
    assert snapshot.diff({"constraint t.c": was}, {"constraint t.c": restored}) == []
    assert [c.change for c in snapshot.diff({"constraint t.c": was}, {"constraint t.c": changed})] == ["changed"]


def test_backups_are_one_moment_checked_by_a_restore_even_with_a_varchar_check_and_writes_during_it(
        project: Callable[..., Project]) -> None:
    p = project("mini", "safe")
    p.pytester.makeconftest(WRITES_DURING_BACKUP.replace("DSN", repr(p.dsn)))
    setup = p.path / "checks/setup/schema.sql"
    setup.write_text(setup.read_text() + VARCHAR_CHECK)
    result = p.run("-v", "-m", "preflight or backup", "--phase4-verify-restore", seed=True)
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*backup::backup[[]restore[]] PASSED*"])
    assert p.query("SELECT count(*) FROM sales") == [(117,)]
    saved = snapshot.Snapshot.from_json(next(p.path.glob("_backups/*/*/snapshot.json")).read_text())
    assert saved.counts["sales"] == 100
    assert saved.formula["version"] == 2
    assert saved.settings == {**checksums.PINNED, "search_path": "public"}


def test_checksums_do_not_depend_on_session_settings(project: Callable[..., Project],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    p = project("mini", "safe")
    plan = p.path / "checks/phase4.toml"
    plan.write_text(plan.read_text().replace('tables = ["customers", "sales", "tickets"]\n\n[[post]]\ncheck = '
                                             '"catalog_diff"', 'tables = ["customers", "sales", "tickets", "events"]'
                                             '\n\n[[post]]\ncheck = "catalog_diff"'))
    setup = p.path / "checks/setup/schema.sql"
    setup.write_text(setup.read_text() + EVENTS)
    migration = p.path / "checks/migrations/20250101000003_add_indexes.sql"
    migration.write_text(migration.read_text() + EVENTS_ROUNDED)
    assert p.run("-m", "preflight", seed=True).ret == 0
    p.execute("DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET extra_float_digits = 0', current_database()); END $$")
    monkeypatch.setenv("PGTZ", "UTC")
    result = p.run("-v", "--phase4-confirm-destructive")
    assert outcomes_of(result)[f"{SB}::post::checksum_unchanged[events]"] == "FAILED"  # 0.30000000000000004 -> 0.3
    monkeypatch.setenv("PGTZ", "America/New_York")
    result = p.run("-v", "--phase4-rollback=restore", "--phase4-accept-loss")
    assert result.ret == 0, result.stdout.str()
    assert outcomes_of(result)[f"{SB}::rollback::checksums"] == "PASSED"


def test_the_old_columns_mode_is_a_usage_error(project: Callable[..., Project]) -> None:
    p = project("mini", "safe")
    result = p.run("--phase4-rollback=columns", seed=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --phase4-rollback=columns no longer exists: use --phase4-rollback (revert "
                                 "re-adds and refills dropped columns too)"])
