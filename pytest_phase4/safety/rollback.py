"""Rollback (runbook Part 7) in one transaction. Each public step function is one test of the report; no pytest
here.

Two modes. `revert` (the default) undoes what the plan's migrations recorded (changes.py) and keeps every
write made since the backup. `restore` puts the whole backup back, after listing what that loses and only with
--phase4-accept-loss. Both first locate a backup whose identity is proven (of this database as a baseline is,
and its marker row in this database and in the dump), take a dump of the current state, then do everything in
one transaction with the ledger rows and the proof: it commits only when every step and every proof passed,
else it is rolled back and the database and the ledger are exactly as before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from pytest_phase4.db import changes, ledger
from pytest_phase4.errors import CheckFailed
from pytest_phase4.safety import backup, kept, revert_prove, snapshot
from pytest_phase4.safety.checks import tools
from pytest_phase4.safety.revert_apply import Reverter

if TYPE_CHECKING:
    from pytest_phase4.run import Phase4Run

REVERT, RESTORE = "revert", "restore"
_HISTORY = """
CREATE SCHEMA IF NOT EXISTS pytest_phase4;
CREATE TABLE IF NOT EXISTS pytest_phase4.rollbacks (
    at          timestamptz NOT NULL DEFAULT now(),
    mode        text NOT NULL,
    backup      text NOT NULL,
    migrations  text[] NOT NULL,
    safety_dump text NOT NULL,
    summary     jsonb NOT NULL
);
COMMENT ON TABLE pytest_phase4.rollbacks IS 'completed rollbacks, newest last';
"""


@dataclass
class RollbackState:
    mode: str = REVERT
    accept_loss: bool = False
    folder: Path | None = None
    saved: snapshot.Snapshot | None = None  # the snapshot stored with the backup
    files: list[str] = field(default_factory=list)  # the migrations this rollback undoes, in the order applied
    done: dict[str, str] = field(default_factory=dict)  # step -> what it observed, for steps that succeeded
    failed: str | None = None  # the step that failed
    conn: psycopg.Connection[Any] | None = None  # the rollback's one transaction
    reverter: Reverter | None = None
    records: dict[str, changes.Record] = field(default_factory=dict)
    safety_dump: Path | None = None
    notes: list[str] = field(default_factory=list)  # what the rollback keeps or cannot undo, for the summary
    history: list[tuple[Any, ...]] = field(default_factory=list)  # restore mode: earlier rollbacks, kept
    committed: bool = False
    nothing: str = ""  # why there is nothing to roll back (a refusal, not a failure of the database)
    accepted: list[str] = field(default_factory=list)  # the losses assess listed (consented to when any)
    # What the mode loses, computed again once the rollback's locks are held (in its transaction)
    recheck: Callable[[psycopg.Connection[Any]], list[str]] | None = None
    kept: dict[str, tuple[str, str]] = field(default_factory=dict)  # revert: file -> (sha256, its kept row changes)


def root_of(run: Phase4Run) -> Path:
    return run.safety.backup_root or Path("_backups") / backup.slug(run.plan.name)


# -- what there is to roll back -----------------------------------------------------------------------------
def to_undo(run: Phase4Run, state: RollbackState) -> list[str]:
    """The plan's migrations the ledger lists as applied since the backup, in plan order; refuses when none."""
    assert state.saved is not None
    applied = set(ledger.read(run.ro)) | changes.partial_files(run.ro)  # with failed transaction = false parts
    files = [m.file for m in run.plan.migrations if m.file in applied and m.file not in state.saved.applied]
    if not files:
        last = last_rollback(run.ro)
        state.nothing = "no migration of the plan is applied (ledger)" + (
            f"; the last rollback ({last}) completed" if last else "")
        raise CheckFailed("a migration of the plan applied since the backup, to roll back", f"none: {state.nothing}",
                          "the ledger (pytest_phase4.ledger)",
                          hint="nothing was changed: there is nothing to roll back")
    return files


def last_rollback(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT to_regclass('pytest_phase4.rollbacks') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return ""
    last = conn.execute("SELECT at, mode, migrations FROM pytest_phase4.rollbacks ORDER BY at DESC LIMIT 1").fetchone()
    return f"{last[1]} at {last[0]:%Y-%m-%d %H:%M:%S %Z} of {', '.join(last[2])}" if last else ""


# -- the dump of the current state, then the transaction ----------------------------------------------------
def safety_dump(run: Phase4Run, state: RollbackState) -> str:
    """Lock what the rollback changes, look again at what it loses (nothing may have changed since assess
    unseen: a new loss is a refusal, with or without consent), then dump the database as it is now: nothing the
    rollback drops or overwrites is lost for good."""
    assert state.folder is not None
    conn = begin(run, state)
    locked = lock(conn, state)  # EXCLUSIVE: the application waits, pg_dump (ACCESS SHARE) does not
    if state.recheck is not None:
        with conn.transaction():  # a savepoint: what the check writes (temporary tables) goes
            now = state.recheck(conn)
        if new := [line for line in now if line not in state.accepted]:
            raise CheckFailed("nothing lost that the assess step did not list", f"{len(new)} new or changed loss(es) "
                              "since the assess step (written meanwhile)", "the database now (locked)", details=new,
                              hint="nothing was changed: rerun the rollback (it lists them first; stop the "
                                   "application's writes to those tables if they keep changing)")
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    folder = state.folder / f"before-rollback-{stamp}"
    for n in range(2, 1000):  # never over an earlier rollback's dump
        if not folder.exists():
            break
        folder = state.folder / f"before-rollback-{stamp}-{n:03d}"
    # pg_dump queues behind anything waiting for a lock we hold: bounded, the rollback fails instead of hanging
    archive = backup.dump(tools(run), run.target.dsn, folder, run.target.secrets, lock_wait=run.lock_timeout)
    state.safety_dump = archive
    return (f"{archive}: {archive.stat().st_size:,} bytes, sha256 {backup.sha256_of(archive)[:16]}: the state before "
            f"this rollback, taken while the rollback holds {locked} table(s) against writes until it ends" +
            ("; the losses listed by assess are unchanged" if state.accepted else ""))


def lock(conn: psycopg.Connection[Any], state: RollbackState) -> int:
    """Lock the tables the rollback replaces or changes, in EXCLUSIVE mode: nobody writes them from now until the
    rollback commits or rolls back, so the dump taken next is exactly what the rollback replaces; reads (and
    pg_dump) go on. Revert: the tables it changes and those the plan created; restore: every table."""
    if state.reverter is not None:
        state.reverter.conn = conn
        names = revert_prove.tables_to_lock(state.reverter)
    else:
        names = [str(r[0]) for r in conn.execute(
            "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND n.nspname NOT IN ('pg_catalog',"
            " 'information_schema', 'pytest_phase4') AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1").fetchall()]
    if names:
        conn.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(
            sql.SQL(", ").join(sql.SQL(n) for n in names)))  # regclass text: the server's quoted names
    if state.reverter is not None:
        revert_prove.record_kept(state.reverter)
    return len(names)


def begin(run: Phase4Run, state: RollbackState) -> psycopg.Connection[Any]:
    """The rollback's one transaction, opened by its first writing step and ended by commit() or abort()."""
    if state.failed is not None:  # a failed step rolled the transaction back: nothing may start another
        raise CheckFailed("no failed step before this one", f"step {state.failed} failed", "rollback",
                          hint="the rollback's transaction was rolled back: nothing changed")
    if lost := run.lock_lost():  # another run may have started: nothing may be written without the lock
        raise CheckFailed("this run's run lock, held until the rollback commits", lost, run.target.label,
                          hint="another run may have started since: the rollback's transaction was rolled back, "
                               "nothing changed; rerun --phase4-rollback")
    if state.conn is None:
        run.end_reads()
        conn = run.target.connect(read_only=False, autocommit=False, settings={"lock_timeout": run.lock_timeout})
        # row_security off: a refill that row-level security would filter fails instead of refilling some rows
        conn.execute("SET LOCAL row_security = off")
        conn.execute("SET LOCAL idle_in_transaction_session_timeout = 0")  # idle between two steps of the report
        state.conn = conn
    return state.conn


def abort(state: RollbackState) -> None:
    """Roll the transaction back: the database and the ledger stay exactly as they were."""
    conn, state.conn = state.conn, None
    if conn is not None and not conn.closed:
        try:
            conn.rollback()
        finally:
            conn.close()


def commit(run: Phase4Run, state: RollbackState) -> str:
    conn = state.conn
    if conn is None:
        raise CheckFailed("the rollback's transaction to commit", "none open", "rollback")
    begin(run, state)  # the run lock is still held: checked right before the commit, as before every write
    conn.commit()
    conn.close()
    state.conn, state.committed = None, True
    return (f"committed: {len(state.files)} migration(s) rolled back ({state.mode}); the state before it is in "
            f"{state.safety_dump}")


def record_history(state: RollbackState, conn: psycopg.Connection[Any]) -> None:
    """The ledger forgets the undone migrations and remembers the rollback, in the rollback's transaction."""
    assert state.folder is not None
    conn.execute(_HISTORY.encode())
    for earlier in state.history:
        conn.execute("INSERT INTO pytest_phase4.rollbacks VALUES (%s, %s, %s, %s, %s, %s)",
                     (*earlier[:5], Jsonb(earlier[5])))
    if ledger.read(conn):
        conn.execute("DELETE FROM pytest_phase4.ledger WHERE file = ANY(%s)", (state.files,))
    changes.forget(conn, state.files)
    kept.keep_data(conn, state.kept)  # a later run must not apply them again
    row = conn.execute("SELECT to_regclass('supabase_migrations.schema_migrations') IS NOT NULL").fetchone()
    if row and row[0]:  # `supabase migration list` must agree with the ledger
        versions = [f.partition("_")[0] for f in state.files]
        conn.execute("DELETE FROM supabase_migrations.schema_migrations WHERE version = ANY(%s)", (versions,))
    conn.execute("INSERT INTO pytest_phase4.rollbacks (mode, backup, migrations, safety_dump, summary)"
                 " VALUES (%s, %s, %s, %s, %s)",
                 (state.mode, state.folder.name, state.files, str(state.safety_dump),
                  Jsonb({"steps": state.done, "notes": state.notes})))


def ledger_step(run: Phase4Run, state: RollbackState) -> str:
    record_history(state, begin(run, state))
    return (f"ledger: {len(state.files)} migration(s) no longer applied ({', '.join(state.files)}); the rollback "
            "recorded in pytest_phase4.rollbacks (same transaction)")
