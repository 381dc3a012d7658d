"""Blast radius (issue 14): what the pending migrations would break that PostgreSQL does not track (function
bodies, trigger functions, the application's queries), found on a copy of the schema before anything is migrated.

pg_stat_statements needs shared_preload_libraries: the tests that read it share one throwaway cluster started with
it (conftest's pgss_server), so no other test pays for it."""

from __future__ import annotations

import html
import itertools
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from helpers import REPO, Project, outcomes_of, require_password
from pytest_phase4.db.embedded import EmbeddedPostgres

SB = "checks/phase4.toml"
SUPABASE_APP = REPO / "examples" / "supabase" / "app"
_names = itertools.count(1)
PASSWORD = "Blast-s3cret-pw"
# pg_stat_statements keeps comments in the text it records: this one must never be shown as it is
COMMENTED = "SELECT /* Blast-s3cret-pw */ t.reporter_name FROM public.tickets t LIMIT 1"


@pytest.fixture
def pgss_dsn(pgss_server: EmbeddedPostgres) -> Iterator[str]:
    """A database of its own on the pg_stat_statements cluster, with the extension created."""
    name = f"app_{next(_names)}"
    dsn = pgss_server.create_database(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pg_stat_statements")
    yield dsn
    pgss_server.drop_database(name)


def _as_app(dsn: str, statements: list[tuple[str, tuple[Any, ...]]], times: int = 1) -> None:
    """Run queries as the application's API does: SET ROLE authenticated with the user's claims."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(times):
            with conn.transaction(force_rollback=True):
                conn.execute("SET LOCAL ROLE authenticated")
                for text, params in statements:
                    conn.execute(text.encode() if not params else text, params or None).fetchall()


def _evidence(path: Path) -> dict[str, Any]:
    found = sorted((path / "reports").glob("phase4-*.json"))
    data: dict[str, Any] = json.loads(found[-1].read_text())
    return data


def test_supabase_preflight_fails_naming_each_breakage_and_passes_once_the_app_is_fixed(
        pytester: pytest.Pytester, pgss_server: EmbeddedPostgres, pgss_dsn: str) -> None:
    password = PASSWORD
    require_password(pgss_server, "blast_dba", password)
    with psycopg.connect(pgss_server.dsn, autocommit=True) as conn:
        conn.execute("ALTER ROLE blast_dba SUPERUSER")
    shutil.copytree(REPO / "examples" / "supabase", pytester.path / "checks")
    (pytester.path / "pyproject.toml").write_text("[tool.pytest.ini_options]\ninitial_sort = \"original\"\n")
    p = Project(pytester, make_conninfo(pgss_dsn, user="blast_dba", password=password))
    admin = Project(pytester, pgss_dsn)  # the application's side: deploys code, runs its queries

    # The example as shipped (no application code yet): nothing breaks.
    result = p.run("-v", "-m", "preflight", seed=True)
    assert result.ret == 0, result.stdout.str()
    outcomes = outcomes_of(result)
    for check in ("database_code[all_schemas]", "pg_stat_statements[other_roles]", "app_queries[app/queries/*.sql]"):
        assert outcomes[f"{SB}::blast_radius::{check}"] == "PASSED"

    # Version 1 of the application: a SQL function and a trigger function using dropped columns, and its queries
    # recorded by pg_stat_statements (one with the password in a comment; a utility statement with a literal).
    admin.execute((SUPABASE_APP / "v1.sql").read_text())
    admin.execute((SUPABASE_APP / "v1_workload.sql").read_text())
    admin.execute((SUPABASE_APP / "v1_workload.sql").read_text())
    _as_app(pgss_dsn, [(COMMENTED, ())])
    admin.execute(f"ALTER ROLE authenticated PASSWORD '{password}'; ALTER ROLE authenticated PASSWORD NULL")

    result = p.run("-v", "-m", "preflight")
    assert result.ret == 1
    outcomes = outcomes_of(result)
    assert outcomes[f"{SB}::blast_radius::database_code[all_schemas]"] == "FAILED"
    assert outcomes[f"{SB}::blast_radius::pg_stat_statements[other_roles]"] == "FAILED"
    assert outcomes[f"{SB}::blast_radius::app_queries[app/queries/*.sql]"] == "PASSED"
    result.stdout.fnmatch_lines([
        "found:    2 would break: PL/pgSQL trigger function public.comments_copy_author(), SQL function "
        "public.ticket_card(uuid)",
        "where:    scratch database app_*_phase4_blast on a throwaway server (local), after 6 pending migration(s)",
        "  PL/pgSQL trigger function public.comments_copy_author() (as trigger comments_copy_author on public.comments)"
        ", line 6, column 3: record \"new\" has no field \"author_name\"",
        "      6 | NEW.author_name := author.full_name;",
        "  SQL function public.ticket_card(uuid), line 3, column 10: column t.reporter_name does not exist",
        "      3 | t.reporter_name,",
    ])
    result.stdout.fnmatch_lines([
        "found:    4 application queries (9 calls since stats reset *) no longer prepare",
        "  4 calls, * ms in total, role authenticated: SELECT t.id, t.title, t.status, t.reporter_name, "
        "t.reporter_email FROM public.tickets t WHERE t.deleted_at IS NULL ORDER BY t.created_at DESC LIMIT $1",
        "      -> column t.reporter_name does not exist [[]SQLSTATE 42703[]]",
    ])
    for line in ("  2 calls, * ms in total, role authenticated: SELECT c.id, c.body, c.author_name, c.created_at *",
                 "  2 calls, * ms in total, role authenticated: SELECT p.name, p.owner_name, p.tenant_plan *",
                 "  1 call, * ms in total, role authenticated: SELECT /[*] [*][*][*] [*]/ t.reporter_name *"):
        result.stdout.fnmatch_lines([line, "      -> column * does not exist [[]SQLSTATE 42703[]]"])
    result.stdout.fnmatch_lines([
        "*= phase4 blast radius =*",
        "scratch database app_*_phase4_blast on a throwaway server (local): 6 pending migration(s) applied to a copy "
        "of the schema (*s)",
        "the migrations would break 4 application queries (9 calls since stats reset *) and 2 functions:",
        "  - 4 calls, * SELECT t.id, t.title, t.status, t.reporter_name, * (column t.reporter_name does not exist)",
        "  - *", "  - *", "  - *",
        "  - PL/pgSQL trigger function public.comments_copy_author() line 6 (record \"new\" has no field "
        "\"author_name\")",
        "  - SQL function public.ticket_card(uuid) line 3 (column t.reporter_name does not exist)",
        "relations they change: public.comments, public.profiles, public.projects, public.tickets"])
    # Nothing was migrated, and the copy is gone.
    assert "reporter_name" in admin.columns("tickets")
    assert admin.query("SELECT to_regclass('pytest_phase4.ledger')") == [(None,)]
    assert admin.query("SELECT count(*) FROM pg_database WHERE datname LIKE '%phase4_blast'") == [(0,)]
    assert _evidence(p.path)["summary"]["Blast radius"]["verdict"] == "FAILED"
    summary = _evidence(p.path)["blast_radius"]["summary"]
    assert summary.startswith("the migrations would break 4 application queries (9 calls since stats reset")
    for text in (result.stdout.str(), p.report(), json.dumps(_evidence(p.path))):
        assert password not in html.unescape(text)

    # Version 2 deployed, pg_stat_statements reset, v2's queries running: preflight passes, then the whole plan.
    admin.execute((SUPABASE_APP / "v2.sql").read_text() + "SELECT pg_stat_statements_reset();")
    _as_app(pgss_dsn, [("SELECT t.id, r.full_name FROM public.tickets t JOIN public.profiles r ON r.id = t.reporter_id"
                        " WHERE t.tenant_id = %s LIMIT %s", ("00000000-0000-0000-0000-000000000000", 20)),
                       ("SELECT * FROM public.ticket_card(%s)", ("00000000-0000-0000-0000-000000000000",))], times=3)
    result = p.run("-m", "preflight")
    assert result.ret == 0, result.stdout.str()
    assert _evidence(p.path)["summary"]["Blast radius"]["verdict"] == "VERIFIED"
    result = p.run("-v", "--phase4-confirm-destructive")
    assert result.ret == 0, result.stdout.str()
    outcomes = outcomes_of(result)
    for check in ("database_code[all_schemas]", "pg_stat_statements[other_roles]", "app_queries[app/queries/*.sql]"):
        assert outcomes[f"{SB}::blast_radius::{check}"] == "PASSED"
        assert outcomes[f"{SB}::post::{check}"] == "PASSED"  # confirmed on the migrated database
    assert "reporter_name" not in admin.columns("tickets")
    assert _evidence(p.path)["blast_radius"]["summary"] == "nothing breaks"


BLAST_PLAN = """
[[blast_radius]]
check = "database_code"

[[blast_radius]]
check = "database_code"
id = "plpgsql_check_required"
plpgsql = "plpgsql_check"

[[blast_radius]]
check = "pg_stat_statements"

[[app_queries]]
file = "app/queries.sql"
"""
MINI = "checks/phase4.toml"


def _role(server: EmbeddedPostgres, dsn: str, name: str, createdb: bool) -> str:
    """A login role that may read the tables (pg_dump locks them), with or without CREATEDB; its DSN."""
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {name}; CREATE ROLE {name} LOGIN {'CREATEDB' if createdb else ''}".encode())
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {name}".encode())
    return make_conninfo(dsn, user=name)


def test_mini_blast_radius_on_the_same_server_without_plpgsql_check_and_on_a_throwaway_server(
        project: Callable[..., Project], pg_server: EmbeddedPostgres) -> None:
    p = project("mini", "blast")
    plan = p.path / "checks/phase4.toml"
    plan.write_text(plan.read_text() + BLAST_PLAN)
    result = p.run("-v", "-m", "preflight", seed=True)  # no application code yet: only a query file breaks
    assert result.ret == 1
    outcomes = outcomes_of(result)
    assert outcomes[f"{MINI}::blast_radius::database_code[all_schemas]"] == "PASSED"
    assert outcomes[f"{MINI}::blast_radius::app_queries[app/queries.sql]"] == "FAILED"
    result.stdout.fnmatch_lines([
        "found:    1 application query no longer prepare",
        "  app/queries.sql:4: SELECT s.id, s.customer_name, s.value FROM sales s WHERE s.customer_id = $1",
        "      -> column s.customer_name does not exist [[]SQLSTATE 42703[]]",
        "  1 did not prepare before the migrations either (not counted)",
        "  app/queries.sql:2: not a query (SELECT, INSERT, UPDATE, DELETE or MERGE): left out"])
    result.stdout.fnmatch_lines([
        "SKIPPED [[]1[]] checks/phase4.toml:*: pg_stat_statements is not installed in this database: add "
        "pg_stat_statements to shared_preload_libraries in postgresql.conf, restart the server, then CREATE "
        "EXTENSION pg_stat_statements in this database (Supabase: enabled by default, in schema extensions)"])

    p.execute((p.path / "checks/app/code.sql").read_text())
    broken = [
        "found:    2 would break: SQL function public.sale_label(integer), PL/pgSQL trigger function "
        "public.sales_fill_name()",
        "  SQL function public.sale_label(integer), line 3, column 10: column s.customer_name does not exist",
        "  PL/pgSQL trigger function public.sales_fill_name() (as trigger sales_fill_name on public.sales), line 3, "
        "column 22: record \"new\" has no field \"customer_name\""]
    # As a superuser, asking for the copy on the target's server: made there, plpgsql_check created in it.
    result = p.run("-v", "-m", "preflight", "--phase4-blast-copy=target")
    assert result.ret == 1
    outcomes = outcomes_of(result)
    assert outcomes[f"{MINI}::blast_radius::database_code[all_schemas]"] == "FAILED"
    assert outcomes[f"{MINI}::blast_radius::plpgsql_check_required"] == "FAILED"
    result.stdout.fnmatch_lines([*broken[:1], "where:    scratch database scratch_*_phase4_blast on the target's "
                                 "server, after 3 pending migration(s)", *broken[1:]])
    # A role with CREATEDB but no superuser: the copy is its own, but plpgsql_check cannot be created there, so each
    # static query of the PL/pgSQL bodies is PREPAREd instead; the check that requires plpgsql_check says how.
    admin = p.dsn
    p.dsn = _role(pg_server, admin, "blast_owner", createdb=True)
    result = p.run("-v", "-m", "preflight", "--phase4-blast-copy=target")
    assert result.ret == 1
    outcomes = outcomes_of(result)
    assert outcomes[f"{MINI}::blast_radius::database_code[all_schemas]"] == "FAILED"
    assert outcomes[f"{MINI}::blast_radius::plpgsql_check_required"] == "SKIPPED"
    result.stdout.fnmatch_lines([*broken, "  plpgsql_check is not available (permission denied to create extension "
                                 "\"plpgsql_check\"): install plpgsql_check on the database server (Debian/Ubuntu: "
                                 "apt-get install postgresql-15-plpgsql-check; Supabase ships it): *"])
    result.stdout.fnmatch_lines(["SKIPPED [[]1[]] checks/phase4.toml:*: plpgsql_check is not available *"])
    # By default (here a role without CREATEDB): the copy goes to a throwaway server started from the local binaries.
    p.dsn = _role(pg_server, admin, "blast_reader", createdb=False)
    result = p.run("-v", "-m", "preflight")
    assert result.ret == 1
    result.stdout.fnmatch_lines([*broken[:1], "where:    scratch database scratch_*_phase4_blast on a throwaway "
                                 "server (local), after 3 pending migration(s)", *broken[1:]])
    assert "customer_name" in p.columns("sales")  # nothing was migrated


RECHECK_CONFTEST = '''
import psycopg

def pytest_runtest_teardown(item):
    if item.nodeid.endswith("20250101000001_create_views::apply"):  # the application deploys code meanwhile
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(CODE)
'''


def test_code_deployed_after_the_blast_radius_stage_is_caught_before_the_point_of_no_return(
        project: Callable[..., Project]) -> None:
    p = project("mini", "blast")
    plan = p.path / "checks/phase4.toml"
    plan.write_text(plan.read_text() + '\n[[blast_radius]]\ncheck = "database_code"\n')
    code = (p.path / "checks/app/code.sql").read_text().split("CREATE FUNCTION sales_fill_name")[0]
    (p.path / "conftest.py").write_text(f"DSN = {p.dsn!r}\nCODE = {code!r}\n" + RECHECK_CONFTEST)
    result = p.run("-v", "--phase4-confirm-destructive", seed=True)
    assert result.ret == 1
    outcomes = outcomes_of(result)
    assert outcomes[f"{MINI}::blast_radius::database_code[all_schemas]"] == "PASSED"
    assert outcomes[f"{MINI}::20250101000001_create_views::apply"] == "PASSED"
    assert outcomes[f"{MINI}::20250101000002_drop_denormalized::apply"] == "FAILED"
    result.stdout.fnmatch_lines([
        "refusing to apply 20250101000002_drop_denormalized.sql (the point of no return): the database's functions or "
        "triggers changed since the blast_radius stage; computed again: the migrations would break 1 function: "
        "SQL function public.sale_label(integer) line 3 (column s.customer_name does not exist); fix what it names "
        "(or the plan) and rerun the whole plan"])
    assert "customer_name" in p.columns("sales")
    assert p.query("SELECT file FROM pytest_phase4.ledger") == [("20250101000001_create_views.sql",)]
