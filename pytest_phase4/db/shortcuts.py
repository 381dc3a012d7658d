"""Exact shortcuts for a step's orphan checks and view counts, each the plain query's answer read with less work.

- **Loose index scan** (`loose_orphans`): when an index leads with the child key and the key has few distinct
  values (tenant_id), the distinct keys are walked with one index descent each (a recursive query) and each is
  looked up in the parent. No orphan key means no orphan row; any orphan key, and the caller counts the orphan
  rows with the anti-join (catalog.orphans_query), in the same snapshot.
- **A view counted in its base table's scan** (`derive`): when the server's plan for `count(*)` of the view is a
  sequential scan of one table B (with a filter F or none) under inner joins, each on `B.k = P.pk` where pk is
  the only column of a unique index of P, NOT NULL, and P is read whole (no filter): each row of B meeting F has
  one P row per join if its k has a parent, and none otherwise. So when the step reads no orphan for any of those
  keys (the plan's own no_orphans, or one read for this), `count(view)` is the number of B's rows meeting F whose
  keys are not NULL: one more FILTER in B's scan. Otherwise the view is counted by its own query.

Row-level security: the plan shows what the view's reader (its owner, or the caller for security_invoker) is
allowed to see, policies included, as filters; the shortcuts hold only where no policy applies to the checking
role (row_security_active), so that its own reads of B and P see every row, as the plan's scans do.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pglast
import psycopg
from pglast import ast
from pglast.stream import RawStream
from psycopg import sql

from pytest_phase4.db import catalog

LOOSE_FACTOR = 20  # an index descent per distinct key costs about as much as reading this many index entries
_IDENT = r'(?:"(?:[^"]|"")+"|[a-z_][a-z0-9_$]*)'
_EQUALITY = re.compile(rf"^\(({_IDENT})\.({_IDENT}) = ({_IDENT})\.({_IDENT})\)$")
_WRAPPERS = ("Hash", "Sort", "Materialize", "Memoize", "Gather", "Gather Merge")


def loose_orphans(schema: str, child: str, col: str, parent: str, pcol: str) -> sql.Composed:
    """The number of distinct non-NULL child keys without a parent, one index descent per distinct key."""
    return sql.SQL(
        "WITH RECURSIVE k(v) AS ((SELECT {c} FROM {child} WHERE {c} IS NOT NULL ORDER BY {c} LIMIT 1)"
        " UNION ALL SELECT (SELECT {c} FROM {child} WHERE {c} > k.v ORDER BY {c} LIMIT 1) FROM k WHERE k.v IS NOT NULL)"
        " SELECT count(*) FROM k WHERE k.v IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {parent} AS p WHERE p.{pc} = k.v)"
    ).format(c=sql.Identifier(col), child=sql.Identifier(schema, child), parent=sql.Identifier(schema, parent),
             pc=sql.Identifier(pcol))


def _nodes(node: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [node, *(n for child in node.get("Plans", ()) for n in _nodes(child))]


def walks_index(plan: Mapping[str, Any], child: str) -> bool:
    """Whether a loose_orphans plan walks the index: no sort, no sequential or bitmap read of the child (a
    parent may be read whole: it is read once)."""
    return not any(n.get("Node Type") == "Sort" or (n.get("Node Type") in ("Seq Scan", "Bitmap Heap Scan")
                                                    and n.get("Relation Name") == child) for n in _nodes(plan))


def distinct_keys(conn: psycopg.Connection[Any], schema: str,
                  keys: list[tuple[str, str]]) -> dict[tuple[str, str], float]:
    """The planner's estimate of each (table, column)'s distinct values (ANALYZE statistics): only to choose the
    loose scan, never an answer."""
    if not keys:
        return {}
    rows = conn.execute(
        "SELECT s.tablename::text, s.attname::text, CASE WHEN s.n_distinct >= 0 THEN s.n_distinct"
        " ELSE -s.n_distinct * greatest(c.reltuples, 0) END FROM pg_catalog.pg_stats s"
        " JOIN pg_catalog.pg_namespace n ON n.nspname = s.schemaname"
        " JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = s.tablename"
        " WHERE s.schemaname = %s AND (s.tablename, s.attname) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
        (schema, [t for t, _ in keys], [c for _, c in keys])).fetchall()
    return {(t, c): float(n) for t, c, n in rows}


@dataclass(frozen=True)
class Derived:
    """count(view) = B's rows meeting `where` (SQL on B's columns, or None) whose `joins` keys are not NULL,
    provided none of those keys is an orphan of its parent (`joins`: (column of B, parent table, parent column))."""

    table: str
    where: str | None
    joins: tuple[tuple[str, str, str], ...]

    def condition(self) -> sql.Composed | None:
        parts: list[sql.Composable] = [sql.SQL("({})").format(sql.SQL(self.where))] if self.where else []
        parts += [sql.SQL("{} IS NOT NULL").format(sql.Identifier(c)) for c, _, _ in self.joins]
        return sql.SQL(" AND ").join(parts) if parts else None


def derive(schema: str, view: str, plan: Mapping[str, Any],
           relations: Mapping[str, catalog.RelationFacts]) -> Derived | None:
    """How count(view) follows from its base table's scan, by the server's plan for it (see the module's
    docstring), or None."""
    node = catalog._counted_scan(dict(plan))
    if node is None or catalog._locks_rows(dict(plan)):
        return None
    found = _chain(node, schema)
    if found is None:
        return None
    base, joins = found
    table = str(base.get("Relation Name"))
    alias = str(base.get("Alias", table))
    keyed: list[tuple[str, str, str]] = []
    for left, right, parent in joins:
        mine = [side for side in (left, right) if side[0] == alias]
        theirs = [side for side in (left, right) if side[0] == parent[0]]
        if len(mine) != 1 or len(theirs) != 1:
            return None
        col, pcol, ptable = mine[0][1], theirs[0][1], parent[1]
        rel, prel = relations.get(table), relations.get(ptable)
        if rel is None or prel is None or pcol not in prel.unique or col not in rel.columns or \
                rel.types[rel.columns.index(col)] != prel.types[prel.columns.index(pcol)]:
            return None
        keyed.append((col, ptable, pcol))
    where = None
    if "Filter" in base:
        where = _unqualified(str(base["Filter"]), alias)
        if where is None:
            return None
    tables = {table, *(p for _, p, _ in keyed)}
    if view in tables or not all(t in relations and relations[t].whole for t in tables):
        return None
    return Derived(table, where, tuple(keyed))


def _strip(node: Mapping[str, Any]) -> Mapping[str, Any]:
    while node.get("Node Type") in _WRAPPERS and len(node.get("Plans", ())) == 1 and "Filter" not in node:
        node = node["Plans"][0]
    return node


Side = tuple[str, str]  # (alias, column)


def _chain(node: Mapping[str, Any], schema: str
           ) -> tuple[Mapping[str, Any], list[tuple[Side, Side, tuple[str, str]]]] | None:
    """(the base table's Seq Scan node, [(left, right, (parent alias, parent table))]) of an inner-join chain
    whose every other side is a whole scan of one table; None for any other shape."""
    node = _strip(node)
    kind = node.get("Node Type")
    if kind == "Seq Scan":
        ok = node.get("Schema") == schema and "Plans" not in node
        return (node, []) if ok else None
    if kind not in ("Hash Join", "Merge Join") or node.get("Join Type") != "Inner" or "Join Filter" in node \
            or "Filter" in node or len(node.get("Plans", ())) != 2:
        return None
    m = _EQUALITY.match(str(node.get("Hash Cond") or node.get("Merge Cond") or ""))
    if m is None:
        return None
    left, right = (_ident(m.group(1)), _ident(m.group(2))), (_ident(m.group(3)), _ident(m.group(4)))
    sides = [_strip(n) for n in node["Plans"]]
    for i in (0, 1):
        parent, rest = sides[i], sides[1 - i]
        if parent.get("Node Type") in ("Seq Scan", "Index Only Scan") and parent.get("Schema") == schema and \
                not any(k in parent for k in ("Filter", "Index Cond", "Plans")):
            found = _chain(rest, schema)
            if found is not None:
                base, joins = found
                ref = (str(parent.get("Alias", parent.get("Relation Name"))), str(parent.get("Relation Name")))
                return base, [*joins, (left, right, ref)]
    return None


def _ident(text: str) -> str:
    return text[1:-1].replace('""', '"') if text.startswith('"') else text


def _unqualified(condition: str, alias: str) -> str | None:
    """The filter as SQL over the base table's own columns: every column reference qualified by `alias` loses
    it; any other reference, a subquery or a parameter, and None."""
    try:
        tree = pglast.parse_sql(f"SELECT 1 WHERE {condition}")
    except pglast.parser.ParseError:
        return None
    where: Any = getattr(tree[0].stmt, "whereClause", None)
    ok = True

    class Strip(pglast.visitors.Visitor):
        def visit_ColumnRef(self, ancestors: Any, node: ast.ColumnRef) -> None:
            nonlocal ok
            fields = node.fields or ()
            if len(fields) == 2 and isinstance(fields[0], ast.String) and fields[0].sval == alias \
                    and isinstance(fields[1], ast.String):
                node.fields = (fields[1],)
            elif not (len(fields) == 1 and isinstance(fields[0], ast.String)):
                ok = False

        def visit_SubLink(self, ancestors: Any, node: Any) -> None:
            nonlocal ok
            ok = False

        def visit_ParamRef(self, ancestors: Any, node: Any) -> None:
            nonlocal ok
            ok = False

    Strip()(where)
    return RawStream()(where) if ok else None
