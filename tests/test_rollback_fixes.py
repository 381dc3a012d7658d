"""Rollback (issue 10), what the attack's fixes brought besides its sixteen tests: restore never drops what the
pre-rollback dump does not hold, a name taken since is refused with what to do, backups are private, the
pre-rollback dump never waits forever behind a lock queued on the rollback's own locks."""

from __future__ import annotations

import stat
import threading
import time
from collections.abc import Callable

import psycopg
from test_rollback import schema_of
from test_rollback_attacks import APP_AFTER, M2, SETUP, out

from helpers import Project, append, ledger_files


def test_restore_never_drops_what_the_pre_rollback_dump_does_not_hold(project: Callable[..., Project]) -> None:
    """A schema and table the application creates after the pre-rollback dump (no lock stops a new object) are
    not in that dump: dropping them would lose them for good. The restore refuses at that point, changing nothing."""
    p = project("mini", "safe")
    p.run("--phase4-confirm-destructive", seed=True)
    assert len(ledger_files(p)) == 3
    p.pytester.makeconftest(APP_AFTER.format(dsn=p.dsn, steps={
        "safety_dump": "CREATE SCHEMA app; CREATE TABLE app.orders (id int PRIMARY KEY, total numeric);"
                       " INSERT INTO app.orders SELECT g, g FROM generate_series(1, 500) g"}))
    migrated = schema_of(p)
    result = p.run("-v", "--phase4-rollback=restore", "--phase4-accept-loss")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["expected: everything the restore drops to be in the pre-rollback dump",
                                 "found:    table app.orders: created after it was taken",
                                 "hint:     nothing was changed: rerun the rollback (a new dump will hold it)",
                                 "rollback FAILED at drop_created: its transaction was rolled back*"])
    assert p.query("SELECT count(*) FROM app.orders") == [(500,)], out(result)
    assert schema_of(p) == migrated
    assert len(ledger_files(p)) == 3


def test_an_object_that_took_the_name_of_one_to_bring_back_is_refused_saying_what_to_do(
        project: Callable[..., Project]) -> None:
    """The plan dropped `notes`; the application created its own `notes` since. Bringing the plan's back would
    fail on the name ("fix the cause and rerun", pointing at nothing): assess refuses, naming it and the fix."""
    p = project("mini", "safe")
    append(p, SETUP, "CREATE TABLE notes (id int PRIMARY KEY, body text);\n")
    append(p, M2, "DROP TABLE notes;\n")
    p.run("--phase4-confirm-destructive", seed=True)
    assert len(ledger_files(p)) == 3
    p.execute("CREATE TABLE notes (id int PRIMARY KEY, author text)")
    result = p.run("-v", "--phase4-rollback")
    assert result.ret == 1
    result.stdout.fnmatch_lines([
        "expected: changes the revert can undo",
        "  table public.notes (20250101000002_drop_denormalized.sql dropped it) cannot come back: an object the plan "
        "did not create has its name now: rename or drop that one, then rerun",
        "rollback FAILED at assess: nothing was changed"])
    assert "author" in p.columns("notes")


def test_backups_are_readable_by_their_owner_only(project: Callable[..., Project]) -> None:
    p = project("mini", "safe")
    p.run("--phase4-confirm-destructive", seed=True)
    assert p.run("--phase4-rollback").ret == 0
    folders = [f for f in p.path.glob("_backups/*/*") if f.is_dir()]
    folders += [f for f in p.path.glob("_backups/*/*/before-rollback-*") if f.is_dir()]
    files = [f for folder in folders for f in folder.iterdir() if f.is_file()]
    assert len(folders) == 2
    assert {f.name for f in files} == {"full.dump", "schema.sql", "snapshot.json", "BACKUP_INFO.txt", "baseline.json"}
    assert {oct(stat.S_IMODE(f.stat().st_mode)) for f in folders} == {"0o700"}
    assert {oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {"0o600"}


def test_the_pre_rollback_dump_fails_rather_than_waiting_behind_a_lock_queued_on_the_rollbacks_own(
        project: Callable[..., Project]) -> None:
    """The rollback holds EXCLUSIVE locks while pg_dump runs; an ALTER TABLE of the application queues behind
    them, and pg_dump's ACCESS SHARE queues behind that ALTER: without a bound, all three wait for ever."""
    p = project("mini", "safe")
    p.run("--phase4-confirm-destructive", seed=True)
    assert len(ledger_files(p)) == 3
    stop = threading.Event()

    def application() -> None:
        with psycopg.connect(p.dsn, autocommit=True) as watch, psycopg.connect(p.dsn) as app:
            while not stop.is_set():  # the rollback's EXCLUSIVE lock on sales is held: queue an ALTER behind it
                row = watch.execute("SELECT count(*) FROM pg_locks WHERE relation = 'public.sales'::regclass"
                                    " AND mode = 'ExclusiveLock' AND granted").fetchone()
                if row and row[0]:
                    app.execute("ALTER TABLE sales ADD COLUMN note text")
                    app.rollback()
                    return
                time.sleep(0.01)

    thread = threading.Thread(target=application, daemon=True)
    thread.start()
    try:
        result = p.run("-v", "--phase4-rollback", "--phase4-lock-timeout=1s")
    finally:
        stop.set()
        thread.join()
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*safety_dump*", "found:    pg_dump exited with 1*",
                                 "rollback FAILED at safety_dump: nothing was changed"])
    assert len(ledger_files(p)) == 3
    assert "customer_name" not in p.columns("sales")
