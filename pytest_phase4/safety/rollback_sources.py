"""Which backups a rollback may use, newest first by the time their marker row records (in this database and in
the dump): never by folder name, which anyone can change. The chosen backup is the newest taken before any
migration of the plan; the later ones give what the plan dropped the values it held just before. No pytest here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_phase4.db import ledger
from pytest_phase4.errors import CheckFailed
from pytest_phase4.safety import backup, pgscript, snapshot
from pytest_phase4.safety.baselines import unproven
from pytest_phase4.safety.checks import tools
from pytest_phase4.safety.refill import Source
from pytest_phase4.safety.rollback import RollbackState, root_of

if TYPE_CHECKING:
    from pytest_phase4.run import Phase4Run


@dataclass(frozen=True)
class Found:
    folder: Path
    saved: snapshot.Snapshot | None  # None: unreadable or not of this database (`problem` says why)
    taken_at: datetime | None  # the marker's time, as this database holds it
    problem: str = ""


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


def backups(run: Phase4Run, root: Path) -> list[Found]:
    """Every backup in the folder's <timestamp>/ (or renamed) subfolders, newest first by its marker's time."""
    here = snapshot.identity(run.ro)
    markers = ledger.backup_times(run.ro)
    found = []
    for folder in (p.parent for p in root.glob(f"*/{backup.INFO}")):
        try:
            saved = _saved(folder)
        except CheckFailed as exc:
            found.append(Found(folder, None, None, exc.summary))
            continue
        if problem := _not_ours(saved, here, markers):  # backups of other databases share the plan's folder
            found.append(Found(folder, None, None, problem))
            continue
        found.append(Found(folder, saved, markers[saved.backup_id]))
    ours = sorted((f for f in found if f.taken_at is not None), key=lambda f: f.taken_at or datetime.min,
                  reverse=True)
    return ours + [f for f in found if f.taken_at is None]


def _pick(run: Phase4Run, root: Path) -> tuple[Path, snapshot.Snapshot]:
    here = snapshot.identity(run.ro)
    if (root / backup.INFO).is_file():  # the user named the backup itself
        saved = _saved(root)
        if problem := _not_ours(saved, here, ledger.backup_times(run.ro)):
            raise CheckFailed(f"a backup of this database ({_describe(here)})", problem, str(root),
                              hint="restoring it here would replace this database's data with another's: if that "
                                   "is really meant, use the pg_restore command in its BACKUP_INFO.txt by hand")
        return root, saved
    found = backups(run, root)
    if not found:
        raise CheckFailed(f"a backup ({backup.INFO}) in {root} or one of its <timestamp>/ folders", "none",
                          str(root), hint="give the backup's folder with --phase4-backup-dir=DIR")
    plan_files = {m.file for m in run.plan.migrations}
    for f in found:
        if f.saved is not None and not plan_files & set(f.saved.applied):
            return f.folder, f.saved
    others = [f"{f.folder.name} ({f.problem})" for f in found if f.saved is None]
    text = f"{len(found)} backup(s): " + ("; ".join(others) if others else "each taken after some migrations")
    raise CheckFailed(f"a backup of this database ({_describe(here)}) taken before any migration of the plan",
                      text, str(root), hint="give the backup to restore with --phase4-backup-dir=DIR")


def later_backups(run: Phase4Run, state: RollbackState, skipped: list[str]) -> list[Source]:
    """This database's backups taken after the chosen one, newest first, each verified: what a migration
    applied after one of them dropped comes back as it was then, not as in the older backup."""
    root = root_of(run)
    if (root / backup.INFO).is_file():
        return []
    found = []
    chosen = next((f for f in backups(run, root) if f.folder == state.folder), None)
    for f in backups(run, root):
        if chosen is None or f.saved is None or f.taken_at is None or chosen.taken_at is None \
                or f.taken_at <= chosen.taken_at:
            continue
        try:
            archive = f.folder / backup.DUMP
            backup.verify_archive(tools(run), archive, backup.read_info_sha(f.folder), run.target.secrets)
            if f.saved.backup_id not in backup.markers_in_dump(tools(run), archive, run.target.secrets):
                continue
            found.append(Source(f.folder.name, archive, pgscript.listing(tools(run), archive, run.target.secrets),
                                frozenset(f.saved.applied), f.saved.xid_snapshot))
        except CheckFailed as exc:
            skipped.append(f"backup {f.folder.name} not used: {exc.summary}")
    return found


def _not_ours(saved: snapshot.Snapshot, here: dict[str, str], markers: dict[str, datetime]) -> str | None:
    """Why the backup is not proven to be of this database, or None. A name is no proof: the marker row the
    backup wrote must be in this database (and, checked later, in the dump), and the database must be proven the
    one the backup was taken of as a baseline is (baselines.unproven: a marker copied by a dump and restore is
    written by another transaction)."""
    if not saved.backup_id:
        return f"a backup of {_describe(saved.source)} without an identity marker (made by an older version)"
    if not snapshot.same_database(saved.source, here):
        return f"a backup of {_describe(saved.source)}"
    if saved.backup_id not in markers:
        return (f"a backup of {_describe(saved.source)} whose marker {saved.backup_id} this database does not "
                "hold: another database of that name")
    if why := unproven(saved.source, here):  # the baselines' proof: oid, and cluster or the first marker's writer
        return f"a backup {why}"
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
