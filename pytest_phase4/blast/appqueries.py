"""The application's queries: what pg_stat_statements recorded on the target, and the query files or queries the
plan names (`[[app_queries]]`). Each is PREPAREd (never run) against a schema; parameters stay `$n`, as
pg_stat_statements writes them after normalizing constants. No pytest here; reading the target is read-only.

pg_stat_statements keeps the text of statements, which may hold literals it does not normalize (utility
statements: `ALTER ROLE ... PASSWORD '...'`) and comments it keeps as sent (an sqlcommenter tag naming a user, a
key in a debugging comment). Only queries (SELECT, INSERT, UPDATE, DELETE, MERGE) are kept, and every text shown
passes through the run's scrub and sqltext.redact (every comment /* *** */, every string literal '***').
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from pglast import ast, parse_sql
from pglast.parser import ParseError
from pglast.visitors import Visitor
from psycopg import sql

from pytest_phase4.db import sqltext
from pytest_phase4.safety.pins import Pins

_PREPARABLE = (ast.SelectStmt, ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)
_SYSTEM = ("pg_catalog", "information_schema", "pytest_phase4")
HIDDEN = "<insufficient privilege>"
ENABLE_PGSS = ("add pg_stat_statements to shared_preload_libraries in postgresql.conf, restart the server, then "
               "CREATE EXTENSION pg_stat_statements in this database (Supabase: enabled by default, in schema "
               "extensions)")


@dataclass(frozen=True)
class AppQuery:
    text: str
    source: str  # "pg_stat_statements", "queries/tickets.sql:3", "[[app_queries]] ticket_list"
    calls: int = 0
    total_ms: float = 0.0
    roles: tuple[str, ...] = ()
    relations: tuple[str, ...] = ()  # the relations it names, as written
    search_path: str | None = None  # its roles' own (ALTER ROLE ... SET search_path); None: the run's

    @property
    def key(self) -> tuple[str, str | None]:
        """What is PREPAREd: the text, under the search_path its roles run it with."""
        return self.text, self.search_path

    def describe(self, limit: int = 400) -> str:
        text = " ".join(sqltext.redact(sqltext.mask_passwords(self.text), leading=False).split())
        text = text if len(text) <= limit else text[: limit - 1] + "\u2026"
        if self.source == "pg_stat_statements":
            path = f" (search_path {self.search_path})" if self.search_path is not None else ""
            who = f", role {', '.join(self.roles)}{path}" if self.roles else ""
            calls = f"{self.calls:,} call{'' if self.calls == 1 else 's'}"
            return f"{calls}, {self.total_ms:,.1f} ms in total{who}: {text}"
        return f"{self.source}: {text}"


@dataclass
class Recorded:
    """What pg_stat_statements holds for this database, as far as this role may read it."""

    schema: str
    queries: list[AppQuery] = field(default_factory=list)
    reset: datetime | None = None  # pg_stat_statements_info.stats_reset
    hidden: int = 0  # statements of other roles whose text this role may not read
    left_out: int = 0  # statements of roles not asked for
    others: int = 0  # statements that are not queries of application tables (utility, catalog, our own)

    @property
    def calls(self) -> int:
        return sum(q.calls for q in self.queries)


class Unavailable(Exception):
    """pg_stat_statements cannot be read here; the message says how to enable it."""


def relations(text: str) -> tuple[str, ...] | None:
    """The relations one preparable statement names (schema.name as written), or None if it is not one."""
    try:
        stmts = parse_sql(text)
    except ParseError:
        return None
    if len(stmts) != 1 or not isinstance(stmts[0].stmt, _PREPARABLE):
        return None
    names: list[str] = []

    class _Relations(Visitor):
        def visit_RangeVar(self, parent: Any, node: ast.RangeVar) -> None:
            names.append(f"{node.schemaname}.{node.relname}" if node.schemaname else str(node.relname))

    _Relations()(stmts[0])
    return tuple(dict.fromkeys(names))


def _application(names: tuple[str, ...]) -> bool:
    """Whether a statement reads or writes at least one table of the application (not only the catalogs)."""
    return any(n.split(".")[0] not in _SYSTEM and not (("." not in n) and n.startswith("pg_")) for n in names)


def pgss_schema(conn: psycopg.Connection[Any]) -> str | None:
    row = conn.execute("SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n"
                       " ON n.oid = e.extnamespace WHERE e.extname = 'pg_stat_statements'").fetchone()
    return str(row[0]) if row else None


_ROLE_PATHS = """
SELECT r.rolname, replace(replace(p.path, '"$user"', quote_ident(r.rolname)), '$user', quote_ident(r.rolname))
FROM pg_catalog.pg_roles r CROSS JOIN LATERAL (SELECT coalesce(
  (SELECT substr(c, 13) FROM pg_catalog.pg_db_role_setting s, unnest(s.setconfig) c WHERE s.setrole = r.oid
     AND s.setdatabase = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
     AND c LIKE 'search_path=%'),
  (SELECT substr(c, 13) FROM pg_catalog.pg_db_role_setting s, unnest(s.setconfig) c WHERE s.setrole = r.oid
     AND s.setdatabase = 0 AND c LIKE 'search_path=%')) AS path) p
WHERE p.path IS NOT NULL AND r.rolname !~ '^pg_' ORDER BY 1
"""


def role_paths(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """The search_path each role with one of its own runs with in this database (ALTER ROLE ... [IN DATABASE ...]
    SET search_path, `$user` as that role): where an application finds the tables its queries and functions name
    without a schema. Roles without one run with the database's (or the server's), as the run does."""
    try:
        with conn.transaction():
            return {str(r[0]): str(r[1]) for r in conn.execute(_ROLE_PATHS).fetchall()}
    except psycopg.Error:  # a server that hides pg_db_role_setting: every role is taken to run with the run's
        return {}


def recorded(conn: psycopg.Connection[Any], roles: tuple[str, ...], min_calls: int,
             paths: dict[str, str] | None = None) -> Recorded:
    """The queries pg_stat_statements recorded in this database, with calls and time summed over roles; of the
    given roles, or of every role but this session's own (psql, this plugin) when none are given. A query is
    kept once per search_path its roles run with (`paths`, from role_paths): that is how it is PREPAREd."""
    schema = pgss_schema(conn)
    if schema is None:
        raise Unavailable(f"pg_stat_statements is not installed in this database: {ENABLE_PGSS}")
    found = Recorded(schema)
    query = sql.SQL(
        "SELECT s.query, r.rolname, coalesce(r.rolname = ANY (%s) OR (cardinality(%s::text[]) = 0"
        "  AND r.rolname <> current_user), false), sum(s.calls)::bigint, sum(s.total_exec_time)::float8,"
        "  count(*)::int"
        " FROM {} s LEFT JOIN pg_catalog.pg_roles r ON r.oid = s.userid"
        " WHERE s.dbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())"
        " GROUP BY 1, 2, 3").format(sql.Identifier(schema, "pg_stat_statements"))
    try:
        rows = conn.execute(query, (list(roles), list(roles))).fetchall()
        info = conn.execute(sql.SQL("SELECT stats_reset FROM {}").format(
            sql.Identifier(schema, "pg_stat_statements_info"))).fetchone()
    except psycopg.errors.ObjectNotInPrerequisiteState:
        raise Unavailable(f"pg_stat_statements is installed but not loaded: {ENABLE_PGSS}") from None
    except psycopg.errors.UndefinedTable:
        info = None  # before PostgreSQL 14: no pg_stat_statements_info
    found.reset = info[0] if info else None
    by_text: dict[str, list[tuple[str | None, bool, int, float, int]]] = {}
    for text, role, wanted, calls, total, entries in rows:
        by_text.setdefault(str(text), []).append((role, bool(wanted), int(calls), float(total), int(entries)))
    kept: list[AppQuery] = []
    for text, per_role in by_text.items():
        wanted = [r for r in per_role if r[1]]
        if wanted and sum(r[2] for r in wanted) < min_calls:
            continue
        if text == HIDDEN:
            found.hidden += sum(r[4] for r in per_role)
            continue
        if not wanted:
            found.left_out += sum(r[4] for r in per_role)
            continue
        named = relations(text)
        if named is None or not _application(named):
            found.others += 1
            continue
        groups: dict[str | None, list[tuple[str | None, bool, int, float, int]]] = {}
        for r in wanted:
            groups.setdefault((paths or {}).get(r[0] or ""), []).append(r)
        for path, group in groups.items():
            kept.append(AppQuery(text, "pg_stat_statements", sum(r[2] for r in group), sum(r[3] for r in group),
                                 tuple(sorted({r[0] for r in group if r[0]})), named, path))
    found.queries = sorted(kept, key=lambda q: (-q.calls, q.text, q.search_path or ""))
    return found


def from_files(folder: Path, pattern: str, pins: Pins | None = None) -> tuple[list[AppQuery], list[str]]:
    """Each query of each file the glob matches (relative to the plan's folder), and what was left out. With
    `pins`, each file's bytes are those the evidence the run relies on verified (PinBroken otherwise)."""
    queries: list[AppQuery] = []
    notes: list[str] = []
    paths = sorted(Path(p) for p in glob.glob(str(folder / pattern), recursive=True))
    for path in paths:
        shown = str(path.relative_to(folder)) if path.is_relative_to(folder) else str(path)
        try:
            raw = pins.read(path) if pins is not None else path.read_bytes()
            statements = sqltext.split(raw.decode(errors="replace"), shown)
        except sqltext.SqlSyntaxError as exc:
            notes.append(str(exc))
            continue
        for stmt in statements:
            named = relations(stmt.text)
            if named is None:
                notes.append(f"{shown}:{stmt.line}: not a query (SELECT, INSERT, UPDATE, DELETE or MERGE): left out")
                continue
            queries.append(AppQuery(stmt.text, f"{shown}:{stmt.line}", relations=named))
    return queries, notes


def inline(name: str, text: str) -> AppQuery:
    return AppQuery(text.strip().rstrip(";"), f"[[app_queries]] {name}", relations=relations(text) or ())
