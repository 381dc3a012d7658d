"""Rollback (runbook Part 7) in one transaction. Each public step function is one test of the report; no pytest
here.

Two modes. `revert` (the default) undoes what the plan's migrations recorded (changes.py) and keeps every
write made since the backup. `restore` puts the whole backup back, after listing what that loses and only with
--phase4-accept-loss. Both first locate a backup whose identity is proven (its marker row is in this database
and in the dump), take a dump of the current state, then do everything in one transaction with the ledger rows
and the proof: it commits only when every step and every proof passed, else it is rolled back and the
database and the ledger are exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from pytest_phase4 import backup, changes, ledger, pgscript, revert, snapshot
from pytest_phase4.errors import CheckFailed
from pytest_phase4.revert_apply import Reverter, Source
from pytest_phase4.safety import tools

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


def root_of(run: Phase4Run) -> Path:
    return run.safety.backup_root or Path("_backups") / backup.slug(run.plan.name)


# -- locating the backup ------------------------------------------------------------------------------------
def locate(run: Phase4Run, state: RollbackState) -> str:
    """The given backup folder, else the newest backup of this database taken before any migration of the
    plan; its identity proven by its marker row, in this database and in the dump."""
    folder, saved = _pick(run, root_of(run))
    sha = backup.read_info_sha(folder)
    entries = backup.verify_archive(tools(run), folder / backup.DUMP, sha, run.target.secrets)
    if saved.backup_id not in backup.markers_in_dump(tools(run), folder / backup.DUMP, run.target.secrets):
        raise CheckFailed(f"the dump to hold the marker {saved.backup_id} of its snapshot.json", "another dump",
                          str(folder), hint="the files of this backup folder do not belong together: do not use it")
    state.folder, state.saved = folder, saved
    return (f"{folder}: {backup.DUMP} sha256 {str(sha)[:16]} matches BACKUP_INFO.txt, {entries} entries readable; "
            f"marker {saved.backup_id} in this database and in the dump; taken before any migration of the plan")


def _pick(run: Phase4Run, root: Path) -> tuple[Path, snapshot.Snapshot]:
    here = snapshot.identity(run.ro)
    markers = ledger.backup_markers(run.ro)
    if (root / backup.INFO).is_file():  # the user named the backup itself
        saved = _saved(root)
        if problem := _not_ours(saved, here, markers):
            raise CheckFailed(f"a backup of this database ({_describe(here)})", problem, str(root),
                              hint="restoring it here would replace this database's data with another's: if that "
                                   "is really meant, use the pg_restore command in its BACKUP_INFO.txt by hand")
        return root, saved
    folders = sorted((p.parent for p in root.glob(f"*/{backup.INFO}")), reverse=True)
    if not folders:
        raise CheckFailed(f"a backup ({backup.INFO}) in {root} or one of its <timestamp>/ folders", "none",
                          str(root), hint="give the backup's folder with --phase4-backup-dir=DIR")
    plan_files = {m.file for m in run.plan.migrations}
    others: list[str] = []
    for folder in folders:
        saved = _saved(folder)
        if problem := _not_ours(saved, here, markers):  # backups of other databases share the plan's folder
            others.append(f"{folder.name} ({problem})")
            continue
        if not plan_files & set(saved.applied):
            return folder, saved
    found = f"{len(folders)} backup(s): " + ("; ".join(others) if others else "each taken after some migrations")
    raise CheckFailed(f"a backup of this database ({_describe(here)}) taken before any migration of the plan",
                      found, str(root), hint="give the backup to restore with --phase4-backup-dir=DIR")


def later_backups(run: Phase4Run, state: RollbackState, skipped: list[str]) -> list[Source]:
    """This database's backups newer than the chosen one, newest first, each verified: a column dropped by a
    migration applied after one of them is refilled with the values it held then, not the older ones."""
    root = root_of(run)
    if (root / backup.INFO).is_file():
        return []
    here, markers = snapshot.identity(run.ro), ledger.backup_markers(run.ro)
    found = []
    for folder in sorted((p.parent for p in root.glob(f"*/{backup.INFO}")), reverse=True):
        if folder == state.folder:
            break
        try:
            saved = _saved(folder)
            if _not_ours(saved, here, markers):
                continue
            archive = folder / backup.DUMP
            backup.verify_archive(tools(run), archive, backup.read_info_sha(folder), run.target.secrets)
            if saved.backup_id not in backup.markers_in_dump(tools(run), archive, run.target.secrets):
                continue
            found.append(Source(folder.name, archive, pgscript.listing(tools(run), archive, run.target.secrets),
                                frozenset(saved.applied)))
        except CheckFailed as exc:
            skipped.append(f"backup {folder.name} not used: {exc.summary}")
    return found


def _not_ours(saved: snapshot.Snapshot, here: dict[str, str], markers: set[str]) -> str | None:
    """Why the backup is not proven to be of this database, or None. A name is no proof: the marker row the
    backup wrote must be in this database (and, checked later, in the dump)."""
    if not saved.backup_id:
        return f"a backup of {_describe(saved.source)} without an identity marker (made by an older version)"
    if not snapshot.same_database(saved.source, here):
        return f"a backup of {_describe(saved.source)}"
    if saved.backup_id not in markers:
        return (f"a backup of {_describe(saved.source)} whose marker {saved.backup_id} this database does not "
                "hold: another database of that name")
    return None


def _describe(ident: dict[str, str]) -> str:
    if not ident:
        return "an unknown database"
    sysid = f", cluster {ident['system_identifier']}" if ident.get("system_identifier") else ""
    return f"database {ident.get('database', '?')} (oid {ident.get('oid', '?')}{sysid})"


def _saved(folder: Path) -> snapshot.Snapshot:
    try:
        return snapshot.Snapshot.from_json((folder / backup.SNAPSHOT).read_text())
    except (OSError, ValueError, KeyError) as exc:
        raise CheckFailed(f"the snapshot stored with the backup ({backup.SNAPSHOT})", f"unreadable: {exc}",
                          str(folder)) from None


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


def assess_revert(run: Phase4Run, state: RollbackState) -> str:
    """Read the records of the migrations to undo and say what the revert will do, keep and cannot undo;
    refuse before any change when it cannot be done, or would lose rows without --phase4-accept-loss."""
    assert state.folder is not None
    state.files = to_undo(run, state)
    recorded = changes.partial_files(run.ro) | {
        f for f, in run.ro.execute("SELECT file FROM pytest_phase4.ledger WHERE recorded").fetchall()}
    if unrecorded := [f for f in state.files if f not in recorded]:
        raise CheckFailed("a record of what each migration did (pytest_phase4.changes)",
                          f"none for {', '.join(unrecorded)} (applied by a version that did not record it)",
                          "the ledger", hint="use --phase4-rollback=restore: it lists what it would lose first")
    records = changes.read(run.ro, state.files)
    nets = revert.net_changes([records[f] for f in state.files if f in records])
    toc = pgscript.listing(tools(run), state.folder / backup.DUMP, run.target.secrets)
    rv = Reverter(run.ro, tools(run), state.folder / backup.DUMP, run.target.secrets, nets, toc,
                  schema=run.plan.schema)
    skipped: list[str] = []
    if rv.plan_refills():
        rv.sources = later_backups(run, state, skipped)
    if missing := rv.missing_copies():
        raise CheckFailed("a copy in the backup of everything the plan dropped", f"{len(missing)} missing",
                          str(state.folder), details=missing, hint="nothing was changed: use --phase4-rollback=restore")
    state.records, state.reverter = records, rv
    losses, state.notes = revert_losses(run.ro, state)
    if losses and not state.accept_loss:
        raise CheckFailed("a revert that loses no row written since the backup",
                          f"{len(losses)} table(s) the plan created hold rows it did not write", "the database now",
                          details=losses, hint="nothing was changed: move those rows first, or accept their loss "
                                               "with --phase4-accept-loss (they stay in the pre-rollback dump)")
    state.notes = losses + state.notes + skipped
    counts = {a: sum(n.action == a for n in nets) for a in ("drop", "restore", "alter")}
    return (f"revert {len(state.files)} migration(s), newest first ({', '.join(reversed(state.files))}): "
            f"{counts['drop']} object(s) to drop, {counts['restore']} to bring back, {counts['alter']} to alter "
            "back" + (f"; {len(state.notes)} note(s): " + "; ".join(state.notes) if state.notes else ""))


def revert_losses(conn: psycopg.Connection[Any], state: RollbackState) -> tuple[list[str], list[str]]:
    """(rows the revert would lose: in tables the plan created, rows whose current version no migration of the
    plan wrote, i.e. written or changed since by someone else; notes: data changes of kept tables it cannot
    undo, values of added columns it drops). By the rows' xmin against the migrations' transaction ids; when one
    of them ran outside a transaction (transaction = false), by row counts."""
    assert state.reverter is not None
    nets, records = state.reverter.nets, state.records
    rows = conn.execute("SELECT xid FROM pytest_phase4.ledger WHERE file = ANY(%s)", (state.files,)).fetchall()
    xids = [int(r[0]) & 0xFFFFFFFF for r in rows if r[0] is not None]
    by_xmin = len(xids) == len(state.files) and all(r.rows is not None for r in records.values())
    losses, notes = [], []
    written: dict[str, int] = {}
    for record in records.values():
        for r in record.rows or []:
            written[r.relation] = written.get(r.relation, 0) + r.inserted - r.deleted
    tables = {n.obj.identity: n.obj for n in nets if n.action == "drop" and n.obj.type == "table"}
    for table, obj in sorted(tables.items()):
        if by_xmin:
            row = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE xmin::text::int8 <> ALL(%s)").format(
                revert.relation(obj)), (xids,)).fetchone()
            if row and row[0]:
                losses.append(f"{table}: {row[0]:,} row(s) written or changed since by others (not by the plan's "
                              "migrations) would be dropped with it")
            continue
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(revert.relation(obj))).fetchone()
        now = int(row[0]) if row else 0
        if now > written.get(table, 0):
            losses.append(f"{table}: {now:,} row(s), {written.get(table, 0):,} written by the plan: "
                          f"{now - written.get(table, 0):,} written since would be dropped with it")
    for net in nets:
        added = net.current
        if net.action == "drop" and added is not None and added.type == "table column" and added.parent not in tables:
            notes.append(f"column {added.identity} (added by the plan) is dropped with its values")
    restored = {n.obj.identity for n in nets if n.action == "restore"}
    for file, record in records.items():
        for r in record.rows or []:
            if r.relation in tables or r.relation in restored or not (r.inserted or r.updated or r.deleted):
                continue
            notes.append(f"{file} inserted {r.inserted:,}, updated {r.updated:,}, deleted {r.deleted:,} row(s) of "
                         f"{r.relation}: kept (undoing them would overwrite writes made since; "
                         "--phase4-rollback=restore puts the backup's rows back)")
    return losses, notes


# -- the dump of the current state, then the transaction ----------------------------------------------------
def safety_dump(run: Phase4Run, state: RollbackState) -> str:
    """A dump of the database as it is now, before anything changes: nothing the rollback drops or overwrites
    is lost for good."""
    assert state.folder is not None
    conn = begin(run, state)
    locked = lock(conn, state)  # EXCLUSIVE: the application waits, pg_dump (ACCESS SHARE) does not
    if state.reverter is not None:  # what was assessed before the lock may have changed since: assess again
        losses, _ = revert_losses(conn, state)
        if losses and not state.accept_loss:
            raise CheckFailed("a revert that loses no row written since the backup", f"{len(losses)} table(s) the "
                              "plan created hold rows it did not write (written since the assess step)",
                              "the database now", details=losses,
                              hint="nothing was changed: rerun, or accept their loss with --phase4-accept-loss")
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    folder = state.folder / f"before-rollback-{stamp}"
    for n in range(2, 1000):  # never over an earlier rollback's dump
        if not folder.exists():
            break
        folder = state.folder / f"before-rollback-{stamp}-{n:03d}"
    archive = backup.dump(tools(run), run.target.dsn, folder, run.target.secrets)
    state.safety_dump = archive
    return (f"{archive}: {archive.stat().st_size:,} bytes, sha256 {backup.sha256_of(archive)[:16]}: the state before "
            f"this rollback, taken while the rollback holds {locked} table(s) against writes until it ends")


def lock(conn: psycopg.Connection[Any], state: RollbackState) -> int:
    """Lock the tables the rollback replaces or changes, in EXCLUSIVE mode: nobody writes them from now until the
    rollback commits or rolls back, so the dump taken next is exactly what the rollback replaces; reads (and
    pg_dump) go on. Revert: the tables it changes and those the plan created; restore: every table."""
    if state.reverter is not None:
        state.reverter.conn = conn
        names = state.reverter.tables_to_lock()
    else:
        names = [str(r[0]) for r in conn.execute(
            "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND n.nspname NOT IN ('pg_catalog',"
            " 'information_schema', 'pytest_phase4') AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1").fetchall()]
    if names:
        conn.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(
            sql.SQL(", ").join(sql.SQL(n) for n in names)))  # regclass text: the server's quoted names
    if state.reverter is not None:
        state.reverter.record_kept()
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
