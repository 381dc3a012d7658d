"""Facts: one catalog query per step, each relation counted once, read-ahead on a pool that keeps each check's own
result and error, and no stale facts after a migration (real PostgreSQL, no mocks)."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from helpers import BAD_TYPES, EXAMPLES, OTHER, TO_PARENT, Project, outcomes_of, pass_steps_before, spec
from pytest_phase4.db import catalog
from pytest_phase4.db.facts import Facts, OrphanCount
from pytest_phase4.db.pool import Pool, count_all
from pytest_phase4.db.seed import load_setup
from pytest_phase4.db.target import Target
from pytest_phase4.kinds.base import Column, Relation
from pytest_phase4.plan.load import load_plan
from pytest_phase4.run import Phase4Run
from pytest_phase4.safety import snapshot


def test_one_catalog_query_answers_what_the_catalog_module_answers(conn: psycopg.Connection[Any]) -> None:
    facts = Facts(conn, "public")
    names = ["parent", "child", "other", "child_view", "idx_child_parent", "missing"]
    assert facts.tables() == catalog.tables(conn, "public") == ["child", "other", "parent"]
    assert facts.views() == catalog.views(conn, "public") == ["child_view", "slow"]
    assert facts.indexes() == catalog.indexes(conn, "public")
    for name in names:
        assert facts.relkind(name) == catalog.relkind(conn, "public", name)
        assert facts.columns(name) == catalog.columns(conn, "public", name)
        assert facts.policies(name) == catalog.policies(conn, "public", name)
        assert facts.rls_enabled(name) == catalog.rls_enabled(conn, "public", name)
        assert facts.primary_key(name) == catalog.primary_key(conn, "public", name)
    assert facts.policies("parent") == ["parent_read"]
    assert facts.queries == 1


def test_a_relation_is_counted_once_per_step(conn: psycopg.Connection[Any]) -> None:
    facts = Facts(conn, "public")
    assert [facts.count("child"), facts.count("child"), facts.count("child_view")] == [100, 100, 77]
    assert facts.queries == 3  # and the catalog query: a view may be counted by its plan (scanned_alone)
    assert facts.orphans(TO_PARENT) == OrphanCount(orphans=13, nulls=10)  # 7, 14, ... 98 minus 70: 13 rows
    assert facts.orphans(TO_PARENT) == OrphanCount(orphans=13, nulls=10)
    assert facts.queries == 5


# Parent keys, child keys: every way the dense-key proof could go wrong, each counted against the anti-join.
ORPHAN_CASES = {
    "dense, orphans on both sides": ("generate_series(1, 50)", "ARRAY[0, 1, 50, 51, -3, NULL, 25, 9000000000]"),
    "gaps: the anti-join": ("generate_series(1, 50) g WHERE g <> 25", "ARRAY[1, 24, 25, 26, 51, NULL]"),
    "one gap at the end of the int range": ("unnest(ARRAY[-9223372036854775808, 9223372036854775807])",
                                            "ARRAY[0, 9223372036854775807, -9223372036854775808, NULL]"),
    "no parent rows": ("generate_series(1, 0)", "ARRAY[1, 2, NULL]"),
    "no child rows": ("generate_series(1, 5)", "ARRAY[]::bigint[]"),
}


@pytest.mark.parametrize(("parents", "children"), ORPHAN_CASES.values(), ids=ORPHAN_CASES.keys())
@pytest.mark.parametrize(("child_type", "index"), [("int", True), ("bigint", True), ("int", False)],
                         ids=["int indexed", "bigint indexed", "int scanned"])
def test_orphans_counted_from_dense_keys_equal_the_anti_join(scratch_dsn: str, conn: psycopg.Connection[Any],
                                                            parents: str, children: str, child_type: str,
                                                            index: bool) -> None:
    conn.execute(sql.SQL("CREATE TABLE p (id bigint PRIMARY KEY); INSERT INTO p SELECT * FROM {};"
                         "CREATE TABLE c (k {}); INSERT INTO c SELECT k FROM unnest({}::bigint[]) k"
                         " WHERE k IS NULL OR k BETWEEN -2147483648 AND 2147483647 OR {} = 'bigint'").format(
        sql.SQL(parents), sql.SQL(child_type), sql.SQL(children), child_type))
    if index:
        conn.execute("CREATE INDEX ON c (k)")
    rel = Relation(Column("c", "k"), Column("p", "id"))
    truth = conn.execute("SELECT (SELECT count(*) FROM c WHERE k IS NOT NULL AND k NOT IN (SELECT id FROM p)),"
                         " (SELECT count(*) FROM c WHERE k IS NULL), (SELECT count(*) FROM p), (SELECT count(*) FROM c)"
                         ).fetchone()
    orphans, nulls, parent_rows, child_rows = truth or ()
    assert Facts(conn, "public").dense_keys(rel)
    assert catalog.count_orphans(conn, "public", "c", "k", "p", "id") == orphans  # the anti-join
    assert catalog.count_orphans(conn, "public", "c", "k", "p", "id", dense_keys=True) == orphans
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE  # its snapshot is closed
    pool = Pool(lambda: psycopg.connect(scratch_dsn, autocommit=True), 2)
    try:  # read ahead in the step's snapshot: the parent's bounds, its count, the keys outside
        facts = Facts(conn, "public", (spec("no_orphans", rel), spec("row_counts_unchanged", "c")), pool)
        assert facts.orphans(rel) == OrphanCount(orphans, nulls)
        assert (facts.count("p"), facts.count("c")) == (parent_rows, child_rows)
        facts.close()
    finally:
        pool.close()


def test_only_a_unique_integer_parent_key_is_counted_from_its_range(conn: psycopg.Connection[Any]) -> None:
    # 1, 1, 3: three keys between 1 and 3, but 2 is missing. Without a unique index the count proves nothing.
    conn.execute("CREATE TABLE dup (id int); INSERT INTO dup VALUES (1), (1), (3);"
                 "CREATE TABLE part (id int); CREATE UNIQUE INDEX ON part (id) WHERE id > 0;"
                 "CREATE TABLE pair (a int, b int, UNIQUE (a, b)); CREATE TABLE big (id numeric PRIMARY KEY);"
                 "CREATE TABLE kid (k int); INSERT INTO kid VALUES (2)")
    facts = Facts(conn, "public")
    for parent in ("dup.id", "part.id", "pair.a", "big.id", "parent.code"):
        table, column = parent.split(".")
        assert not facts.dense_keys(Relation(Column("kid", "k"), Column(table, column))), parent
    assert facts.dense_keys(TO_PARENT)
    assert facts.orphans(Relation(Column("kid", "k"), Column("dup", "id"))) == OrphanCount(orphans=1, nulls=0)


# Views over `child` (100 rows; parent_id NULL in 10, 99 in 13, else 1..9) and whether their plan may stand for a
# count: only a plain scan of one table does.
VIEWS = {
    "left joins on unique keys": ("SELECT c.*, p.code AS pcode, o.id AS oid FROM child c"
                                  " LEFT JOIN parent p ON p.id = c.parent_id LEFT JOIN other o ON o.id = c.id", True),
    "an inner join": ("SELECT c.* FROM child c JOIN parent p ON p.id = c.parent_id", False),
    "a left join on a non-unique key": ("SELECT c.* FROM child c LEFT JOIN other o ON o.parent_id = c.parent_id",
                                        False),
    "a filter": ("SELECT * FROM child WHERE parent_id IS NOT NULL", False),
    "a filter a partial index stands for": ("SELECT id FROM child WHERE id > 90", False),
    "a set-returning function": ("SELECT id, generate_series(1, 2) FROM child", False),
    "a union": ("SELECT id FROM child UNION ALL SELECT id FROM parent", False),
    "distinct": ("SELECT DISTINCT parent_id FROM child", False),
    "a limit": ("SELECT * FROM child LIMIT 5", False),
    "a table with an inheritance child": ("SELECT * FROM ONLY base_t", False),
}


@pytest.mark.parametrize(("body", "alone"), VIEWS.values(), ids=VIEWS.keys())
def test_a_view_is_counted_by_its_plan_only_when_the_plan_scans_one_table_whole(
        conn: psycopg.Connection[Any], body: str, alone: bool) -> None:
    conn.execute("CREATE INDEX ON child (id) WHERE id > 90; CREATE TABLE base_t (id int);"
                 "CREATE TABLE kid_t () INHERITS (base_t); INSERT INTO base_t VALUES (1); INSERT INTO kid_t VALUES (2);"
                 "ANALYZE")
    conn.execute(sql.SQL("CREATE VIEW v AS {}").format(sql.SQL(body)))
    counted = catalog.count_rows(conn, "public", "v")
    assert catalog.count_view(conn, "public", "v") == (catalog.RowsOf("child") if alone else counted)
    if alone:
        assert catalog.count_rows(conn, "public", "child") == counted


def test_a_view_counted_by_its_plan_says_so_in_the_report(project: Callable[..., Project]) -> None:
    p = project("mini")
    assert p.run("--phase4-confirm-destructive", seed=True).ret == 0
    (report,) = (p.path / "reports").glob("*.html")
    # after the migration that creates the view, and in the post step
    assert report.read_text().count("sales_with_details: 100 rows = sales: 100 rows (its plan reads sales alone, "
                                    "unfiltered: one row per sales row whatever the data)") == 2


def test_read_ahead_keeps_each_checks_own_result_and_error(scratch_dsn: str, conn: psycopg.Connection[Any]) -> None:
    specs = (spec("no_orphans", BAD_TYPES), spec("no_orphans", TO_PARENT), spec("no_orphans", OTHER),
             spec("view_rowcount_matches", ("child_view", "child")), spec("row_counts_unchanged", "other"))
    pool = Pool(lambda: psycopg.connect(scratch_dsn, autocommit=True), 2)
    try:
        facts = Facts(conn, "public", specs, pool)
        assert facts.count("other") == 5  # the first data question queues every query of the step
        # other.parent_id leads no index: one scan of `other` counts its rows, NULL keys and keys outside parent.id;
        # child.parent_id has an index: its keys outside parent.id are an index range. parent is counted for the proof.
        # child_view is child joined to parent on the unique parent.id: counted in child's scan (child's rows with a
        # parent_id), which holds only if no parent_id is an orphan; child's count and NULL keys come from that scan.
        assert facts._ahead is not None
        assert {frozenset(r.keys) for r in facts._ahead.plan.reads} == {
            frozenset({("outside", "child", "parent_id", "parent", "id")}),
            frozenset({("count", "other"), ("nulls", "other", "parent_id"),
                       ("outside", "other", "parent_id", "parent", "id")}),
            frozenset({("count", "child"), ("nulls", "child", "parent_id"), ("viewrows", "child_view")}),
            frozenset({("count", "parent")}), frozenset({("orphans", "child", "parent_id", "parent", "code")})}
        # the small reads (none of these tables is large) go in one job, each in a savepoint: the bad one fails
        # alone, so that only BAD_TYPES gets the error
        assert [sorted(k for r in job for k in r.keys) for job in facts._ahead.plan.jobs(2)] == [sorted(
            k for r in facts._ahead.plan.reads for k in r.keys)]
        with pytest.raises(psycopg.errors.UndefinedFunction, match="operator does not exist: text = integer"):
            facts.orphans(BAD_TYPES)
        assert facts.orphans(TO_PARENT) == OrphanCount(orphans=13, nulls=10)
        assert facts.orphans(OTHER) == OrphanCount(orphans=0, nulls=0)
        # 13 parent_id are orphans: the view's own count, in the same snapshot
        assert (facts.count("child_view"), facts.count("child")) == (77, 100)
        assert facts.how_counted("child_view") == ""
        facts.close()
    finally:
        pool.close()


def test_every_value_of_a_step_comes_from_one_snapshot_that_ends_with_the_step(scratch_dsn: str,
                                                                              conn: psycopg.Connection[Any]) -> None:
    specs = (spec("view_rowcount_matches", ("child_view", "child")), spec("no_orphans", TO_PARENT),
             spec("row_counts_unchanged", "parent"))
    pool = Pool(lambda: psycopg.connect(scratch_dsn, autocommit=True), 2)
    try:
        facts = Facts(conn, "public", specs, pool)  # takes the snapshot: a view is counted from the start
        # The application goes on writing: a parent and its child, and an orphan. None of it is in the step's
        # numbers, which agree with each other (without the snapshot: 102 rows in child, 11 in parent).
        conn.execute("INSERT INTO parent VALUES (11, 'p11'); INSERT INTO child VALUES (101, 11, 'p11'), (102, 500, '')")
        assert (facts.count("child_view"), facts.count("child"), facts.count("parent")) == (77, 100, 10)
        assert facts.orphans(TO_PARENT) == OrphanCount(orphans=13, nulls=10)
        locks = "SELECT count(*) FROM pg_locks WHERE relation = 'child'::regclass AND pid <> pg_backend_pid()"
        (held,) = conn.execute(locks).fetchone() or (0,)
        assert held >= 1  # the snapshot's transactions (one or both connections) hold read locks on child
        facts.close()
        assert conn.execute(locks).fetchone() == (0,)  # closed: a migration would not wait on us
        assert Facts(conn, "public", specs, pool).count("child") == 102
    finally:
        pool.close()


def test_a_migration_drops_the_steps_facts(scratch_dsn: str) -> None:
    plan = load_plan(EXAMPLES / "mini" / "checks" / "phase4.toml")
    with psycopg.connect(scratch_dsn) as c:
        load_setup(c, plan)
    run = Phase4Run(plan, Target(scratch_dsn, "test"), True, workers=2)
    try:
        run.open()
        before = run.facts("post")
        assert run.facts("post") is before
        assert before.relkind("sales_with_details") is None
        pass_steps_before(run, plan.migrations[0])
        run.migrate(plan.migrations[0])  # creates sales_with_details
        after = run.facts("post")
        assert after is not before
        assert after.relkind("sales_with_details") == "v"
    finally:
        run.close()


def test_one_bad_relation_fails_alone_with_its_own_sql_error(project: Callable[..., Project]) -> None:
    p = project("mini")
    plan = Path(p.path / "checks" / "phase4.toml")
    plan.write_text(plan.read_text().replace(
        'relations = ["sales.customer_id -> customers.id",',
        'relations = ["sales.customer_id -> customers.name", "sales.customer_id -> customers.id",'))
    result = p.run("-v", "--phase4-confirm-destructive", seed=True)
    outcomes = outcomes_of(result)
    assert outcomes["checks/phase4.toml::post::no_orphans[sales.customer_id->customers.name]"] == "FAILED"
    assert outcomes["checks/phase4.toml::post::no_orphans[sales.customer_id->customers.id]"] == "PASSED"
    assert outcomes["checks/phase4.toml::post::no_orphans[tickets.customer_id->customers.id]"] == "PASSED"
    result.stdout.fnmatch_lines([
        "expected: check no_orphans[[]sales.customer_id->customers.name[]] to run",
        "found:    SQL error: operator does not exist: text = integer [[]SQLSTATE 42883[]]"])
    result.assert_outcomes(passed=25, failed=1)


@pytest.mark.parametrize("value", ["0", "many"])
def test_workers_must_be_a_small_whole_number(project: Callable[..., Project], value: str) -> None:
    result = project("mini").run(f"--phase4-workers={value}" if value.isdigit() else "-o", *(
        [] if value.isdigit() else [f"phase4_workers={value}"]), seed=True)
    assert result.ret == 4
    if value.isdigit():
        result.stderr.fnmatch_lines([f"ERROR: --phase4-workers: expected a whole number from 1 to 16, found {value!r}; "
                                     "use 1 *"])
    else:  # an int ini value: pytest's own conversion refuses it first
        result.stderr.fnmatch_lines(["ERROR: ini phase4_workers: expected a whole number from 1 to 16, found a value "
                                     f"that is not one (invalid literal for int() with base 10: {value!r}); use 1 *"])


def test_closing_the_facts_cancels_read_ahead_nobody_asked_for(scratch_dsn: str, conn: psycopg.Connection[Any]) -> None:
    pool = Pool(lambda: psycopg.connect(scratch_dsn, autocommit=True), 2)  # the largest (child, slow) start first
    try:
        facts = Facts(conn, "public", (spec("row_counts_unchanged", "other"),
                                       spec("view_rowcount_matches", ("slow", "child"))), pool)
        assert facts.count("other") == 5
        assert facts._ahead is not None
        slow = facts._ahead._pending[("count", "slow")]
        assert isinstance(slow, Future)
        while not conn.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND wait_event = "
                               "'PgSleep'").fetchone()[0]:  # type: ignore[index]
            time.sleep(0.01)  # until the slow count runs on the server
        facts.close()  # the 30 s count of slow is cancelled on the server, not waited for
        assert isinstance(slow.exception(), psycopg.errors.QueryCanceled)
    finally:
        pool.close()


def test_snapshot_and_counts_on_the_pool_equal_those_taken_one_by_one(scratch_dsn: str,
                                                                      conn: psycopg.Connection[Any]) -> None:
    conn.execute("DROP VIEW slow")
    pool = Pool(lambda: psycopg.connect(scratch_dsn, autocommit=True), 2)
    try:
        assert count_all(conn, pool, "public") == catalog.count_all_tables(conn, "public") == {
            "child": 100, "other": 5, "parent": 10}
        for kept in (None, {"child": ["id", "parent_id"], "parent": ["code"]}):
            alone, side_by_side = snapshot.take(conn, "public", kept), snapshot.take(conn, "public", kept, pool)
            assert side_by_side.counts == alone.counts
            assert side_by_side.checksums == alone.checksums
            assert len(alone.checksums) == (3 if kept is None else 2)
    finally:
        pool.close()


def test_catalog_codes_reach_users_as_words() -> None:
    assert [catalog.relkind_words(code) for code in "rpvmiISfct"] == [
        "a table", "a partitioned table", "a view", "a materialized view", "an index", "a partitioned index",
        "a sequence", "a foreign table", "a composite type", "a TOAST table"]
    assert catalog.relkind_words("x") == "a relation of kind 'x'"  # a code of a newer server stays visible
    assert [catalog.kind_words(k) for k in ("matview", "view", "column")] == ["materialized view", "view", "column"]
