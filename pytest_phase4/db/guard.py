"""Guards around a run: one run per database (an advisory lock), and who blocks a migration that waits.

Both use one dedicated autocommit connection that lives as long as the run: the advisory lock is a session
lock, so it holds exactly while that connection does, and is released by the server if the run dies.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from pytest_phase4.errors import TargetError

# Two int4 keys: a fixed class id for pytest-phase4 ("P4" in ASCII) and 1 for "a run holds this database".
LOCK_CLASS, LOCK_RUN = 0x5034, 1

_HOLDER = """
SELECT a.pid, coalesce(a.application_name, ''), a.usename, a.client_addr::text, a.backend_start
FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.classid = %s AND l.objid = %s AND l.granted
"""

# Who blocks the session, while pg_stat_activity shows it waiting for a lock (not working, not waiting on I/O).
_BLOCKERS = """
SELECT a.pid, a.usename, coalesce(a.application_name, ''), a.state,
       extract(epoch FROM now() - coalesce(a.xact_start, a.query_start))::int, left(a.query, 200)
FROM pg_catalog.pg_stat_activity w
JOIN pg_catalog.pg_stat_activity a ON a.pid = ANY(pg_catalog.pg_blocking_pids(w.pid))
WHERE w.pid = %s AND w.wait_event_type = 'Lock'
"""


# Set by --phase4-rehearse for its child run: the server pid of the session holding the parent run's lock.
PARENT_LOCK_ENV = "PHASE4_REHEARSAL_LOCK"


def take_run_lock(conn: psycopg.Connection[Any], target: str) -> None:
    """Hold the database for this run, or refuse at once naming who holds it; never wait."""
    row = conn.execute("SELECT pg_catalog.pg_try_advisory_lock(%s, %s)", (LOCK_CLASS, LOCK_RUN)).fetchone()
    if row and row[0]:
        return
    holder = conn.execute(_HOLDER, (LOCK_CLASS, LOCK_RUN)).fetchone()
    who = (f"pid {holder[0]} (application {holder[1] or '?'}, user {holder[2]}, "
           f"from {holder[3] or 'local socket'}, started {holder[4]:%Y-%m-%d %H:%M:%S %Z})"
           if holder else "a session that just ended")
    if holder and str(holder[0]) == os.environ.get(PARENT_LOCK_ENV):
        raise TargetError(
            f"this rehearsal reached {target}, which the run that started it holds ({who}, its own run lock "
            "session): a rehearsal runs only on its scratch copy, so nothing was done here. Report this as a bug "
            "of pytest-phase4, with how the run was started (options, PYTEST_ADDOPTS, ini addopts)")
    raise TargetError(
        f"another pytest-phase4 run holds {target}: {who}. Only one run per database at a time: wait for it "
        "to finish; if it is stuck, end it (SELECT pg_terminate_backend(pid)) and rerun: its migration was "
        "rolled back and the ledger shows where to resume")


def run_lock_lost(conn: psycopg.Connection[Any] | None, pid: int) -> str | None:
    """Why the session `conn` (server pid `pid`) no longer holds the run lock, or None while it does."""
    if conn is None or conn.closed or conn.broken:
        return f"the session that held it (pid {pid}) is closed"
    try:
        row = conn.execute("SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND classid = %s"
                           " AND objid = %s AND granted AND pid = pg_catalog.pg_backend_pid()",
                           (LOCK_CLASS, LOCK_RUN)).fetchone()
    except psycopg.Error as exc:
        lines = str(exc).strip().splitlines()
        said = exc.diag.message_primary or (lines[0] if lines else type(exc).__name__)
        return f"the session that held it (pid {pid}) ended ({said})"
    if not row or not row[0]:
        return f"the session that held it (pid {pid}) released it"
    return None


@dataclass
class Blocker:
    pid: int
    user: str
    application: str
    state: str
    seconds: int
    query: str

    def __str__(self) -> str:
        return (f"pid {self.pid} (user {self.user}, application {self.application or '?'}, {self.state}, "
                f"for {self.seconds} s): {' '.join(self.query.split())}")


@dataclass
class Watch:
    """Polls, while a migration runs, which sessions block it: `waiting` now (for the heartbeat), `blockers` the
    last ones seen (for the failure after a lock timeout)."""

    conn: psycopg.Connection[Any]
    pid: int
    interval: float = 0.1
    blockers: list[Blocker] = field(default_factory=list)
    waiting: list[Blocker] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Watch:
        self._thread = threading.Thread(target=self._poll, name="phase4-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.waiting = []

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                rows = self.conn.execute(_BLOCKERS, (self.pid,)).fetchall()
            except psycopg.Error:
                return  # the watch is a diagnosis aid; a failure here must not disturb the migration
            self.waiting = [Blocker(*r) for r in rows]
            if rows:
                self.blockers = self.waiting
