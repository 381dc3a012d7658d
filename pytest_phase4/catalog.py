"""Catalog and data queries. Names are passed as parameters or composed with psycopg.sql, never formatted."""

from __future__ import annotations

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


def count_nulls(conn: psycopg.Connection[Any], schema: str, table: str, col: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {} IS NULL").format(
        sql.Identifier(schema, table), sql.Identifier(col))).fetchone()
    return int(row[0]) if row else 0
