"""Reading a step's data ahead on the pool: in one snapshot, each value once, each table read once.

`Facts` knows which values a step's checks will ask for (keys, in check order). `ReadAhead` plans the statements
that answer them (readplan.py: one scan per table read row by row, indexes for the rest, the exact shortcuts of
shortcuts.py) and queues them on the pool in one snapshot (Pool.begin), so that the server works while pytest
reports the checks in order, and every number of the step describes the same moment: a view and its base table,
a child and its parent. A value a shortcut cannot give (an orphan key found by the loose scan, a derived view
whose join keys have orphans, a parent's keys with gaps) is read by the plain query, in the same snapshot.

A value whose query fails gets that query's SQL error: a read of several values that fails is run again value by
value, each in a savepoint, so one bad check does not take the others' results with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, wait
from typing import Any

import psycopg
from psycopg import sql

from pytest_phase4.db import catalog, scanquery, shortcuts
from pytest_phase4.db.pool import Pool
from pytest_phase4.db.readplan import Key, Plan, Read, plan

Found = dict[Key, Any]  # a count (of a view: maybe catalog.RowsOf or Unlocked); for "outside", (count, the
#                         parent's min, max); for "loose", (distinct orphan keys, the exact orphan rows or None);
#                         or the query's psycopg.Error
Job = Callable[[psycopg.Connection[Any]], None]


class ReadAhead:
    """The read-ahead of one step. `begin` takes the snapshot; `queue` plans the reads of `wanted` keys (in check
    order; `dense`: the orphan keys the dense-key proof may answer) and queues them."""

    def __init__(self, pool: Pool, schema: str, log: list[tuple[tuple[Key, ...], float]] | None = None) -> None:
        self.pool, self.schema, self.log = pool, schema, log
        self.relations: Mapping[str, catalog.RelationFacts] = {}
        self.dense: list[Key] = []
        self.view_bases: Mapping[str, Sequence[str]] = {}
        self.plan = Plan()
        self.alone: dict[str, str] = {}  # view -> the table its plan scans alone, unfiltered (catalog.scanned_alone)
        self._derived_used: set[str] = set()  # views whose count came from their base table's scan
        self._pending: dict[Key, Future[Found]] = {}  # each key's read
        self._planned: tuple[list[str], Future[list[dict[str, Any] | None]]] | None = None  # views' plans
        self._jobs: list[Future[None]] = []
        self._open = False
        self._closing = False  # a QueryCanceled is then ours, not a timeout

    def begin(self, view_bases: Mapping[str, Sequence[str]]) -> bool:
        """Take the snapshot; False if the server would not share one (the caller then reads each value when
        asked). `view_bases`: each view with the base tables it is compared with."""
        self.view_bases = view_bases
        try:
            self.pool.begin()
        except Exception:  # refused (pg_export_snapshot), or no connection to be had: each value when asked
            return False
        self._open = True
        if view_bases:  # their plans decide the step's reads: ask for them while the first check starts
            views = list(view_bases)
            self._planned = (views, self.pool.submit(lambda conn: self._plans(conn, views)))
        return True

    def queue(self, conn: psycopg.Connection[Any], relations: Mapping[str, catalog.RelationFacts],
              wanted: Sequence[Key], dense: Sequence[Key]) -> None:
        """Plan the step's reads and queue them. The views' plans and the key statistics are read on `conn` (the
        catalog: no row of the step's tables)."""
        self.relations, self.dense = relations, list(dense)
        derived: dict[str, shortcuts.Derived] = {}
        views = list(dict.fromkeys(k[1] for k in wanted if k[0] == "count" and relations[k[1]].kind in
                                   catalog.VIEW_KINDS))
        for view, found in zip(views, self._view_plans(conn, views), strict=True):
            how = shortcuts.derive(self.schema, view, found, relations) if found else None
            if how is not None and not how.where and not how.joins:
                self.alone[view] = how.table
            elif how is not None:
                derived[view] = how
        keys: list[Key] = []
        for key in wanted:  # a view counted as its table: the table's count, where the view's was needed
            keys.append(("count", self.alone[key[1]]) if key[0] == "count" and key[1] in self.alone else key)
        indexed = [(k[1], k[2]) for k in keys if k[0] == "orphans" and k[2] in relations[k[1]].indexed
                   and k not in dense]
        distinct = shortcuts.distinct_keys(conn, self.schema, indexed) if indexed else {}
        self.plan = plan(relations, keys, dense, derived, distinct)
        for reads in self.plan.jobs(self.pool.size):
            self._submit(reads)

    def value(self, key: Key) -> int | catalog.RowsOf | catalog.Unlocked | None:
        """The key's value (raising its query's SQL error), or None if the caller must read it. A key nobody
        planned for (the partition a view's plan reads alone) is read now, in the same snapshot."""
        if key in self.dense:
            return self._dense(key)
        if key in self.plan.loose:
            distinct, exact = self._answer(("loose", *key[1:]))
            if exact is not None or distinct == 0:
                return int(exact or 0)
        elif key[0] == "count" and key[1] in self.alone:
            return catalog.RowsOf(self.alone[key[1]])
        elif key[0] == "count" and key[1] in self.plan.derived:
            how = self.plan.derived[key[1]]
            rows = self._answer(("viewrows", key[1]))
            if all(self.value(("orphans", how.table, c, p, pc)) == 0 for c, p, pc in how.joins):
                self._derived_used.add(key[1])
                return int(rows)
        if key not in self._pending and self._open and not self._closing:
            self._submit([Read((key,))])
        return self._answer(key) if key in self._pending else None

    def how(self, view: str) -> str:
        """How a derived view's count was read, in words, or ""."""
        how = self.plan.derived.get(view)
        if how is None or view not in self._derived_used:
            return ""
        joins = ", ".join(f"{c} -> {p}.{pc}" for c, p, pc in how.joins)
        return (f"counted in one scan of {how.table}: its plan reads {how.table}" +
                (f" WHERE {how.where}" if how.where else "") +
                (f", joined on unique keys without orphans ({joins})" if joins else ""))

    def quiesce(self) -> None:
        wait(self._all_jobs())

    def _all_jobs(self) -> list[Future[Any]]:
        return [*self._jobs, *([self._planned[1]] if self._planned else [])]

    def close(self) -> None:
        """Drop what has not started, cancel what runs, wait, and end the snapshot (its locks go with it)."""
        self._closing = True
        for future in self._pending.values():
            future.cancel()  # a read not started yet never will be
        running = [f for f in self._all_jobs() if not f.cancel()]
        while any(not f.done() for f in running):
            self.pool.interrupt()  # again until they end: a job may have been connecting, or between statements
            wait(running, timeout=0.1)
        self.quiesce()
        if self._open:
            self._open = False
            self.pool.end()

    # -- answers -----------------------------------------------------------------------------------------
    def _answer(self, key: Key) -> Any:
        value = self._pending[key].result()[key]  # raises the read's error, or CancelledError once closed
        if isinstance(value, psycopg.Error):
            raise value
        return value

    def _dense(self, key: Key) -> int | None:
        """Orphans over dense keys, from values of the same snapshot; None when the parent's keys have gaps (the
        caller then runs catalog.count_orphans, which needs the anti-join, in a snapshot of its own)."""
        outside, low, high = self._answer(("outside", *key[1:]))
        return int(outside) if catalog.dense(self._answer(("count", key[3])), low, high) else None

    def _view_plans(self, conn: psycopg.Connection[Any], views: Sequence[str]) -> list[dict[str, Any] | None]:
        """The views' count plans: asked for on the pool when the step began, else on conn now."""
        found: dict[str, dict[str, Any] | None] = {}
        if self._planned is not None:
            try:
                found = dict(zip(self._planned[0], self._planned[1].result(), strict=True))
            except Exception:  # the pool could not: ask here
                found = {}
        missing = [v for v in views if v not in found]
        found.update(zip(missing, self._plans(conn, missing), strict=True))
        return [found[v] for v in views]

    def _plans(self, conn: psycopg.Connection[Any], views: Sequence[str]) -> list[dict[str, Any] | None]:
        """The server's plan for count(*) of each view, in one round trip; None for one it will not plan (e.g.
        no right to read it: its own count then fails its check with the error)."""
        if not views:
            return []
        try:
            with conn.transaction(), conn.pipeline():
                cursors = [conn.execute(catalog.count_plan_query(self.schema, v)) for v in views]
            return [dict(row[0][0]["Plan"]) if (row := c.fetchone()) else None for c in cursors]
        except psycopg.Error:
            found: list[dict[str, Any] | None] = []
            for view in views:
                try:
                    with conn.transaction():
                        found.append(catalog._count_plan(conn, self.schema, view))
                except psycopg.Error:
                    found.append(None)
            return found

    # -- jobs --------------------------------------------------------------------------------------------
    def _submit(self, reads: Sequence[Read]) -> None:
        """One job on the pool for the reads, each with its own future: a value is there as soon as its read is
        done, not when the job's last read is."""
        futures: list[Future[Found]] = [Future() for _ in reads]
        for read, future in zip(reads, futures, strict=True):
            for key in read.keys:
                self._pending[key] = future
        self._jobs.append(self.pool.submit(self._job(reads, futures)))

    def _job(self, reads: Sequence[Read], futures: Sequence[Future[Found]]) -> Job:
        """Run the reads: the one-value counts together in one statement first (one round trip), then the others
        one after the other, each in a savepoint; reads that fail together are run again one by one, value by
        value. A cancel from close() ends it all: the reads not done get its error."""
        def job(conn: psycopg.Connection[Any]) -> None:
            try:
                pairs = [(r, f) for r, f in zip(reads, futures, strict=True) if f.set_running_or_notify_cancel()]
                simple = [(r, f) for r, f in pairs if self._simple(r)]
                if len(simple) > 1:
                    started = time.perf_counter()
                    found = self._together(conn, [r.keys[0] for r, _ in simple])
                    for read, future in simple:
                        if found is not None:
                            future.set_result({read.keys[0]: found[read.keys[0]]})
                    if found is not None:
                        pairs = [p for p in pairs if p not in simple]
                        if self.log is not None:
                            self.log.append((tuple(r.keys[0] for r, _ in simple), time.perf_counter() - started))
                for read, future in pairs:
                    started = time.perf_counter()
                    future.set_result(self._found(conn, read))
                    if self.log is not None:
                        self.log.append((read.keys, time.perf_counter() - started))
            except BaseException as exc:
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
                raise
        return job

    def _simple(self, read: Read) -> bool:
        """A read of one count by one plain statement (a table's, NULLs, an anti-join, keys outside bounds)."""
        key = read.keys[0]
        return not read.scan and key[0] in ("count", "nulls", "where", "orphans", "outside") and not (
            key[0] == "count" and self.relations.get(key[1]) and self.relations[key[1]].kind in catalog.VIEW_KINDS
        ) and not (key[0] == "orphans" and scanquery.settings(self.relations, *key[1:]))  # its own settings

    def _together(self, conn: psycopg.Connection[Any], keys: Sequence[Key]) -> Found | None:
        """One-value reads in two statements: the parents' bounds, then every count as a scalar subquery; None
        when that fails (each is then read alone, with its own error)."""
        try:
            with conn.transaction():
                bounds = catalog.key_bounds(conn, self.schema,
                                            list(dict.fromkeys((k[3], k[4]) for k in keys if k[0] == "outside")))
                queries = [catalog.count_query(self.schema, k[1], catalog.outside(k[2], *bounds[(k[3], k[4])]))
                           if k[0] == "outside" else self._count_query(k) if k[0] != "orphans" else
                           catalog.orphans_query(self.schema, k[1], k[2], k[3], k[4], sql.SQL("count(*)"))
                           for k in keys]
                counts = catalog.count_each(conn, queries)
        except psycopg.Error:
            if self._closing:
                raise
            return None
        return {k: (n, *bounds[(k[3], k[4])]) if k[0] == "outside" else n for k, n in zip(keys, counts, strict=True)}

    def _found(self, conn: psycopg.Connection[Any], read: Read) -> Found:
        found: Found = {}
        try:
            with conn.transaction():
                return self._scan(conn, read.keys) if read.scan else self._one(conn, read.keys[0])
        except psycopg.Error as exc:
            if self._closing:
                raise
            if len(read.keys) == 1:
                return {read.keys[0]: exc}
        for key in read.keys:
            try:
                with conn.transaction():
                    found.update(self._one(conn, key))
            except psycopg.Error as exc:
                if self._closing:
                    raise
                found[key] = exc
        return found

    def _one(self, conn: psycopg.Connection[Any], key: Key) -> Found:
        """One value by its own statement(s)."""
        what, table, *rest = key
        s = self.schema
        if what == "count" and self.relations.get(table) and self.relations[table].kind in catalog.VIEW_KINDS:
            return {key: catalog.count_view(conn, s, table)}
        if what in ("count", "nulls", "where", "viewrows"):
            return {key: catalog.count(conn, self._count_query(key))}
        if what == "outside":
            low, high = catalog.key_bounds(conn, s, [(rest[1], rest[2])])[(rest[1], rest[2])]
            return {key: (catalog.count_where(conn, s, table, catalog.outside(rest[0], low, high)), low, high)}
        anti = catalog.orphans_query(s, table, rest[0], rest[1], rest[2], sql.SQL("count(*)"))
        if what == "loose":
            query = shortcuts.loose_orphans(s, table, *rest)
            explained = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) {}").format(query)).fetchone()
            if explained and shortcuts.walks_index(explained[0][0]["Plan"], table):
                return {key: (catalog.count(conn, query), None)}
            return {key: (None, catalog.count(conn, anti))}
        row = _with_settings(conn, scanquery.settings(self.relations, table, *rest), anti)
        return {key: int(row[0]) if row else 0}

    def _count_query(self, key: Key) -> sql.Composed:
        what, table, *rest = key
        if what == "nulls":
            return catalog.count_query(self.schema, table, catalog.is_null(rest[0]))
        if what == "where":
            return catalog.count_query(self.schema, table, catalog.condition(rest[0]))
        if what == "viewrows":
            how = self.plan.derived[table]
            return catalog.count_query(self.schema, how.table, how.condition())
        return catalog.count_query(self.schema, table)

    def _scan(self, conn: psycopg.Connection[Any], keys: tuple[Key, ...]) -> Found:
        """A table's count and, from the same scan, its other values (see readplan)."""
        s, table = self.schema, keys[0][1]
        bounds = catalog.key_bounds(conn, s, list(dict.fromkeys((k[3], k[4]) for k in keys if k[0] == "outside")))

        def condition(key: Key) -> sql.Composed | None:
            what, _, *rest = key
            if what == "outside":
                return catalog.outside(rest[0], *bounds[(rest[1], rest[2])])
            if what == "viewrows":
                return self.plan.derived[key[1]].condition()
            return catalog.is_null(rest[0]) if what == "nulls" else catalog.condition(rest[0])

        filtered = list(keys[1:])
        orphans = [(k[2], k[3], k[4]) if k[0] == "orphans" else None for k in filtered]
        query = scanquery.scan_query(s, table, [None if k[0] == "orphans" else condition(k) for k in filtered],
                                     orphans)
        settings = scanquery.hash_memory(self.relations, [o[1] for o in orphans if o is not None])
        row = _with_settings(conn, settings, query)
        counts = [int(v) for v in row] if row else [0] * len(keys)
        found: Found = dict(zip((keys[0], *filtered), counts, strict=True))
        return {k: (v, *bounds[(k[3], k[4])]) if k[0] == "outside" else v for k, v in found.items()}


def _with_settings(conn: psycopg.Connection[Any], settings: Sequence[sql.Composed],
                   query: sql.Composed) -> tuple[Any, ...] | None:
    """The query's one row, read with planner settings local to it: set in a savepoint rolled back after the
    query (a read-only savepoint loses nothing), since a SET LOCAL outlives a savepoint that is released."""
    if not settings:
        return conn.execute(query).fetchone()
    with conn.transaction(force_rollback=True):
        for setting in settings:
            conn.execute(setting)
        return conn.execute(query).fetchone()
