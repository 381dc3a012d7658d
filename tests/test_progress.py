"""Long steps on a terminal say what runs and for how long, and a migration waiting for another session's lock
names the blocker (a real terminal: pytest in a pseudo-terminal, against real PostgreSQL)."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import psycopg
import pytest
from psycopg import sql

from helpers import Project
from pytest_phase4.db.guard import Blocker
from pytest_phase4.plugin.progress import Heartbeat, describe, migration_status

SECRET = "hunter2-in-a-query"


def test_each_long_step_says_what_runs_and_a_lock_wait_names_its_blocker(project: Callable[..., Project]) -> None:
    p = project("heartbeat")
    # One session holds the locks the example's seeding (4241), preflight check (4243) and migration (4242) wait
    # for; each is released only once that step's heartbeat line has been seen, so no step can end before.
    holder = psycopg.connect(p.dsn, autocommit=True, application_name="the-app")
    holder.execute("SELECT pg_advisory_lock(4241), pg_advisory_lock(4242), pg_advisory_lock(4243)")
    pid = holder.info.backend_pid
    release = [  # (what must appear on the terminal, the lock it releases)
        (r"phase4: still loading the plan's \[setup\] into .*dbname=scratch_\d+.*: \d+ s so far "
         r"\(running schema\.sql\)", 4241),
        (r"phase4: still running query_returns\[slow\]: \d+ s so far", 4243),
        (rf"phase4: still applying 20250101000001_wait\.sql: \d+ s so far \(waiting for a lock held by pid {pid} "
         r"\(user \w+, application the-app, idle, for \d+ s\): SELECT pg_advisory_unlock\(\$1\), '\*\*\*' AS pw\. "
         r"It goes on once the lock is released, and fails "
         rf"if the wait reaches the lock timeout \(20s\); if that session is stuck, end it: "
         rf"SELECT pg_terminate_backend\({pid}\)\)", 4242),
    ]
    try:
        output, status = _run_on_a_terminal(
            [sys.executable, "-m", "pytest", "--phase4", f"--dsn={p.dsn}", "--phase4-seed", "-p", "no:cacheprovider",
             "--phase4-lock-timeout=20s", "--color=no"], str(p.path),
            lambda text: _release(holder, release, text))
    finally:
        holder.close()
    assert not release, f"no heartbeat line for {release[0][0]!r} in:\n{output}"
    assert status == 0, output
    assert SECRET not in output
    assert "3 passed" in output
    assert p.query("SELECT count(*) FROM pytest_phase4.ledger") == [(1,)]


def _release(holder: psycopg.Connection[object], release: list[tuple[str, int]], text: str) -> None:
    while release and re.search(release[0][0], text):
        # the holder's last query, which the migration's heartbeat shows, carries the run's password
        holder.execute(sql.SQL("SELECT pg_advisory_unlock(%s), {} AS pw").format(sql.Literal(SECRET)),
                       (release.pop(0)[1],))


def _run_on_a_terminal(argv: list[str], cwd: str, seen: Callable[[str], None]) -> tuple[str, int]:
    """Run argv with a pseudo-terminal as stdin/stdout/stderr; call seen(output so far) as output arrives."""
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "200", "PGPASSWORD": SECRET}  # trust auth: a secret to hide, nothing more
    proc = subprocess.Popen(argv, cwd=cwd, stdin=follower, stdout=follower, stderr=follower, env=env,
                            close_fds=True)
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 300  # a guard against a hung run, not a measurement
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
            seen(b"".join(chunks).decode(errors="replace").replace("\r", ""))
    finally:
        if proc.poll() is None:
            proc.kill()
        status = proc.wait()
        os.close(leader)
    return b"".join(chunks).decode(errors="replace").replace("\r", ""), status


def test_heartbeat_says_what_runs_until_it_ends() -> None:
    lines: list[str] = []
    said = threading.Event()

    def write(line: str) -> None:
        lines.append(line)
        said.set()

    waiting = ["pg_dump is waiting"]
    with Heartbeat("running backup[dump]", write, first=0.01, every=0.01, status=lambda: waiting[0]) as beat:
        assert said.wait(10)
    assert re.fullmatch(r"phase4: still running backup\[dump\]: \d+ s so far \(pg_dump is waiting\)", lines[0])
    assert not beat._thread.is_alive()  # stopped with the block: nothing is written after the step ended


def test_heartbeat_survives_a_failing_status() -> None:
    lines: list[str] = []
    said = threading.Event()

    def broken() -> str:
        raise psycopg.OperationalError("the connection is gone")

    with Heartbeat("applying x.sql", lambda line: (lines.append(line), said.set()), first=0.01, status=broken):
        assert said.wait(10)
    assert re.fullmatch(r"phase4: still applying x\.sql: \d+ s so far", lines[0])


def test_long_steps_are_described_in_the_words_of_the_tool_doing_them() -> None:
    assert describe("backup[dump]") == "running backup[dump] (pg_dump --format=custom of the whole database)"
    assert describe("restore") == "running restore (pg_restore of the backup over the database)"
    assert describe("no_orphans[sales.customer_id->customers.id]") == \
        "running no_orphans[sales.customer_id->customers.id]"


@pytest.mark.parametrize(("waiting", "expected"), [
    ([], "the server is working on it, not waiting for a lock"),
    ([Blocker(4711, "dba", "psql", "idle in transaction", 42, "UPDATE   sales\n SET x = 1"),
      Blocker(4712, "app", "", "active", 3, "SELECT 1")],
     "waiting for a lock held by pid 4711 (user dba, application psql, idle in transaction, for 42 s): UPDATE sales "
     "SET x = 1; pid 4712 (user app, application ?, active, for 3 s): SELECT 1. It goes on once the lock is "
     "released, and fails if the wait reaches the lock timeout (10s); if that session is stuck, end it: "
     "SELECT pg_terminate_backend(4711)"),
])
def test_migration_status_names_who_it_waits_for(waiting: list[Blocker], expected: str) -> None:
    assert migration_status(waiting, "10s") == expected
