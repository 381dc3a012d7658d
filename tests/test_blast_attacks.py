"""Attacks on the blast radius (issue 14), verification only and baselines across runs (issue 13): each test
asserts the safe behaviour, on real PostgreSQL, as users run the plugin."""

from __future__ import annotations

import html
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from helpers import Project, add_migration, outcomes_of, seeded
from pytest_phase4.db import localcluster
from pytest_phase4.db.embedded import EmbeddedPostgres

MINI = "checks/phase4.toml"
CODE_CHECK = '\n[[blast_radius]]\ncheck = "database_code"\n'


def _blast_project(project: Callable[..., Project]) -> Project:
    p = project("mini", "blast")
    plan = p.path / "checks/phase4.toml"
    plan.write_text(plan.read_text() + CODE_CHECK)
    return p


def _code_check(p: Project, *args: str) -> tuple[pytest.RunResult, str]:
    """A preflight run and the outcome of its database_code blast radius check."""
    result = p.run("-v", "-m", "preflight", *args)
    return result, outcomes_of(result)[f"{MINI}::blast_radius::database_code[all_schemas]"]


def _dbname(dsn: str) -> str:
    return str(conninfo_to_dict(dsn)["dbname"])


def test_an_existing_database_named_like_the_scratch_copy_is_never_dropped(
        project: Callable[..., Project], pg_server: EmbeddedPostgres) -> None:
    """`<db>_phase4_blast` may be a real database (someone's, or a name the 63-byte limit truncates onto): the
    copy must not be made by dropping it. Today create_database() runs DROP DATABASE IF EXISTS ... WITH (FORCE)
    first, so its rows are gone, even for a role without CREATEDB that merely owns it."""
    p = _blast_project(project)
    victim = f"{_dbname(p.dsn)}_phase4_blast"
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier("blast_owner_nocreatedb")))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER blast_owner_nocreatedb").format(sql.Identifier(victim)))
    victim_dsn = make_conninfo(pg_server.dsn, dbname=victim)
    with psycopg.connect(victim_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE invoices (id int PRIMARY KEY, total numeric); INSERT INTO invoices VALUES (1, 9.5)")
    try:
        p.run("-m", "preflight", seed=True)  # as the superuser, seeding the target
        with psycopg.connect(p.dsn, autocommit=True) as conn:
            conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO blast_owner_nocreatedb")
        # The owner of that database, without CREATEDB: the copy goes to a throwaway server; the database it
        # owns must still be there afterwards.
        owner = Project(p.pytester, make_conninfo(p.dsn, user="blast_owner_nocreatedb"))
        result = owner.run("-v", "-m", "preflight")
        result.stdout.fnmatch_lines(["scratch database * on a throwaway server (local): 3 pending migration(s) *"])
        with psycopg.connect(victim_dsn) as conn:
            assert conn.execute("SELECT id, total FROM invoices").fetchall() == [(1, 9.5)]
        # A role with CREATEDB (here the superuser): the copy on the target's server, under another name.
        _, outcome = _code_check(p)
        assert outcome == "PASSED"
        with psycopg.connect(victim_dsn) as conn:
            assert conn.execute("SELECT id, total FROM invoices").fetchall() == [(1, 9.5)]
    finally:
        pg_server.drop_database(victim)
        for dsn in (p.dsn, pg_server.dsn):
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("DROP OWNED BY blast_owner_nocreatedb")
        with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
            conn.execute("DROP ROLE blast_owner_nocreatedb")


ROLE_MIGRATION = """
[[migration]]
file = "20250101000004_reporting_role.sql"
title = "A reporting role, the API role's timeout, the database's JWT setting"
"""


def test_applying_the_pending_migrations_to_the_copy_changes_nothing_on_the_real_server(
        project: Callable[..., Project], pg_server: EmbeddedPostgres) -> None:
    """Roles and a database's settings belong to the cluster, not to the copy: a pending migration that creates a
    role, sets a role's timeout or sets the real database's JWT secret (Supabase's old `ALTER DATABASE postgres
    SET app.settings.jwt_secret`) must not run on the target's server during `-m preflight`, which the README
    calls read-only and nothing migrated. Today the copy is on the same server and all three take effect."""
    p = _blast_project(project)
    db = _dbname(p.dsn)
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS blast_api; CREATE ROLE blast_api NOLOGIN")
    add_migration(p, "20250101000004_reporting_role.sql", ROLE_MIGRATION,
        "CREATE ROLE blast_reporting NOLOGIN;\n"
        "ALTER ROLE blast_api SET statement_timeout = '8s';\n"
        "GRANT SELECT ON sales TO blast_reporting;\n"
        f"ALTER DATABASE {db} SET app.jwt_secret = 'super-secret-jwt-token-with-at-least-32-characters';\n")
    try:
        result = p.run("-v", "-m", "preflight", seed=True)
        assert outcomes_of(result)[f"{MINI}::blast_radius::database_code[all_schemas]"] == "PASSED"
        result.stdout.fnmatch_lines([  # said, not silently dropped
            "*not tried on the copy: 20250101000004_reporting_role.sql:1: CREATE ROLE blast_reporting NOLOGIN "
            "(roles, databases and tablespaces belong to the whole server, not to the copy)",
            "*not tried on the copy: 20250101000004_reporting_role.sql:3: GRANT SELECT ON sales TO blast_reporting "
            "(it names role blast_reporting, which a statement not tried on the copy creates)",
            f"*not tried on the copy: 20250101000004_reporting_role.sql:4: ALTER DATABASE {db} SET *"])
        assert "super-secret-jwt-token" not in result.stdout.str()
        with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
            found = conn.execute(
                "SELECT (SELECT count(*) FROM pg_roles WHERE rolname = 'blast_reporting'),"
                " (SELECT rolconfig FROM pg_roles WHERE rolname = 'blast_api'),"
                " (SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase"
                "  WHERE d.datname = %s)", (db,)).fetchone()
        assert found == (0, None, None)  # no new role, the role's settings and the database's as they were
    finally:
        with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
            conn.execute("DROP ROLE IF EXISTS blast_reporting; DROP ROLE blast_api")


def test_verify_only_after_another_tool_applied_the_migrations_does_not_apply_them_again_to_the_copy(
        project: Callable[..., Project]) -> None:
    """--phase4-verify-only proves migrations applied without a ledger row; the blast radius must count those as
    applied too. Today it takes every migration the ledger does not list as pending and applies them again to a
    copy of the migrated schema: the stage fails ("relation already exists ... it would fail on the target too"),
    which is false, and the verification run that should end green ends red."""
    from test_verify_only import MIGRATIONS, psql

    p = seeded(_blast_project(project))
    result = p.run("-v", "--phase4-verify-only")  # before: the radius is computed, nothing breaks
    assert outcomes_of(result)[f"{MINI}::blast_radius::database_code[all_schemas]"] == "PASSED"
    psql(p, *MIGRATIONS)  # the team's own tool applies them
    result = p.run("-v", "--phase4-verify-only")
    result.stdout.fnmatch_lines(["phase4 mode: verification only, nothing is applied: 3 of 3 migration(s) applied *"])
    assert outcomes_of(result)[f"{MINI}::blast_radius::database_code[all_schemas]"] in ("PASSED", "SKIPPED")
    assert "already exists" not in result.stdout.str()
    assert result.ret == 0, result.stdout.str()


@pytest.fixture
def twin_reader(pg_server: EmbeddedPostgres) -> Iterator[None]:
    yield
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS twin_reader")


def _reader(server: EmbeddedPostgres, dsn: str) -> str:
    """A login role that reads every table, on a server that closes pg_control_system() to roles that are neither
    superuser nor pg_monitor (what snapshot.identity() expects: 'needs superuser or pg_monitor')."""
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'twin_reader'").fetchall():
            conn.execute("CREATE ROLE twin_reader LOGIN")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("GRANT pg_read_all_data TO twin_reader")
        conn.execute("REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC")
    return make_conninfo(dsn, user="twin_reader")


@pytest.fixture
def other_cluster() -> Iterator[EmbeddedPostgres]:
    """A cluster from an initdb of its own: another system identifier than pg_server's (the session's clusters are
    copies of one initdb template, so they share one, as physical clones do)."""
    saved = dict(localcluster.TEMPLATES)
    localcluster.TEMPLATES.clear()
    try:
        server = EmbeddedPostgres("local").start()
    finally:
        localcluster.TEMPLATES.clear()
        localcluster.TEMPLATES.update(saved)
    yield server
    server.stop()


def test_a_baseline_of_a_database_of_the_same_name_on_another_cluster_is_not_compared_with(
        project: Callable[..., Project], pg_server: EmbeddedPostgres, other_cluster: EmbeddedPostgres,
        twin_reader: None) -> None:
    """Staging and production both named `postgres` (every Supabase project), checked from one project folder by
    a role that may not read pg_control_system(): the baseline of one must not be the 'before' of the other.
    Today same_database() compares the names only when the system identifier is unreadable, so production's
    verification after the migrations compares with staging's baseline; staging happened to have the one
    ticket fewer that production's migration lost, and Data Integrity says VERIFIED."""
    from test_verify_only import MIGRATIONS, psql

    staging = project("mini")
    name = _dbname(staging.dsn)
    prod = Project(staging.pytester, other_cluster.create_database(name))
    sysids = set()
    for p in (staging, prod):
        assert p.run("-m", "preflight", seed=True).ret == 0
        sysids |= {r[0] for r in p.query("SELECT system_identifier FROM pg_control_system()")}
    assert len(sysids) == 2  # two clusters, told apart by a role that may read it
    staging.execute("DELETE FROM tickets WHERE id = 7")  # staging's data differs a little
    staging.dsn = _reader(pg_server, staging.dsn)
    staging.run("--phase4-verify-only")  # staging, before: its baseline beside the report
    assert len(list((staging.path / "reports").glob("*.baseline.json"))) == 1
    psql(prod, *MIGRATIONS)  # production: the team's tool applies the migrations, and one ticket is lost
    prod.execute("DELETE FROM tickets WHERE id = 8")
    prod.dsn = _reader(other_cluster, prod.dsn)
    result = prod.run("-v", "--phase4-verify-only")
    outcomes = outcomes_of(result)
    counts = [k for k in outcomes if "::post::row_counts_unchanged" in k]
    assert counts
    assert all(outcomes[k] != "PASSED" for k in counts), result.stdout.str()
    assert "compared with" not in result.stdout.str()


API_KEY = "sk_live_51HxAttackKey0000"
CUSTOMER_EMAIL = "alice@tenant-acme.example"
# What the application sent (constants become $n in pg_stat_statements; the comments stay as they are)
TAGGED = [b"SELECT s.customer_name FROM sales s WHERE s.id = 1 /* api_key=sk_live_51HxAttackKey0000 */",
          b"SELECT s.id, s.customer_name /*user='alice@tenant-acme.example',route='/orders'*/ FROM sales s "
          b"WHERE s.value > 10"]


def test_comments_in_recorded_queries_never_reach_the_report(
        pytester: pytest.Pytester, pgss_server: EmbeddedPostgres) -> None:
    """pg_stat_statements replaces constants with $n but keeps comments: an ORM's sqlcommenter tag or a debugging
    comment holds an API key or another tenant's user, and the report goes to a change board. Today only the
    leading comments and PASSWORD '...' are masked: a comment after the first keyword is shown as it is, in the
    terminal, the HTML report, the JSON evidence and the JUnit XML."""
    import shutil

    from helpers import EXAMPLES

    dsn = pgss_server.create_database("pgss_attack")
    try:
        for name in ("mini", "blast"):
            shutil.copytree(EXAMPLES / name, pytester.path, dirs_exist_ok=True)
        (pytester.path / "pyproject.toml").write_text("[tool.pytest.ini_options]\ninitial_sort = \"original\"\n")
        plan = pytester.path / "checks/phase4.toml"
        plan.write_text(plan.read_text() + '\n[[blast_radius]]\ncheck = "pg_stat_statements"\n')
        p = Project(pytester, dsn)
        assert p.run("-m", "preflight", seed=True).ret == 0
        p.execute("CREATE EXTENSION pg_stat_statements; DROP ROLE IF EXISTS blast_api; CREATE ROLE blast_api; "
                  "GRANT SELECT ON ALL TABLES IN SCHEMA public TO blast_api")
        with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction(force_rollback=True):
            conn.execute("SET LOCAL ROLE blast_api")
            for query in TAGGED:
                conn.execute(query)
        result = p.run("-v", "-m", "preflight", "--junitxml=junit.xml")
        assert outcomes_of(result)[f"{MINI}::blast_radius::pg_stat_statements[other_roles]"] == "FAILED"
        result.stdout.fnmatch_lines(["found:    2 application queries * no longer prepare"])
        texts = {"terminal": result.stdout.str(), "html": html.unescape(p.report()),
                 "json": "\n".join(f.read_text() for f in (p.path / "reports").glob("phase4-*.json")),
                 "junit": html.unescape((p.path / "junit.xml").read_text())}
        leaked = {where: [s for s in (API_KEY, CUSTOMER_EMAIL) if s in text] for where, text in texts.items()}
        assert leaked == {where: [] for where in texts}
    finally:
        pgss_server.drop_database("pgss_attack")
        with psycopg.connect(pgss_server.dsn, autocommit=True) as conn:
            conn.execute("DROP ROLE IF EXISTS blast_api")


def test_queries_and_functions_are_checked_with_the_application_roles_search_path(
        pytester: pytest.Pytester, pgss_server: EmbeddedPostgres) -> None:
    """An application whose role finds its tables through its own search_path (ALTER ROLE crm_app SET search_path
    = crm) writes `FROM sales`. The blast radius prepares its recorded queries and checks its functions with the
    run's search_path instead, where `sales` does not exist: before the migration already they 'did not prepare
    either (not counted)', and the stage is green while the migration breaks both."""
    import shutil

    from helpers import EXAMPLES

    dsn = pgss_server.create_database("pgss_search_path")
    try:
        shutil.copytree(EXAMPLES / "blast_search_path", pytester.path, dirs_exist_ok=True)
        (pytester.path / "pyproject.toml").write_text("[tool.pytest.ini_options]\ninitial_sort = \"original\"\n")
        p = Project(pytester, dsn)
        assert p.run("-m", "preflight", seed=True).ret == 0
        p.execute("CREATE EXTENSION pg_stat_statements; DROP ROLE IF EXISTS crm_app; CREATE ROLE crm_app LOGIN; "
                  "ALTER ROLE crm_app SET search_path = crm; GRANT USAGE ON SCHEMA crm TO crm_app; "
                  "GRANT SELECT ON ALL TABLES IN SCHEMA crm TO crm_app")
        with psycopg.connect(make_conninfo(dsn, user="crm_app"), autocommit=True) as app:  # the application
            assert app.execute("SELECT customer_name FROM sales WHERE id = %s", (1,)).fetchall() == [("customer 2",)]
            assert app.execute("SELECT sale_label(%s)", (1,)).fetchall() == [("1: customer 2",)]
        result = p.run("-v", "-m", "preflight")
        outcomes = outcomes_of(result)
        assert outcomes[f"{MINI}::blast_radius::pg_stat_statements[other_roles]"] == "FAILED"
        assert outcomes[f"{MINI}::blast_radius::database_code[all_schemas]"] == "FAILED"
        result.stdout.fnmatch_lines(["*SELECT customer_name FROM sales WHERE id = $1*",
                                     "      -> column * does not exist [[]SQLSTATE 42703[]]"])
        result.stdout.fnmatch_lines(["  SQL function crm.sale_label(integer)*customer_name does not exist"])
    finally:
        pgss_server.drop_database("pgss_search_path")
        with psycopg.connect(pgss_server.dsn, autocommit=True) as conn:
            conn.execute("DROP ROLE IF EXISTS crm_app")


ATTACKER_CONFTEST = '''
import psycopg
from psycopg.conninfo import make_conninfo

from pytest_phase4.blast import scratch

_connect = scratch.connect


def connect(copy, search_path, statement_timeout):
    """Another role of the cluster connects to the scratch database while it exists (at this moment: restored)."""
    try:
        with psycopg.connect(make_conninfo(copy.dsn, user="mallory"), autocommit=True) as conn:
            conn.execute("SELECT public.admin_exec('ALTER ROLE mallory SUPERUSER')")
    except psycopg.Error:
        pass
    return _connect(copy, search_path, statement_timeout)


scratch.connect = connect
'''


def test_the_scratch_copy_gives_no_role_more_than_the_target_does(
        project: Callable[..., Project], pg_server: EmbeddedPostgres) -> None:
    """The copy is restored with --no-owner --no-privileges into a new database, which PUBLIC may CONNECT to: every
    object is the run's role's (often a superuser) and every REVOKE is gone. A SECURITY DEFINER function that only
    the admin may execute on the target (Supabase projects keep such `exec_sql` helpers for service_role) can be
    called by any role of the cluster while the copy exists, as the run's role; through it one gets SUPERUSER on
    the real cluster. The copy must not widen anyone's rights."""
    p = _blast_project(project)
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS mallory; CREATE ROLE mallory LOGIN")
    (p.path / "conftest.py").write_text(ATTACKER_CONFTEST)
    try:
        assert p.run("-m", "preflight", seed=True).ret == 0
        p.execute("CREATE FUNCTION public.admin_exec(q text) RETURNS void LANGUAGE plpgsql SECURITY DEFINER AS "
                  "$$ BEGIN EXECUTE q; END $$; REVOKE EXECUTE ON FUNCTION public.admin_exec(text) FROM PUBLIC")
        with psycopg.connect(make_conninfo(p.dsn, user="mallory"), autocommit=True) as conn, \
                pytest.raises(psycopg.errors.InsufficientPrivilege):  # on the target, mallory may not
            conn.execute("SELECT public.admin_exec('ALTER ROLE mallory SUPERUSER')")
        _, outcome = _code_check(p)
        assert outcome == "PASSED"
        with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
            assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory'").fetchall() == [(False,)]
    finally:
        with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
            conn.execute("DROP ROLE mallory")


SIGNAL_CONFTEST = '''
import os
import signal

from pytest_phase4.blast import scratch

_connect = scratch.connect


def connect(copy, search_path, statement_timeout):
    open("signalled", "w").close()
    os.kill(os.getpid(), signal.{name})  # the CI job is cancelled while the copy exists
    return _connect(copy, search_path, statement_timeout)


scratch.connect = connect
'''


def test_a_run_stopped_while_the_copy_exists_leaves_no_scratch_database(
        project: Callable[..., Project], pg_server: EmbeddedPostgres) -> None:
    """A cancelled CI job gets SIGTERM (GitHub Actions, GitLab, `timeout`), not Ctrl-C. The copy must not outlive
    the run: it holds every function body, and (see the test above) widened rights. Today SIGTERM ends the process
    with no cleanup, and `<db>_phase4_blast` stays on the target's server until some later run drops it."""
    p = seeded(_blast_project(project))
    try:
        for name in ("SIGINT", "SIGTERM"):
            (p.path / "conftest.py").write_text(SIGNAL_CONFTEST.replace("{name}", name))
            (p.path / "signalled").unlink(missing_ok=True)
            p.pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", "--phase4", "-m",
                                            "preflight", f"--dsn={p.dsn}")
            assert (p.path / "signalled").exists()  # the signal came while the copy existed
            left = p.query("SELECT datname FROM pg_database WHERE datname LIKE '%\\_phase4\\_blast'")
            assert (name, left) == (name, [])
    finally:
        pg_server.drop_database(f"{_dbname(p.dsn)}_phase4_blast")


def _createdb_role(server: EmbeddedPostgres, dsn: str, name: str) -> str:
    """A login role with CREATEDB, not superuser: the copy is on the target's server, but plpgsql_check cannot be
    created there, so PL/pgSQL bodies are checked statically (each query PREPAREd)."""
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {0}; CREATE ROLE {0} LOGIN CREATEDB").format(sql.Identifier(name)))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(name)))
    return make_conninfo(dsn, user=name)


ROWTYPE_CODE = """
CREATE FUNCTION sale_customer(p_sale int) RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE s sales%ROWTYPE;
BEGIN
  SELECT * INTO s FROM sales WHERE id = p_sale;
  RETURN s.customer_name;
END $$;
"""


def test_static_check_sees_a_field_of_a_row_typed_variable(
        project: Callable[..., Project], pg_server: EmbeddedPostgres) -> None:
    """`DECLARE s sales%ROWTYPE; ... RETURN s.customer_name` is typed statically (plpgsql_check reports 'record "s"
    has no field "customer_name"'). Without plpgsql_check, the static check turns `s.customer_name` into an
    untyped parameter, and the function that fails at its first call after the migration passes."""
    p = seeded(_blast_project(project))
    p.execute(ROWTYPE_CODE)
    p.dsn = _createdb_role(pg_server, p.dsn, "blast_static")
    result, outcome = _code_check(p)
    assert outcome == "FAILED"
    result.stdout.fnmatch_lines(["found:    1 would break: PL/pgSQL function public.sale_customer(integer)",
                                 "where:    *, after 3 pending migration(s)",
                                 '  PL/pgSQL function public.sale_customer(integer), line 5*customer_name*'])


CAMEL_MIGRATION = """
[[migration]]
file = "20250101000004_drop_camel.sql"
title = "Drop the ORM's copy of the name"
destructive = true
"""


def test_static_check_reads_quoted_mixed_case_trigger_fields_as_written(
        project: Callable[..., Project], pg_server: EmbeddedPostgres) -> None:
    """ORMs (Prisma, EF) name columns in camelCase: a trigger function writes `NEW."customerName"`. The static
    check lowercases the field ('record "new" has no field "customername"'), so the trigger fails before the
    migrations already, is 'not counted', and the migration that drops "customerName" passes though the trigger
    breaks every INSERT after it."""
    p = seeded(_blast_project(project))
    add_migration(p, "20250101000004_drop_camel.sql", CAMEL_MIGRATION,
        'ALTER TABLE sales DROP COLUMN "customerName";\n')
    p.execute('ALTER TABLE sales ADD COLUMN "customerName" text;\n'
              "CREATE FUNCTION sales_camel() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n"
              '  NEW."customerName" := (SELECT c.name FROM customers c WHERE c.id = NEW.customer_id);\n'
              "  RETURN NEW;\nEND $$;\n"
              "CREATE TRIGGER sales_camel BEFORE INSERT ON sales FOR EACH ROW EXECUTE FUNCTION sales_camel();")
    p.dsn = _createdb_role(pg_server, p.dsn, "blast_static")
    result, outcome = _code_check(p)
    assert outcome == "FAILED"
    result.stdout.fnmatch_lines(["found:    1 would break: PL/pgSQL trigger function public.sales_camel()",
                                 "where:    *, after 4 pending migration(s)",
                                 '*line 3, column 3: record "new" has no field "customerName"'])
    assert "not counted" not in result.stdout.str()


def test_a_polymorphic_sql_function_is_checked_or_said_not_checked(project: Callable[..., Project]) -> None:
    """PostgreSQL's SQL validator does not analyse the body of a function with polymorphic arguments (anyelement):
    fmgr_sql_validator() returns without a word. The blast radius counts it 'checked' and says none breaks, while
    its first call after the migration fails. It must be reported broken, or listed as not checked."""
    p = seeded(_blast_project(project))
    p.execute("CREATE FUNCTION sale_name(p_key anyelement) RETURNS text LANGUAGE sql STABLE AS $$\n"
              "  SELECT s.customer_name FROM sales s WHERE s.id::text = p_key::text\n$$")
    assert p.query("SELECT sale_name(1)") == [("customer 2",)]
    _, outcome = _code_check(p)
    evidence = "\n".join(f.read_text() for f in (p.path / "reports").glob("phase4-*[0-9].json"))
    assert outcome == "FAILED" or "sale_name" in evidence  # broken, or named as not checked


PGP_KEY = "vault-key-9f8e7d6c"
SECRET_CODE = """
CREATE EXTENSION pgcrypto;
CREATE FUNCTION sale_secret(p_sale int) RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE result text;
BEGIN
  SELECT pgp_sym_decrypt(s.customer_name::bytea, 'vault-key-9f8e7d6c') INTO result FROM sales s WHERE s.id = p_sale;
  RETURN result;
END $$;
"""


def test_a_secret_on_a_broken_line_of_a_function_never_reaches_the_report(project: Callable[..., Project]) -> None:
    """A function that decrypts with a key written in its body (`pgp_sym_decrypt(col, 'key')`, common before a
    vault) and reads a dropped column: the blast radius shows the broken line as it is, key included, in the
    terminal, the report for the change board, the JSON and the JUnit XML. pg_stat_statements texts get their
    constants replaced; a body's line must not be shown with its string literals either."""
    p = seeded(_blast_project(project))
    p.execute(SECRET_CODE)
    result, outcome = _code_check(p, "--junitxml=junit.xml")
    assert outcome == "FAILED"
    result.stdout.fnmatch_lines(["found:    1 would break: PL/pgSQL function public.sale_secret(integer)"])
    texts = {"terminal": result.stdout.str(), "html": html.unescape(p.report()),
             "json": "\n".join(f.read_text() for f in (p.path / "reports").glob("phase4-*.json")),
             "junit": html.unescape((p.path / "junit.xml").read_text())}
    assert {where: PGP_KEY in text for where, text in texts.items()} == {where: False for where in texts}


FDW_MIGRATION = """
[[migration]]
file = "20250101000004_refresh_report_feed.sql"
title = "The reporting feed starts again from the new sales shape"
"""


def test_applying_the_pending_migrations_to_the_copy_writes_to_no_foreign_table(
        project: Callable[..., Project], pg_server: EmbeddedPostgres) -> None:
    """The schema-only dump carries foreign servers, user mappings and foreign tables, so the copy reaches the same
    remote databases as the target. A pending migration that empties a feed table on the reporting database
    (postgres_fdw, `TRUNCATE` or `DELETE` of a foreign table) empties the real one during `-m preflight`."""
    p = _blast_project(project)
    remote = f"{_dbname(p.dsn)}_reporting"
    remote_dsn = pg_server.create_database(remote)
    try:
        with psycopg.connect(remote_dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE sales_feed (id int PRIMARY KEY, value numeric);"
                         "INSERT INTO sales_feed SELECT g, g FROM generate_series(1, 5) g")
        assert p.run("-m", "preflight", seed=True).ret == 0
        server = conninfo_to_dict(pg_server.dsn)
        p.execute("CREATE EXTENSION postgres_fdw;"
                  f"CREATE SERVER reporting FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host '{server['host']}', "
                  f"port '{server['port']}', dbname '{remote}');"
                  "CREATE USER MAPPING FOR CURRENT_USER SERVER reporting OPTIONS (user 'postgres');"
                  "CREATE FOREIGN TABLE sales_feed (id int, value numeric) SERVER reporting")
        add_migration(p, "20250101000004_refresh_report_feed.sql", FDW_MIGRATION, "DELETE FROM sales_feed;\n")
        result, outcome = _code_check(p)
        assert outcome in ("PASSED", "FAILED")
        result.stdout.fnmatch_lines([  # it fails, and says why instead of 'it would fail on the target too'
            "*user mapping not found*",
            "*hint:*it reads or writes a foreign table, which the copy does not reach*"])
        with psycopg.connect(remote_dsn) as conn:
            assert conn.execute("SELECT count(*) FROM sales_feed").fetchone() == (5,)
    finally:
        pg_server.drop_database(remote)


def test_a_baseline_of_a_database_since_dropped_and_re_created_is_not_compared_with(
        project: Callable[..., Project], pg_server: EmbeddedPostgres) -> None:
    """The same hole on stock PostgreSQL with every privilege: staging is refreshed from production over the
    weekend (DROP DATABASE, CREATE DATABASE, restore): same name, same cluster, a new database (a new oid, which
    same_database() ignores on purpose). The baseline of the old staging is taken as this database's 'before':
    the migration that loses a ticket on the refreshed data compares with the old data, which had one ticket
    fewer, and Data Integrity says VERIFIED."""
    from test_verify_only import MIGRATIONS, psql

    p = project("mini")
    name = _dbname(p.dsn)
    assert p.run("-m", "preflight", seed=True).ret == 0
    p.execute("DELETE FROM tickets WHERE id = 7")  # the old staging data
    p.run("--phase4-verify-only")  # before, last week: its baseline beside the report
    assert len(list((p.path / "reports").glob("*.baseline.json"))) == 1
    pg_server.drop_database(name)  # the refresh: a new database of the same name, production's data
    pg_server.create_database(name)
    assert p.run("-m", "preflight", seed=True).ret == 0
    psql(p, *MIGRATIONS)  # the team applies the migrations, and one ticket is lost
    p.execute("DELETE FROM tickets WHERE id = 8")
    result = p.run("-v", "--phase4-verify-only")
    outcomes = outcomes_of(result)
    counts = [k for k in outcomes if "::post::row_counts_unchanged" in k]
    assert counts
    assert all(outcomes[k] != "PASSED" for k in counts), result.stdout.str()


ARGV_CONFTEST = '''
import json
import subprocess

from pytest_phase4.blast import scratch

_run = subprocess.run


def run(args, *a, **kw):
    """What `ps` shows every local user while the schema dump and restore run."""
    with open("argv.jsonl", "a") as f:
        f.write(json.dumps([str(x) for x in args]) + "\\n")
    return _run(args, *a, **kw)


scratch.subprocess = type("S", (), {"run": staticmethod(run), "TimeoutExpired": subprocess.TimeoutExpired})
'''


def test_the_ssl_key_passphrase_never_reaches_the_dump_tools_command_line(project: Callable[..., Project]) -> None:
    """README: passwords go to the tools in PGPASSWORD, never on their command line. The DSN's `sslpassword`
    (the passphrase of the client's SSL key) is a password too, yet client_args() moves only `password` out of the
    conninfo: pg_dump and pg_restore get `sslpassword=...` in argv, readable by any local user in `ps`/proc."""
    p = seeded(_blast_project(project))
    (p.path / "conftest.py").write_text(ARGV_CONFTEST)
    p.dsn = make_conninfo(p.dsn, sslpassword="Key-Passphrase-42", sslmode="disable")
    _, outcome = _code_check(p)
    assert outcome == "PASSED"
    argv = (p.path / "argv.jsonl").read_text()
    assert "pg_dump" in argv
    assert "Key-Passphrase-42" not in argv


def test_a_role_with_createdb_gets_a_copy_of_a_database_with_pg_stat_statements(
        project: Callable[..., Project], pg_server: EmbeddedPostgres) -> None:
    """The README asks for CREATEDB. A database owner with CREATEDB (no superuser) on a server whose database has
    pg_stat_statements (the source the blast radius reads; not a trusted extension) cannot create it in the copy:
    pg_restore --exit-on-error stops, the stage fails and halts the run ('hint: nothing was done to the target'),
    so every migration is blocked by the check meant to protect it; the same role without CREATEDB would get a
    throwaway server and pass. The copy must be made (leave out or fall back), not block the plan."""
    p = seeded(_blast_project(project))
    p.execute("CREATE EXTENSION pg_stat_statements")
    p.dsn = _createdb_role(pg_server, p.dsn, "blast_owner_pgss")
    result, outcome = _code_check(p)
    assert outcome == "PASSED", result.stdout.str()


REALTIME_MIGRATION = """
[[migration]]
file = "20250101000004_realtime_sales.sql"
title = "Realtime for sales (Supabase)"
"""


def test_a_migration_that_adds_a_table_to_a_publication_is_not_refused_on_the_copy(
        project: Callable[..., Project]) -> None:
    """Supabase projects enable realtime with `ALTER PUBLICATION supabase_realtime ADD TABLE ...` in a migration.
    The copy leaves publications out (a non-superuser owner could not create them), so that migration fails on the
    copy and the stage says 'it would fail on the target too ... fix the migration', which is false, and blocks
    every migration of the plan."""
    p = seeded(_blast_project(project))
    p.execute("CREATE PUBLICATION supabase_realtime")
    add_migration(p, "20250101000004_realtime_sales.sql", REALTIME_MIGRATION,
        "ALTER PUBLICATION supabase_realtime ADD TABLE sales;\n")
    result = p.run("-v", "-m", "preflight")
    assert "would fail on the target too" not in result.stdout.str()
    assert outcomes_of(result)[f"{MINI}::blast_radius::database_code[all_schemas]"] == "PASSED", result.stdout.str()
