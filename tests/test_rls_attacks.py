"""Attacks on row-level security exposure (issue 12): migrations that let `anon` or a signed-in user of tenant A
read or write rows it could not before (another tenant's, above all) through a green run, and ways to make the
checks prove nothing. Each runs the Supabase-shaped application (examples/supabase/: RLS through
auth.uid()-style policies, the platform's default privileges, three tenants) with its personas (tenant_a,
tenant_b, anon) and rls_exposure after every migration and in post (tests/examples/rls_attacks/), shows the leak
with SQL as the API runs it (SET LOCAL ROLE and request.jwt.claims), and asserts the safe behaviour: the run
fails, naming the exposure. Roles are cluster-wide: each is created only where absent, and what a test grants to
an API role is taken back."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql

from helpers import Project, outcomes_of

PLAN = "checks/phase4.toml"
T1, T2, T3 = (str(uuid.UUID(hashlib.md5(f"tenant{n}".encode()).hexdigest())) for n in (1, 2, 3))  # as data.sql
TENANT_A_USER = "SELECT id FROM public.profiles WHERE tenant_id = md5('tenant1')::uuid ORDER BY email LIMIT 1"


def attacked(project: Callable[..., Project], *migrations: tuple[str, str], setup: str = "") -> Project:
    """The application with its personas, and these migrations (name, SQL) at the end of its plan, each verified by
    rls_exposure; `setup` is SQL the application had before (run after its own setup)."""
    p = project("supabase", "rls_attacks")
    plan = p.path / PLAN
    text = plan.read_text()
    if setup:
        (p.path / "checks" / "setup" / "before.sql").write_text(setup)
        text = text.replace('"setup/data.sql"]', '"setup/data.sql", "setup/before.sql"]')
    for n, (name, body) in enumerate(migrations, 1):
        file = f"2025070100000{n}_{name}.sql"
        (p.path / "checks" / "attack" / file).write_text(body)
        text += f'\n[[migration]]\nfile = "{file}"\n  [[migration.verify]]\n  check = "rls_exposure"\n'
    plan.write_text(text)
    return p


@contextmanager
def as_user(p: Project, role: str = "authenticated") -> Iterator[psycopg.Connection[Any]]:
    """A connection that is the API's request: `role` with tenant A's user's claims (anon: none), in a transaction
    rolled back at the end (what it writes is undone)."""
    claims: dict[str, str] = {"role": role}
    if role == "authenticated":
        claims |= {"sub": str(p.query(TENANT_A_USER)[0][0]), "tenant_id": T1}
    with psycopg.connect(p.dsn) as conn:
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
        conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
        try:
            yield conn
        finally:
            conn.rollback()


def seen(p: Project, query: str, role: str = "authenticated") -> Any:
    with as_user(p, role) as conn:
        row = conn.execute(query.encode()).fetchone()
    return row[0] if row else None


def total(p: Project, query: str) -> Any:
    """The same query as the checking role (postgres, who bypasses RLS): every tenant's rows."""
    return p.query(query)[0][0]


def failures(result: pytest.RunResult) -> str:
    """The text of the failed tests (between pytest's FAILURES header and the phase4 summary)."""
    text = result.stdout.str()
    start = text.find("= FAILURES =")
    return text[start:text.find("phase4 execution summary", start)] if start >= 0 else ""


def assert_fails_naming(result: pytest.RunResult, step: str, *names: str) -> None:
    outcomes = outcomes_of(result)
    checks = {k: v for k, v in outcomes.items() if k.startswith(f"{PLAN}::{step}::") and
              k.rsplit("::", 1)[1] in ("rls_exposure[plan]", "personas")}
    assert "FAILED" in checks.values(), f"a green run let the exposure through: {checks}"
    assert result.ret == 1
    text = failures(result)
    for name in names:
        assert name in text, f"{name} is not named among the failures:\n{text}"


# A SECURITY DEFINER function (search_path fixed, as the check asks) that reads an RLS table runs as its owner:
# PostgREST serves it as /rpc/ticket_titles and a view over it shows whatever it returns. The default privileges
# let anon and authenticated execute it and read the view. Splinter flags the function (0028, 0029:
# anon/authenticated_security_definer_function_executable); the view depends on the function, not on the table,
# so 0010 finds no RLS table under it, and its definition read with the persona's rights calls the same function.
DEFINER_FUNCTION = """
CREATE FUNCTION public.ticket_titles() RETURNS TABLE (id uuid, tenant_id uuid, title text)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ''
  AS $$ SELECT t.id, t.tenant_id, t.title FROM public.tickets t WHERE t.deleted_at IS NULL $$;
CREATE VIEW public.ticket_feed WITH (security_invoker = true) AS SELECT * FROM public.ticket_titles();
"""


def test_a_view_over_a_security_definer_function_shows_every_tenant(project: Callable[..., Project]) -> None:
    p = attacked(project, ("ticket_feed", DEFINER_FUNCTION))
    result = p.run("-v", seed=True)
    assert seen(p, "SELECT count(*) FROM public.tickets", "anon") == 0
    every = total(p, "SELECT count(*) FROM public.tickets WHERE deleted_at IS NULL")
    assert seen(p, "SELECT count(*) FROM public.ticket_feed", "anon") == every  # every tenant's rows, to anon
    assert seen(p, "SELECT count(*) FROM public.ticket_titles()", "anon") == every  # /rpc/ticket_titles
    assert seen(p, "SELECT count(DISTINCT tenant_id) FROM public.ticket_feed") == 3  # tenant A sees B's and C's
    assert_fails_naming(result, "20250701000001_ticket_feed", "public.ticket_feed", "public.ticket_titles")


# A security_invoker view is only as safe as what it reads: here a view and a materialized view in a schema the API
# does not serve (so no check looks at them), which run with postgres's rights, read through security_invoker views
# in public. The grants on the private schema are what make the public views work for the API roles.
PRIVATE_READS = """
CREATE SCHEMA private;
CREATE VIEW private.tickets_all AS SELECT id, tenant_id, title, status FROM public.tickets;
CREATE MATERIALIZED VIEW private.ticket_stats AS
  SELECT tenant_id, project_id, status, count(*) AS tickets FROM public.tickets GROUP BY 1, 2, 3;
GRANT USAGE ON SCHEMA private TO anon, authenticated;
GRANT SELECT ON private.tickets_all, private.ticket_stats TO anon, authenticated;
CREATE VIEW public.ticket_list WITH (security_invoker = true) AS SELECT * FROM private.tickets_all;
CREATE VIEW public.ticket_stats WITH (security_invoker = true) AS SELECT * FROM private.ticket_stats;
"""


def test_an_invoker_view_over_a_private_definer_view_or_materialized_view_shows_every_tenant(
        project: Callable[..., Project]) -> None:
    p = attacked(project, ("private_reads", PRIVATE_READS))
    result = p.run("-v", seed=True)
    assert seen(p, "SELECT count(*) FROM public.ticket_list", "anon") == total(p, "SELECT count(*) FROM public.tickets")
    assert seen(p, "SELECT count(DISTINCT tenant_id) FROM public.ticket_list") == 3
    assert seen(p, "SELECT count(DISTINCT tenant_id) FROM public.ticket_stats") == 3
    assert seen(p, "SELECT count(DISTINCT tenant_id) FROM public.tickets") == 1  # its own tenant only
    assert_fails_naming(result, "20250701000001_private_reads", "public.ticket_list", "public.ticket_stats")


# A new table filled from an RLS table by the migration (an archive, a denormalized copy) with row-level security
# on and the dashboard's "Enable read access for authenticated users" policy: every signed-in user reads every
# tenant's rows. No catalog rule covers a SELECT policy (on purpose: public reading), and the personas compare only
# views and tables that existed before, so what a tenant sees of a new table is never looked at.
NEW_TABLE = """
CREATE TABLE public.ticket_archive AS SELECT id, tenant_id, project_id, title, status FROM public.tickets;
ALTER TABLE public.ticket_archive ADD PRIMARY KEY (id);
ALTER TABLE public.ticket_archive ENABLE ROW LEVEL SECURITY;
CREATE POLICY "Enable read access for authenticated users" ON public.ticket_archive FOR SELECT TO authenticated
  USING (true);
"""


def test_a_new_table_with_every_tenants_rows_and_a_read_all_policy_is_caught(
        project: Callable[..., Project]) -> None:
    p = attacked(project, ("ticket_archive", NEW_TABLE))
    result = p.run("-v", seed=True)
    assert seen(p, "SELECT count(DISTINCT tenant_id) FROM public.tickets") == 1
    assert seen(p, "SELECT count(DISTINCT tenant_id) FROM public.ticket_archive") == 3  # tenants B and C too
    assert_fails_naming(result, "20250701000001_ticket_archive", "public.ticket_archive")


# Column-level privileges (Supabase's documented "column level security": revoke the table, grant some columns)
# give as much of each row as the columns granted, yet both checks read only table-level SELECT: rls_exposure's
# readers come from the relation's ACL, and a persona without table-level SELECT is "no SELECT privilege", so not
# counted. Here a definer view the migration creates, and an internal table without RLS that no API role could
# read before (its column grant is not even a reason to count the personas again).
COLUMN_GRANTS = """
CREATE VIEW public.ticket_titles AS SELECT id, tenant_id, title FROM public.tickets;
REVOKE ALL ON public.ticket_titles FROM anon, authenticated;
GRANT SELECT (id, tenant_id, title) ON public.ticket_titles TO anon, authenticated;
GRANT SELECT (id, tenant_id, email) ON public.staff_directory TO authenticated;
"""
STAFF_DIRECTORY = """
CREATE TABLE public.staff_directory AS SELECT id, tenant_id, email, full_name FROM public.profiles;
REVOKE ALL ON public.staff_directory FROM anon, authenticated;
"""


def test_column_level_grants_on_a_definer_view_and_a_table_without_rls_are_caught(
        project: Callable[..., Project]) -> None:
    p = attacked(project, ("column_grants", COLUMN_GRANTS), setup=STAFF_DIRECTORY)
    result = p.run("-v", seed=True)
    assert seen(p, "SELECT count(DISTINCT tenant_id) FROM public.ticket_titles", "anon") == 3
    assert seen(p, "SELECT count(DISTINCT tenant_id) FROM public.staff_directory") == 3
    assert seen(p, "SELECT count(email) FROM public.staff_directory") == total(
        p, "SELECT count(*) FROM public.profiles")  # every tenant's staff e-mail addresses
    assert_fails_naming(result, "20250701000001_column_grants", "public.ticket_titles", "public.staff_directory")


# Writes: permissive policies whose condition is true for every signed-in user without being the literal `true`
# that rls_policy_always_true matches (auth.uid() IS NOT NULL, a column compared with itself), and the restrictive
# policy that kept comments their author's dropped. The personas count only what they see, so a write widening
# is nobody's business: tenant A may now update every tenant's tickets, delete every tenant's comments and write
# comments into tenant B.
WRITES = """
CREATE POLICY members_edit ON public.tickets FOR UPDATE TO authenticated
  USING (auth.uid() IS NOT NULL) WITH CHECK (auth.uid() IS NOT NULL);
CREATE POLICY members_clean ON public.comments FOR DELETE TO authenticated USING (tenant_id = tenant_id);
CREATE POLICY members_add ON public.comments FOR INSERT TO authenticated WITH CHECK (auth.uid() IS NOT NULL);
DROP POLICY own_comments ON public.comments;
"""


def test_policies_that_let_every_signed_in_user_write_every_tenants_rows_are_caught(
        project: Callable[..., Project]) -> None:
    p = attacked(project, ("member_writes", WRITES))
    result = p.run("-v", seed=True)
    with as_user(p) as conn:  # tenant A, in a transaction rolled back
        assert conn.execute("UPDATE public.tickets SET title = 'defaced'").rowcount == total(
            p, "SELECT count(*) FROM public.tickets")
        assert conn.execute("DELETE FROM public.comments").rowcount == total(p, "SELECT count(*) FROM public.comments")
        conn.execute("INSERT INTO public.comments (tenant_id, ticket_id, author_id, body) SELECT %s, id, reporter_id,"
                     " 'spam' FROM public.tickets LIMIT 1", (T2,))
    assert_fails_naming(result, "20250701000001_member_writes", "members_edit", "members_clean", "members_add",
                        "own_comments")


# Views the plan did not create or change are never compared: not by rls_exposure (plan scope), not by the personas
# (only the plan's views are held to their own-rights count; only tables are compared before and after). Yet what
# a kept view shows moves with what it depends on: here a definer view that filtered by a function (the pattern
# from before security_invoker) shows every tenant once the migration rewrites the function, and a back-office
# definer view granted only to a reporting role opens to every signed-in user when the migration makes them
# members of that role.
KEPT_VIEWS = """
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'phase4_reporting') THEN
    CREATE ROLE phase4_reporting NOLOGIN;
  END IF;
END $$;
CREATE FUNCTION public.visible_tenant(t uuid) RETURNS boolean LANGUAGE sql STABLE
  AS $$ SELECT t = auth.tenant_id() $$;
CREATE VIEW public.ticket_board AS
  SELECT id, tenant_id, title, status FROM public.tickets WHERE public.visible_tenant(tenant_id);
CREATE VIEW public.tenant_report AS SELECT tenant_id, id, title, status FROM public.tickets;
REVOKE ALL ON public.tenant_report FROM anon, authenticated, service_role;
GRANT SELECT ON public.tenant_report TO phase4_reporting;
"""
WIDEN_KEPT_VIEWS = """
CREATE OR REPLACE FUNCTION public.visible_tenant(t uuid) RETURNS boolean LANGUAGE sql STABLE
  AS $$ SELECT t = auth.tenant_id() OR auth.uid() IS NOT NULL $$;
GRANT phase4_reporting TO authenticated;
"""


def test_a_kept_view_that_shows_more_after_the_migration_is_caught(project: Callable[..., Project]) -> None:
    p = attacked(project, ("widen_kept_views", WIDEN_KEPT_VIEWS), setup=KEPT_VIEWS)
    try:
        result = p.run("-v", seed=True)
        assert seen(p, "SELECT count(DISTINCT tenant_id) FROM public.ticket_board") == 3  # was 1
        assert seen(p, "SELECT count(DISTINCT tenant_id) FROM public.tenant_report") == 3  # was no access
    finally:
        p.execute("REVOKE phase4_reporting FROM authenticated")
    assert_fails_naming(result, "20250701000001_widen_kept_views", "public.ticket_board", "public.tenant_report")


# The personas are counted again after a migration only when its record shows a change of visibility, a row
# written, or a role statement at the top level of its file. A migration that adds a column (recorded, not a
# visibility change) and grants a role inside a DO block (the usual "create the role if absent" idiom) is not
# counted again: "what the personas see stands". Here the membership puts every signed-in user under the back
# office's read-all policy on tickets; the same GRANT outside the DO block fails the personas check.
BACK_OFFICE = """
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'phase4_backoffice') THEN
    CREATE ROLE phase4_backoffice NOLOGIN;
  END IF;
END $$;
GRANT SELECT ON public.tickets TO phase4_backoffice;
CREATE POLICY backoffice_reads ON public.tickets FOR SELECT TO phase4_backoffice USING (true);
"""
GRANT_IN_DO = """
ALTER TABLE public.tickets ADD COLUMN due_on date;
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'phase4_backoffice') THEN
    CREATE ROLE phase4_backoffice NOLOGIN;
  END IF;
  GRANT phase4_backoffice TO authenticated;
END
$$;
"""


def test_a_role_granted_inside_a_do_block_has_the_personas_counted_again(project: Callable[..., Project]) -> None:
    p = attacked(project, ("backoffice_role", GRANT_IN_DO), setup=BACK_OFFICE)
    try:
        result = p.run("-v", seed=True)
        assert seen(p, "SELECT count(DISTINCT tenant_id) FROM public.tickets") == 3  # was its own tenant only
    finally:
        p.execute("REVOKE phase4_backoffice FROM authenticated")
    assert_fails_naming(result, "20250701000001_backoffice_role", "public.tickets")


# Which schemas the API serves is PostgREST's db-schemas, which self-hosted Supabase and PostgREST read from the
# database (ALTER ROLE authenticator SET pgrst.db_schemas, then NOTIFY pgrst, 'reload config'), as splinter does
# to know what is exposed. A migration that exposes a new schema with a definer view in it is checked against the
# plan's own list only, which does not name it.
AUTHENTICATOR = """
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'authenticator') THEN
    CREATE ROLE authenticator NOINHERIT NOLOGIN;
  END IF;
END $$;
ALTER ROLE authenticator SET pgrst.db_schemas = 'public, api';
"""
REPORTS_SCHEMA = """
CREATE SCHEMA reports;
GRANT USAGE ON SCHEMA reports TO anon, authenticated;
CREATE VIEW reports.ticket_titles AS SELECT id, tenant_id, title FROM public.tickets;
GRANT SELECT ON reports.ticket_titles TO anon, authenticated;
ALTER ROLE authenticator SET pgrst.db_schemas = 'public, api, reports';
NOTIFY pgrst, 'reload config';
"""


def test_a_schema_the_migration_exposes_through_pgrst_db_schemas_is_checked(project: Callable[..., Project]) -> None:
    p = attacked(project, ("reports_api", REPORTS_SCHEMA), setup=AUTHENTICATOR)
    try:
        result = p.run("-v", seed=True)
        assert seen(p, "SELECT count(DISTINCT tenant_id) FROM reports.ticket_titles", "anon") == 3
    finally:
        p.execute("ALTER ROLE authenticator RESET pgrst.db_schemas")
    assert_fails_naming(result, "20250701000001_reports_api", "reports.ticket_titles")


# A foreign table has no row-level security (PostgreSQL refuses it), and the default privileges grant one created in
# public to anon and authenticated (splinter 0017 foreign_table_in_api). Through postgres_fdw's loopback server it
# reads the tickets as the user mapping's role: every tenant's, to anon. Neither check knows foreign tables: the
# catalog rules look at tables, views and materialized views, the personas count the same.
FOREIGN_TABLE = """
CREATE EXTENSION IF NOT EXISTS postgres_fdw;
DO $$ BEGIN
  EXECUTE format('CREATE SERVER loopback FOREIGN DATA WRAPPER postgres_fdw OPTIONS (dbname %L, host %L, port %L)',
                 current_database(), current_setting('unix_socket_directories'), current_setting('port'));
END $$;
CREATE USER MAPPING FOR PUBLIC SERVER loopback OPTIONS (user 'postgres', password_required 'false');
CREATE FOREIGN TABLE public.ticket_mirror (id uuid, tenant_id uuid, title text) SERVER loopback
  OPTIONS (schema_name 'public', table_name 'tickets');
"""


def test_a_foreign_table_in_an_exposed_schema_is_caught(project: Callable[..., Project]) -> None:
    p = attacked(project, ("ticket_mirror", FOREIGN_TABLE))
    result = p.run("-v", seed=True)
    every = total(p, "SELECT count(*) FROM public.tickets")
    assert seen(p, "SELECT count(*) FROM public.ticket_mirror", "anon") == every
    assert_fails_naming(result, "20250701000001_ticket_mirror", "public.ticket_mirror")


# A widening the personas found is forgotten by the next run: the migration is in the ledger, the next run's first
# count is taken after it ("before this run's migrations"), and its personas test passes with "applied before this
# run: no count from before it to compare kept tables". A re-run (CI's retry, "it was flaky") is green with tenant
# A reading every tenant's tickets, and its evidence is what reaches the change board.
READ_ALL = """
CREATE POLICY members_read ON public.tickets FOR SELECT TO authenticated USING (auth.uid() IS NOT NULL);
"""


def test_a_widening_found_by_one_run_is_not_forgotten_by_the_next(project: Callable[..., Project]) -> None:
    p = attacked(project, ("members_read", READ_ALL))
    first = p.run("-v", seed=True)
    assert outcomes_of(first)[f"{PLAN}::20250701000001_members_read::personas"] == "FAILED"
    again = p.run("-v")
    assert seen(p, "SELECT count(DISTINCT tenant_id) FROM public.tickets") == 3
    assert_fails_naming(again, "20250701000001_members_read", "public.tickets")


# A persona that is nobody proves nothing: a user_query whose lookup misses (a typo'd e-mail in a scalar
# subquery) still returns its one row, of NULLs, so the persona is a signed-in user without a user id or a
# tenant: it sees no row of any table before the migration and none after, whatever the policies say. The
# migration lets every signed-in user read every tenant's tickets; the only signed-in persona cannot see it.
NOBODY = """[[persona]]
name = "tenant_a"
role = "authenticated"
user_query = '''SELECT (SELECT id FROM public.profiles WHERE email = 'user1@example.org') AS sub,
  (SELECT tenant_id FROM public.profiles WHERE email = 'user1@example.org') AS tenant_id'''

"""


def test_a_persona_whose_user_query_gives_no_user_is_refused(project: Callable[..., Project]) -> None:
    p = attacked(project, ("members_read", READ_ALL))
    plan = p.path / PLAN
    text = plan.read_text()  # tenant_a and tenant_b give way to the persona that is nobody
    start, end = text.index('[[persona]]\nname = "tenant_a"'), text.index('[[persona]]\nname = "anon"')
    plan.write_text(text[:start] + NOBODY + text[end:])
    result = p.run("-v", seed=True)
    # the run halts in preflight: the migration that would let every signed-in user read every tenant never applies
    assert seen(p, "SELECT count(DISTINCT tenant_id) FROM public.tickets") == 1
    evidence = json.loads(sorted((p.path / "reports").glob("phase4-*[0-9].json"))[-1].read_text())["personas"]
    assert evidence["personas"][0]["claims"] == {"role": "authenticated", "sub": None, "tenant_id": None}
    assert {m["seen"]["tenant_a"]["public.tickets"]["rows"] for m in evidence["moments"]} == {0}  # before, after
    outcomes = outcomes_of(result)
    steps = [f"{PLAN}::preflight::personas", f"{PLAN}::20250701000001_members_read::personas"]
    assert "FAILED" in [outcomes.get(s) for s in steps], outcomes
    assert result.ret == 1
    assert "tenant_a" in failures(result)


# The personas are counted on the checking connection, whose session user is a superuser (or a member of every
# persona's role): SQL run as the persona may set the role back (set_config('role', ...) is checked against the
# session user), and the counts that follow in the persona's savepoint are the superuser's. A definer view that
# does so as it is read is then compared with its definition read as the superuser too: no widening, while the
# API (whose session user, the authenticator, may not become postgres) shows every caller every tenant's rows.
# A plan may rely on the personas alone (rls_exposure, which would name this view, is left out here).
BECOMES_CHECKER = """
CREATE VIEW public.zz_ticket_feed AS
  SELECT t.id, t.tenant_id, t.title FROM public.tickets t
  WHERE pg_catalog.set_config('role', session_user::text, true) IS NOT NULL;
"""


def test_sql_run_as_a_persona_cannot_count_as_the_checking_role(project: Callable[..., Project]) -> None:
    p = attacked(project, ("ticket_feed", BECOMES_CHECKER))
    plan = p.path / PLAN
    plan.write_text(plan.read_text().replace('  [[migration.verify]]\n  check = "rls_exposure"\n', "")
                    .replace('[[post]]\ncheck = "rls_exposure"\n', ""))
    result = p.run("-v", seed=True)
    every = total(p, "SELECT count(*) FROM public.tickets")
    assert seen(p, "SELECT count(*) FROM public.zz_ticket_feed", "anon") == every
    assert seen(p, "SELECT count(*) FROM public.tickets", "anon") == 0
    outcomes = outcomes_of(result)
    assert outcomes[f"{PLAN}::20250701000001_ticket_feed::personas"] == "FAILED", outcomes
    assert "public.zz_ticket_feed" in failures(result)
