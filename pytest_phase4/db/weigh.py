"""The static hazards of a migration, checked against the live catalog and weighed by the live size of the
table each one touches: a hazard on a table of 200 rows is a note, on one of 50 million a failure
(`hazard_min_rows`). Read in the migration's own session, before its first statement runs."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import psycopg

from pytest_phase4.db import hazards as hz
from pytest_phase4.db.hazards import Candidate

_TABLE = """
SELECT c.oid, n.nspname || '.' || c.relname,
       greatest(c.reltuples, pg_catalog.pg_stat_get_live_tuples(c.oid), 0)::bigint,
       pg_catalog.pg_total_relation_size(c.oid)
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = pg_catalog.to_regclass(concat_ws('.', pg_catalog.quote_ident(%s), pg_catalog.quote_ident(%s)))
  AND c.relkind IN ('r', 'p', 'm')
"""
_VOLATILE = """
SELECT count(*), coalesce(bool_or(p.provolatile = 'v'), false) FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE p.proname = %s AND (%s::text IS NULL OR n.nspname = %s)
"""
_COLUMN = """
SELECT a.atttypid, a.atttypmod, a.attnotnull, pg_catalog.format_type(a.atttypid, a.atttypmod),
       pg_catalog.quote_ident(a.attname)
FROM pg_catalog.pg_attribute a WHERE a.attrelid = %s AND a.attname = %s AND a.attnum > 0 AND NOT a.attisdropped
"""
_CHECKS = """
SELECT pg_catalog.pg_get_constraintdef(k.oid) FROM pg_catalog.pg_constraint k
WHERE k.conrelid = %s AND k.contype = 'c' AND k.convalidated
"""
_VIEWS = """
SELECT DISTINCT v.relname, n.nspname || '.' || v.relname FROM pg_catalog.pg_depend d
JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid
JOIN pg_catalog.pg_class v ON v.oid = r.ev_class JOIN pg_catalog.pg_namespace n ON n.oid = v.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
WHERE d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass
  AND d.refobjid = %s AND a.attname = %s AND v.oid <> d.refobjid ORDER BY 2
"""
# Types whose length or precision can grow without a rewrite (PostgreSQL's own exemptions), by type oid.
_VARCHAR, _VARBIT, _NUMERIC = 1043, 1562, 1700
_TIMES = {1083, 1114, 1184, 1266}  # time, timestamp, timestamptz, timetz


@dataclass(frozen=True)
class Hazard:
    kind: str
    line: int
    statement: str
    relation: str  # schema.table
    rows: int  # live row estimate
    bytes: int  # table, indexes and TOAST
    title: str
    detail: str
    effect: str
    fix: str
    gated: bool = False  # the table has at least hazard_min_rows rows: a failure, not a note

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Table:
    oid: int
    name: str
    rows: int
    bytes: int


def weigh(conn: psycopg.Connection[Any], candidates: list[Candidate], plan_views: set[str],
          min_rows: int | None) -> list[Hazard]:
    """The candidates that are hazards on this database, each with its table's live size."""
    tables: dict[tuple[str | None, str], _Table | None] = {}
    found: list[Hazard] = []
    waits: list[tuple[Candidate, _Table, str]] = []
    session: str | None = None
    for c in candidates:
        key = (c.schema, c.table)
        if key not in tables:
            row = conn.execute(_TABLE, key).fetchone()
            tables[key] = _Table(*row) if row else None
        table = tables[key]
        if table is None:  # created by this migration or an error the server will report: nothing to weigh
            continue
        if c.kind == hz.NO_LOCK_TIMEOUT:
            if c.lock_timeout is None and session is None:
                session = str(conn.execute("SHOW lock_timeout").fetchone()[0])  # type: ignore[index]
            setting = c.lock_timeout if c.lock_timeout is not None else str(session)
            if hz.is_zero(setting):
                waits.append((c, table, setting))
            continue
        detail = _confirm(conn, c, table, plan_views)
        if detail is not None:
            found.append(_hazard(c, table, detail, min_rows))
    if waits:
        c, table, setting = max(waits, key=lambda w: w[1].rows)
        source = "set by the file" if c.lock_timeout is not None else "the session's, from --phase4-lock-timeout"
        found.append(_hazard(c, table, f"lock_timeout is {setting} ({source}) when it locks {table.name}", min_rows))
    return sorted(found, key=lambda h: h.line)


def _hazard(c: Candidate, table: _Table, detail: str, min_rows: int | None) -> Hazard:
    title, effect, fix = hz.TEXTS[c.kind]
    return Hazard(c.kind, c.line, c.statement, table.name, table.rows, table.bytes, title, detail, effect, fix,
                  gated=min_rows is not None and table.rows >= min_rows)


def _confirm(conn: psycopg.Connection[Any], c: Candidate, table: _Table, plan_views: set[str]) -> str | None:
    """What makes the candidate a hazard here, or None when the catalog says it is not one."""
    if c.kind == hz.CREATE_INDEX:
        return f"index {c.what}" if c.what else c.statement
    if c.kind == hz.NOT_VALID:
        return c.what or c.statement
    if c.kind == hz.VOLATILE_DEFAULT:
        if c.volatile:
            return f"column {c.column} {c.what}"
        for schema, name in c.functions:
            count, volatile = conn.execute(_VOLATILE, (name, schema, schema)).fetchone()  # type: ignore[misc]
            if volatile or not count:
                why = "volatile" if count else "not in the catalog, so taken as volatile"
                return f"column {c.column} {c.what}: {name}() is {why}"
        return None
    column = conn.execute(_COLUMN, (table.oid, c.column)).fetchone()
    if column is None:  # no such column: the statement fails with the server's own error
        return None
    typid, typmod, notnull, shown, quoted = column
    if c.kind == hz.SET_NOT_NULL:
        proofs = [r[0] for r in conn.execute(_CHECKS, (table.oid,)).fetchall()]
        if notnull or any(f"({quoted} IS NOT NULL)" in p for p in proofs):
            return None
        return f"column {c.column}"
    if c.kind == hz.TYPE_REWRITE:
        return None if not c.using and _binary_compatible(conn, c, typid, typmod) else \
            f"column {c.column} from {shown} to {c.new_type}" + (" USING ..." if c.using else "")
    if c.kind == hz.DROP_VIEWED:
        views = [full for name, full in conn.execute(_VIEWS, (table.oid, c.column)).fetchall()
                 if name not in plan_views and name not in c.dropped_before]
        return f"column {c.column}, read by {', '.join(views)}" if views else None
    return None


def _binary_compatible(conn: psycopg.Connection[Any], c: Candidate, old: int, old_mod: int) -> bool:
    """PostgreSQL's rules for an ALTER COLUMN TYPE that keeps the table's files (no USING)."""
    row = conn.execute("SELECT pg_catalog.to_regtype(%s)::oid", (c.new_type,)).fetchone()
    new = row[0] if row else None
    if new is None:
        return False
    new_mod = _typmod(int(new), c.typmods)
    if new != old:
        cast = conn.execute("SELECT castmethod FROM pg_catalog.pg_cast WHERE castsource = %s AND casttarget = %s",
                            (old, new)).fetchone()
        return cast is not None and cast[0] == "b" and new_mod == -1
    if new_mod == old_mod:
        return True
    if old in (_VARCHAR, _VARBIT) or old in _TIMES:
        return new_mod == -1 or (old_mod != -1 and new_mod >= old_mod)
    if old == _NUMERIC:
        if new_mod == -1:
            return True
        same_scale = old_mod != -1 and (old_mod - 4) & 0xFFFF == (new_mod - 4) & 0xFFFF
        return same_scale and (new_mod - 4) >> 16 >= (old_mod - 4) >> 16
    return False


def _typmod(oid: int, mods: tuple[int, ...]) -> int:
    if not mods:
        return -1
    if oid in (_VARCHAR, 1042):
        return mods[0] + 4
    if oid == _NUMERIC:
        return ((mods[0] << 16) | (mods[1] if len(mods) > 1 else 0)) + 4
    return mods[0]
