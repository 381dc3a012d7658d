"""Where each migration's record lives (changes.py takes it): the tables of schema pytest_phase4 that hold what
it created, altered and dropped, the rows it wrote per table and its transaction ids; writing a record, reading
it back, and forgetting it when a rollback undid the migration. No pytest here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from pytest_phase4.db.inventory import Obj

CREATE = """
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
CREATE TABLE IF NOT EXISTS pytest_phase4.xids (
    file text NOT NULL,
    xid  bigint NOT NULL,
    PRIMARY KEY (file, xid)
);
CREATE TABLE IF NOT EXISTS pytest_phase4.kept_data (
    file     text NOT NULL,
    sha256   text NOT NULL,
    at       timestamptz NOT NULL DEFAULT now(),
    rows     text NOT NULL,
    PRIMARY KEY (file, sha256)
);
COMMENT ON TABLE pytest_phase4.changes IS 'catalog objects each migration created, altered or dropped';
COMMENT ON TABLE pytest_phase4.partial IS 'transaction = false migrations that failed with statements committed';
COMMENT ON TABLE pytest_phase4.row_changes IS 'rows each migration inserted, updated or deleted, per table';
COMMENT ON TABLE pytest_phase4.xids IS 'the transaction ids (with subtransactions) that wrote each migration''s rows';
COMMENT ON TABLE pytest_phase4.kept_data IS 'migrations a revert undid while keeping their row changes: the same '
    'file is not applied again (it would change those rows a second time)';
"""

EVERY_ROW = -1  # RowChange.deleted of a table the migration emptied or rewrote: every row, not counted


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
    deleted: int  # EVERY_ROW: emptied or rewritten (TRUNCATE), how many is not known

    def describe(self) -> str:
        deleted = "every row (a TRUNCATE or a rewrite: not counted)" if self.deleted < 0 else f"{self.deleted:,} row(s)"
        return f"inserted {self.inserted:,}, updated {self.updated:,}, deleted {deleted}"


@dataclass
class Record:
    """What one migration did."""

    file: str
    changes: list[Change]
    rows: list[RowChange] | None  # None: not known (a transaction = false statement such as CALL)
    xids: set[int] | None = None  # its transactions and subtransactions (full xids)


def write(conn: psycopg.Connection[Any], file: str, found: list[Change], rows: list[RowChange] | None,
          xids: set[int], part: bool) -> None:
    # A file's earlier record is replaced, unless what is recorded so far is its committed part: a failed
    # transaction = false run, or the statements before this one of the same run.
    partial = conn.execute("SELECT 1 FROM pytest_phase4.partial WHERE file = %s", (file,)).fetchone()
    if partial is None:
        for table in ("changes", "row_changes", "xids"):
            conn.execute(sql.SQL("DELETE FROM pytest_phase4.{} WHERE file = %s").format(sql.Identifier(table)),
                         (file,))
    if part:
        conn.execute("INSERT INTO pytest_phase4.partial (file) VALUES (%s) ON CONFLICT DO NOTHING", (file,))
    else:
        conn.execute("DELETE FROM pytest_phase4.partial WHERE file = %s", (file,))
    first = conn.execute("SELECT coalesce(max(seq) + 1, 0) FROM pytest_phase4.changes WHERE file = %s",
                         (file,)).fetchone()
    offset = int(first[0]) if first else 0
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO pytest_phase4.changes (file, seq, action, type, identity, before, after)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
            [(file, offset + n, c.action, c.obj.type, c.obj.identity, _json(c.before), _json(c.after))
             for n, c in enumerate(found)])
        if rows is None:
            cur.execute("INSERT INTO pytest_phase4.row_changes VALUES (%s, '*', -1, -1, -1) ON CONFLICT DO NOTHING",
                        (file,))
        else:
            cur.executemany("INSERT INTO pytest_phase4.row_changes AS r VALUES (%s, %s, %s, %s, %s)"
                            " ON CONFLICT (file, relation) DO UPDATE SET inserted = r.inserted + excluded.inserted,"
                            " updated = r.updated + excluded.updated, deleted = CASE WHEN r.deleted < 0"
                            " OR excluded.deleted < 0 THEN -1 ELSE r.deleted + excluded.deleted END",
                            [(file, r.relation, r.inserted, r.updated, r.deleted) for r in rows])
        cur.executemany("INSERT INTO pytest_phase4.xids VALUES (%s, %s) ON CONFLICT DO NOTHING",
                        [(file, x) for x in sorted(xids)])


def finish(conn: psycopg.Connection[Any], file: str) -> None:
    """A transaction = false migration ran to its end: its record is whole (with its ledger row, same transaction)."""
    conn.execute(CREATE)
    conn.execute("DELETE FROM pytest_phase4.partial WHERE file = %s", (file,))


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
    if exists(conn, "xids"):
        for file, xid in conn.execute("SELECT file, xid FROM pytest_phase4.xids WHERE file = ANY(%s)",
                                      (files,)).fetchall():
            if (found := records.get(file)) is not None:  # ids alone are no record (what it did is not known)
                found.xids = (found.xids or set()) | {int(xid)}
    return records


def exists(conn: psycopg.Connection[Any], table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"pytest_phase4.{table}",)).fetchone()
    return bool(row and row[0])


def _load(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else dict(json.loads(value))


def forget(conn: psycopg.Connection[Any], files: list[str]) -> None:
    """Drop the records of migrations a rollback undid (their ledger rows go in the same transaction)."""
    for table in ("changes", "row_changes", "partial", "xids"):
        if exists(conn, table):
            conn.execute(sql.SQL("DELETE FROM pytest_phase4.{} WHERE file = ANY(%s)").format(sql.Identifier(table)),
                         (files,))
