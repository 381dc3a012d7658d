"""What each migration did, recorded in its own transaction before COMMIT: the catalog objects it created,
altered and dropped (in any schema, by identity, with their definitions before and after) and the rows it
inserted, updated and deleted per table (`pg_stat_xact_user_tables`, no scan). The rollback works from this
record only, never from "whatever is newer than the backup". No pytest here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from pytest_phase4 import inventory
from pytest_phase4.inventory import Obj
from pytest_phase4.ledger import SCHEMA

_CREATE = """
CREATE SCHEMA IF NOT EXISTS pytest_phase4;
CREATE TABLE IF NOT EXISTS pytest_phase4.changes (
    file     text NOT NULL,
    seq      int NOT NULL,
    action   text NOT NULL CHECK (action IN ('created', 'dropped', 'altered')),
    type     text NOT NULL,
    identity text NOT NULL,
    before   jsonb,
    after    jsonb,
    PRIMARY KEY (file, seq)
);
CREATE TABLE IF NOT EXISTS pytest_phase4.row_changes (
    file     text NOT NULL,
    relation text NOT NULL,
    inserted bigint NOT NULL,
    updated  bigint NOT NULL,
    deleted  bigint NOT NULL,
    PRIMARY KEY (file, relation)
);
CREATE TABLE IF NOT EXISTS pytest_phase4.partial (
    file text PRIMARY KEY,
    at   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE pytest_phase4.changes IS 'catalog objects each migration created, altered or dropped';
COMMENT ON TABLE pytest_phase4.partial IS 'transaction = false migrations that failed with statements committed';
COMMENT ON TABLE pytest_phase4.row_changes IS 'rows each migration inserted, updated or deleted, per table';
"""

_ROWS = """
SELECT (pg_catalog.pg_identify_object('pg_catalog.pg_class'::regclass, relid, 0)).identity,
       n_tup_ins, n_tup_upd, n_tup_del
  FROM pg_catalog.pg_stat_xact_user_tables
 WHERE schemaname <> %s AND n_tup_ins + n_tup_upd + n_tup_del > 0
"""


@dataclass(frozen=True)
class Change:
    action: str  # created, dropped, altered
    before: Obj | None
    after: Obj | None

    @property
    def obj(self) -> Obj:
        found = self.after or self.before
        assert found is not None
        return found

    @property
    def renamed(self) -> bool:
        return self.before is not None and self.after is not None and self.before.identity != self.after.identity

    def describe(self) -> str:
        if self.renamed:
            assert self.before is not None
            return f"{self.action} {self.obj.type} {self.before.identity} (now {self.obj.identity})"
        return f"{self.action} {self.obj.type} {self.obj.identity}"


@dataclass(frozen=True)
class RowChange:
    relation: str  # identity of the table, e.g. public.orders
    inserted: int
    updated: int
    deleted: int


@dataclass
class Record:
    """What one migration did."""

    file: str
    changes: list[Change]
    rows: list[RowChange] | None  # None: not known (a transaction = false migration)


@dataclass
class Seen:
    """The catalog, and the row counters of pg_stat_xact_user_tables, before the migration's SQL runs.

    Since PostgreSQL 15 those counters also hold earlier transactions' counts not yet flushed to the shared
    statistics (the backend flushes when idle, at most once a second), so only the difference over the
    migration's own statements is its work; nothing is flushed while a transaction is open."""

    objects: dict[tuple[int, int, int], Obj]
    rows: dict[str, tuple[int, int, int]]


def before(conn: psycopg.Connection[Any]) -> Seen:
    """The catalog and row counters before the migration's SQL runs; call inside its transaction."""
    return Seen(inventory.take(conn), _row_counters(conn))


def _row_counters(conn: psycopg.Connection[Any]) -> dict[str, tuple[int, int, int]]:
    return {str(r[0]): (int(r[1]), int(r[2]), int(r[3])) for r in conn.execute(_ROWS, (SCHEMA,)).fetchall()}


def diff(seen: dict[tuple[int, int, int], Obj], now: dict[tuple[int, int, int], Obj]) -> list[Change]:
    """Objects created (only those this transaction wrote: not another session's, committed meanwhile),
    dropped, and altered (definition or identity changed) between two inventories."""
    found = []
    for key in sorted(seen.keys() | now.keys()):
        b, a = seen.get(key), now.get(key)
        if a is None and b is not None:
            found.append(Change("dropped", b, None))
        elif b is None and a is not None:
            if a.mine:
                found.append(Change("created", None, a))
        elif a is not None and b is not None and (a.identity != b.identity or _bare(a) != _bare(b)):
            found.append(Change("altered", b, a))
    return found


def _bare(obj: Obj) -> dict[str, Any]:
    """The definition without the table's key, which is only kept to refill a dropped column by."""
    return {k: v for k, v in obj.definition.items() if k != "key"}


def store(conn: psycopg.Connection[Any], file: str, seen: Seen, transactional: bool = True) -> Record:
    """Compare with the catalog now and write the record, in the caller's transaction (before its COMMIT)."""
    found = diff(seen.objects, inventory.take(conn, mine=transactional))
    rows = None
    if transactional:
        rows = []
        for relation, (ins, upd, dele) in _row_counters(conn).items():
            was = seen.rows.get(relation, (0, 0, 0))
            if (ins, upd, dele) != was:
                rows.append(RowChange(relation, ins - was[0], upd - was[1], dele - was[2]))
    conn.execute(_CREATE)
    # A failed transaction = false run left its committed part recorded: this run's changes come on top of it.
    row = conn.execute("DELETE FROM pytest_phase4.partial WHERE file = %s RETURNING file", (file,)).fetchone()
    if row is None:
        conn.execute("DELETE FROM pytest_phase4.changes WHERE file = %s", (file,))
        conn.execute("DELETE FROM pytest_phase4.row_changes WHERE file = %s", (file,))
    first = conn.execute("SELECT coalesce(max(seq) + 1, 0) FROM pytest_phase4.changes WHERE file = %s",
                         (file,)).fetchone()
    offset = int(first[0]) if first else 0
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO pytest_phase4.changes (file, seq, action, type, identity, before, after)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
            [(file, offset + n, c.action, c.obj.type, c.obj.identity, _json(c.before), _json(c.after))
             for n, c in enumerate(found)])
        if rows is not None:
            cur.executemany("INSERT INTO pytest_phase4.row_changes VALUES (%s, %s, %s, %s, %s)",
                            [(file, r.relation, r.inserted, r.updated, r.deleted) for r in rows])
        else:
            cur.execute("INSERT INTO pytest_phase4.row_changes VALUES (%s, '*', -1, -1, -1)"
                        " ON CONFLICT DO NOTHING", (file,))
    return Record(file, found, rows)


def store_partial(conn: psycopg.Connection[Any], file: str, seen: Seen) -> bool:
    """A transaction = false migration failed with some statements committed: record what they did (the ledger
    does not list the file), so that a rollback undoes them too. Never hides the migration's own error: False
    when the record could not be written."""
    try:
        with conn.transaction():
            store(conn, file, seen, transactional=False)
            conn.execute("INSERT INTO pytest_phase4.partial (file) VALUES (%s) ON CONFLICT DO NOTHING", (file,))
    except psycopg.Error:
        return False
    return True


def partial_files(conn: psycopg.Connection[Any]) -> set[str]:
    row = conn.execute("SELECT to_regclass('pytest_phase4.partial') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return set()
    return {str(r[0]) for r in conn.execute("SELECT file FROM pytest_phase4.partial").fetchall()}


def _json(obj: Obj | None) -> Jsonb | None:
    return Jsonb(obj.to_json()) if obj is not None else None


def read(conn: psycopg.Connection[Any], files: list[str]) -> dict[str, Record]:
    """The records of the given migrations; a file without one is missing from the answer."""
    row = conn.execute("SELECT to_regclass('pytest_phase4.changes') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return {}
    records: dict[str, Record] = {}
    for file, before_, after_ in conn.execute(
            "SELECT file, before, after FROM pytest_phase4.changes WHERE file = ANY(%s) ORDER BY file, seq",
            (files,)).fetchall():
        b = Obj.from_json(_load(before_)) if before_ is not None else None
        a = Obj.from_json(_load(after_)) if after_ is not None else None
        action = "created" if b is None else "dropped" if a is None else "altered"
        records.setdefault(file, Record(file, [], [])).changes.append(Change(action, b, a))
    for file, relation, ins, upd, dele in conn.execute(
            "SELECT file, relation, inserted, updated, deleted FROM pytest_phase4.row_changes"
            " WHERE file = ANY(%s) ORDER BY file, relation", (files,)).fetchall():
        record = records.setdefault(file, Record(file, [], []))
        if relation == "*":
            record.rows = None
        elif record.rows is not None:
            record.rows.append(RowChange(relation, int(ins), int(upd), int(dele)))
    return records


def _load(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else dict(json.loads(value))


def forget(conn: psycopg.Connection[Any], files: list[str]) -> None:
    """Drop the records of migrations a rollback undid (their ledger rows go in the same transaction)."""
    row = conn.execute("SELECT to_regclass('pytest_phase4.changes') IS NOT NULL").fetchone()
    if row and row[0]:
        conn.execute("DELETE FROM pytest_phase4.changes WHERE file = ANY(%s)", (files,))
        conn.execute("DELETE FROM pytest_phase4.row_changes WHERE file = ANY(%s)", (files,))
        conn.execute("DELETE FROM pytest_phase4.partial WHERE file = ANY(%s)", (files,))
