"""What one step's checks know about the database, each fact read once, the heavy ones read ahead.

A step's checks ask the same questions many times: does this relation exist, which columns has it, how many rows
has `sales`. `Facts` answers every catalog question of a step from one catalog query and counts each relation
once per step, whichever checks ask. With a `Pool` of read-only connections it also reads ahead: when the first
check of a step asks for data, every count and orphan query the step's selected checks will need is queued on
the pool, so the server works on several while pytest runs and reports the checks in order. Each check still
runs its own query (the per-relation anti-join of catalog.orphans_query, count(*) of one relation) and gets its
own result or its own SQL error; nothing is inferred from another check.

A `Facts` belongs to one step and must be thrown away (`close`) when a migration runs: `Phase4Run` does both.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg

from pytest_phase4 import catalog
from pytest_phase4.kinds import Column, Relation
from pytest_phase4.plan import CheckSpec

# One row per relation of the schema: everything the catalog checks ask about it.
_CATALOG = """
SELECT c.relname::text, c.relkind::text, c.relrowsecurity,
       coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_catalog.pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '{}'),
       coalesce((SELECT array_agg(a.atttypid::regtype::text ORDER BY a.attnum) FROM pg_catalog.pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '{}'),
       coalesce((SELECT array_agg(p.polname::text ORDER BY p.polname) FROM pg_catalog.pg_policy p
                 WHERE p.polrelid = c.oid), '{}'),
       coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_catalog.pg_index i
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey)
                 WHERE i.indrelid = c.oid AND i.indisprimary), '{}'),
       -- NOT NULL columns that are by themselves the key of a valid unique index: a distinct value per row
       coalesce((SELECT array_agg(a.attname::text) FROM pg_catalog.pg_index i
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
                 WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid AND i.indnkeyatts = 1
                   AND i.indpred IS NULL AND a.attnotnull), '{}'),
       -- columns an index leads with: a range of their values is found without reading every row
       coalesce((SELECT array_agg(a.attname::text) FROM pg_catalog.pg_index i
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
                 WHERE i.indrelid = c.oid AND i.indisvalid AND i.indpred IS NULL), '{}'),
       c.relpages
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s
ORDER BY c.relname
"""


@dataclass(frozen=True)
class RelationFacts:
    kind: str
    rls: bool
    columns: tuple[str, ...]
    types: tuple[str, ...]  # of the columns, as format_type names ("integer", "text", ...)
    policies: tuple[str, ...]
    primary_key: tuple[str, ...]
    unique: frozenset[str]  # NOT NULL columns that are by themselves the key of a valid unique index
    indexed: frozenset[str]  # columns a valid index leads with
    pages: int  # size as last estimated by VACUUM/ANALYZE: only to schedule the read-ahead


@dataclass(frozen=True)
class OrphanCount:
    orphans: int
    nulls: int

T = TypeVar("T")
Key = tuple[str, ...]  # one value of the step: ("count", relation), ("nulls", table, column), ("orphans", ...)
Read = tuple[Key, ...]  # the key one query is for, then those it answers on the way


class Pool:
    """A few read-only connections that run independent queries side by side.

    Intra-query parallelism is turned off on them: measured on 2 cores, two connections each running
    non-parallel scans finish a step's queries about twice as fast as one connection with parallel workers."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], size: int) -> None:
        self.size = size
        self._connect = connect
        self._idle: queue.SimpleQueue[psycopg.Connection[Any]] = queue.SimpleQueue()
        self._all: list[psycopg.Connection[Any]] = []
        self._busy: set[psycopg.Connection[Any]] = set()
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(size, thread_name_prefix="phase4-facts")

    def submit(self, job: Callable[[psycopg.Connection[Any]], T]) -> Future[T]:
        return self._executor.submit(self._run, job)

    def _run(self, job: Callable[[psycopg.Connection[Any]], T]) -> T:
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = self._connect()
            conn.execute("SET max_parallel_workers_per_gather = 0")
            with self._lock:
                self._all.append(conn)
        with self._lock:
            self._busy.add(conn)
        try:
            return job(conn)
        finally:
            with self._lock:
                self._busy.discard(conn)
            self._idle.put(conn)

    def interrupt(self) -> None:
        """Ask the server to cancel what the pool's connections run now (their futures fail with QueryCanceled)."""
        with self._lock:
            busy = list(self._busy)
        for conn in busy:
            conn.cancel_safe()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.interrupt()
        self._executor.shutdown(wait=True)
        for conn in self._all:
            conn.close()


def run_all(conn: psycopg.Connection[Any], pool: Pool | None, jobs: Iterable[Callable[[psycopg.Connection[Any]], T]],
            sizes: Sequence[float] | None = None) -> list[T]:
    """Run independent read-only queries side by side on the pool (one by one on conn without one), results in
    job order. With `sizes` (e.g. each table's pages) the largest start first, so no connection is left alone
    with a big table at the end. Every job has ended when this returns or raises (the first error, in job
    order): nothing of ours still reads when the caller goes on to migrate."""
    jobs = list(jobs)
    if pool is None:
        return [job(conn) for job in jobs]
    order = sorted(range(len(jobs)), key=lambda i: -sizes[i]) if sizes else range(len(jobs))
    submitted = {i: pool.submit(jobs[i]) for i in order}
    futures = [submitted[i] for i in range(len(jobs))]
    wait(futures)
    results = []
    for future, job in zip(futures, jobs, strict=True):
        try:
            results.append(future.result())
        except psycopg.Error:
            raise
        except Exception:  # the pool could not help (e.g. no connection left on the server): ask here
            results.append(job(conn))
    return results


def count_all(conn: psycopg.Connection[Any], pool: Pool | None, schema: str) -> dict[str, int]:
    """Exact row count of every base table in the schema, as catalog.count_all_tables, side by side on a pool."""
    tables = catalog.tables(conn, schema)
    jobs = [functools.partial(catalog.count_rows, schema=schema, relation=t) for t in tables]
    return dict(zip(tables, run_all(conn, pool, jobs, pages(conn, schema, tables)), strict=True))


def pages(conn: psycopg.Connection[Any], schema: str, tables: Sequence[str]) -> list[float]:
    """Each table's size in pages as the catalog last estimated it (VACUUM, ANALYZE): only to schedule work."""
    found = dict(conn.execute(
        "SELECT c.relname::text, c.relpages FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n"
        " ON n.oid = c.relnamespace WHERE n.nspname = %s", (schema,)).fetchall())
    return [float(found.get(t, 0)) for t in tables]


@dataclass
class Facts:
    """The catalog and row counts as one step sees them. `specs` are the step's checks that will run: what they
    need is read ahead on `pool` when there is one."""

    conn: psycopg.Connection[Any]
    schema: str
    specs: tuple[CheckSpec, ...] = ()
    pool: Pool | None = None
    queries: int = 0  # statements sent, for tests and benchmarks
    _catalog: dict[str, RelationFacts] | None = None
    _values: dict[Key, int] = field(default_factory=dict)
    _read_of: dict[Key, Read] | None = None
    _pending: dict[Read, Future[dict[Key, int]]] = field(default_factory=dict)

    # -- catalog ---------------------------------------------------------------------------------------
    @property
    def catalog(self) -> dict[str, RelationFacts]:
        if self._catalog is None:
            self.queries += 1
            rows = self.conn.execute(_CATALOG, (self.schema,)).fetchall()
            self._catalog = {r[0]: RelationFacts(r[1], bool(r[2]), tuple(r[3]), tuple(r[4]), tuple(r[5]),
                                                 tuple(r[6]), frozenset(r[7]), frozenset(r[8]), int(r[9]))
                             for r in rows}
        return self._catalog

    def relkind(self, name: str) -> str | None:
        rel = self.catalog.get(name)
        return rel.kind if rel else None

    def _of_kinds(self, kinds: Iterable[str]) -> list[str]:
        wanted = set(kinds)
        return [name for name, rel in self.catalog.items() if rel.kind in wanted]  # catalog order: by name

    def tables(self) -> list[str]:
        return self._of_kinds(catalog.TABLE_KINDS)

    def views(self) -> list[str]:
        return self._of_kinds(catalog.VIEW_KINDS)

    def indexes(self) -> list[str]:
        return self._of_kinds(("i", "I"))

    def columns(self, name: str) -> list[str]:
        rel = self.catalog.get(name)
        return list(rel.columns) if rel else []

    def policies(self, table: str) -> list[str]:
        rel = self.catalog.get(table)
        return list(rel.policies) if rel else []

    def rls_enabled(self, table: str) -> bool:
        rel = self.catalog.get(table)
        return bool(rel and rel.rls)

    def primary_key(self, table: str) -> list[str]:
        rel = self.catalog.get(table)
        return list(rel.primary_key) if rel else []

    def column_type(self, col: Column) -> str | None:
        rel = self.catalog.get(col.table)
        return rel.types[rel.columns.index(col.column)] if rel and col.column in rel.columns else None

    def dense_keys(self, rel: Relation) -> bool:
        """Whether catalog.scan_orphans may try its dense-key proof: integer keys on both sides, and a NOT NULL
        parent key that is by itself the key of a unique index (so its row count is a count of distinct keys)."""
        parent = self.catalog.get(rel.parent.table)
        return (parent is not None and rel.parent.column in parent.unique
                and self.column_type(rel.parent) in catalog.INTEGER_TYPES
                and self.column_type(rel.child) in catalog.INTEGER_TYPES)

    # -- data ------------------------------------------------------------------------------------------
    def count(self, relation: str) -> int:
        """Exact row count of a table or view, read once per step."""
        return self._value(("count", relation))

    def orphans(self, rel: Relation) -> OrphanCount:
        """Non-NULL child keys without a parent (catalog.scan_orphans), and NULL child keys, for one relation."""
        c, p = rel.child, rel.parent
        return OrphanCount(self._value(("orphans", c.table, c.column, p.table, p.column)),
                           self._value(("nulls", c.table, c.column)))

    def quiesce(self) -> None:
        """Wait until no read-ahead query runs, e.g. before timing a query."""
        wait(list(self._pending.values()))

    def close(self) -> None:
        """Drop what has not started and cancel what runs (answers nobody will ask for once the step is over,
        e.g. after pytest -x stopped it), then wait: a migration must not wait on our locks."""
        running = [f for f in self._pending.values() if not f.cancel()]
        if self.pool is not None and any(not f.done() for f in running):
            self.pool.interrupt()
        self.quiesce()

    def _value(self, key: Key) -> int:
        reads = self._reads()
        if self.pool is not None and not self._pending:  # the first data question: queue the step's reads
            for read in sorted(dict.fromkeys(reads.values()), key=self._pages, reverse=True):  # longest first
                self._pending[read] = self.pool.submit(functools.partial(self._read, read))
        if key in self._values:
            return self._values[key]
        read = reads.get(key, (key,))
        future = self._pending.get(read)
        try:
            found = self._read(read, self.conn) if future is None or future.cancelled() else future.result()
        except psycopg.Error:
            if key == read[0]:
                raise  # the query's own SQL error, for the check that asked
            found = {}  # the read it was answered on the way by failed: ask for it alone
        except Exception:  # the pool could not help (e.g. no connection left on the server): ask here
            found = self._read(read, self.conn)
        self._values.update(found)
        if key not in self._values:
            self._values.update(self._read((key,), self.conn))
        return self._values[key]

    def _wanted(self) -> list[Key]:
        """The data the step's checks will ask for, for relations that exist (a missing one fails its check
        before any query)."""
        keys: list[Key] = []
        for spec in self.specs:
            if spec.kind == "no_orphans":
                c, p = spec.element.child, spec.element.parent
                if self.relkind(c.table) in ("r", "p") and self.relkind(p.table) in ("r", "p"):
                    keys += [("orphans", c.table, c.column, p.table, p.column), ("nulls", c.table, c.column)]
            elif spec.kind == "view_rowcount_matches":
                view, base = spec.element
                if self.relkind(view) in ("v", "m") and self.relkind(base) in ("r", "p"):
                    keys += [("count", view), ("count", base)]
            elif spec.kind == "row_counts_unchanged" and self.relkind(spec.element) in ("r", "p"):
                keys.append(("count", spec.element))
        return list(dict.fromkeys(keys))

    def _reads(self) -> dict[Key, Read]:
        """Which read answers each wanted key. A read is the key it is for, then the keys it answers on the way:
        an orphan query over dense keys counts the parent's rows, and over a key no index leads with it scans
        the whole child, so it counts the child's rows and NULL keys in the same scan."""
        if self._read_of is None:
            wanted = self._wanted()
            self._read_of = {}
            for key in wanted:
                if key[0] != "orphans" or key in self._read_of:
                    continue
                rel = _relation(key)
                also: list[Key] = []
                if self.dense_keys(rel):
                    also.append(("count", rel.parent.table))
                    if rel.child.column not in self.catalog[rel.child.table].indexed:
                        also += [("count", rel.child.table), ("nulls", rel.child.table, rel.child.column)]
                read = (key, *(k for k in dict.fromkeys(also) if k in wanted and k not in self._read_of))
                self._read_of.update(dict.fromkeys(read, read))
            self._read_of.update({k: (k,) for k in wanted if k not in self._read_of})
        return self._read_of

    def _pages(self, read: Read) -> int:
        """The size of what a read reads, as far as the catalog knows: only to schedule it."""
        key = read[0]
        tables = [key[1], key[3]] if key[0] == "orphans" else [key[1]]
        found = self.catalog.get(key[1])
        if key[0] == "count" and found and found.kind in catalog.VIEW_KINDS:  # a view: the size of its base
            tables = [b for s in self.specs if s.kind == "view_rowcount_matches" for v, b in [s.element] if v == key[1]]
        return sum(rel.pages for t in tables if (rel := self.catalog.get(t)))

    def _read(self, read: Read, conn: psycopg.Connection[Any]) -> dict[Key, int]:
        self.queries += 1
        key = read[0]
        what, table, *rest = key
        if what == "count":
            return {key: catalog.count_rows(conn, self.schema, table)}
        if what == "nulls":
            return {key: catalog.count_nulls(conn, self.schema, table, rest[0])}
        rel = _relation(key)
        nulls = ("nulls", table, rest[0])
        found = catalog.scan_orphans(conn, self.schema, table, rest[0], rest[1], rest[2],
                                     dense_keys=self.dense_keys(rel), child_counts=nulls in read)
        values = {("count", rest[1]): found.parent_rows, ("count", table): found.child_rows, nulls: found.child_nulls}
        return {key: found.orphans, **{k: v for k, v in values.items() if k in read and v is not None}}


def _relation(key: Key) -> Relation:
    return Relation(Column(key[1], key[2]), Column(key[3], key[4]))
