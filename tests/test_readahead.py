"""The read-ahead and the proofs where they could go wrong: each test compares with the plain query a DBA would run
(`SELECT count(*) FROM view`, the anti-join, `count(*) WHERE col IS NULL`), or with --phase4-workers=1, on a real
cluster. Found by a review of the one-snapshot read-ahead; each failed before its fix."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from helpers import EXAMPLES, OTHER, TO_PARENT, Project, outcomes_of, pass_steps_before, spec
from pytest_phase4.db import catalog
from pytest_phase4.db import pool as pool_module
from pytest_phase4.db.facts import Facts, OrphanCount
from pytest_phase4.db.pool import Pool, count_all
from pytest_phase4.db.seed import load_setup
from pytest_phase4.db.target import Target
from pytest_phase4.errors import CheckFailed
from pytest_phase4.kinds.base import Column, Relation
from pytest_phase4.plan.load import load_plan
from pytest_phase4.run import Phase4Run

_roles = itertools.count(1)


def role(scratch_dsn: str, admin: psycopg.Connection[Any], extra: sql.Composable | None = None) -> str:
    """A fresh login role; returns a DSN that logs in as it."""
    name = f"review_r{next(_roles)}_{admin.info.backend_pid}"
    admin.execute(sql.SQL("CREATE ROLE {} LOGIN {}").format(sql.Identifier(name), extra or sql.SQL("")))
    admin.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(name)))
    return make_conninfo(scratch_dsn, user=name)


# ---- 1. proofs that give a wrong number ---------------------------------------------------------------------
@pytest.mark.parametrize("body", ["SELECT sum(to_eur(parent_id)) AS total FROM child",
                                  "SELECT count(*) AS n, max(to_eur(id)) AS top FROM child"])
def test_view_over_an_aggregate_is_one_row_not_its_tables_rows(scratch_dsn: str, conn: psycopg.Connection[Any],
                                                               body: str) -> None:
    # a plpgsql function is VOLATILE unless declared otherwise: the planner keeps the inner aggregate
    conn.execute("CREATE FUNCTION to_eur(v int) RETURNS numeric LANGUAGE plpgsql AS 'BEGIN RETURN v * 0.9; END'")
    conn.execute(sql.SQL("CREATE VIEW totals AS {}").format(sql.SQL(body)))
    truth = catalog.count_rows(conn, "public", "totals")
    assert truth == 1
    # before the fix: (RowsOf(table='child'), 100)
    assert (catalog.count_view(conn, "public", "totals"), Facts(conn, "public").count("totals")) == (1, 1)
    pool = Pool(lambda: psycopg.connect(scratch_dsn, autocommit=True), 2)
    try:
        facts = Facts(conn, "public", (spec("view_rowcount_matches", ("totals", "child")),), pool)
        assert facts.count("totals") == 1  # before the fix: 100, and view_rowcount_matches[totals=child] passes
        facts.close()
    finally:
        pool.close()


def test_dense_proof_on_an_inheritance_parent_hides_a_gap(conn: psycopg.Connection[Any]) -> None:
    # ip: 1, 3 (PRIMARY KEY); its inheritance child repeats 1 (the key is unique in ip only). count = 3 = 3 - 1 + 1.
    conn.execute("CREATE TABLE ip (id int PRIMARY KEY); CREATE TABLE ip_kid () INHERITS (ip);"
                 "INSERT INTO ip VALUES (1), (3); INSERT INTO ip_kid VALUES (1);"
                 "CREATE TABLE ic (k int); INSERT INTO ic VALUES (2)")
    truth = catalog.count_orphans(conn, "public", "ic", "k", "ip", "id")  # the anti-join: 2 has no parent
    assert truth == 1
    rel = Relation(Column("ic", "k"), Column("ip", "id"))
    assert not Facts(conn, "public").dense_keys(rel)  # the parent's unique index does not cover ip_kid
    assert Facts(conn, "public").orphans(rel).orphans == truth  # before the fix: 0


def test_not_null_on_an_inheritance_parent_does_not_mean_no_nulls(conn: psycopg.Connection[Any]) -> None:
    # PostgreSQL 15 lets an inheritance child drop the NOT NULL it inherited; count(*) FROM np reads the child too.
    conn.execute("CREATE TABLE np (id int PRIMARY KEY, pid int NOT NULL); CREATE TABLE np_kid () INHERITS (np);"
                 "ALTER TABLE np_kid ALTER COLUMN pid DROP NOT NULL; INSERT INTO np_kid VALUES (5, NULL)")
    truth = catalog.count_nulls(conn, "public", "np", "pid")
    assert truth == 1
    rel = Relation(Column("np", "pid"), Column("parent", "id"))
    assert Facts(conn, "public").orphans(rel).nulls == truth  # before the fix: 0


def test_view_counted_as_its_table_under_row_level_security(scratch_dsn: str,
                                                            conn: psycopg.Connection[Any]) -> None:
    # The view runs with its owner's rights (here the table owner: no policy applies); a reader's own
    # SELECT on the table sees 5 rows through its policy. count(*) FROM the view is 100 for that reader.
    conn.execute("CREATE TABLE secret (id int PRIMARY KEY); INSERT INTO secret SELECT generate_series(1, 100);"
                 "CREATE VIEW secret_v AS SELECT * FROM secret; ALTER TABLE secret ENABLE ROW LEVEL SECURITY;"
                 "CREATE POLICY five ON secret FOR SELECT USING (id <= 5)")
    dsn = role(scratch_dsn, conn)
    with psycopg.connect(dsn, autocommit=True) as reader:
        truth = catalog.count_rows(reader, "public", "secret_v")
        assert (truth, catalog.count_rows(reader, "public", "secret")) == (100, 5)
        assert Facts(reader, "public").count("secret_v") == truth  # before the fix: 5, so view_rowcount_matches passes


# ---- 2. snapshot / lock lifecycle ---------------------------------------------------------------------------
def test_a_refused_snapshot_export_poisons_a_pool_connection(scratch_dsn: str, conn: psycopg.Connection[Any]) -> None:
    conn.execute("DROP VIEW slow; REVOKE EXECUTE ON FUNCTION pg_catalog.pg_export_snapshot() FROM PUBLIC")
    dsn = role(scratch_dsn, conn)
    pool = Pool(lambda: psycopg.connect(dsn, autocommit=True), 2)
    try:
        facts = Facts(conn, "public", (spec("view_rowcount_matches", ("child_view", "child")),), pool)
        assert facts._ahead is None  # the server refused the export: read one by one, as documented
        assert facts.count("child") == 100
        facts.close()
        # the run's pre-migration row counts, on the same pool (Phase4Run.snapshot -> count_all)
        # before the fix: InFailedSqlTransaction (the connection came back from the refused export still in it)
        assert count_all(conn, pool, "public") == {"child": 100, "other": 5, "parent": 10}
    finally:
        pool.close()


def test_no_connection_for_the_pool_fails_the_check_instead_of_falling_back(scratch_dsn: str) -> None:
    plan = load_plan(EXAMPLES / "mini" / "checks" / "phase4.toml")
    with psycopg.connect(scratch_dsn, autocommit=True) as admin:
        load_setup(admin, plan)
        dsn = role(scratch_dsn, admin, sql.SQL("CONNECTION LIMIT 2"))  # the run lock and the verification connection
    run = Phase4Run(plan, Target(dsn, "test"), True, workers=2)
    try:
        run.open()
        orphans = next(s for s in plan.stages["post"] if s.kind == "no_orphans")
        # before the fix: TargetError ('too many connections for role') escaped Pool.begin (it is no psycopg.Error),
        # although run_all and Facts._value fall back to the verification connection in exactly this case
        assert run.check(orphans).startswith("0 orphans in sales.customer_id->customers.id")
    finally:
        run.close()


def _project_with_preflight_orphans(project: Callable[..., Project], custom: str) -> Project:
    p = project("mini", "safe")
    toml = p.path / "checks" / "phase4.toml"
    toml.write_text(toml.read_text().replace(
        "[[backup]]", '[[preflight]]\ncheck = "no_orphans"\nrelations = ["tickets.customer_id -> customers.id"]\n\n'
        "[[backup]]", 1))
    (p.path / "checks" / "test_app.py").write_text(custom)
    return p


APP_WRITES = """
import psycopg, pytest

@pytest.mark.phase4_after("preflight")
def test_the_application_writes(phase4_run):  # stands for the live application between preflight and backup
    with psycopg.connect(phase4_run.target.dsn, autocommit=True) as app:
        app.execute("INSERT INTO tickets VALUES (1000, 1, 'late')")
"""


@pytest.mark.parametrize("workers", ["1", "2"])
def test_backup_snapshot_json_describes_the_dump_not_the_preflight_moment(project: Callable[..., Project],
                                                                         workers: str) -> None:
    p = _project_with_preflight_orphans(project, APP_WRITES)
    result = p.run("-v", "--phase4-confirm-destructive", f"--phase4-workers={workers}", seed=True)
    (snap,) = p.path.glob("_backups/*/*/snapshot.json")
    counts = json.loads(snap.read_text())["counts"]
    assert outcomes_of(result)["checks/phase4.toml::backup::backup[snapshot]"] == "PASSED"
    # the dump of backup[dump] holds 51 tickets (made after the insert); before the fix snapshot.json said 50, read in
    # the preflight step's REPEATABLE READ snapshot, still open: backup[snapshot] joined it on the pool
    assert counts["tickets"] == 51


CUSTOM_DDL = """
import psycopg, pytest

@pytest.mark.phase4_after("preflight")
def test_custom_ddl(phase4_run):  # or the application's own deploy: any AccessExclusiveLock on a step's table
    with psycopg.connect(phase4_run.target.dsn, autocommit=True, options="-c lock_timeout=3s") as app:
        app.execute("ALTER TABLE tickets ADD COLUMN note text")
"""


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_steps_snapshot_holds_its_locks_after_the_step(project: Callable[..., Project], workers: str) -> None:
    p = _project_with_preflight_orphans(project, CUSTOM_DDL)
    result = p.run("-v", "--phase4-confirm-destructive", f"--phase4-workers={workers}", seed=True)
    # before the fix: test_custom_ddl fails with LockNotAvailable (without lock_timeout it hangs forever: our own idle
    # snapshot holds AccessShareLock on tickets until the next migration drops the Facts); --phase4-workers=1 passes
    assert outcomes_of(result)["checks/test_app.py::test_custom_ddl"] == "PASSED"  # workers=1: PASSED


# ---- 3. error attribution -----------------------------------------------------------------------------------
def test_one_slow_view_times_out_every_small_read_of_the_step(scratch_dsn: str, conn: psycopg.Connection[Any]) -> None:
    timeout = make_conninfo(scratch_dsn, options="-c statement_timeout=1000")
    specs = (spec("view_rowcount_matches", ("child_view", "child")),  # started early, alone
             spec("view_rowcount_matches", ("slow", "other")),  # 30 s: times out, its own check fails
             spec("row_counts_unchanged", "other"), spec("no_orphans", TO_PARENT))
    pool = Pool(lambda: psycopg.connect(timeout, autocommit=True), 2)
    try:
        facts = Facts(conn, "public", specs, pool)
        # before the fix: QueryCanceled 'canceling statement due to statement timeout' -- the slow view's, in a batch
        assert facts.count("other") == 5
        assert facts.orphans(TO_PARENT) == OrphanCount(orphans=13, nulls=10)
        with pytest.raises(psycopg.errors.QueryCanceled):
            facts.count("slow")
        facts.close()
    finally:
        pool.close()


def test_a_late_anti_join_runs_on_a_pool_connection_the_server_already_ended(
        scratch_dsn: str, conn: psycopg.Connection[Any]) -> None:
    # idle_in_transaction_session_timeout is a common production guard; the step's snapshot sits idle between jobs.
    guarded = make_conninfo(scratch_dsn, options="-c idle_in_transaction_session_timeout=500")
    conn.execute("CREATE TABLE gp (id int PRIMARY KEY); INSERT INTO gp VALUES (1), (2), (4), (5), (6), (7), (8),"
                 " (9), (10), (11)")  # 10 keys in [1, 11]: a gap, so the anti-join is asked for when needed
    gapped = Relation(Column("child", "parent_id"), Column("gp", "id"))
    truth = catalog.count_orphans(conn, "public", "child", "parent_id", "gp", "id")
    pool = Pool(lambda: psycopg.connect(guarded, autocommit=True), 2)
    try:
        facts = Facts(conn, "public", (spec("row_counts_unchanged", "other"), spec("no_orphans", gapped)), pool)
        assert facts.count("other") == 5
        facts.quiesce()
        time.sleep(1.5)  # pytest reports other checks of the step
        assert facts.orphans(gapped).orphans == truth  # before the fix: OperationalError (the server ended it)
        facts.close()
    finally:
        pool.close()


def test_closing_right_after_the_step_starts_does_not_cancel_the_running_view(
        scratch_dsn: str, conn: psycopg.Connection[Any]) -> None:
    def connect() -> psycopg.Connection[Any]:  # a remote server: TLS and authentication take a moment
        time.sleep(0.3)
        return psycopg.connect(scratch_dsn, autocommit=True)

    pool = Pool(connect, 3)
    try:
        facts = Facts(conn, "public", (spec("view_rowcount_matches", ("child_view", "child")),
                                       spec("view_rowcount_matches", ("slow", "child"))), pool)
        time.sleep(0.05)  # the slow view's job has started: it is connecting, not yet in Pool._busy
        started = time.monotonic()
        facts.close()  # e.g. Ctrl-C or -x right after the first check of the step, or the next migration
        assert time.monotonic() - started < 5  # before the fix: about 30 s, the whole pg_sleep(30)
    finally:
        pool.close()


def test_a_refused_snapshot_export_fails_the_next_migration(scratch_dsn: str) -> None:
    plan = load_plan(EXAMPLES / "mini" / "checks" / "phase4.toml")
    with psycopg.connect(scratch_dsn, autocommit=True) as admin:
        load_setup(admin, plan)
        admin.execute("REVOKE EXECUTE ON FUNCTION pg_catalog.pg_export_snapshot() FROM PUBLIC")
        dsn = role(scratch_dsn, admin)  # a non-superuser owner that may migrate, but not export a snapshot
        name = dsn.split("user=")[1].split()[0]
        admin.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(admin.info.dbname),
                                                                      sql.Identifier(name)))
        admin.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(name)))
        for t in ("customers", "sales", "tickets"):
            admin.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(sql.Identifier(t), sql.Identifier(name)))
    run = Phase4Run(plan, Target(dsn, "test"), True, workers=2)
    try:
        run.open()
        view_check = next(s for s in plan.stages["post"] if s.kind == "view_rowcount_matches")
        with pytest.raises(CheckFailed, match="to exist"):
            run.check(view_check)  # the view comes with the migration; making the step's Facts tried the export
        pass_steps_before(run, plan.migrations[0])
        run.migrate(plan.migrations[0])  # before the fix: CheckFailed 'row counts ... recorded before migrating':
        #                                  'current transaction is aborted' on the poisoned pool connection
    finally:
        run.close()


def test_a_row_count_gets_another_checks_permission_error(scratch_dsn: str, conn: psycopg.Connection[Any]) -> None:
    conn.execute("DROP VIEW slow")
    dsn = role(scratch_dsn, conn)
    conn.execute(sql.SQL("REVOKE SELECT ON parent FROM {}").format(sql.Identifier(dsn.split("user=")[1].split()[0])))
    pool = Pool(lambda: psycopg.connect(dsn, autocommit=True), 2)
    with psycopg.connect(dsn, autocommit=True) as reader:
        try:  # other.parent_id leads no index: count(other) is read with the keys outside parent's [min, max]
            facts = Facts(reader, "public", (spec("row_counts_unchanged", "other"), spec("no_orphans", OTHER)), pool)
            assert facts.count("other") == 5  # before the fix: 'permission denied for table parent'
        finally:
            pool.close()


@pytest.mark.parametrize(("cores", "expected"), [(None, 0), (2, 0), (3, 1), (16, 2)])
def test_a_job_uses_the_parallel_workers_of_the_cores_nobody_uses(scratch_dsn: str, cores: int | None,
                                                                    expected: int) -> None:
    # A job alone on the pool, pytest's process on a core of its own: cores - 1 - 1 workers, at most the server's
    # max_parallel_workers_per_gather (2 by default); unknown cores (a remote server): none.
    pool = Pool(lambda: psycopg.connect(scratch_dsn, autocommit=True), 2)
    show = "SHOW max_parallel_workers_per_gather"
    try:
        pool.submit(lambda c: c.execute("SELECT 1")).result()  # connects: learns the server's setting and cores
        with psycopg.connect(scratch_dsn) as conn:
            assert pool._cores == pool_module.server_cores(conn)  # a Unix socket: this machine's cores
        pool._cores = cores
        assert pool.submit(lambda c: c.execute(show).fetchone()).result() == (str(expected),)
        pool.begin()  # in a snapshot's transaction too, and back to none once it ends
        assert pool.submit(lambda c: c.execute(show).fetchone()).result() == (str(expected),)
        pool.end()
        pool._cores = None
        assert pool.submit(lambda c: c.execute(show).fetchone()).result() == ("0",)
    finally:
        pool.close()
