"""Second round of attacks on the blast radius (issue 14): what a DBA's real migrations do on the scratch copy,
on a throwaway server or (--phase4-blast-copy=target) on the target's server. Each test asserts the safe
behaviour, on real PostgreSQL, as users run the plugin (`pytest --phase4 -m preflight`)."""

from __future__ import annotations

import html
from collections.abc import Callable

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from helpers import Project, outcomes_of
from pytest_phase4.db.embedded import EmbeddedPostgres

MINI = "checks/phase4.toml"
CODE = f"{MINI}::blast_radius::database_code[all_schemas]"
FOURTH = """
[[migration]]
file = "20250101000004_ops.sql"
title = "Operations"
"""


def _project(project: Callable[..., Project], migration: str, setup: str = "") -> Project:
    """mini with the database_code check and a fourth pending migration; `setup` appended to its seed."""
    p = project("mini", "blast")
    plan = p.path / "checks/phase4.toml"
    text = plan.read_text().replace("[[post]]", FOURTH + "\n[[post]]", 1)
    plan.write_text(text + '\n[[blast_radius]]\ncheck = "database_code"\n')
    (p.path / "checks/migrations/20250101000004_ops.sql").write_text(migration)
    if setup:
        schema = p.path / "checks/setup/schema.sql"
        schema.write_text(schema.read_text() + setup)
    return p


def _texts(p: Project, result: object) -> dict[str, str]:
    return {"terminal": result.stdout.str(),  # type: ignore[attr-defined]
            "html": html.unescape(p.report()),
            "json": "\n".join(f.read_text() for f in (p.path / "reports").glob("phase4-*.json")),
            "junit": html.unescape((p.path / "junit.xml").read_text())}


def test_a_password_in_a_do_block_not_tried_on_the_copy_never_reaches_the_report(
        project: Callable[..., Project], pg_server: EmbeddedPostgres) -> None:
    """The idempotent way to create a login role in a migration is a DO block (CREATE ROLE has no IF NOT EXISTS).
    The copy rightly does not run it, and lists it as not tried: the DO block itself is shown as `DO $$***$$`,
    but the reason quotes the statement it runs as written, so the new role's password is printed in the
    terminal, the HTML report, the JSON evidence and the JUnit XML that go to the change board."""
    password = "pw-7f3a9c2e"
    p = _project(project, "DO $$\nBEGIN\n  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'blast_app') THEN\n"
                          f"    CREATE ROLE blast_app LOGIN PASSWORD '{password}';\n  END IF;\nEND $$;\n")
    try:
        result = p.run("-v", "-m", "preflight", "--junitxml=junit.xml", seed=True)
        assert outcomes_of(result)[CODE] == "PASSED"
        result.stdout.fnmatch_lines(["*not tried on the copy: 20250101000004_ops.sql:1: DO $$***$$ (it runs CREATE "
                                     "ROLE blast_app LOGIN PASSWORD '***': roles, databases and tablespaces *"])
        leaked = {where: password in text for where, text in _texts(p, result).items()}
        assert leaked == {where: False for where in leaked}
        assert not p.query("SELECT 1 FROM pg_roles WHERE rolname = 'blast_app'")
    finally:
        with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
            conn.execute("DROP ROLE IF EXISTS blast_app")


AUDIT = """
-- Audit rows that survive a rollback: the autonomous-transaction idiom, a dblink connection back to this database.
CREATE EXTENSION dblink;
CREATE TABLE audit_log (id serial PRIMARY KEY, what text NOT NULL);
CREATE FUNCTION audit_customer() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM dblink_exec('{dsn}',
                      format('INSERT INTO audit_log (what) VALUES (%L)', 'new customer ' || NEW.name));
  RETURN NEW;
END $$;
CREATE TRIGGER customers_audit AFTER INSERT ON customers FOR EACH ROW EXECUTE FUNCTION audit_customer();
"""
CODE_ON_COPY = """-- Lock the reporting role while its views are rebuilt, through the team's helper.
CREATE FUNCTION lock_reporting() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  ALTER ROLE blast_reporter NOLOGIN;
END $$;
SELECT lock_reporting();
INSERT INTO customers VALUES (1000, 'walk-in');
DO $$ BEGIN EXECUTE format('ALTER ROLE %I CONNECTION LIMIT 3', 'blast_reporter'); END $$;
"""


def test_code_the_migration_runs_on_the_copy_does_not_act_on_the_real_server(
        project: Callable[..., Project], pg_server: EmbeddedPostgres) -> None:
    """The statement filter reads only the migration's own text, and what a migration calls runs for real where
    the copy is: a helper function whose body says ALTER ROLE, a DO block's EXECUTE, a dblink audit trigger its
    seed INSERT fires. With the copy on the target's server, during `-m preflight` the real reporting role lost
    its login and the real audit log got a row. The copy now goes to a throwaway server, whose sessions connect
    to no other server: the role changes stay there, and the dblink call fails there, saying why."""
    p = _project(project, CODE_ON_COPY)
    schema = p.path / "checks/setup/schema.sql"
    schema.write_text(schema.read_text() + AUDIT.replace("{dsn}", p.dsn))
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS blast_reporter; CREATE ROLE blast_reporter LOGIN")
    try:
        result = p.run("-v", "-m", "preflight", seed=True)
        assert outcomes_of(result)[CODE] == "FAILED"
        result.stdout.fnmatch_lines(["where:    scratch database * on a throwaway server (local)",
                                     "hint:     what it runs connects to another server (dblink, postgres_fdw: *"
                                     "--phase4-blast-copy=target); nothing was done to the target"])
        found = (p.query("SELECT what FROM audit_log WHERE what LIKE '%walk-in%'"),
                 p.query("SELECT rolcanlogin, rolconnlimit FROM pg_roles WHERE rolname = 'blast_reporter'"))
        assert found == ([], [(True, -1)])  # the real audit log and the real role as they were
    finally:
        with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
            conn.execute("DROP ROLE IF EXISTS blast_reporter")


def test_resetting_statistics_in_a_migration_does_not_wipe_the_servers_pg_stat_statements(
        pytester: pytest.Pytester, pgss_server: EmbeddedPostgres) -> None:
    """Teams end a migration with `SELECT pg_stat_statements_reset()` to measure the new plans from zero. Its
    statistics are the cluster's (shared memory), not the copy's: run on the copy during `-m preflight`, it wipes
    what the server recorded for every database, the queries the pg_stat_statements check (and its confirmation
    after the migration) is built on, and the DBA's monitoring history, before anything was migrated."""
    import shutil

    from helpers import EXAMPLES

    dsn = pgss_server.create_database("pgss_reset_attack")
    try:
        for name in ("mini", "blast"):
            shutil.copytree(EXAMPLES / name, pytester.path, dirs_exist_ok=True)
        (pytester.path / "pyproject.toml").write_text("[tool.pytest.ini_options]\ninitial_sort = \"original\"\n")
        p = _project(lambda *_: Project(pytester, dsn), "SELECT pg_stat_statements_reset();\n")
        p.execute("CREATE EXTENSION pg_stat_statements")
        p.execute("SELECT count(*) AS attack_marker_query FROM pg_catalog.pg_class")
        result = p.run("-v", "-m", "preflight", seed=True)
        assert p.query("SELECT count(*) FROM pg_stat_statements WHERE query LIKE '%attack_marker_query%'") == [(1,)]
        assert outcomes_of(result)[CODE] == "PASSED"
        result.stdout.fnmatch_lines(["*not tried on the copy: 20250101000004_ops.sql:1: SELECT "
                                     "pg_stat_statements_reset() (pg_stat_statements_reset() acts beyond *"])
    finally:
        pgss_server.drop_database("pgss_reset_attack")


FDW = """
CREATE EXTENSION postgres_fdw;
CREATE SERVER billing FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host 'billing.internal', dbname 'billing');
CREATE SERVER legacy_billing FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host 'old.internal', dbname 'billing');
CREATE USER MAPPING FOR PUBLIC SERVER billing OPTIONS (user 'crm', password 'fdw-pw-1');
CREATE USER MAPPING FOR PUBLIC SERVER legacy_billing OPTIONS (user 'crm', password 'fdw-pw-2');
"""
MOVE_BILLING = """CREATE SCHEMA billing;
IMPORT FOREIGN SCHEMA public LIMIT TO (invoices) FROM SERVER billing INTO billing;
DROP USER MAPPING FOR PUBLIC SERVER legacy_billing;
"""


def test_user_mapping_statements_do_not_fail_the_stage_because_the_copy_has_no_user_mappings(
        project: Callable[..., Project]) -> None:
    """The copy leaves the target's user mappings out (so no foreign table reaches a remote server), and the
    filter leaves CREATE/ALTER USER MAPPING out of the migrations. But DROP USER MAPPING (retiring an old billing
    server) fails there, as does IMPORT FOREIGN SCHEMA (it needs one): the stage says the migration 'would fail
    on the target too' and halts every migration, which is false, and no function is checked."""
    p = _project(project, MOVE_BILLING, FDW)
    result = p.run("-v", "-m", "preflight", seed=True)
    assert outcomes_of(result)[CODE] == "PASSED"
    result.stdout.fnmatch_lines([
        "*not tried on the copy: 20250101000004_ops.sql:2: IMPORT FOREIGN SCHEMA public LIMIT TO (invoices) FROM *",
        "*not tried on the copy: 20250101000004_ops.sql:3: DROP USER MAPPING FOR PUBLIC SERVER legacy_billing (*"])
    assert p.query("SELECT count(*) FROM pg_user_mappings") == [(2,)]


def test_a_migration_that_comments_its_own_database_does_not_leave_the_copy_behind(
        project: Callable[..., Project], pg_server: EmbeddedPostgres) -> None:
    """A migration written for every environment documents the database it runs in (COMMENT ON DATABASE takes
    no current_database(), hence a DO block). On the copy, it replaces the comment that marks the copy as this
    run's, so the drop declines, silently: the copy, with every function body of the target and owned by the
    run's role, stays on the server after a green run, and the README's query for leftovers does not find it."""
    p = _project(project, "DO $$ BEGIN\n  EXECUTE format('COMMENT ON DATABASE %I IS %L', current_database(), "
                          "'CRM, see runbook');\nEND $$;\n")
    result = p.run("-v", "-m", "preflight", seed=True)
    assert outcomes_of(result)[CODE] == "PASSED"
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        left = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                           (f"{p.query('SELECT current_database()')[0][0]}_%_phase4_blast",))]
        for name in left:  # the test's own cleanup
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
    assert left == []


def test_migrations_run_on_the_copy_with_the_search_path_the_database_sets(
        project: Callable[..., Project]) -> None:
    """A database whose tables live in their own schema finds them through its own search_path (ALTER DATABASE
    ... SET search_path = public, ops), and its migrations say `ALTER TABLE jobs`. The copy is another database,
    without that setting, and the migrations are applied there in a session of the copy's defaults: `jobs` does
    not exist, and the stage says the migration 'would fail on the target too' and halts every migration."""
    p = _project(project, "ALTER TABLE jobs ADD COLUMN note text;\n",
                 "CREATE SCHEMA ops;\nCREATE TABLE ops.jobs (id int PRIMARY KEY);\n")
    p.execute(sql.SQL("ALTER DATABASE {} SET search_path = public, ops").format(
        sql.Identifier(p.query("SELECT current_database()")[0][0])))
    result = p.run("-v", "-m", "preflight", seed=True)
    assert outcomes_of(result)[CODE] == "PASSED", result.stdout.str()


def test_a_migration_using_an_extension_left_out_of_the_copy_is_not_a_false_red(
        project: Callable[..., Project], pg_server: EmbeddedPostgres) -> None:
    """A role with CREATEDB but not superuser (Supabase's postgres) gets a copy without the extensions it may not
    create there (pg_stat_statements; on Supabase pg_cron too), 'what uses it is checked without it'. But a pending
    migration that uses one (a monitoring view over pg_stat_statements; `SELECT cron.schedule(...)`) is applied
    to the copy all the same, fails there, and the stage says it would fail on the target too and halts every
    migration: a false red, for a migration that is fine."""
    p = _project(project, "CREATE VIEW slow_queries AS SELECT query, calls FROM pg_stat_statements;\n")
    p.execute("CREATE EXTENSION pg_stat_statements")
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS blast_owner2; CREATE ROLE blast_owner2 LOGIN CREATEDB")
    try:
        assert p.run("-m", "preflight", seed=True).ret == 0  # as the superuser: no extension left out, fine
        p.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO blast_owner2")
        owner = Project(p.pytester, make_conninfo(p.dsn, user="blast_owner2"))
        # Asked for explicitly, the copy is on the target's server, and the run says what that risks.
        result = owner.run("-v", "-m", "preflight", "--phase4-blast-copy=target")
        risk = ("the copy is on the target's server (--phase4-blast-copy=target): what the migrations call there "
                "runs for real on that server as the run's role (a function's body, a trigger they fire, a DO block's "
                "EXECUTE, dblink): review it, or leave the option out for a throwaway server")
        result.stdout.fnmatch_lines(["scratch database * on the target's server: 4 pending migration(s) applied *",
                                     risk])
        latest = max((owner.path / "reports").glob("phase4-*.json"), key=lambda f: f.stat().st_mtime_ns)
        assert risk in latest.read_text()
        result.stdout.fnmatch_lines(["*extension pg_stat_statements left out of the copy*",
                                     "*not tried on the copy: 20250101000004_ops.sql:1: CREATE VIEW slow_queries AS *"
                                     " (it uses pg_stat_statements, which the copy lacks *"])
        assert "would fail on the target too" not in result.stdout.str()
        assert outcomes_of(result)[CODE] == "PASSED", result.stdout.str()
    finally:
        for dsn in (p.dsn, pg_server.dsn):
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("DROP OWNED BY blast_owner2")
        with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
            conn.execute("DROP ROLE blast_owner2")


def test_a_read_only_ci_role_gets_a_copy_on_a_throwaway_server(
        project: Callable[..., Project], pg_server: EmbeddedPostgres) -> None:
    """A DBA gives the CI's preflight role `default_transaction_read_only = on`, so that it can never write. The
    role has CREATEDB (the README asks for it), CREATE DATABASE is refused as a write, and that error is not the
    'permission denied' that sends the copy to a throwaway server: the stage fails, halts every migration, and
    offers no fix ('nothing was done to the target')."""
    p = _project(project, "SELECT 1;\n")
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS blast_ci; CREATE ROLE blast_ci LOGIN CREATEDB; "
                     "ALTER ROLE blast_ci SET default_transaction_read_only = on")
    try:
        assert p.run("-m", "preflight", seed=True).ret == 0
        p.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO blast_ci")
        ci = Project(p.pytester, make_conninfo(p.dsn, user="blast_ci"))
        result = ci.run("-v", "-m", "preflight")
        assert outcomes_of(result)[CODE] == "PASSED", result.stdout.str()
        result.stdout.fnmatch_lines(["scratch database * on a throwaway server (local): 4 pending migration(s) *"])
    finally:
        with psycopg.connect(p.dsn, autocommit=True) as conn:
            conn.execute("DROP OWNED BY blast_ci")
        with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
            conn.execute("DROP ROLE blast_ci")


ORPHANS = "SELECT count(*) FROM pg_stat_statements WHERE dbid NOT IN (SELECT oid FROM pg_database)"


def test_the_copy_leaves_nothing_in_the_servers_pg_stat_statements(
        pytester: pytest.Pytester, pgss_server: EmbeddedPostgres) -> None:
    """pg_stat_statements is the server's, shared by every database, and keeps at most pg_stat_statements.max
    entries (5000), evicting the least used. Every statement of the schema's restore into the copy and of the
    migrations applied there is a new entry (utility statements are tracked as written, and the copy is a new
    database each run), left behind when the copy is dropped: each CI run pushes out the application's rarely run
    queries, which the pg_stat_statements check then no longer knows of, and the DBA's statistics with them."""
    import shutil

    from helpers import EXAMPLES

    dsn = pgss_server.create_database("pgss_evict_attack")
    try:
        for name in ("mini", "blast"):
            shutil.copytree(EXAMPLES / name, pytester.path, dirs_exist_ok=True)
        (pytester.path / "pyproject.toml").write_text("[tool.pytest.ini_options]\ninitial_sort = \"original\"\n")
        p = _project(lambda *_: Project(pytester, dsn), "SELECT 1;\n")
        p.execute("CREATE EXTENSION pg_stat_statements")
        before = p.query(ORPHANS)[0][0]
        assert p.run("-m", "preflight", seed=True).ret == 0
        assert p.query(ORPHANS) == [(before,)]
    finally:
        pgss_server.drop_database("pgss_evict_attack")
