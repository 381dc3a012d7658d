"""What each migration did, recorded in its own transaction before COMMIT: the catalog objects it created,
altered and dropped (in any schema, by identity, with their definitions before and after), the large objects it
created or unlinked, the rows it inserted, updated and deleted per table (`pg_stat_xact_user_tables`, no scan;
a table it emptied by TRUNCATE, which those counters miss, by its new storage), and its transaction ids (its
subtransactions' too: a row a DO block wrote with an EXCEPTION handler carries one).
The rollback works from this record only, never from "whatever is newer than the backup". No pytest here.

Only the migration's own work is recorded, whatever other sessions commit meanwhile: an object counts as created
or altered when one of its catalog rows was written by the migration's transaction (its xmin is still in
progress, and visible: ours), and as dropped when it is gone for that transaction while another session still
sees it (the drop is not committed: ours). A transaction = false migration is recorded statement by statement
the same way, each statement in a transaction of its own; one that refuses a transaction block (CREATE INDEX
CONCURRENTLY) is recorded by the objects its parse tree names.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

from pytest_phase4.db import inventory
from pytest_phase4.db.inventory import Obj
from pytest_phase4.db.ledger import SCHEMA

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

_ROWS = """
SELECT (pg_catalog.pg_identify_object('pg_catalog.pg_class'::regclass, relid, 0)).identity,
       n_tup_ins, n_tup_upd, n_tup_del
  FROM pg_catalog.pg_stat_xact_user_tables
 WHERE schemaname <> %s AND n_tup_ins + n_tup_upd + n_tup_del > 0
"""

# A table's storage (relfilenode): a new one means its rows were rewritten (TRUNCATE, CLUSTER, ALTER TYPE, ...),
# which pg_stat_xact_user_tables does not count (a TRUNCATE deletes no row it counts).
_FILES = """
SELECT c.oid::int8, c.relfilenode::int8 FROM pg_catalog.pg_class c
 WHERE c.relkind = 'r' AND c.relpersistence <> 't'
   AND c.relnamespace::regnamespace::text NOT IN ('pg_catalog', 'information_schema', %s)
"""
# The same, of the tables whose pg_class row this transaction wrote (another session's TRUNCATE is not ours).
_MY_FILES = _FILES.replace("FROM pg_catalog.pg_class c", """FROM pg_catalog.pg_class c,
       (SELECT pg_catalog.pg_current_xact_id()::text::int8 AS top,
               pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())::text::int8 AS xmax) x""") + \
    " AND " + inventory.mine_sql("c.xmin::text::int8", "x.top", "x.xmax")
EVERY_ROW = -1  # RowChange.deleted of a table the migration emptied or rewrote: every row, not counted


# Large objects are not in the inventory (an application may hold millions): read only when there are some.
_LARGE = """
SELECT l.oid::int8, l.lomowner::regrole::text,
       coalesce((SELECT array_agg(x::text ORDER BY x::text)
                 FROM unnest(coalesce(l.lomacl, pg_catalog.acldefault('L', l.lomowner))) x), '{}'),
       l.xmin::text::int8, %(mine)s AND {mine}
  FROM pg_catalog.pg_largeobject_metadata l,
       (SELECT CASE WHEN %(mine)s THEN pg_catalog.pg_current_xact_id()::text::int8 ELSE 0 END AS top,
               pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())::text::int8 AS xmax) c
""".replace("{mine}", inventory.mine_sql("l.xmin::text::int8", "c.top", "c.xmax"))
LARGE_OBJECT = 2613  # pg_largeobject: the class pg_identify_object gives large objects


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


@dataclass
class Seen:
    """The catalog (and large objects), and the row counters of pg_stat_xact_user_tables, before the SQL runs.

    Since PostgreSQL 15 those counters also hold earlier transactions' counts not yet flushed to the shared
    statistics (the backend flushes when idle, at most once a second), so only the difference over the
    migration's own statements is its work; nothing is flushed while a transaction is open."""

    objects: dict[tuple[int, int, int], Obj]
    rows: dict[str, tuple[int, int, int]]
    files: dict[int, int] = field(default_factory=dict)  # table oid -> relfilenode


def before(conn: psycopg.Connection[Any]) -> Seen:
    """The catalog and row counters before the migration's SQL runs; call inside its transaction."""
    return Seen({**inventory.take(conn), **large_objects(conn)}, _row_counters(conn), _files(conn))


def _files(conn: psycopg.Connection[Any], mine: bool = False) -> dict[int, int]:
    return {int(r[0]): int(r[1]) for r in conn.execute(_MY_FILES if mine else _FILES, (SCHEMA,)).fetchall()}


def _rewritten(conn: psycopg.Connection[Any], seen: Seen, found: list[Change]) -> set[str]:
    """Tables that existed before and have new storage, their definition and columns unchanged (a type change,
    SET UNLOGGED or SET TABLESPACE rewrite too, and are changes of their own): emptied by TRUNCATE (or CLUSTER)."""
    oids = [oid for oid, node in _files(conn, mine=True).items() if oid in seen.files and seen.files[oid] != node]
    if not oids:
        return set()
    names = {str(r[0]) for r in conn.execute(
        "SELECT (pg_catalog.pg_identify_object('pg_catalog.pg_class'::regclass, oid, 0)).identity"
        " FROM unnest(%s::oid[]) oid", (oids,)).fetchall()}
    changed = {c.obj.parent for c in found if c.obj.type == "table column"} | \
        {c.obj.identity for c in found if c.obj.type == "table"}
    return names - changed


def _row_counters(conn: psycopg.Connection[Any]) -> dict[str, tuple[int, int, int]]:
    return {str(r[0]): (int(r[1]), int(r[2]), int(r[3])) for r in conn.execute(_ROWS, (SCHEMA,)).fetchall()}


def large_objects(conn: psycopg.Connection[Any], mine: bool = False) -> dict[tuple[int, int, int], Obj]:
    """Every large object as an inventory object (owner and privileges), with mine as inventory.take says it."""
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_largeobject_metadata)").fetchone()
    if not row or not row[0]:
        return {}
    found = {}
    for oid, owner, acl, x, ours in conn.execute(_LARGE, {"mine": mine}).fetchall():
        obj = Obj(LARGE_OBJECT, int(oid), 0, "large object", str(oid), (str(oid),), (), {"owner": owner, "acl": acl},
                  None, bool(ours), (int(x),))
        found[obj.key] = obj
    return found


@contextmanager
def others(conn: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    """A second, read-only session as `conn`'s user: what everyone but `conn`'s open transaction sees."""
    password = conn.pgconn.password
    pinned = {"host": conn.info.host, "port": str(conn.info.port)}  # the server `conn` reached, not another of a list
    if conn.info.hostaddr:
        pinned["hostaddr"] = conn.info.hostaddr
    dsn = make_conninfo(conn.info.dsn, **pinned, **({"password": password.decode()} if password else {}))
    with psycopg.connect(dsn, autocommit=True) as helper:
        helper.execute("SELECT pg_catalog.set_config('default_transaction_read_only', 'on', false),"
                       " pg_catalog.set_config('lock_timeout', '5s', false)")
        yield helper


def diff(seen: dict[tuple[int, int, int], Obj], now: dict[tuple[int, int, int], Obj],
         dropped_by_us: set[tuple[int, int, int]]) -> list[Change]:
    """Objects this transaction created or altered (one of their catalog rows is its own: another session's
    changes committed meanwhile are not), and those it dropped (`dropped_by_us`: gone for it, there for others).
    A definition that reads differently only because an object it names was renamed is not an alteration; a
    part (a column, a constraint) whose name changes with its table's or schema's, renamed by it, is."""
    renamed = {(b.names[:1] if b.type == "schema" else (b.identity,)): (a.names[:1] if a.type == "schema" else
                                                                         (a.identity,))
               for k, a in now.items() if a.mine and (b := seen.get(k)) is not None and a.identity != b.identity}

    def moved(b: Obj, a: Obj) -> bool:
        return (b.parent is not None and renamed.get((b.parent,)) == (a.parent,)) or \
            (bool(b.names) and bool(a.names) and renamed.get(b.names[:1]) == a.names[:1])

    found = []
    for key in sorted(seen.keys() | now.keys()):
        b, a = seen.get(key), now.get(key)
        if a is None and b is not None:
            if key in dropped_by_us:
                found.append(Change("dropped", b, None))
        elif b is None and a is not None:
            if a.mine:
                found.append(Change("created", None, a))
        elif a is not None and b is not None and (a.identity != b.identity or _bare(a) != _bare(b)) and \
                (a.mine or (a.identity != b.identity and moved(b, a))):
            found.append(Change("altered", b, a))
    return found


def _bare(obj: Obj) -> dict[str, Any]:
    """The definition without the table's key, which is only kept to refill a dropped column by."""
    return {k: v for k, v in obj.definition.items() if k != "key"}


def store(conn: psycopg.Connection[Any], file: str, seen: Seen, part: bool = False) -> Record:
    """Compare with the catalog now and write the record, in the caller's transaction (before its COMMIT).
    With part, the transaction is one statement's of a transaction = false migration: added to its record."""
    now = {**inventory.take(conn, mine=True), **large_objects(conn, mine=True)}
    gone = [b for k, b in seen.objects.items() if k not in now]
    visible: set[tuple[int, int, int]] = set()
    if gone:
        with others(conn) as helper:
            visible = inventory.still_there(helper, gone)
    found = diff(seen.objects, now, visible)
    rows = []
    for relation, (ins, upd, dele) in _row_counters(conn).items():
        was = seen.rows.get(relation, (0, 0, 0))
        if (ins, upd, dele) != was:
            rows.append(RowChange(relation, ins - was[0], upd - was[1], dele - was[2]))
    for relation in _rewritten(conn, seen, found):
        counted = next((r for r in rows if r.relation == relation), RowChange(relation, 0, 0, 0))
        rows = [r for r in rows if r.relation != relation] + [
            RowChange(relation, counted.inserted, counted.updated, EVERY_ROW)]
    conn.execute(CREATE)
    xids = _xids(conn, found, rows)
    _write(conn, file, found, rows, xids, part)
    return Record(file, found, rows, xids)


def store_bare(conn: psycopg.Connection[Any], file: str, seen: Seen, names: set[str], writes_rows: bool) -> Record:
    """A statement of a transaction = false migration that ran outside any transaction of ours (it committed
    itself, in transactions of its own): record the changes to the objects its parse tree names, nothing else
    (what other sessions committed meanwhile cannot be told apart otherwise). Its rows are not known when it
    is a CALL or DO (`writes_rows`); it writes none otherwise."""
    now = {**inventory.take(conn), **large_objects(conn)}
    found = [c for c in diff(seen.objects, {k: _as_mine(o) for k, o in now.items()}, set(seen.objects) - set(now))
             if _named(c.obj, names)]
    conn.execute(CREATE)
    _write(conn, file, found, None if writes_rows else [], set(), True)
    return Record(file, found, None if writes_rows else [], set())


def _as_mine(obj: Obj) -> Obj:
    return Obj(obj.classid, obj.objid, obj.objsubid, obj.type, obj.identity, obj.names, obj.args, obj.definition,
               obj.parent, True, obj.versions)


def _named(obj: Obj, names: set[str]) -> bool:
    parent = (obj.parent or "").rpartition(".")[2].strip('"')
    return (bool(obj.names) and obj.names[-1] in names) or (obj.type == "index" and parent in names)


def _xids(conn: psycopg.Connection[Any], found: list[Change], rows: list[RowChange]) -> set[int]:
    """This transaction's id and those of its subtransactions that wrote rows of tables the plan created (the
    rows a revert tells apart by xmin): a visible row whose xmin is in progress is ours."""
    row = conn.execute("SELECT pg_catalog.pg_current_xact_id()::text::int8").fetchone()
    assert row is not None
    top = int(row[0])
    created = {c.obj.identity for c in found if c.action == "created" and c.obj.type == "table"}
    created |= {str(r[0]) for r in conn.execute(
        "SELECT DISTINCT identity FROM pytest_phase4.changes WHERE action = 'created' AND type = 'table'").fetchall()}
    xids = {top}
    full = sql.SQL(inventory.full_xid("x", "c.top"))
    ours = sql.SQL(inventory.mine_sql("x", "c.top", "c.xmax"))
    for r in rows:
        if r.relation not in created or not (r.inserted or r.updated):
            continue
        table = conn.execute("SELECT to_regclass(%s)", (r.relation,)).fetchone()
        if not table or table[0] is None:  # dropped again since
            continue
        xids |= {int(x[0]) for x in conn.execute(sql.SQL(
            "SELECT {full} FROM (SELECT DISTINCT xmin::text::int8 AS x FROM {t}) s,"
            " (SELECT %s::int8 AS top, pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())::text::int8"
            " AS xmax) c WHERE {ours}").format(full=full, t=sql.SQL(r.relation), ours=ours),  # the server's quoting
            (top,)).fetchall()}
    return xids


def _write(conn: psycopg.Connection[Any], file: str, found: list[Change], rows: list[RowChange] | None,
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
