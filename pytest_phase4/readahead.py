"""Reading a step's data ahead on the pool: in one snapshot, each value once, the small reads together.

`Facts` knows which values a step's checks will ask for (keys, in check order). `ReadAhead` plans the queries that
answer them and queues them on the pool in one snapshot (Pool.begin), so that the server works while pytest
reports the checks in order, and every number of the step describes the same moment: a view and its base table,
a child and its parent.

- A table is counted by one scan, which also counts, for each of its keys that no index leads with, the NULL keys
  and the keys outside the parent's [min, max]. A view is counted as the table its plan scans alone, when it
  does (catalog.scanned_alone), else by its own count.
- An orphan check over dense keys (catalog.count_orphans has the proof) is answered from the parent's row count
  and the count of child keys outside the parent's [min, max] (an index range where an index leads with the
  key), read with the min and max (two index probes). Parent keys with gaps get the anti-join, in the snapshot.
  Other orphan checks get the anti-join of catalog.orphans_query.
- Reads too small to matter (an index range, a page, or under 2% of the step's pages) go first, in one job;
  the others follow in the order of the first check that needs them. Each job handed to a worker thread waits
  for the GIL while pytest runs Python, so fewer, larger jobs keep the server busy.

A value whose query fails gets that query's SQL error: a batch that fails is run again read by read, so one bad
check does not take the others' results with it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, wait
from typing import Any

import psycopg
from psycopg import sql

from pytest_phase4 import catalog
from pytest_phase4.pool import Pool

Key = tuple[str, ...]  # ("count", relation), ("where", table, the plan's condition), ("nulls", table, column),
#                        ("orphans" | "outside", table, column, parent, parent column)
Found = dict[Key, Any]  # a count (of a view: maybe catalog.RowsOf or Unlocked); for "outside", (count, the
#                         parent's min, max); or the query's psycopg.Error
Job = Callable[[psycopg.Connection[Any]], Found]
SMALL = 50  # a read of at most one page, or under 1/SMALL of the step's pages, is small


class ReadAhead:
    """The read-ahead of one step. `begin` takes the snapshot and queues view counts (`view_bases`: each view
    with the base tables it is compared with) on all connections but one: they may be the longest reads, are
    needed by the last checks, and need nothing from the catalog. `queue` plans and queues the rest: `wanted`
    keys in check order, `dense` the orphan keys the dense-key proof may answer."""

    def __init__(self, pool: Pool, schema: str) -> None:
        self.pool, self.schema = pool, schema
        self.relations: Mapping[str, catalog.RelationFacts] = {}
        self.wanted: list[Key] = []
        self.dense: list[Key] = []
        self.view_bases: Mapping[str, Sequence[str]] = {}
        self._pending: dict[Key, Future[Found]] = {}
        self._open = False
        self._closing = False  # a QueryCanceled is then ours, not a timeout

    def begin(self, view_bases: Mapping[str, Sequence[str]]) -> bool:
        """Take the snapshot and queue the first view counts; False if the server would not share a snapshot (the
        caller then reads each value when asked)."""
        self.view_bases = view_bases
        try:
            self.pool.begin()
        except Exception:  # refused (pg_export_snapshot), or no connection to be had: each value when asked
            return False
        self._open = True
        for view in list(view_bases)[:self.pool.size - 1]:  # one connection stays free for what the first checks need
            self._submit([("count", view)], self._read((("count", view),)))
        return True

    def queue(self, relations: Mapping[str, catalog.RelationFacts], wanted: Sequence[Key],
              dense: Sequence[Key]) -> None:
        """Plan the step's other reads and queue them."""
        self.relations, self.wanted, self.dense = relations, list(wanted), list(dense)
        planned = self._plan()
        cost = {keys: self._cost(keys[0]) for keys in planned}
        total = sum(cost.values())
        reads = [r for r in planned if r[0] not in self._pending]
        small = [keys for keys in reads if (cost[keys] <= 1 or cost[keys] * SMALL < total)
                 and keys[0][1] not in self.view_bases]  # a view's cost is its plan's, unknown before it runs
        if small:
            self._submit([k for keys in small for k in keys], self._batch(small))
        first = self._first_needed()
        for keys in sorted((r for r in reads if r not in small),
                           key=lambda r: min(first.get(k, len(self.wanted)) for k in r)):
            self._submit(keys, self._read(keys))

    def value(self, key: Key) -> int | catalog.RowsOf | catalog.Unlocked | None:
        """The key's value (raising its query's SQL error), or None if the caller must read it. A key nobody
        planned for (the partition a view's plan reads alone) is read now, in the same snapshot."""
        if key in self.dense:
            return self._derived(key)
        if key not in self._pending and self._open and not self._closing:
            self._submit([key], self._read((key,)))
        return self._answer(key) if key in self._pending else None

    def quiesce(self) -> None:
        wait(set(self._pending.values()))

    def close(self) -> None:
        """Drop what has not started, cancel what runs, wait, and end the snapshot (its locks go with it)."""
        self._closing = True
        running = [f for f in set(self._pending.values()) if not f.cancel()]
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

    def _derived(self, key: Key) -> int | None:
        """Orphans over dense keys, from values of the same snapshot; None when the parent's keys have gaps (the
        caller then runs catalog.count_orphans, which needs the anti-join, in a snapshot of its own)."""
        outside, low, high = self._answer(("outside", *key[1:]))
        return int(outside) if catalog.dense(self._answer(("count", key[3])), low, high) else None

    # -- planning ----------------------------------------------------------------------------------------
    def _plan(self) -> list[tuple[Key, ...]]:
        """The reads, each the keys one query answers: a table's count with the NULL and outside counts of its
        dense keys that no index leads with; an index range; a view count; the anti-join of another relation."""
        scans: dict[str, list[Key]] = {}
        reads: list[tuple[Key, ...]] = []
        for key in self.dense:
            if key[2] in self.relations[key[1]].indexed:
                reads.append((("outside", *key[1:]),))
            else:
                scans.setdefault(key[1], []).append(key)
        counted = [k[1] for k in self.wanted if k[0] == "count"] + [k[3] for k in self.dense] + list(scans)
        for table in dict.fromkeys(counted):
            keys = scans.get(table, [])
            nulls = [n for k in keys if (n := ("nulls", *k[1:3])) in self.wanted]  # none in a NOT NULL column
            reads.append((("count", table), *nulls, *(("outside", *k[1:]) for k in keys)))
        covered = {k for keys in reads for k in keys}
        return reads + [(k,) for k in self.wanted if k not in covered and k not in self.dense]

    def _first_needed(self) -> dict[Key, int]:
        """For each key, the position of the first check that needs it (pytest reports the checks in order)."""
        first: dict[Key, int] = {}
        for i, key in enumerate(self.wanted):
            for needed in (key, ("count", key[3]), ("outside", *key[1:])) if key in self.dense else (key,):
                first.setdefault(needed, i)
        return first

    def _cost(self, key: Key) -> int:
        """What a read reads, in pages as far as the catalog knows: an index range 1; a scan the table's pages
        (a view: its base tables'); an anti-join both tables'."""
        rel = self.relations.get(key[1])
        if rel is None or (key[0] in ("outside", "nulls") and key[2] in rel.indexed):
            return 1
        if rel.kind in catalog.VIEW_KINDS:
            return sum(self._cost(("count", base)) for base in self.view_bases.get(key[1], ()))
        if key[0] == "orphans":
            return rel.pages + self._cost(("count", key[3]))
        return rel.pages

    # -- queries -----------------------------------------------------------------------------------------
    def _read(self, keys: tuple[Key, ...]) -> Job:
        """The job answering `keys` (see _plan): one statement after the parents' min and max if it needs them.
        If a read of several keys fails, each key is read alone, so that a row count does not get the error of a
        parent's bounds (e.g. no SELECT on the parent)."""
        one = self._statement(keys)
        if len(keys) == 1:
            return one
        return lambda conn: self._split(conn, [(keys, one)], [((k,), self._statement((k,))) for k in keys])

    def _statement(self, keys: tuple[Key, ...]) -> Job:
        first, table = keys[0], keys[0][1]  # a read of several keys is a table's count and FILTERs
        parents = list(dict.fromkeys((k[3], k[4]) for k in keys if k[0] == "outside"))

        def job(conn: psycopg.Connection[Any]) -> Found:
            bounds = catalog.key_bounds(conn, self.schema, parents)
            if first[0] == "count" and first[1] in self.view_bases:
                return {first: catalog.count_view(conn, self.schema, table)}
            if first[0] == "count":
                conditions = [catalog.is_null(k[2]) if k[0] == "nulls" else catalog.outside(k[2], *bounds[(k[3], k[4])])
                              for k in keys[1:]]
                counts = catalog.count_filtered(conn, self.schema, table, conditions)
            else:
                counts = [catalog.count(conn, self._query(first, bounds))]
            return {k: (n, *bounds[(k[3], k[4])]) if k[0] == "outside" else n
                    for k, n in zip(keys, counts, strict=True)}
        return job

    def _split(self, conn: psycopg.Connection[Any], together: Sequence[tuple[tuple[Key, ...], Job]],
               apart: Sequence[tuple[tuple[Key, ...], Job]]) -> Found:
        """Run the jobs `together` (each in a savepoint); if one fails, run `apart` instead, each with its own
        result or error. A cancel from close() ends it all."""
        found: Found = {}
        try:
            for _, job in together:
                with conn.transaction():
                    found.update(job(conn))
            return found
        except psycopg.Error:
            if self._closing:
                raise
        found = {}
        for keys, job in apart:
            try:
                with conn.transaction():
                    found.update(job(conn))
            except psycopg.Error as exc:
                if self._closing:
                    raise
                found.update(dict.fromkeys(keys, exc))
        return found

    def _batch(self, reads: Sequence[tuple[Key, ...]]) -> Job:
        """Small reads in few statements: the parents' min and max and every one-value count (a scalar subquery
        each) in two, then each table scan with FILTERs; if one fails, read by read (and key by key)."""
        single = [read[0] for read in reads if len(read) == 1]
        scans = [read for read in reads if len(read) > 1]
        parents = list(dict.fromkeys((k[3], k[4]) for k in single if k[0] == "outside"))

        def counts(conn: psycopg.Connection[Any]) -> Found:
            bounds = catalog.key_bounds(conn, self.schema, parents)
            values = catalog.count_each(conn, [self._query(k, bounds) for k in single])
            return {k: (n, *bounds[(k[3], k[4])]) if k[0] == "outside" else n
                    for k, n in zip(single, values, strict=True)}

        apart = [((k,), self._statement((k,))) for read in reads for k in read]
        return lambda conn: self._split(conn, [(tuple(single), counts), *((r, self._statement(r)) for r in scans)],
                                        apart)

    def _query(self, key: Key, bounds: Mapping[tuple[str, str], tuple[Any, Any]]) -> sql.Composed:
        what, table, *rest = key
        if what == "count":
            return catalog.count_query(self.schema, table)
        if what == "nulls":
            return catalog.count_query(self.schema, table, catalog.is_null(rest[0]))
        if what == "where":
            return catalog.count_query(self.schema, table, catalog.condition(rest[0]))
        if what == "outside":
            return catalog.count_query(self.schema, table, catalog.outside(rest[0], *bounds[(rest[1], rest[2])]))
        return catalog.orphans_query(self.schema, table, rest[0], rest[1], rest[2], sql.SQL("count(*)"))

    def _submit(self, keys: Sequence[Key], job: Job) -> None:
        future = self.pool.submit(job)
        for key in keys:
            self._pending[key] = future
