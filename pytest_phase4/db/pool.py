"""A few read-only connections that run independent queries side by side, optionally all in one snapshot.

Checks of one step compare numbers read by different queries (a view's rows with its base table's, a child's keys
with its parent's). `Pool.begin` makes them all read the same committed data, as pg_dump -j does: one connection
exports a REPEATABLE READ snapshot, the others import it, and every job runs in a savepoint so that one failing
query leaves the others theirs. `Pool.end` closes those transactions, and with them their locks; a migration must
not start before it.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from pytest_phase4.db import catalog

T = TypeVar("T")
_BEGIN = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"


class Pool:
    """Read-only connections for side-by-side queries.

    Intra-query parallelism: a job may use the server's parallel workers only for the cores nobody else uses when
    it starts (`parallel_workers`): measured on 2 cores, two connections each running non-parallel scans finish a
    step's queries about twice as fast as one connection with parallel workers, and parallel workers on busy
    cores only slow everything down. The server's cores are known when it runs on this machine (a Unix socket or
    a loopback address); a remote server's are not visible over SQL, and its jobs run without parallel workers."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], size: int) -> None:
        self.size = size
        self._connect = connect
        self._idle: queue.SimpleQueue[psycopg.Connection[Any]] = queue.SimpleQueue()
        self._all: list[psycopg.Connection[Any]] = []
        self._busy: set[psycopg.Connection[Any]] = set()
        self._joined: set[psycopg.Connection[Any]] = set()  # in the shared snapshot's transaction
        self._exported: str | None = None  # the id of the transaction snapshot the jobs share
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(size, thread_name_prefix="phase4-facts")
        self._cores: int | None = None  # the server's, when known
        self._per_gather = 0  # the server's own max_parallel_workers_per_gather
        self._parallel: dict[psycopg.Connection[Any], int] = {}  # each connection's setting now

    def submit(self, job: Callable[[psycopg.Connection[Any]], T]) -> Future[T]:
        return self._executor.submit(self._run, job)

    def begin(self) -> None:
        """Run every job from now until `end` in one snapshot. Call when no job runs."""
        conn = self._take()
        try:
            with self._lock:
                self._joined.add(conn)  # from BEGIN on, end() closes its transaction, whatever fails next
            conn.execute(_BEGIN)
            row = conn.execute("SELECT pg_catalog.pg_export_snapshot()").fetchone()
            with self._lock:
                self._exported = str(row[0]) if row else None
        except BaseException:
            self.end()  # e.g. the export refused: the connection goes back out of its aborted transaction
            raise
        finally:
            self._idle.put(conn)

    def adopt(self, exported: str) -> None:
        """Run every job from now until `end` in a snapshot another transaction exported (and keeps open)."""
        with self._lock:
            self._exported = exported

    def end(self) -> None:
        """Close the shared snapshot's transactions, and with them their locks. Call when no job runs."""
        with self._lock:
            joined, self._joined, self._exported = list(self._joined), set(), None
        for conn in joined:
            self._parallel.pop(conn, None)  # a SET made in the transaction ends with it: SET again next time
            try:
                conn.execute("ROLLBACK")  # read only: nothing to keep
            except psycopg.Error:
                conn.close()  # broken: _take replaces it

    def _take(self) -> psycopg.Connection[Any]:
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = None
        if conn is None or conn.closed or conn.broken:
            conn = self._connect()
            row = conn.execute("SHOW max_parallel_workers_per_gather").fetchone()
            conn.execute("SET max_parallel_workers_per_gather = 0")
            # As pg_dump: a step's snapshot sits idle between reads; the server must not end it under us.
            conn.execute("SET idle_in_transaction_session_timeout = 0")
            # Compiling a plan with LLVM costs more than these scans save (measured: 0.2-0.4 s per statement)
            conn.execute("SET jit = off")
            with self._lock:
                self._all.append(conn)
                self._parallel[conn] = 0
                self._per_gather = int(row[0]) if row else 0
                self._cores = server_cores(conn)
        return conn

    def parallel_workers(self) -> int:
        """Parallel workers a job starting now may use: the server's cores that neither the pool's busy
        connections nor this process (pytest, when the server runs on this machine) use, within the server's own
        max_parallel_workers_per_gather; 0 when its cores are unknown. Call with the lock held."""
        if self._cores is None:
            return 0
        return max(0, min(self._per_gather, self._cores - len(self._busy) - 1))

    def _run(self, job: Callable[[psycopg.Connection[Any]], T]) -> T:
        conn = self._take()
        with self._lock:
            self._busy.add(conn)
            exported = self._exported if conn not in self._joined else None
            workers = self.parallel_workers()
        try:
            if exported is not None:
                self._join(conn, exported)
            if workers != self._parallel.get(conn):  # outside the job's savepoint: a failing job keeps it
                conn.execute(sql.SQL("SET max_parallel_workers_per_gather = {}").format(sql.Literal(workers)))
                self._parallel[conn] = workers
            if conn in self._joined:
                with conn.transaction():  # a savepoint: a failing query leaves the snapshot to the others
                    return job(conn)
            return job(conn)
        finally:
            with self._lock:
                self._busy.discard(conn)
            self._idle.put(conn)

    def _join(self, conn: psycopg.Connection[Any], exported: str) -> None:
        conn.execute(_BEGIN)
        try:
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(exported)))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        with self._lock:
            self._joined.add(conn)

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


def server_cores(conn: psycopg.Connection[Any]) -> int | None:
    """The server's cores when it runs on this machine (a Unix socket, or a loopback address), else None: SQL
    does not tell a remote server's."""
    host = conn.info.host
    if not (host.startswith("/") or host in ("localhost", "127.0.0.1", "::1")):
        return None
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


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
