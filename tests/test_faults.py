"""The fault catalogue: whatever strikes mid-run, the database ends at a step boundary, the ledger tells the
truth, kept data equals the snapshot, a report is written, and a rerun completes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from helpers import Project, outcomes_of
from pytest_phase4.db.embedded import EmbeddedPostgres, start_embedded

M1 = "checks/phase4.toml::20250101000001_create_views"


def fingerprint(dsn: str) -> dict[str, Any]:
    """Counts and content of every kept table, and the public schema's shape, computed outside the plugin."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        content = sql.SQL("SELECT count(*), md5(coalesce(string_agg(x::text, ',' ORDER BY x::text), '')) FROM {} x")
        kept = ("customers", "sales", "tickets")
        data = {t: conn.execute(content.format(sql.Identifier(t))).fetchone() for t in kept}
        shape = conn.execute(
            "SELECT c.relname, c.relkind::text, a.attname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
            " WHERE n.nspname = 'public' ORDER BY 1, 3").fetchall()
        exists = conn.execute("SELECT to_regclass('pytest_phase4.ledger') IS NOT NULL").fetchone()
        ledger = [r[0] for r in conn.execute("SELECT file FROM pytest_phase4.ledger ORDER BY file")] if exists and \
            exists[0] else []
    return {"data": data, "shape": shape, "ledger": ledger}


def set_sleep(dsn: str, seconds: int | str | None, setting: str = "faults.sleep") -> None:
    """Set (None: reset) one of the faults example's settings for the database: faults.sleep or faults.gate."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        db = sql.Identifier(conn.info.dbname)
        name = sql.Identifier(*setting.split("."))
        if seconds is None:
            conn.execute(sql.SQL("ALTER DATABASE {} RESET {}").format(db, name))
        else:
            conn.execute(sql.SQL("ALTER DATABASE {} SET {} = {}").format(db, name, sql.Literal(str(seconds))))


# A bound for a run that hangs, not a time a run is expected to take: on a loaded machine a run spent more than
# 20 s importing its plugins before its first step.
HUNG = 600


def wait_for_migration(dsn: str, running: Callable[[], bool], doing: str = "pg_sleep") -> int:
    """The pid of the run's migration session once it runs the statement of the migration that calls `doing`.
    Waits as long as the run goes on (`running`), however slowly it starts: a fixed deadline gave up on a run
    still starting up, which then applied its migration to the end with no one striking."""
    deadline = time.monotonic() + HUNG
    while running():
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'pytest-phase4'"
                               " AND state = 'active' AND strpos(query, %s) > 0", (doing,)).fetchone()
        if row:
            return int(row[0])
        if time.monotonic() > deadline:
            raise AssertionError(f"the run is still going after {HUNG} s and never ran {doing}: hung?")
        time.sleep(0.05)
    raise AssertionError(f"the run ended before its migration ran {doing}")


@contextlib.contextmanager
def strike(action: Callable[[int], None], dsn: str) -> Iterator[None]:
    """Around an in-process run: `action(pid)` in a thread once the run's migration session sleeps."""
    done = threading.Event()
    failed: list[BaseException] = []

    def strike_once() -> None:
        try:
            action(wait_for_migration(dsn, lambda: not done.is_set()))
        except BaseException as exc:  # raised in the test, below, not lost with the thread
            failed.append(exc)

    thread = threading.Thread(target=strike_once, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
    if failed:
        raise failed[0]


@pytest.fixture
def seeded(project: Callable[..., Project]) -> tuple[Project, dict[str, Any]]:
    p = project("mini", "faults")
    assert p.run("-m", "preflight", seed=True).ret == 0
    return p, fingerprint(p.dsn)


def assert_recovers(p: Project, before: dict[str, Any]) -> None:
    assert fingerprint(p.dsn) == before, "the database is not at the step boundary it started from"
    assert list((p.path / "reports").glob("phase4-*.html")), "no report was written"
    set_sleep(p.dsn, None)
    rerun = p.run("--phase4-confirm-destructive")
    rerun.assert_outcomes(passed=25)


def test_sql_error_mid_file_then_fixed_rerun_completes(seeded: tuple[Project, dict[str, Any]]) -> None:
    p, before = seeded
    path = p.path / "checks/migrations/20250101000001_create_views.sql"
    good = path.read_text()
    path.write_text(good.replace("SELECT pg_sleep", "SELECT no_such_function(1);\nSELECT pg_sleep"))
    result = p.run("--phase4-confirm-destructive")
    result.stdout.fnmatch_lines(["*20250101000001_create_views.sql:10: function no_such_function(integer) does not "
                                 "exist [[]SQLSTATE 42883[]]"])
    assert result.ret == 1
    path.write_text(good)
    assert_recovers(p, before)


def test_connection_killed_mid_migration(seeded: tuple[Project, dict[str, Any]]) -> None:
    p, before = seeded
    set_sleep(p.dsn, 30)

    def kill(pid: int) -> None:
        with psycopg.connect(p.dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))

    with strike(kill, p.dsn):
        result = p.run("-v", "--phase4-confirm-destructive")
    assert outcomes_of(result)[f"{M1}::apply"] == "FAILED"
    result.stdout.fnmatch_lines([
        "*20250101000001_create_views.sql*terminating connection due to administrator command*(the connection "
        "to the server was lost: the server rolls back the open transaction, so nothing of this file was applied)*"])
    assert result.ret == 1
    assert_recovers(p, before)


def test_lock_held_past_the_lock_timeout_names_the_blocker(seeded: tuple[Project, dict[str, Any]]) -> None:
    p, before = seeded
    with psycopg.connect(p.dsn, application_name="nightly-report") as holder:
        holder.execute("LOCK TABLE tickets IN SHARE MODE")  # readers pass, the migration's COMMENT waits
        result = p.run("--phase4-confirm-destructive", "--phase4-lock-timeout=300ms")
        pid = holder.info.backend_pid
    result.stdout.fnmatch_lines([
        "*20250101000001_create_views.sql:*: canceling statement due to lock timeout [[]SQLSTATE 55P03[]]",
        "blocked by:",
        f"  pid {pid} (user postgres, application nightly-report, idle in transaction, for * s): LOCK TABLE "
        "tickets IN SHARE MODE",
        "hint: end the blocking session if it is safe (SELECT pg_terminate_backend(<pid>)) or wait for it, then "
        "rerun (the runbook's 'Migration Hangs' appendix)",
    ])
    assert result.ret == 1
    assert_recovers(p, before)


@contextlib.contextmanager
def _popen(p: Project, *args: str) -> Iterator[subprocess.Popen[str]]:
    """A run in a process of its own; killed if the test fails before it ends, so that it applies nothing after."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
            [sys.executable, "-m", "pytest", "--phase4", f"--dsn={p.dsn}", "-p", "no:cacheprovider", *args],
            cwd=p.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as run:
        try:
            yield run
        finally:
            if run.poll() is None:
                run.kill()
                run.communicate()


def _in_migration(run: subprocess.Popen[str], dsn: str, doing: str = "pg_sleep") -> None:
    """Wait until the run's migration runs `doing`; if the run ends first, fail with what it said."""
    try:
        wait_for_migration(dsn, lambda: run.poll() is None, doing)
    except AssertionError as exc:
        if run.poll() is None:
            raise
        raise AssertionError(f"{exc}:\n{run.communicate()[0]}") from None


def test_two_runs_started_together_apply_each_migration_once(seeded: tuple[Project, dict[str, Any]]) -> None:
    p, _ = seeded
    set_sleep(p.dsn, "on", "faults.gate")
    # The first run waits inside its first migration, holding the run lock, until the second has been refused:
    # no sleep to outlast, however slow a loaded machine starts the second.
    with psycopg.connect(p.dsn, autocommit=True) as gate:
        gate.execute("SELECT pg_advisory_lock(4242)")
        with _popen(p, "--phase4-confirm-destructive", "--phase4-lock-timeout=120s") as first:
            _in_migration(first, p.dsn, doing="pg_advisory_xact_lock")
            with _popen(p, "--phase4-confirm-destructive") as second:
                second_out, _ = second.communicate(timeout=HUNG)
            gate.execute("SELECT pg_advisory_unlock(4242)")
            first_out, _ = first.communicate(timeout=HUNG)
    assert second.returncode == pytest.ExitCode.USAGE_ERROR, second_out
    assert "ERROR: another pytest-phase4 run holds " in second_out
    assert "pid " in second_out
    assert "(application pytest-phase4, user postgres" in second_out
    assert first.returncode == 0, first_out
    assert fingerprint(p.dsn)["ledger"] == [
        "20250101000001_create_views.sql", "20250101000002_drop_denormalized.sql", "20250101000003_add_indexes.sql"]


def test_ctrl_c_during_a_migration(seeded: tuple[Project, dict[str, Any]]) -> None:
    p, before = seeded
    set_sleep(p.dsn, 30)
    with _popen(p, "--phase4-confirm-destructive") as run:
        _in_migration(run, p.dsn)
        run.send_signal(signal.SIGINT)
        out, _ = run.communicate(timeout=HUNG)
    assert run.returncode == pytest.ExitCode.INTERRUPTED, out
    assert "KeyboardInterrupt" in out
    assert "Generated html report" in out
    assert_recovers(p, before)


@pytest.fixture
def own_server() -> Iterator[EmbeddedPostgres]:
    """A cluster of this test's own: it is going to be stopped hard. Commits must be durable here, as on a real
    server (throwaway clusters run with synchronous_commit off, which loses the last commits in a crash)."""
    server = start_embedded()
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET synchronous_commit = on")
        conn.execute("SELECT pg_reload_conf()")
    for _ in range(100):  # the postmaster applies a reload asynchronously
        with psycopg.connect(server.dsn) as conn:
            if conn.execute("SHOW synchronous_commit").fetchone() == ("on",):
                break
        time.sleep(0.05)
    yield server
    server.stop()


def test_server_stopped_hard_mid_migration(pytester: pytest.Pytester, own_server: EmbeddedPostgres) -> None:
    p = Project(pytester, own_server.create_database("crashme"))
    import shutil

    from helpers import EXAMPLES

    for name in ("mini", "faults"):
        shutil.copytree(EXAMPLES / name, pytester.path, dirs_exist_ok=True)
    assert p.run("-m", "preflight", seed=True).ret == 0
    before = fingerprint(p.dsn)
    set_sleep(p.dsn, 30)

    with strike(lambda _: own_server.crash(), p.dsn):
        result = p.run("-v", "--phase4-confirm-destructive")
    assert outcomes_of(result)[f"{M1}::apply"] == "FAILED"
    assert result.ret == 1
    own_server.restart()
    assert_recovers(p, before)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 kB file system, filled up: what a backup meets on a full disk."""
    mount = tmp_path / "full"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    with contextlib.suppress(OSError), (mount / "filler").open("wb") as filler:
        for _ in range(64):
            filler.write(b"\0" * 4096)
            filler.flush()
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.parametrize("where", ["full", "not_a_directory"])
def test_backup_directory_full_or_not_writable(project: Callable[..., Project], tiny_disk: Path,
                                                where: str) -> None:
    p = project("mini", "safe")
    assert p.run("-m", "preflight", seed=True).ret == 0
    before = fingerprint(p.dsn)
    (p.path / "a_file").write_text("not a folder")
    folder = tiny_disk / "backups" if where == "full" else p.path / "a_file" / "backups"
    result = p.run("-v", "--phase4-confirm-destructive", f"--phase4-backup-dir={folder}")
    outcomes = outcomes_of(result)
    assert outcomes["checks/phase4.toml::backup::backup[dump]"] == "FAILED"
    assert outcomes[f"{M1}::apply"] == "SKIPPED"
    result.stdout.fnmatch_lines(["*halted after backup: backup[[]dump[]]: *"])
    assert result.ret == 1
    assert fingerprint(p.dsn) == before
    assert list((p.path / "reports").glob("phase4-*.html")), "no report was written"
    rerun = p.run("--phase4-confirm-destructive")  # the default backup folder has room
    assert rerun.ret == 0, rerun.stdout.str()
