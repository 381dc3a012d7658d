"""The ledger: which migrations are applied to the target, written in the migration's own transaction."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from pytest_phase4.plan.model import timestamped

SCHEMA = "pytest_phase4"

_CREATE = """
CREATE SCHEMA IF NOT EXISTS pytest_phase4;
CREATE TABLE IF NOT EXISTS pytest_phase4.ledger (
    file        text PRIMARY KEY,
    sha256      text NOT NULL,
    plan        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    duration_ms numeric(12, 1) NOT NULL
);
COMMENT ON TABLE pytest_phase4.ledger IS 'migrations applied by pytest-phase4; one row per file';
-- true when the migration's changes are in pytest_phase4.changes (what --phase4-rollback reverts)
ALTER TABLE pytest_phase4.ledger ADD COLUMN IF NOT EXISTS recorded boolean NOT NULL DEFAULT false;
-- the migration's transaction id: a row whose xmin is none of the plan's was written (or changed) by someone else
ALTER TABLE pytest_phase4.ledger ADD COLUMN IF NOT EXISTS xid bigint;
"""


@dataclass(frozen=True)
class Entry:
    file: str
    sha256: str
    plan: str
    applied_at: datetime
    duration_ms: float


def read(conn: psycopg.Connection[Any]) -> dict[str, Entry]:
    """The ledger's rows, or nothing when no migration was ever applied (reading creates nothing)."""
    row = conn.execute("SELECT to_regclass('pytest_phase4.ledger') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return {}
    rows = conn.execute(
        "SELECT file, sha256, plan, applied_at, duration_ms::float8 FROM pytest_phase4.ledger").fetchall()
    return {r[0]: Entry(*r) for r in rows}


def conflict(applied: dict[str, Entry], plan_files: Collection[str], file: str,
             sha256: str) -> tuple[str, str] | None:
    """Why the ledger forbids applying `file` (which it does not list) now, or None: a short note, and the reason
    that completes "refusing to apply <file>: ". The plan's own later migrations are the caller's to weigh; this
    sees what the plan cannot: the same content applied under another name (a rename, a copy), and a migration
    stamped later that the ledger lists but this plan does not (a branch from before it was merged)."""
    same = sorted((e for e in applied.values() if e.sha256 == sha256 and e.file != file), key=lambda e: e.applied_at)
    if same:
        twin = same[0]
        return f"same content as {twin.file} (ledger)", (
            f"its content (sha256 {sha256[:12]}) is that of {twin.file}, applied {twin.applied_at:%Y-%m-%d %H:%M} "
            "(ledger): it is the same migration under another name, and applying it would run it a second time. "
            f"If {twin.file} was renamed, give it its name back; if {file} is meant to run that SQL again, say so "
            "in a comment at its top (its content then differs)")
    later = sorted(f for f in applied if f not in plan_files and timestamped(f) and timestamped(file) and f > file)
    if later:
        last = applied[later[-1]]
        return f"{last.file}, stamped after it, is applied (ledger)", (
            f"the ledger lists {', '.join(later)} (plan {last.plan!r}, applied {last.applied_at:%Y-%m-%d %H:%M}), "
            f"stamped after it, which this plan does not list: applying {file} now would run it after {last.file}, "
            f"out of order (is this plan a branch from before {later[0]} was merged?). Add {', '.join(later)} to "
            f"the plan, or give {file} a timestamp after {last.file}")
    return None


def record(conn: psycopg.Connection[Any], file: str, sha256: str, plan: str, duration_ms: float) -> None:
    """Insert the ledger row; call inside the migration's transaction so both commit or neither does."""
    conn.execute(_CREATE)
    conn.execute(
        "INSERT INTO pytest_phase4.ledger (file, sha256, plan, duration_ms, recorded, xid)"
        " VALUES (%s, %s, %s, %s, true, txid_current())", (file, sha256, plan, round(duration_ms, 1)))


_BACKUPS = """
CREATE SCHEMA IF NOT EXISTS pytest_phase4;
CREATE TABLE IF NOT EXISTS pytest_phase4.backups (
    id       uuid PRIMARY KEY,
    taken_at timestamptz NOT NULL DEFAULT now(),
    folder   text NOT NULL
);
COMMENT ON TABLE pytest_phase4.backups IS 'one row per backup, written just before its dump: ties a backup to '
    'the database it was taken from (the row travels in the dump and stays in the database)';
"""


def mark_backup(conn: psycopg.Connection[Any], backup_id: str, folder: str) -> None:
    """The one write of the backup stage: a row naming the backup, committed before the dump."""
    with conn.transaction():
        conn.execute(_BACKUPS)
        conn.execute("INSERT INTO pytest_phase4.backups (id, folder) VALUES (%s, %s)", (backup_id, folder))


def backup_markers(conn: psycopg.Connection[Any]) -> set[str]:
    """The backups this database holds the marker of (none when no backup was ever taken of it)."""
    return set(backup_times(conn))


def backup_times(conn: psycopg.Connection[Any]) -> dict[str, datetime]:
    """The backups this database holds the marker of, with the time each was taken (a rollback orders backups by
    it, never by folder name)."""
    row = conn.execute("SELECT to_regclass('pytest_phase4.backups') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return {}
    return {str(r[0]): r[1] for r in conn.execute("SELECT id, taken_at FROM pytest_phase4.backups").fetchall()}


def supabase_versions(conn: psycopg.Connection[Any]) -> set[str] | None:
    """The versions supabase_migrations.schema_migrations lists, or None when the target has no such table."""
    row = conn.execute("SELECT to_regclass('supabase_migrations.schema_migrations') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return None
    return {str(r[0]) for r in conn.execute("SELECT version FROM supabase_migrations.schema_migrations").fetchall()}


def supabase_version(file: str) -> str:
    """The version Supabase's history gives a migration file: its name up to the first '_'."""
    return file.removesuffix(".sql").partition("_")[0]


def sync_supabase(conn: psycopg.Connection[Any], file: str, text: str) -> None:
    """Keep Supabase's own migration history in step, so `supabase migration list` agrees with the ledger.

    Only when the target has supabase_migrations.schema_migrations; same transaction as the migration."""
    row = conn.execute("SELECT to_regclass('supabase_migrations.schema_migrations') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return
    version, _, name = file.removesuffix(".sql").partition("_")  # as supabase_version
    columns = {r[0] for r in conn.execute(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = 'supabase_migrations' AND table_name = 'schema_migrations'").fetchall()}
    if "statements" in columns:
        conn.execute("INSERT INTO supabase_migrations.schema_migrations (version, name, statements)"
                     " VALUES (%s, %s, %s) ON CONFLICT (version) DO NOTHING", (version, name, [text]))
    else:
        conn.execute("INSERT INTO supabase_migrations.schema_migrations (version, name)"
                     " VALUES (%s, %s) ON CONFLICT (version) DO NOTHING", (version, name))
