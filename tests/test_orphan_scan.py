"""Orphans counted in the child's scan (a LEFT JOIN of the parent on its unique key) and by a merge of two indexes
(scanquery.py): each answer equals the plain NOT IN on edge cases, and the shortcut is taken only where it is exact
(real PostgreSQL, no mocks)."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from psycopg import sql

from helpers import spec
from pytest_phase4.db import catalog, scanquery
from pytest_phase4.db.facts import Facts, OrphanCount
from pytest_phase4.db.pool import Pool
from pytest_phase4.kinds.base import Column, Relation

# Parents with both ends of the uuid range; children with NULLs, duplicate keys, orphans at both ends. Each child
# has a deleted_at, as its parents do: the child's own condition must not read the parent's column.
SCHEMA = """
CREATE TABLE pa (id uuid PRIMARY KEY, deleted_at timestamptz);
INSERT INTO pa SELECT md5(g::text)::uuid, CASE WHEN g % 2 = 0 THEN now() END FROM generate_series(1, 40) g;
INSERT INTO pa VALUES (repeat('0', 32)::uuid, now()), (repeat('f', 32)::uuid, now());
CREATE TABLE pb (id uuid NOT NULL, deleted_at timestamptz);
CREATE UNIQUE INDEX pb_id ON pb (id);
INSERT INTO pb SELECT md5('b' || g)::uuid FROM generate_series(1, 30) g;
CREATE TABLE c (id int, a uuid, b uuid, deleted_at timestamptz);
INSERT INTO c SELECT g, CASE WHEN g % 7 = 0 THEN NULL WHEN g % 11 = 0 THEN md5('x' || g)::uuid
                             ELSE md5((1 + g % 40)::text)::uuid END,
                        CASE WHEN g % 5 = 0 THEN NULL WHEN g % 13 = 0 THEN md5('y' || g)::uuid
                             ELSE md5('b' || (1 + g % 30))::uuid END,
                        CASE WHEN g % 3 = 0 THEN now() END
FROM generate_series(1, 300) g;
INSERT INTO c VALUES (1000, repeat('0', 32)::uuid, repeat('0', 32)::uuid, NULL),
    (1001, repeat('f', 32)::uuid, repeat('f', 32)::uuid, NULL), (1002, repeat('f', 32)::uuid, NULL, NULL);
"""
A, B = Relation(Column("c", "a"), Column("pa", "id")), Relation(Column("c", "b"), Column("pb", "id"))


def truth(conn: psycopg.Connection[Any], rel: Relation) -> OrphanCount:
    row = conn.execute(sql.SQL(
        "SELECT (SELECT count(*) FROM {c} WHERE {k} IS NOT NULL AND {k} NOT IN (SELECT {pk} FROM {p}"
        " WHERE {pk} IS NOT NULL)), (SELECT count(*) FROM {c} WHERE {k} IS NULL)").format(
        c=sql.Identifier(rel.child.table), k=sql.Identifier(rel.child.column),
        p=sql.Identifier(rel.parent.table), pk=sql.Identifier(rel.parent.column))).fetchone()
    assert row is not None
    return OrphanCount(*row)


def read_ahead(dsn: str, conn: psycopg.Connection[Any], rels: list[Relation], *extra: Any) -> tuple[Facts, Pool]:
    pool = Pool(lambda: psycopg.connect(dsn, autocommit=True), 2)
    specs = tuple(spec("no_orphans", r) for r in rels) + extra
    return Facts(conn, "public", specs, pool), pool


def scanned_with(facts: Facts, table: str) -> set[tuple[str, ...]]:
    assert facts._ahead is not None
    return {k for r in facts._ahead.plan.reads if r.scan and r.keys[0] == ("count", table) for k in r.keys}


@pytest.mark.parametrize("rows", ["as built", "no child rows", "no parent rows"])
def test_orphans_joined_in_the_childs_scan_equal_not_in(scratch_dsn: str, conn: psycopg.Connection[Any],
                                                        rows: str) -> None:
    conn.execute(SCHEMA)
    if rows == "no child rows":
        conn.execute("DELETE FROM c")
    elif rows == "no parent rows":
        conn.execute("DELETE FROM pa; DELETE FROM pb")
    expected = [truth(conn, A), truth(conn, B)]
    assert rows != "as built" or all(e.orphans > 0 and e.nulls > 0 for e in expected)
    where = conn.execute("SELECT count(*) FROM c WHERE deleted_at IS NULL").fetchone()
    conn.execute("CREATE VIEW live_c AS SELECT * FROM c WHERE deleted_at IS NULL")
    view = spec("view_rowcount_matches", ("live_c", "c"))
    facts, pool = read_ahead(scratch_dsn, conn, [A, B], view, spec("row_counts_unchanged", "c"))
    try:
        assert [facts.orphans(A), facts.orphans(B)] == expected
        assert (facts.count("live_c"),) == where
        # one scan of c: its count, the view's rows, and both keys' orphans and NULLs (no index leads with a or b)
        assert {("orphans", "c", "a", "pa", "id"), ("orphans", "c", "b", "pb", "id"), ("count", "c")} <= \
            scanned_with(facts, "c")
        facts.close()
    finally:
        pool.close()


def test_a_parent_key_that_is_not_unique_alone_is_not_joined(scratch_dsn: str, conn: psycopg.Connection[Any]) -> None:
    # Duplicate parent keys would count a child row twice in a join; a partial unique index proves nothing about
    # the rows outside its predicate; an expression index is not the column's. Each gets the anti-join.
    conn.execute(SCHEMA)
    conn.execute("""
        CREATE TABLE dup (id uuid); INSERT INTO dup SELECT id FROM pa; INSERT INTO dup SELECT id FROM pa;
        CREATE TABLE part (id uuid NOT NULL, live boolean); INSERT INTO part SELECT id, random() < 0.5 FROM pa;
        CREATE UNIQUE INDEX ON part (id) WHERE live;
        CREATE TABLE expr (id text NOT NULL); INSERT INTO expr SELECT id::text FROM pa;
        CREATE UNIQUE INDEX ON expr (lower(id));
        CREATE TABLE ct (k text); INSERT INTO ct SELECT a::text FROM c""")
    rels = [Relation(Column("c", "a"), Column("dup", "id")), Relation(Column("c", "a"), Column("part", "id")),
            Relation(Column("ct", "k"), Column("expr", "id"))]
    expected = [truth(conn, r) for r in rels]
    facts, pool = read_ahead(scratch_dsn, conn, rels)
    try:
        assert [facts.orphans(r) for r in rels] == expected
        assert not {k for k in scanned_with(facts, "c") | scanned_with(facts, "ct") if k[0] == "orphans"}
        facts.close()
    finally:
        pool.close()


def test_text_keys_join_under_the_columns_collation(scratch_dsn: str, conn: psycopg.Connection[Any]) -> None:
    # Under a case-insensitive collation 'Bob' has a parent 'bob'; in "C" it would be an orphan. The join uses the
    # same = as NOT IN.
    if conn.execute("SELECT count(*) FROM pg_collation WHERE collprovider = 'i'").fetchone() == (0,):
        pytest.skip("this server has no ICU collations")
    conn.execute("CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);"
                 "CREATE TABLE tp (name text COLLATE ci PRIMARY KEY); INSERT INTO tp VALUES ('bob'), ('Zoë');"
                 "CREATE TABLE tc (name text COLLATE ci); INSERT INTO tc VALUES ('Bob'), ('BOB'), ('zoË'), ('eve'),"
                 " (NULL), ('EVE')")
    rel = Relation(Column("tc", "name"), Column("tp", "name"))
    expected = truth(conn, rel)
    assert expected == OrphanCount(2, 1)
    facts, pool = read_ahead(scratch_dsn, conn, [rel])
    try:
        assert facts.orphans(rel) == expected
        assert ("orphans", "tc", "name", "tp", "name") in scanned_with(facts, "tc")
        facts.close()
    finally:
        pool.close()


def test_indexed_keys_merged_on_their_indexes_equal_not_in_in_the_steps_snapshot(
        scratch_dsn: str, conn: psycopg.Connection[Any]) -> None:
    conn.execute(SCHEMA)
    conn.execute("CREATE INDEX ON c (a); CREATE INDEX ON c (b);"
                 "INSERT INTO pa SELECT md5(g::text)::uuid FROM generate_series(41, 3000) g;"
                 "INSERT INTO c SELECT 2000 + g, md5(g::text)::uuid, NULL FROM generate_series(1, 3000) g;"
                 "ANALYZE")
    expected = [truth(conn, A), truth(conn, B)]
    rows = conn.execute("SELECT count(*) FROM c").fetchone()
    facts, pool = read_ahead(scratch_dsn, conn, [A, B], spec("row_counts_unchanged", "c"))
    try:
        assert (facts.count("c"),) == rows  # the first data question: the step's snapshot, its reads queued
        # the application writes after the step's snapshot: an orphan at the end of the range, and its parent's
        # deletion; neither is in the step's answer
        conn.execute("INSERT INTO c VALUES (9000, md5('late')::uuid, repeat('f', 32)::uuid, NULL);"
                     "DELETE FROM c WHERE a = repeat('0', 32)::uuid;"
                     "DELETE FROM pa WHERE id = repeat('0', 32)::uuid")
        assert [facts.orphans(A), facts.orphans(B)] == expected
        assert facts._ahead is not None
        # a: many distinct keys, a merge of c's index on a and pa's primary key; b: few, the loose index scan
        assert {k for r in facts._ahead.plan.reads for k in r.keys if k[0] in ("orphans", "loose")} == {
            ("orphans", "c", "a", "pa", "id"), ("loose", "c", "b", "pb", "id")}
        with conn.transaction(force_rollback=True):  # what the server does with the settings of that read
            for setting in scanquery.MERGE_SETTINGS:
                conn.execute(setting)
            plan = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) {}").format(catalog.orphans_query(
                "public", "c", "a", "pa", "id", sql.SQL("count(*)")))).fetchone()
        assert plan is not None
        nodes = json.dumps(plan[0])
        assert '"Node Type": "Merge Join"' in nodes
        assert '"Join Type": "Anti"' in nodes
        assert '"Sort"' not in nodes
        assert '"Hash' not in nodes
        facts.close()
    finally:
        pool.close()
