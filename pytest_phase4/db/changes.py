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

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pytest_phase4.db import inventory
from pytest_phase4.db.change_store import (
    CREATE,
    EVERY_ROW,
    Change,
    Record,
    RowChange,
    exists,
    finish,
    forget,
    partial_files,
    read,
    write,
)
from pytest_phase4.db.inventory import Obj
from pytest_phase4.db.ledger import SCHEMA

# What callers read here (changes.CREATE, changes.read, ...) lives in change_store.py, the record's tables.
__all__ = ["CREATE", "EVERY_ROW", "Change", "Record", "RowChange", "Seen", "before", "diff", "exists", "finish",
           "forget", "large_objects", "others", "partial_files", "read", "store", "store_bare"]

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
    write(conn, file, found, rows, xids, part)
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
    write(conn, file, found, None if writes_rows else [], set(), True)
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


