"""What a migration holds on this database, measured while it runs in its own transaction.

After each statement the migration's own session reads `pg_locks` for its backend: the relations it has locked
and in which mode. A relation's row estimate and size are read when it is first locked, a rewrite is a changed
relfilenode, and each lock is held from the start of the statement that took it until the commit (or rollback).
Relations the migration created itself are left out: nobody else can see them, so nobody waits for them.

The same session also weighs the migration's static hazards before its first statement (weigh.py), and
enforces the plan's gates: `hazard_min_rows` before anything runs, `max_exclusive_lock_ms` after each statement.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from pytest_phase4.db import hazards, ledger, lockwords
from pytest_phase4.db.sqltext import SqlSyntaxError, Statement, split
from pytest_phase4.db.weigh import Hazard, weigh
from pytest_phase4.errors import MigrationFailed
from pytest_phase4.plan.model import Migration, Plan

EXCLUSIVE = frozenset({"AccessExclusiveLock", "ExclusiveLock"})  # what max_exclusive_lock_ms limits

# Every relation of the database outside the system schemas, as it was before the migration's first statement.
_BEFORE = """
SELECT c.oid, n.nspname || '.' || c.relname, c.relkind, c.relfilenode,
       CASE WHEN c.relkind IN ('r', 'p', 'm', 't')
            THEN greatest(c.reltuples, pg_catalog.pg_stat_get_live_tuples(c.oid), 0)::bigint ELSE 0 END,
       c.relpages::bigint * pg_catalog.current_setting('block_size')::bigint
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', %s) AND n.nspname !~ '^pg_(toast_)?temp_'
"""
# The session's own granted relation locks, now, with each relation's current file.
_HELD = """
SELECT l.relation, l.mode, c.relfilenode FROM pg_catalog.pg_locks l
LEFT JOIN pg_catalog.pg_class c ON c.oid = l.relation
WHERE l.pid = pg_catalog.pg_backend_pid() AND l.locktype = 'relation' AND l.granted
  AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
"""
_SIZE = "SELECT pg_catalog.pg_total_relation_size(%s)"


@dataclass
class Lock:
    relation: str  # schema.name
    kind: str  # table, index, view, ...
    mode: str  # as pg_locks names it: AccessExclusiveLock, ShareLock, ...
    line: int  # the statement that took it
    rows: int
    bytes: int
    held_ms: float = 0.0
    rewritten: bool = False
    dropped: bool = False
    since: float = field(default=0.0, repr=False)  # perf_counter at the start of the statement that took it

    def to_json(self) -> dict[str, Any]:
        return {"relation": self.relation, "kind": self.kind, "mode": self.mode, "line": self.line,
                "held_ms": round(self.held_ms, 1), "rows": self.rows, "bytes": self.bytes,
                "rewritten": self.rewritten, "dropped": self.dropped}


@dataclass
class Measurement:
    file: str
    transactional: bool = True  # false: autocommit, each statement's locks end with it (not observed)
    outcome: str = "not run"  # committed, rolled back, autocommit
    statements: list[dict[str, Any]] = field(default_factory=list)  # line, statement, duration_ms
    locks: list[Lock] = field(default_factory=list)
    hazards: list[Hazard] = field(default_factory=list)
    gates: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "transactional": self.transactional, "gates": self.gates,
                "statements": self.statements, "locks": [lock.to_json() for lock in self.locks],
                "hazards": [h.to_json() for h in self.hazards]}


class Observer:
    """Called by migrate.apply around the statements of one migration, in its session."""

    def __init__(self, migration: Migration, plan_views: set[str] | None = None, measure: bool = True) -> None:
        self.migration, self.measure = migration, measure
        self.plan_views = plan_views or set()
        gates = {"max_exclusive_lock_ms": migration.max_exclusive_lock_ms,
                 "hazard_min_rows": migration.hazard_min_rows}
        self.measurement = Measurement(migration.file, migration.transaction,
                                       gates={k: v for k, v in gates.items() if v is not None})
        self._before: dict[int, tuple[str, str, int, int, int]] = {}
        self._seen: dict[tuple[int, str], Lock] = {}
        self._rewritten: set[int] = set()  # relations whose relfilenode changed: new files, every row written
        self._statement: dict[int, Statement] = {}  # id of a Lock -> the statement that took it

    def begin(self, conn: psycopg.Connection[Any], statements: list[Statement]) -> None:
        """Before the first statement: weigh the hazards (refusing gated ones) and record the relations."""
        m = self.measurement
        if not self.measure:
            return
        m.hazards = weigh(conn, hazards.find(statements), self.plan_views, self.migration.hazard_min_rows)
        if gated := [h for h in m.hazards if h.gated]:
            first = gated[0]
            others = [f"line {h.line}: {lockwords.hazard(h)}" for h in gated[1:]]
            raise MigrationFailed(
                self.migration.file, first.line, None,
                f"{lockwords.hazard(first)}; the plan's gate hazard_min_rows = {self.migration.hazard_min_rows:,} "
                "refuses it before anything runs",
                detail="; ".join([f"fix: {first.fix}", *others]),
                statement=next((s.code for s in statements if (s.line, s.head) == (first.line, first.statement)), ""))
        if m.transactional:
            rows = conn.execute(_BEFORE, (ledger.SCHEMA,)).fetchall()
            self._before = {r[0]: (r[1], lockwords.KINDS.get(r[2], "relation"), r[3], r[4], r[5]) for r in rows}

    def after(self, conn: psycopg.Connection[Any], stmt: Statement, started: float) -> None:
        """After a statement succeeded: its duration, the locks it added, the rewrites; then the lock gate."""
        ended = time.perf_counter()
        if not self.measure:
            return
        self.measurement.statements.append({"line": stmt.line, "statement": stmt.head,
                                            "duration_ms": round((ended - started) * 1000, 3)})
        if not self.measurement.transactional:
            return
        held = [r for r in conn.execute(_HELD).fetchall() if r[0] in self._before]  # others: created by it
        for oid, mode, filenode in held:
            if (oid, mode) not in self._seen:
                name, kind, _, rows, pages_bytes = self._before[oid]
                size = conn.execute(_SIZE, (oid,)).fetchone() if filenode is not None else None
                lock = Lock(name, kind, mode, stmt.line, rows, pages_bytes if size is None or size[0] is None
                            else int(size[0]), since=started)
                self._seen[oid, mode] = lock
                self._statement[id(lock)] = stmt
                self.measurement.locks.append(lock)
        for oid, _, filenode in held:
            mine = [lock for (o, _), lock in self._seen.items() if o == oid]
            if filenode is None:  # dropped by this statement or an earlier one
                for lock in mine:
                    lock.dropped = True
            elif self._before[oid][2] not in (0, filenode) and oid not in self._rewritten:
                self._rewritten.add(oid)  # by this statement: the mark goes on the strongest lock it holds now
                max(mine, key=lambda lock: lockwords.strength(lock.mode)).rewritten = True
        self._gate(ended)

    def end(self, committed: bool) -> None:
        """The transaction ended: every lock was held until now."""
        now = time.perf_counter()
        m = self.measurement
        m.outcome = ("committed" if committed else "rolled back") if m.transactional else "autocommit"
        for lock in m.locks:
            lock.held_ms = (now - lock.since) * 1000

    def _gate(self, now: float) -> None:
        limit = self.migration.max_exclusive_lock_ms
        if limit is None:
            return
        over = [lock for lock in self.measurement.locks if lock.mode in EXCLUSIVE and (now - lock.since) * 1000 > limit]
        if not over:
            return
        # the longest held; of those taken by the same statement, the strongest, on a table before an index
        worst = max(over, key=lambda lock: (-lock.since, lockwords.strength(lock.mode), lock.kind == "table",
                                            lock.relation))
        worst.held_ms = (now - worst.since) * 1000
        raise MigrationFailed(
            self.migration.file, worst.line, None,
            f"{lockwords.lock(worst.to_json())}, more than the plan's max_exclusive_lock_ms = {limit:,}",
            detail="stopped there and rolled back, so the lock ends now; make the change lighter (CREATE INDEX "
                   "CONCURRENTLY, NOT VALID then VALIDATE, a new column filled in batches) or run it in a "
                   "window where the table may be locked that long, and raise the gate",
            statement=self._statement[id(worst)].code)


def plan_views(plan: Plan) -> set[str]:
    """The views and materialized views the plan's migrations create: a column they read is the plan's own
    business (its verify checks see a broken one), not a hazard to someone else's view."""
    names: set[str] = set()
    for m in plan.migrations:
        try:
            names |= hazards.plan_views(split(m.path.read_text(encoding="utf-8"), m.file))
        except (OSError, UnicodeDecodeError, SqlSyntaxError):
            continue  # that migration fails on its own, with its own message
    return names


def from_evidence(path: Path) -> dict[str, dict[str, Any]]:
    """Each migration's measurement in a run's JSON evidence (a rehearsal's), by file; {} if there is none."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {m["file"]: m["measured"] for m in document.get("migrations", []) if m.get("measured")}
