"""Blast radius, source by source: SQL function bodies, PL/pgSQL with and without plpgsql_check, trigger functions,
pg_stat_statements and query files, each on real PostgreSQL (the plan's own errors need none)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from pytest_phase4.blast import appqueries, dbcode, plpgsql_static
from pytest_phase4.db.embedded import EmbeddedPostgres
from pytest_phase4.errors import PlanError
from pytest_phase4.plan.load import load_plan

CODE = """
CREATE TABLE t (id int PRIMARY KEY, name text, gone text);
CREATE TABLE other (id int PRIMARY KEY, name text, gone text);
CREATE FUNCTION f_sql(i int) RETURNS text LANGUAGE sql AS $$
  SELECT name FROM t WHERE id = i;
  SELECT t.gone
  FROM t WHERE id = i
$$;
CREATE FUNCTION f_pl(i int) RETURNS text LANGUAGE plpgsql AS $$
DECLARE r text; v t.gone%TYPE;
BEGIN
  SELECT t.name INTO r
  FROM t WHERE t.gone = 'x' AND id = i;
  EXECUTE 'SELECT 1';
  RETURN r;
END $$;
CREATE PROCEDURE p_pl(i int) LANGUAGE plpgsql AS $$
BEGIN
  UPDATE t SET name = 'x' WHERE id = i;
END $$;
CREATE FUNCTION trg() RETURNS trigger LANGUAGE plpgsql SET search_path = public AS $$
BEGIN
  NEW.gone := upper(NEW.name);
  RETURN NEW;
END $$;
CREATE TRIGGER on_t BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION trg();
CREATE TRIGGER on_other BEFORE INSERT ON other FOR EACH ROW EXECUTE FUNCTION trg();
CREATE FUNCTION lonely() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.nothing := 1; RETURN NEW; END $$;
"""
BROKEN = [
    ("PL/pgSQL function public.f_pl(integer)", 2, 19, "column t.gone does not exist (variable v is declared "
                                                      "t.gone%TYPE)", ""),
    ("PL/pgSQL function public.f_pl(integer)", 5, 16, "column t.gone does not exist", ""),
    ("SQL function public.f_sql(integer)", 3, 10, "column t.gone does not exist", ""),
    ("PL/pgSQL trigger function public.trg()", 3, 3, 'record "new" has no field "gone"', "trigger on_t on public.t"),
]


def _problems(report: dbcode.CodeReport) -> list[tuple[str, int, int, str, str]]:
    return [(b.routine, b.line, b.column, b.message, b.via) for b in report.problems]


def test_function_bodies_by_plpgsql_check_and_by_preparing_each_query(scratch_dsn: str) -> None:
    with psycopg.connect(scratch_dsn, autocommit=True) as conn:
        conn.execute(CODE)
        conn.execute("CREATE EXTENSION plpgsql_check")  # the Debian package postgresql-15-plpgsql-check (.ci/run)
    # Read-only, as on the target in post: checking creates and runs nothing.
    ro = make_conninfo(scratch_dsn, options="-c default_transaction_read_only=on")
    with psycopg.connect(ro, autocommit=True) as conn:
        found = dbcode.routines(conn)
        assert [r.label for r in found] == [
            "PL/pgSQL function public.f_pl(integer)", "SQL function public.f_sql(integer)",
            "PL/pgSQL trigger function public.lonely()", "PL/pgSQL procedure public.p_pl(integer)",
            "PL/pgSQL trigger function public.trg()"]
        for method in (dbcode.PREPARE, dbcode.PLPGSQL_CHECK):
            report = dbcode.examine(conn, found, method)
            assert report.problems == [], method
            assert report.skipped == ["PL/pgSQL trigger function public.lonely(): no trigger uses it, so NEW and OLD "
                                      "have no table"]
    with psycopg.connect(scratch_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE t DROP COLUMN gone")  # PostgreSQL lets it go: no body is tied to it
    with psycopg.connect(ro, autocommit=True) as conn:
        prepared = dbcode.examine(conn, found, dbcode.PREPARE)
        assert _problems(prepared) == BROKEN
        assert prepared.dynamic == 1  # EXECUTE: built at run time, not checkable
        checked = dbcode.examine(conn, found, dbcode.PLPGSQL_CHECK)
        assert _problems(checked) == BROKEN  # a body that does not compile (%TYPE) is read statically as well
        assert checked.problems[-1].describe() == (
            'PL/pgSQL trigger function public.trg() (as trigger on_t on public.t), line 3, column 3: record "new" has '
            'no field "gone"\n      3 | NEW.gone := upper(NEW.name);')
        assert str(conn.execute("SHOW search_path").fetchone()[0]) == '"$user", public'  # put back


def test_static_queries_of_a_plpgsql_body_become_preparable_statements() -> None:
    body = plpgsql_static.analyse("""CREATE FUNCTION public.f() RETURNS trigger LANGUAGE plpgsql AS $$
<<blk>>
DECLARE n int := 0; v public.t.gone%TYPE; r record;
BEGIN
  SELECT count(*) INTO n FROM t WHERE t.name = NEW.name AND id = blk.n;
  IF NEW.flag THEN n := n + 1; END IF;
  SELECT c.name INTO NEW.copied FROM c WHERE c.id = NEW.c_id;
  FOR r IN SELECT * FROM t LOOP PERFORM r.id; END LOOP;
  EXECUTE format('SELECT %I FROM t', 'x');
  CALL p(1);
  RETURN NEW;
END $$""", 0, (), trigger=True)
    assert [(q.line, q.sql, q.types) for q in body.queries] == [
        (5, "SELECT count(*) FROM t WHERE t.name = $1 AND id = $2", ("new.name", "int4")),
        (6, "SELECT $1", ("new.flag",)),
        (6, "SELECT $1 + 1", ("int4",)),
        (7, "SELECT c.name FROM c WHERE c.id = $1", ("new.c_id",)),
        (8, "SELECT $1", ("",)),  # PERFORM r.id: a record's field, of a type known only at run time
        (8, "SELECT * FROM t", ()),
        (3, "SELECT 0", ())]  # a declaration's default
    assert sorted({(f.line, f.field) for f in body.fields}) == [(5, "name"), (6, "flag"), (7, "c_id"),
                                                                 (7, "copied")]
    assert body.declared == [(3, "v", "public.t.gone%TYPE")]
    assert body.dynamic == 1
    with pytest.raises(plpgsql_static.BodyError, match="RETURN QUERY"):
        plpgsql_static.analyse("CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN QUERY "
                               "SELECT 1; END $$", 0, (), trigger=False)


_apps = itertools.count(1)


def test_pg_stat_statements_gives_each_query_of_the_application_with_calls_and_time(
        pgss_server: EmbeddedPostgres) -> None:
    dsn = pgss_server.create_database(f"stats_{next(_apps)}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pg_stat_statements; CREATE TABLE t (id int PRIMARY KEY, gone text);"
                     "CREATE ROLE app_reader; CREATE ROLE app_writer; GRANT SELECT, INSERT ON t TO app_reader, "
                     "app_writer")
        conn.execute("SELECT gone FROM t")  # this role's own (psql, the plugin): left out unless named
        for role, times in (("app_reader", 3), ("app_writer", 1)):
            conn.execute(f"SET ROLE {role}".encode())
            for i in range(times):
                conn.execute("SELECT gone FROM t WHERE id = %s", (i,))
            conn.execute("INSERT INTO t VALUES (%s, %s)", (times, "secret"))
            conn.execute("RESET ROLE")
        conn.execute("SET ROLE app_reader")
        conn.execute("SELECT count(*) FROM pg_class")  # the catalogs only: not the application's
        conn.execute("RESET ROLE")
        conn.execute("ALTER ROLE app_writer PASSWORD 'pw-in-a-utility-statement'")
    with psycopg.connect(dsn, autocommit=True) as conn:
        found = appqueries.recorded(conn, (), 1)
        assert [(q.text, q.calls, q.roles) for q in found.queries] == [
            ("SELECT gone FROM t WHERE id = $1", 4, ("app_reader", "app_writer")),
            ("INSERT INTO t VALUES ($1, $2)", 2, ("app_reader", "app_writer"))]
        assert (found.left_out, found.others) >= (1, 1)
        assert found.reset is not None
        assert all("pw-in-a" not in q.text for q in found.queries)
        only = appqueries.recorded(conn, ("app_writer",), 2)  # named roles; at least 2 calls
        assert [(q.text, q.calls) for q in only.queries] == []
        assert [q.calls for q in appqueries.recorded(conn, ("app_writer",), 1).queries] == [1, 1]
        assert dbcode.prepare(conn, found.queries[0].text) is None
        conn.execute("ALTER TABLE t DROP COLUMN gone")
        assert dbcode.prepare(conn, found.queries[0].text) == ("42703", 'column "gone" does not exist')
        assert found.queries[0].describe().startswith("4 calls, ")
        conn.execute("CREATE ROLE stats_peeker LOGIN")
    with psycopg.connect(make_conninfo(dsn, user="stats_peeker"), autocommit=True) as conn:
        hidden = appqueries.recorded(conn, (), 1)  # another role's query texts: not readable without the grant
        assert hidden.queries == []
        assert hidden.hidden >= 3
    pgss_server.drop_database(dsn.split("dbname=")[1].split()[0])


def test_query_files_give_each_query_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "sql").mkdir()
    (tmp_path / "sql/a.sql").write_text("-- list\nSELECT 1 FROM t WHERE id = $1;\n\nSET search_path = x;\n"
                                        "UPDATE t SET x = $1\n  WHERE id = $2;\n")
    (tmp_path / "sql/b.sql").write_text("SELECT * FROM nope WHERE;\n")
    queries, notes = appqueries.from_files(tmp_path, "sql/*.sql")
    assert [(q.source, q.text, q.relations) for q in queries] == [
        ("sql/a.sql:2", "SELECT 1 FROM t WHERE id = $1", ("t",)),
        ("sql/a.sql:5", "UPDATE t SET x = $1\n  WHERE id = $2", ("t",))]
    assert notes[0] == "sql/a.sql:4: not a query (SELECT, INSERT, UPDATE, DELETE or MERGE): left out"
    assert notes[1].startswith('sql/b.sql:1: syntax error at or near ";"')
    assert queries[1].describe() == "sql/a.sql:5: UPDATE t SET x = $1 WHERE id = $2"


@pytest.mark.parametrize(("entry", "message"), [
    ('[[preflight]]\ncheck = "database_code"\n', "database_code cannot be a preflight check: it runs before the "
                                                 "migrations, on a copy of the schema"),
    ('[[app_queries]]\nfile = "q/*.sql"\nquery = "SELECT 1"\n', 'give either file = "queries/*.sql"'),
    ('[[app_queries]]\nquery = "SELECT 1"\n', 'a query needs a name = "..."'),
    ('[[app_queries]]\ncheck = "app_queries"\nfile = "x.sql"\n', "app_queries must be an array of tables without"),
    ('[[blast_radius]]\ncheck = "database_code"\nplpgsql = "yes"\n',
     "plpgsql must be one of 'auto', 'plpgsql_check', 'prepare'"),
])
def test_blast_radius_entries_are_validated_with_the_plan(tmp_path: Path, entry: str, message: str) -> None:
    (tmp_path / "phase4.toml").write_text(f'[phase4]\nname = "x"\n\n{entry}')
    with pytest.raises(PlanError) as caught:
        load_plan(tmp_path / "phase4.toml", "phase4.toml")
    assert message in str(caught.value)


def test_each_blast_radius_check_is_confirmed_in_post_unless_told_not_to(tmp_path: Path) -> None:
    (tmp_path / "phase4.toml").write_text('[phase4]\nname = "x"\n[[blast_radius]]\ncheck = "database_code"\n'
                                          '[[blast_radius]]\ncheck = "pg_stat_statements"\nconfirm_after = false\n'
                                          '[[app_queries]]\nname = "list"\nquery = "SELECT 1"\n')
    plan = load_plan(tmp_path / "phase4.toml")
    ids: dict[str, Any] = {stage: [s.test_id for s in plan.stages[stage]] for stage in ("blast_radius", "post")}
    assert ids == {"blast_radius": ["database_code[all_schemas]", "pg_stat_statements[other_roles]",
                                    "app_queries[list]"],
                   "post": ["database_code[all_schemas]", "app_queries[list]"]}
    assert [s.name for s in plan.steps][:3] == ["preflight", "blast_radius", "backup"]
