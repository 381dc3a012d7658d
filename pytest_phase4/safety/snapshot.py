"""Before/after snapshots of a schema: exact row counts, content checksums and a catalog fingerprint, and the
diff between two of them. No pytest here; every identifier is composed with psycopg.sql.

The content checksum is computed in the database, order independent, as the sum of 64-bit hashes of each row's
kept columns, with the formula of checksums.py (its version travels in snapshot.json, and a snapshot is verified
with the formula it was taken with). A row's text depends on session settings (time zone, date and interval
styles, float digits, bytea output, search_path), so every checksum and fingerprint is computed with the
settings of checksums.PINNED, recorded in snapshot.json: a snapshot is only compared with one computed the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg

from pytest_phase4.db import catalog, inventory
from pytest_phase4.db.ledger import SCHEMA as OWN_SCHEMA
from pytest_phase4.db.pool import Pool, pages, run_all
from pytest_phase4.db.target import system_identifier
from pytest_phase4.safety import checksums, normalize

# The checksum formula new snapshots are computed with; snapshot.json records it (checksums.FORMULAS has each).
FORMULA = checksums.FORMULAS[checksums.CURRENT]
# Session settings every checksum and fingerprint is computed under (search_path: the plan's schema).


def pinned_settings(schema: str) -> dict[str, str]:
    return {**checksums.PINNED, "search_path": schema}


@contextmanager
def pinned(conn: psycopg.Connection[Any], schema: str) -> Iterator[None]:
    """Run what is inside with checksums.PINNED (and search_path = the schema), local to a transaction (or a savepoint
    of the caller's): nothing else on the connection sees them."""
    with conn.transaction():
        conn.execute("SELECT pg_catalog.set_config(k, v, true) FROM unnest(%s::text[], %s::text[]) AS s(k, v)",
                     (list(checksums.PINNED), list(checksums.PINNED.values())))
        conn.execute("SELECT pg_catalog.set_config('search_path', pg_catalog.quote_ident(%s), true)", (schema,))
        yield


@dataclass(frozen=True)
class Checksum:
    columns: tuple[str, ...]
    rows: int
    sum: str  # numeric, kept as text so JSON round-trips it exactly
    formula: int = checksums.CURRENT  # the version of checksums.FORMULAS it was computed with
    text: tuple[str, ...] = ()  # formula 2: the columns hashed as their text (their type has no hash function)

    def describe(self) -> str:
        return f"{self.rows:,} rows, checksum {self.sum} of ({', '.join(self.columns)})"


def checksum(conn: psycopg.Connection[Any], schema: str, table: str, columns: Sequence[str],
             pin: str | None = None, like: Checksum | None = None,
             hashing: checksums.Hashing | None = None) -> Checksum:
    """The table's checksum of the columns, under checksums.PINNED with search_path = pin (default: the table's schema):
    with the current formula (hashing: how, when the caller classified the columns already), or as `like` was
    computed (its formula, and the columns it hashed as text), to be compared with it."""
    version = like.formula if like is not None else checksums.CURRENT
    if version == 2 and (hashing is None or like is not None):
        found = checksums.classify(conn, [(schema, table, columns)])[schema, table]
        hashing = found if like is None else checksums.Hashing(like.text, found.collated)
    hashing = hashing or checksums.Hashing()
    try:
        with pinned(conn, pin or schema):
            row = conn.execute(checksums.query(schema, table, checksums.row_hash(version, columns, hashing))).fetchone()
    except psycopg.errors.UndefinedFunction:
        if like is None or version != 2:
            raise
        # A column hashed by its type's function when `like` was taken has another type now, which has none: it is
        # hashed as text, which cannot give like's sum, so the comparison reports the change.
        found = checksums.classify(conn, [(schema, table, columns)])[schema, table]
        hashing = checksums.Hashing(tuple(dict.fromkeys([*like.text, *found.text])), found.collated)
        with pinned(conn, pin or schema):
            row = conn.execute(checksums.query(schema, table, checksums.row_hash(version, columns, hashing))).fetchone()
    assert row is not None
    return Checksum(tuple(columns), int(row[0]), str(row[1]), version, hashing.text)


# One query per object kind; each row is (key, definition). Only the plan's schema, never the plugin's own.
_FINGERPRINT = [
    ("table", """SELECT c.relname, 'rls ' || CASE WHEN c.relrowsecurity THEN 'on' ELSE 'off' END
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = %(s)s AND n.nspname <> %(own)s AND c.relkind IN ('r', 'p')"""),
    ("column", """SELECT c.relname || '.' || a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod)
             || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
      FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = %(s)s AND n.nspname <> %(own)s AND c.relkind IN ('r', 'p')
        AND a.attnum > 0 AND NOT a.attisdropped"""),
    ("view", """SELECT c.relname, pg_catalog.pg_get_viewdef(c.oid)
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = %(s)s AND n.nspname <> %(own)s AND c.relkind = 'v'"""),
    ("matview", """SELECT c.relname, pg_catalog.pg_get_viewdef(c.oid)
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = %(s)s AND n.nspname <> %(own)s AND c.relkind = 'm'"""),
    ("sequence", """SELECT c.relname, pg_catalog.format_type(q.seqtypid, NULL) || coalesce(' owned by '
             || (SELECT t.relname || '.' || a.attname FROM pg_catalog.pg_depend d
                 JOIN pg_catalog.pg_class t ON t.oid = d.refobjid
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                 WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype IN ('a', 'i')
                 LIMIT 1), '')
      FROM pg_catalog.pg_sequence q JOIN pg_catalog.pg_class c ON c.oid = q.seqrelid
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = %(s)s AND n.nspname <> %(own)s"""),
    ("function", """SELECT p.proname || '(' || pg_catalog.pg_get_function_identity_arguments(p.oid) || ')',
             md5(pg_catalog.pg_get_functiondef(p.oid))
      FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
      WHERE n.nspname = %(s)s AND n.nspname <> %(own)s AND p.prokind IN ('f', 'p')
        AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_proc'::regclass
                        AND d.objid = p.oid AND d.deptype = 'e')"""),
    ("type", """SELECT t.typname, CASE t.typtype WHEN 'e' THEN 'enum ' || (SELECT string_agg(e.enumlabel, ', '
             ORDER BY e.enumsortorder) FROM pg_catalog.pg_enum e WHERE e.enumtypid = t.oid)
             ELSE 'domain ' || pg_catalog.format_type(t.typbasetype, t.typtypmod) END
      FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
      WHERE n.nspname = %(s)s AND n.nspname <> %(own)s AND t.typtype IN ('e', 'd')"""),
    ("index", """SELECT indexname, indexdef FROM pg_catalog.pg_indexes
      WHERE schemaname = %(s)s AND schemaname <> %(own)s"""),
    ("constraint", """SELECT c.relname || '.' || k.conname, pg_catalog.pg_get_constraintdef(k.oid)
      FROM pg_catalog.pg_constraint k JOIN pg_catalog.pg_class c ON c.oid = k.conrelid
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = %(s)s AND n.nspname <> %(own)s"""),
    ("policy", """SELECT tablename || '.' || policyname,
             'AS ' || permissive || ' FOR ' || cmd || ' TO ' || (SELECT string_agg(quote_ident(r), ', ' ORDER BY r)
                                                               FROM unnest(roles) r)
             || coalesce(' USING (' || qual || ')', '') || coalesce(' WITH CHECK (' || with_check || ')', '')
      FROM pg_catalog.pg_policies WHERE schemaname = %(s)s AND schemaname <> %(own)s"""),
]


def fingerprint(conn: psycopg.Connection[Any], schema: str) -> dict[str, str]:
    """"<kind> <name>" -> definition for tables (with RLS), columns and types, views and their definitions,
    indexes, constraints, policies, sequences, functions (a hash of their definition), enums and domains."""
    found: dict[str, str] = {}
    with pinned(conn, schema):
        for kind, query in _FINGERPRINT:
            for name, definition in conn.execute(query, {"s": schema, "own": OWN_SCHEMA}).fetchall():
                found[f"{kind} {name}"] = str(definition)
    return dict(sorted(found.items()))


@dataclass
class Snapshot:
    schema: str
    counts: dict[str, int]
    checksums: dict[str, Checksum] = field(default_factory=dict)
    fingerprint: dict[str, str] = field(default_factory=dict)
    applied: list[str] = field(default_factory=list)  # migrations the ledger showed as applied at that moment
    source: dict[str, str] = field(default_factory=dict)  # which database this is of (see identity())
    # A backup's snapshot only (the backup stage, one moment with its dump):
    backup_id: str = ""  # the marker row written into pytest_phase4.backups before the dump
    tables: dict[str, dict[str, Checksum]] = field(default_factory=dict)  # every table of every schema
    objects: list[dict[str, Any]] = field(default_factory=list)  # the inventory (inventory.Obj.to_json)
    settings: dict[str, str] = field(default_factory=dict)  # the session settings checksums were computed under
    formula: dict[str, Any] = field(default_factory=dict)  # FORMULA when computed; {} when unknown (older file)
    # A run's baseline (baselines.py): when, the backup markers the database held then, and the plan.
    taken_at: str = ""  # ISO 8601, UTC
    markers: list[str] = field(default_factory=list)
    plan: dict[str, str] = field(default_factory=dict)  # name, path, sha256
    personas: dict[str, Any] = field(default_factory=dict)  # what the plan's personas saw then (personas.py)
    xid_snapshot: str = ""  # a backup's pg_current_snapshot(): which rows' versions it holds

    def to_json(self) -> str:
        def sums(found: Mapping[str, Checksum]) -> dict[str, Any]:
            return {t: checksum_json(c) for t, c in found.items()}

        return json.dumps({
            "schema": self.schema, "counts": self.counts, "fingerprint": self.fingerprint, "applied": self.applied,
            "source": self.source, "checksums": sums(self.checksums), "backup_id": self.backup_id,
            "tables": {ns: sums(t) for ns, t in self.tables.items()}, "objects": self.objects,
            "settings": self.settings, "formula": self.formula, "taken_at": self.taken_at, "markers": self.markers,
            "plan": self.plan, "personas": self.personas, "xid_snapshot": self.xid_snapshot,
        }, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Snapshot:
        data = json.loads(text)
        version = int(data.get("formula", {}).get("version", 1))

        def sums(found: Mapping[str, Any]) -> dict[str, Checksum]:
            return {t: checksum_from_json(c, version) for t, c in found.items()}

        snap = cls(str(data["schema"]), {k: int(v) for k, v in data["counts"].items()}, sums(data["checksums"]),
                   dict(data["fingerprint"]), [str(f) for f in data.get("applied", [])],
                   {str(k): str(v) for k, v in data.get("source", {}).items()}, str(data.get("backup_id", "")),
                   {ns: sums(t) for ns, t in data.get("tables", {}).items()}, list(data.get("objects", [])),
                   dict(data.get("settings", {})), dict(data.get("formula", {})), str(data.get("taken_at", "")),
                   [str(m) for m in data.get("markers", [])], {str(k): str(v) for k, v in data.get("plan", {}).items()},
                   xid_snapshot=str(data.get("xid_snapshot", "")))
        snap.personas = dict(data.get("personas") or {})
        return snap

    def comparable(self) -> str | None:
        """Why checksums computed now cannot be compared with this snapshot's, or None when they can: they are
        computed with the snapshot's own formula, which must be one this version knows, under the same settings."""
        if self.formula.get("version") not in checksums.FORMULAS or self.settings != pinned_settings(self.schema):
            return (f"the snapshot's checksums were computed with formula {self.formula or 'unknown'} under "
                    f"settings {self.settings or 'unknown'}; this version computes formulas "
                    f"{', '.join(map(str, checksums.FORMULAS))} under {pinned_settings(self.schema)}")
        return None


def checksum_json(c: Checksum) -> dict[str, Any]:
    """A checksum as snapshot.json keeps it (its formula is the snapshot's: Snapshot.formula)."""
    return {"columns": list(c.columns), "rows": c.rows, "sum": c.sum, **({"text": list(c.text)} if c.text else {})}


def checksum_from_json(data: Mapping[str, Any], version: int) -> Checksum:
    return Checksum(tuple(data["columns"]), int(data["rows"]), str(data["sum"]), version,
                    tuple(data.get("text", ())))


def take_all(conn: psycopg.Connection[Any], schema: str, pool: Pool | None = None) -> Snapshot:
    """A backup's snapshot: every table of every schema counted and checksummed (all columns), the plan's
    schema's fingerprint, and the inventory of every object. Call inside the transaction whose snapshot the
    dump uses (pool connections that imported it run the tables side by side)."""
    rows = conn.execute(
        "SELECT n.nspname::text, c.relname::text, c.relpages FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p')"
        " AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', %s)"
        " AND n.nspname NOT LIKE 'pg\\_temp\\_%%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%%'"
        " ORDER BY 1, 2", (OWN_SCHEMA,)).fetchall()
    cols = {(ns, t): catalog.columns(conn, ns, t) for ns, t, _ in rows}
    how = checksums.classify(conn, [(ns, t, cols[ns, t]) for ns, t, _ in rows])
    jobs = [_checksum_job(ns, t, cols[ns, t], how[ns, t], schema) for ns, t, _ in rows]
    found = run_all(conn, pool, jobs, [float(p) for _, _, p in rows])
    tables: dict[str, dict[str, Checksum]] = {}
    for (ns, t, _), c in zip(rows, found, strict=True):
        tables.setdefault(ns, {})[t] = c
    mine = tables.get(schema, {})
    return Snapshot(schema, {t: c.rows for t, c in mine.items()}, dict(mine), fingerprint(conn, schema),
                    tables=tables, objects=[o.to_json() for o in inventory.take(conn).values()],
                    settings=pinned_settings(schema), formula=dict(FORMULA))


def _checksum_job(ns: str, table: str, columns: Sequence[str], hashing: checksums.Hashing,
                  pin: str | None = None) -> Callable[[psycopg.Connection[Any]], Checksum]:
    def job(conn: psycopg.Connection[Any]) -> Checksum:
        return checksum(conn, ns, table, columns, pin=pin, hashing=hashing)

    return job


def identity(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """What identifies a database across connections, whatever host name reached it: the cluster's system
    identifier (when the role may read it) and the database's name and oid. No secret in it."""
    row = conn.execute("SELECT current_database(), (SELECT oid::text FROM pg_database WHERE datname ="
                       " current_database())").fetchone()
    ident = {"database": str(row[0]), "oid": str(row[1])} if row else {}
    ident["system_identifier"] = system_identifier(conn)
    ident["marker"] = _marker(conn)
    return ident


def _marker(conn: psycopg.Connection[Any]) -> str:
    """The oldest backup marker row of this database as `uuid@xmin`, or "": the uuid names the backup, the xmin is
    the transaction that wrote the row here (a copy restored elsewhere is written by another)."""
    try:
        with conn.transaction():
            row = conn.execute("SELECT to_regclass('pytest_phase4.backups') IS NOT NULL").fetchone()
            if not row or not row[0]:
                return ""
            row = conn.execute("SELECT id::text || '@' || xmin::text FROM pytest_phase4.backups"
                               " ORDER BY taken_at, id LIMIT 1").fetchone()
    except psycopg.Error:  # the role may not read the plugin's schema
        return ""
    return str(row[0]) if row else ""


def same_database(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    keys = [k for k in ("database", "system_identifier") if a.get(k) and b.get(k)]  # the oid changes on re-creation
    return "database" in keys and all(a[k] == b[k] for k in keys)


def take(conn: psycopg.Connection[Any], schema: str, kept: Mapping[str, Sequence[str]] | None = None,
         pool: Pool | None = None, counts: Mapping[str, int] | None = None) -> Snapshot:
    """Counts of every table, the fingerprint, and checksums: of the given kept columns per table, or (None)
    of every column of every table, the counts then coming from the same scan. With a pool, the tables'
    queries run side by side on its read-only connections (the same queries, the same results). Counts the
    caller took at the same moment are used as they are, rather than scanning every table a second time."""
    tables = catalog.tables(conn, schema)
    sums: dict[str, Checksum] = {}
    if kept is None:
        cols = {t: catalog.columns(conn, schema, t) for t in tables}
        how = checksums.classify(conn, [(schema, t, cols[t]) for t in tables])
        found = run_all(conn, pool, [_checksum_job(schema, t, cols[t], how[schema, t]) for t in tables],
                        pages(conn, schema, tables))
        sums = dict(zip(tables, found, strict=True))
        counts = {t: s.rows for t, s in sums.items()}
    else:
        summed = [t for t, cols in kept.items() if t in tables and cols]
        counted = [] if counts is not None else tables
        jobs: list[Callable[[psycopg.Connection[Any]], int | Checksum]] = [_count_job(schema, t) for t in counted]
        how = checksums.classify(conn, [(schema, t, kept[t]) for t in summed])
        jobs += [_checksum_job(schema, t, kept[t], how[schema, t]) for t in summed]
        sizes = pages(conn, schema, [*counted, *summed])
        found_all = run_all(conn, pool, jobs, sizes)  # the counts, then the checksums
        if counts is None:
            counts = {t: n for t, n in zip(tables, found_all, strict=False) if isinstance(n, int)}
        sums = {t: c for t, c in zip(summed, found_all[len(counted):], strict=True) if isinstance(c, Checksum)}
    return Snapshot(schema, dict(counts), sums, fingerprint(conn, schema), settings=pinned_settings(schema),
                    formula=dict(FORMULA))


def _count_job(schema: str, table: str) -> Callable[[psycopg.Connection[Any]], int]:
    return lambda conn: catalog.count_rows(conn, schema, table)


@dataclass(frozen=True)
class Change:
    kind: str
    name: str
    change: str  # "added", "removed", "changed"
    before: str = ""
    after: str = ""
    what: str = ""  # of a changed object: the property that changed ("default", "privileges", "enabled", ...)

    @property
    def label(self) -> str:
        """The kind, and for a changed property which one: "column default", "trigger enabled"."""
        kind = catalog.kind_words(self.kind)
        return kind if kind.endswith(self.what) else f"{kind} {self.what}"  # not "default privileges privileges"


def diff(before: Mapping[str, str], after: Mapping[str, str]) -> list[Change]:
    changes = []
    for key in sorted(set(before) | set(after)):
        kind, name = key.split(" ", 1)
        if key not in after:
            changes.append(Change(kind, name, "removed", before[key]))
        elif key not in before:
            changes.append(Change(kind, name, "added", "", after[key]))
        elif before[key] != after[key] and not normalize.same_text(kind, before[key], after[key]):
            changes.append(Change(kind, name, "changed", before[key], after[key]))
    return changes


def table_lines(changes: Iterable[Change], width: int = 60) -> list[str]:
    """The diff as an aligned text table, for the terminal and the report."""
    def cut(text: str) -> str:
        text = " ".join(text.split())
        return text if len(text) <= width else text[: width - 3] + "..."

    rows = [("change", "kind", "name", "before", "after")]
    rows += [(c.change, c.label, c.name, cut(c.before), cut(c.after)) for c in changes]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return [" | ".join([*(r[i].ljust(widths[i]) for i in range(4)), r[4]]).rstrip() for r in rows]
