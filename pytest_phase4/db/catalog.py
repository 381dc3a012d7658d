"""Catalog and data queries. Names are passed as parameters or composed with psycopg.sql, never formatted."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
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

# Catalog codes in the words users read: pg_class.relkind, and the object kinds of a catalog fingerprint.
RELKIND_WORDS = {"r": "table", "p": "partitioned table", "v": "view", "m": "materialized view", "i": "index",
                 "I": "partitioned index", "S": "sequence", "f": "foreign table", "c": "composite type",
                 "t": "TOAST table"}
KIND_WORDS = {"matview": "materialized view"}


def relkind_words(relkind: str) -> str:
    """'v' -> 'a view'; a code this table does not know stays visible rather than vanishing."""
    word = RELKIND_WORDS.get(relkind, f"relation of kind {relkind!r}")
    return ("an " if word[0] in "aeiou" else "a ") + word


def kind_words(kind: str) -> str:
    """A fingerprint's object kind as users say it: 'matview' -> 'materialized view'."""
    return KIND_WORDS.get(kind, kind)


def like(name: str, pattern: str) -> bool:
    """SQL LIKE (without escapes) on a name already fetched, so one catalog read serves many patterns."""
    regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name, re.DOTALL) is not None


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


# One row per relation of the schema: everything the catalog checks ask about it.
_RELATION_FACTS = """
SELECT c.relname::text, c.relkind::text, c.relrowsecurity,
       coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_catalog.pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '{}'),
       coalesce((SELECT array_agg(a.atttypid::regtype::text ORDER BY a.attnum) FROM pg_catalog.pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '{}'),
       coalesce((SELECT array_agg(p.polname::text ORDER BY p.polname) FROM pg_catalog.pg_policy p
                 WHERE p.polrelid = c.oid), '{}'),
       coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_catalog.pg_index i
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey)
                 WHERE i.indrelid = c.oid AND i.indisprimary), '{}'),
       -- NOT NULL columns that are by themselves the key of a valid unique index: a distinct value per row. Not
       -- for a table with inheritance children: its index and NOT NULL do not cover their rows (partitions: do).
       coalesce((SELECT array_agg(a.attname::text) FROM pg_catalog.pg_index i
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
                 WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid AND i.indnkeyatts = 1
                   AND i.indpred IS NULL AND a.attnotnull AND NOT (c.relkind = 'r' AND c.relhassubclass)), '{}'),
       -- columns an index leads with: a range of their values is found without reading every row
       coalesce((SELECT array_agg(a.attname::text) FROM pg_catalog.pg_index i
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
                 WHERE i.indrelid = c.oid AND i.indisvalid AND i.indpred IS NULL), '{}'),
       coalesce((SELECT array_agg(a.attname::text) FROM pg_catalog.pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attnotnull
                   AND NOT (c.relkind = 'r' AND c.relhassubclass)), '{}'),
       c.relpages, c.reltuples,
       -- each policy's command and the roles it names, in policy name order (0 in polroles: PUBLIC)
       coalesce((SELECT json_agg(json_build_array(p.polcmd::text, (SELECT coalesce(json_agg(
                        CASE WHEN r = 0 THEN 'public' ELSE pg_catalog.pg_get_userbyid(r)::text END ORDER BY 1), '[]')
                                                                  FROM unnest(p.polroles) r)) ORDER BY p.polname)
                 FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid), '[]'),
       -- a plain table the checking role reads whole: it may SELECT it, and no row-level security policy
       -- applies to it (the shortcuts of shortcuts.py read it with the checking role's own rights)
       c.relkind = 'r' AND NOT c.relhassubclass AND pg_catalog.has_table_privilege(c.oid, 'SELECT')
         AND NOT pg_catalog.row_security_active(c.oid)
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s
ORDER BY c.relname
"""
POLICY_COMMANDS = {"r": "select", "a": "insert", "w": "update", "d": "delete", "*": "all"}


@dataclass(frozen=True)
class RelationFacts:
    kind: str
    rls: bool
    columns: tuple[str, ...]
    types: tuple[str, ...]  # of the columns, as format_type names ("integer", "text", ...)
    policies: tuple[str, ...]
    primary_key: tuple[str, ...]
    unique: frozenset[str]  # NOT NULL columns alone in a valid unique index (no inheritance child): distinct
    indexed: frozenset[str]  # columns a valid index leads with
    not_null: frozenset[str]  # NOT NULL columns (of a table with no inheritance child): none to count
    pages: int  # size as last estimated by VACUUM/ANALYZE: only to schedule the read-ahead
    policy_rules: tuple[tuple[str, tuple[str, ...]], ...] = ()  # per policy: command ("select", "all"), roles
    rows: float = 0.0  # estimated rows (VACUUM/ANALYZE; -1 or 0 when never analyzed): only to plan the reads
    whole: bool = False  # a plain table the checking role may read, with no row-level security applying to it


def relation_facts(conn: psycopg.Connection[Any], schema: str) -> dict[str, RelationFacts]:
    """Everything the checks ask about the schema's relations, from one catalog query, by name."""
    return {r[0]: RelationFacts(r[1], bool(r[2]), tuple(r[3]), tuple(r[4]), tuple(r[5]), tuple(r[6]),
                                frozenset(r[7]), frozenset(r[8]), frozenset(r[9]), int(r[10]),
                                tuple((POLICY_COMMANDS.get(cmd, cmd), tuple(roles)) for cmd, roles in r[12]),
                                max(float(r[11]), 0.0), bool(r[13]))
            for r in conn.execute(_RELATION_FACTS, (schema,)).fetchall()}


def count_query(schema: str, relation: str, where: sql.Composable | None = None) -> sql.Composed:
    query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, relation))
    return query if where is None else query + sql.SQL(" WHERE ") + where


def condition(text: str) -> sql.Composed:
    """A condition the plan states in SQL (view_rowcount_matches' `where`), kept whole by its parentheses."""
    return sql.SQL("({})").format(sql.SQL(text))


def count(conn: psycopg.Connection[Any], query: sql.Composed) -> int:
    row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def count_each(conn: psycopg.Connection[Any], queries: Sequence[sql.Composed]) -> list[int]:
    """The results of several count queries from one statement (one round trip)."""
    if not queries:
        return []
    row = conn.execute(sql.SQL("SELECT ") + sql.SQL(", ").join(sql.SQL("({})").format(q) for q in queries)
                       ).fetchone()
    return [int(v) for v in row] if row else []


def count_rows(conn: psycopg.Connection[Any], schema: str, relation: str) -> int:
    return count(conn, count_query(schema, relation))


@dataclass(frozen=True)
class RowsOf:
    """A view's row count is the row count of this table, by the view's plan (see scanned_alone)."""

    table: str


@dataclass(frozen=True)
class Unlocked:
    """A view whose definition locks rows (FOR SHARE, FOR UPDATE), counted from its definition without the lock."""

    rows: int
    clauses: str  # as in the definition: "FOR SHARE"

    @property
    def note(self) -> str:
        return (f"counted from its definition without {self.clauses}: a read-only check takes no row lock, and the "
                "lock decides which rows wait, not which rows there are")


def count_plan_query(schema: str, view: str) -> sql.Composed:
    return sql.SQL("EXPLAIN (COSTS OFF, VERBOSE, FORMAT JSON) SELECT count(*) FROM {}").format(
        sql.Identifier(schema, view))


def _count_plan(conn: psycopg.Connection[Any], schema: str, view: str) -> dict[str, Any]:
    """The server's plan for count(*) of the view; EXPLAIN alone runs nothing, so a read-only transaction allows it
    even for a view that locks rows."""
    found = conn.execute(count_plan_query(schema, view)).fetchone()
    return dict(found[0][0]["Plan"]) if found else {}


def _locks_rows(node: dict[str, Any]) -> bool:
    return node.get("Node Type") == "LockRows" or any(_locks_rows(n) for n in node.get("Plans", ()))


def scanned_alone(conn: psycopg.Connection[Any], schema: str, view: str,
                  plan: dict[str, Any] | None = None) -> str | None:
    """The table whose every row count(*) of the view counts once, when the server's plan for it is nothing but
    count(*) over a scan of that table: no filter, join, grouping, limit or set-returning function left (a
    row-level security policy that applies to whoever the view reads as is such a filter); the table has no
    inheritance child, no row-level security that applies to the checking role, and the checking role may read
    it. The planner removes a left join only when it cannot add or drop rows (a unique key on the joined side,
    none of its columns used), so the view then has one row per row of the table for any data, and counting the
    table (its narrowest index) counts the view. Otherwise None."""
    scan = _counted_scan(plan if plan is not None else _count_plan(conn, schema, view))
    # A Seq Scan reads every row; an index scan could read a partial index whose predicate stood for a WHERE.
    if scan is None or scan.get("Node Type") != "Seq Scan" or "Filter" in scan or "Plans" in scan \
            or scan.get("Schema") != schema:
        return None
    table = str(scan.get("Relation Name"))
    # Row-level security that applies to the checking role would filter its own count of the table; RLS that
    # applies to whoever the view reads as (its owner, or the checking role with security_invoker) is a Filter
    # in the plan above, refused.
    plain = conn.execute("SELECT NOT c.relhassubclass AND NOT pg_catalog.row_security_active(c.oid)"
                         " AND has_table_privilege(c.oid, 'SELECT')"
                         " FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
                         " WHERE n.nspname = %s AND c.relname = %s AND c.relkind = 'r'", (schema, table)).fetchone()
    return table if plain == (True,) and table != view else None


def _counted_scan(node: dict[str, Any]) -> dict[str, Any] | None:
    """The node under count(*) itself: Aggregate over it, or in parallel Aggregate, Gather, partial Aggregate."""
    def aggregate(n: dict[str, Any], mode: str) -> bool:
        return (n.get("Node Type") == "Aggregate" and n.get("Strategy") == "Plain" and n.get("Partial Mode") == mode
                and "Filter" not in n and len(n.get("Plans", [])) == 1)

    if aggregate(node, "Simple"):
        return dict(node["Plans"][0])
    if aggregate(node, "Finalize"):
        gather = node["Plans"][0]
        if gather.get("Node Type") == "Gather" and "Filter" not in gather and len(gather.get("Plans", [])) == 1 \
                and aggregate(gather["Plans"][0], "Partial"):
            return dict(gather["Plans"][0]["Plans"][0])
    return None


def count_view(conn: psycopg.Connection[Any], schema: str, view: str) -> int | RowsOf | Unlocked:
    """count(*) of a view, or the table whose count it is (scanned_alone), or its count without the row locks its
    definition takes (count_unlocked: a read-only transaction may not take them)."""
    plan = _count_plan(conn, schema, view)
    if _locks_rows(plan):
        return count_unlocked(conn, schema, view)
    table = scanned_alone(conn, schema, view, plan)
    return RowsOf(table) if table is not None else count_rows(conn, schema, view)


def count_unlocked(conn: psycopg.Connection[Any], schema: str, view: str) -> Unlocked:
    """count(*) of a view whose definition locks rows, from its definition without the locking clauses (in a
    snapshot they change which rows wait, not which rows there are). Exact only when the definition read as the
    checking role reads what the view reads: the role owns the view, or the view reads with the caller's rights
    (security_invoker); a definition with SKIP LOCKED has no exact count. Otherwise CheckFailed says why."""
    from pytest_phase4.db import pgparse
    from pytest_phase4.errors import CheckFailed

    definition, owner, user, same_rights = conn.execute(
        "SELECT pg_catalog.pg_get_viewdef(c.oid), pg_catalog.pg_get_userbyid(c.relowner), current_user::text,"
        " pg_catalog.pg_get_userbyid(c.relowner) = current_user OR EXISTS (SELECT FROM unnest(c.reloptions) o"
        "   WHERE o ~* '^security_invoker=(true|on|yes|1)$')"
        " FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s", (schema, view)).fetchone() or (None, "", "", False)
    where = f"{schema}.{view}"
    unlocked = pgparse.without_row_locks(str(definition))
    clauses = ", ".join(unlocked.clauses)
    if unlocked.skips_rows:
        raise CheckFailed(f"a row count of view {where}", f"none can be exact: its definition locks rows {clauses}, "
                          "so the rows it returns depend on what other sessions lock at that moment", where,
                          hint="drop SKIP LOCKED from the view, or check its rows with a query_runs or query_returns "
                               "check that says what you expect of them")
    if not same_rights:
        raise CheckFailed(f"a row count of view {where}", f"none in a read-only transaction: its definition locks "
                          f"rows ({clauses}), and counted without the lock it would read the tables with the rights "
                          f"of {user}, not those of its owner {owner}", where,
                          hint=f"check as {owner}, who owns the view, or make it WITH (security_invoker = true), or "
                               f"drop {clauses} from it: a view that locks every row it returns blocks the "
                               "application's writers")
    # The definition comes from the server's catalog (pg_get_viewdef), deparsed by PostgreSQL's parser.
    query = sql.SQL("SELECT count(*) FROM ({}) AS v").format(sql.SQL(unlocked.text))
    return Unlocked(count(conn, query), clauses)


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


def key_bounds(conn: psycopg.Connection[Any], schema: str,
               keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], tuple[Any, Any]]:
    """min and max of each (table, column), in one statement: an index probe each where an index leads with it."""
    if not keys:
        return {}
    parts = [sql.SQL("(SELECT min({c}) FROM {t}), (SELECT max({c}) FROM {t})").format(
        c=sql.Identifier(col), t=sql.Identifier(schema, table)) for table, col in keys]
    row = conn.execute(sql.SQL("SELECT ") + sql.SQL(", ").join(parts)).fetchone() or ()
    return {key: (row[2 * i], row[2 * i + 1]) for i, key in enumerate(keys)}


def outside(col: str, low: int | None, high: int | None) -> sql.Composed:
    """The child keys outside the parent's [low, high], or every non-NULL one when the parent has no key: the
    orphans when the parent's keys are dense."""
    key = sql.Identifier(col)
    if low is None or high is None:
        return sql.SQL("{} IS NOT NULL").format(key)
    return sql.SQL("{k} < {low} OR {k} > {high}").format(k=key, low=sql.Literal(low), high=sql.Literal(high))


def dense(rows: int, low: int | None, high: int | None) -> bool:
    """Whether `rows` distinct integer keys from low to high are every integer in between (or there are none)."""
    return rows == 0 or (low is not None and high is not None and rows == high - low + 1)


def count_where(conn: psycopg.Connection[Any], schema: str, table: str, condition: sql.Composed) -> int:
    return count(conn, count_query(schema, table, condition))


def filtered_query(schema: str, table: str, conditions: Sequence[sql.Composable]) -> sql.Composed:
    counts = [sql.SQL("count(*)")] + [sql.SQL("count(*) FILTER (WHERE {})").format(c) for c in conditions]
    return sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(counts), sql.Identifier(schema, table))


def count_filtered(conn: psycopg.Connection[Any], schema: str, table: str,
                   conditions: Sequence[sql.Composable]) -> list[int]:
    """count(*) of the table, then the rows meeting each condition, from one scan."""
    row = conn.execute(filtered_query(schema, table, conditions)).fetchone()
    return [int(v) for v in row] if row else [0] * (len(conditions) + 1)


def count_orphans(conn: psycopg.Connection[Any], schema: str, child: str, col: str, parent: str, pcol: str,
                  dense_keys: bool = False) -> int:
    """Count the non-NULL child keys without a parent row, exactly.

    The anti-join of orphans_query probes the parent once per child row. With `dense_keys` (integer keys on both
    sides; the parent's key NOT NULL and the only column of a unique index, so each parent row has its own key)
    the parent's min, max and row count come first: when count = max - min + 1 the keys are every integer from
    min to max, and a child key is an orphan exactly when it lies outside [min, max], which an index on the child
    key answers without reading every row. The statements share one snapshot, so a parent and child inserted in
    between cannot pass for an orphan. Parent keys with gaps get the anti-join, in the same snapshot."""
    anti = orphans_query(schema, child, col, parent, pcol, sql.SQL("count(*)"))
    if not dense_keys:
        return count(conn, anti)
    with one_snapshot(conn):
        low, high = key_bounds(conn, schema, [(parent, pcol)])[(parent, pcol)]
        if dense(count_rows(conn, schema, parent), low, high):
            return count_where(conn, schema, child, outside(col, low, high))
        return count(conn, anti)


def is_null(col: str) -> sql.Composed:
    return sql.SQL("{} IS NULL").format(sql.Identifier(col))


def count_nulls(conn: psycopg.Connection[Any], schema: str, table: str, col: str) -> int:
    return count_where(conn, schema, table, is_null(col))
