"""Catalog and data queries. Names are passed as parameters or composed with psycopg.sql, never formatted."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

_RELATIONS = sql.SQL(
    "SELECT c.relname FROM pg_catalog.pg_class c "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = %s AND c.relkind = ANY(%s) ORDER BY 1"
)
TABLE_KINDS = ["r", "p"]
VIEW_KINDS = ["v", "m"]


def relations(conn: psycopg.Connection[Any], schema: str, kinds: list[str]) -> list[str]:
    return [r[0] for r in conn.execute(_RELATIONS, (schema, kinds)).fetchall()]


def tables(conn: psycopg.Connection[Any], schema: str) -> list[str]:
    return relations(conn, schema, TABLE_KINDS)


def views(conn: psycopg.Connection[Any], schema: str) -> list[str]:
    return relations(conn, schema, VIEW_KINDS)


def relkind(conn: psycopg.Connection[Any], schema: str, name: str) -> str | None:
    row = conn.execute(
        "SELECT c.relkind::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s", (schema, name)).fetchone()
    return row[0] if row else None


def columns(conn: psycopg.Connection[Any], schema: str, table: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT a.attname FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (schema, table)).fetchall()]


def indexes(conn: psycopg.Connection[Any], schema: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT indexname FROM pg_catalog.pg_indexes WHERE schemaname = %s ORDER BY 1", (schema,)).fetchall()]


def policies(conn: psycopg.Connection[Any], schema: str, table: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT policyname FROM pg_catalog.pg_policies WHERE schemaname = %s AND tablename = %s ORDER BY 1",
        (schema, table)).fetchall()]


def rls_enabled(conn: psycopg.Connection[Any], schema: str, table: str) -> bool:
    row = conn.execute(
        "SELECT c.relrowsecurity FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n"
        " ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s", (schema, table)).fetchone()
    return bool(row and row[0])


def primary_key(conn: psycopg.Connection[Any], schema: str, table: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT a.attname FROM pg_catalog.pg_index i"
        " JOIN pg_catalog.pg_class c ON c.oid = i.indrelid"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey)"
        " WHERE i.indisprimary AND n.nspname = %s AND c.relname = %s ORDER BY a.attnum",
        (schema, table)).fetchall()]


def count_rows(conn: psycopg.Connection[Any], schema: str, relation: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, relation))).fetchone()
    return int(row[0]) if row else 0


def count_all_tables(conn: psycopg.Connection[Any], schema: str) -> dict[str, int]:
    """Exact row count of every base table in the schema."""
    return {t: count_rows(conn, schema, t) for t in tables(conn, schema)}


def orphans_query(schema: str, child: str, col: str, parent: str, pcol: str, what: sql.Composable) -> sql.Composed:
    # NOT EXISTS is a true anti-join and ignores NULL keys; the runbook's NOT IN counted NULLs as orphans.
    return sql.SQL(
        "SELECT {what} FROM {child} AS c WHERE c.{col} IS NOT NULL"
        " AND NOT EXISTS (SELECT 1 FROM {parent} AS p WHERE p.{pcol} = c.{col})"
    ).format(what=what, child=sql.Identifier(schema, child), col=sql.Identifier(col),
             parent=sql.Identifier(schema, parent), pcol=sql.Identifier(pcol))


# Integer key types whose values the dense-key proof of count_orphans can reason about.
INTEGER_TYPES = frozenset({"smallint", "integer", "bigint"})


@contextlib.contextmanager
def one_snapshot(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Run the block's statements in one read-only REPEATABLE READ transaction on an autocommit connection, so
    they all see the same committed data."""
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    try:
        yield
    finally:
        if not conn.closed and not conn.broken:
            conn.execute("ROLLBACK")


@dataclass(frozen=True)
class OrphanScan:
    """What one orphan query found: the orphans, and the row counts it read on the way (None: not read)."""

    orphans: int
    parent_rows: int | None = None
    child_rows: int | None = None
    child_nulls: int | None = None


def scan_orphans(conn: psycopg.Connection[Any], schema: str, child: str, col: str, parent: str, pcol: str, *,
                 dense_keys: bool = False, child_counts: bool = False) -> OrphanScan:
    """Count the non-NULL child keys without a parent row, exactly.

    The anti-join of orphans_query probes the parent once per child row. With `dense_keys` (integer keys on both
    sides; the parent's key NOT NULL and the only column of a unique index, so each parent row has its own key)
    the parent's min, max and row count come first: when count = max - min + 1, the keys are every integer from
    min to max, and a child key is an orphan exactly when it lies outside [min, max], which an index on the child
    key answers without reading every row. The statements share one snapshot: a parent and child inserted in
    between cannot pass for an orphan. Parent keys with gaps get the anti-join, in the same snapshot. The
    parent's row count is returned too.

    `child_counts` (for a key no index leads with, whose range query reads the whole child anyway) counts the
    child's rows and NULL keys in that same scan."""
    anti = orphans_query(schema, child, col, parent, pcol, sql.SQL("count(*)"))
    if not dense_keys:
        return OrphanScan(_count(conn, anti))
    table, key = sql.Identifier(schema, child), sql.Identifier(col)
    with one_snapshot(conn):
        parent_table = sql.Identifier(schema, parent)
        low, high = conn.execute(sql.SQL("SELECT min({k}), max({k}) FROM {t}").format(  # two index probes
            k=sql.Identifier(pcol), t=parent_table)).fetchone() or (None, None)
        parent_rows = _count(conn, sql.SQL("SELECT count(*) FROM {}").format(parent_table))
        outside: sql.Composed | None = None  # which child keys are orphans, when the parent's keys say it
        params: tuple[Any, ...] = ()
        if not parent_rows:
            outside = sql.SQL("{} IS NOT NULL").format(key)
        elif low is not None and high is not None and parent_rows == high - low + 1:
            outside, params = sql.SQL("{k} < %s OR {k} > %s").format(k=key), (low, high)
        if not child_counts:
            query = anti if outside is None else sql.SQL("SELECT count(*) FROM {} WHERE {}").format(table, outside)
            return OrphanScan(_count(conn, query, params), parent_rows)
        counted = sql.SQL("count(*) FILTER (WHERE {}), ").format(outside) if outside is not None else sql.SQL("")
        row = conn.execute(sql.SQL("SELECT {}count(*), count(*) FILTER (WHERE {} IS NULL) FROM {}").format(
            counted, key, table), params).fetchone()
        assert row is not None  # an aggregate always returns one row
        *orphans, child_rows, child_nulls = row
        return OrphanScan(orphans[0] if orphans else _count(conn, anti), parent_rows, child_rows, child_nulls)


def _count(conn: psycopg.Connection[Any], query: sql.Composed, params: tuple[Any, ...] | None = None) -> int:
    row = conn.execute(query, params).fetchone()
    return int(row[0]) if row else 0


def count_nulls(conn: psycopg.Connection[Any], schema: str, table: str, col: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {} IS NULL").format(
        sql.Identifier(schema, table), sql.Identifier(col))).fetchone()
    return int(row[0]) if row else 0
