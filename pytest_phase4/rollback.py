"""Rollback (runbook Part 7) and rehearsal, proven by row counts, checksums and the catalog fingerprint.

Each public function is one step of the report. No pytest here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from pytest_phase4 import backup, catalog, snapshot
from pytest_phase4.errors import CheckFailed
from pytest_phase4.ledger import SCHEMA as OWN_SCHEMA
from pytest_phase4.safety import compare, tools

if TYPE_CHECKING:
    from pytest_phase4.run import Phase4Run


@dataclass
class RollbackState:
    folder: Path | None = None
    saved: snapshot.Snapshot | None = None  # the snapshot stored with the backup
    done: dict[str, str] = field(default_factory=dict)  # step -> what it observed, for steps that succeeded
    scratch: str | None = None  # partial rollback: a copy of the backup to copy columns from
    restored_columns: dict[str, list[str]] = field(default_factory=dict)


def locate(run: Phase4Run, state: RollbackState) -> str:
    """The given backup folder, else the newest backup taken before any migration of the plan was applied."""
    s = run.safety
    root = s.backup_root or Path("_backups") / backup.slug(run.plan.name)
    folder, saved = _pick(run, root)
    sha = backup.read_info_sha(folder)
    entries = backup.verify_archive(tools(run), folder / backup.DUMP, sha, run.target.secrets)
    state.folder, state.saved = folder, saved
    when = (f"taken with {len(saved.applied)} migration(s) applied" if saved.applied
            else "taken before any migration")
    return (f"{folder}: {backup.DUMP} sha256 {str(sha)[:16]} matches BACKUP_INFO.txt, {entries} entries readable; "
            f"{when}")


def _pick(run: Phase4Run, root: Path) -> tuple[Path, snapshot.Snapshot]:
    here = snapshot.identity(run.ro)
    if (root / backup.INFO).is_file():  # the user named the backup itself
        saved = _saved(root)
        if not snapshot.same_database(saved.source, here):
            raise CheckFailed(
                f"a backup of this database ({_describe(here)})", f"a backup of {_describe(saved.source)}", str(root),
                hint="restoring it here would replace this database's data with another's: if that is really "
                     "meant, use the pg_restore command in its BACKUP_INFO.txt by hand")
        return root, saved
    folders = sorted((p.parent for p in root.glob(f"*/{backup.INFO}")), reverse=True)
    if not folders:
        raise CheckFailed(f"a backup ({backup.INFO}) in {root} or one of its <timestamp>/ folders", "none",
                          str(root), hint="give the backup's folder with --phase4-backup-dir=DIR")
    plan_files = {m.file for m in run.plan.migrations}
    others: list[str] = []
    for folder in folders:
        saved = _saved(folder)
        if not snapshot.same_database(saved.source, here):  # backups of other databases share the plan's folder
            others.append(f"{folder.name} ({_describe(saved.source)})")
            continue
        if not plan_files & set(saved.applied):
            return folder, saved
    found = f"{len(folders)} backup(s): " + ("; ".join(others) + " of other databases" if others else
                                             "each taken after some migrations")
    raise CheckFailed(f"a backup of this database ({_describe(here)}) taken before any migration of the plan",
                      found, str(root), hint="give the backup to restore with --phase4-backup-dir=DIR")


def _describe(ident: dict[str, str]) -> str:
    if not ident:
        return "an unknown database (a backup made before pytest-phase4 recorded its source)"
    sysid = f", cluster {ident['system_identifier']}" if ident.get("system_identifier") else ""
    return f"database {ident.get('database', '?')} (oid {ident.get('oid', '?')}{sysid})"


def _saved(folder: Path) -> snapshot.Snapshot:
    try:
        return snapshot.Snapshot.from_json((folder / backup.SNAPSHOT).read_text())
    except (OSError, ValueError, KeyError) as exc:
        raise CheckFailed(f"the snapshot stored with the backup ({backup.SNAPSHOT})", f"unreadable: {exc}",
                          str(folder)) from None


def drop_created(run: Phase4Run, state: RollbackState) -> str:
    """Drop what the plan created since the backup, views first: they depend on the tables the restore drops."""
    assert state.saved is not None
    schema = run.plan.schema
    now = snapshot.fingerprint(run.ro, schema)
    created = [c for c in snapshot.diff(state.saved.fingerprint, now) if c.change == "added"]
    dropped: dict[str, list[str]] = {k: [] for k in ("view", "matview", "table", "index", "sequence", "function",
                                                     "type")}
    with _writer(run) as conn, conn.transaction():
        for kind in dropped:  # dependents first: views, then tables (with their indexes and owned sequences)
            for change in created:
                if change.kind != kind or _gone_with(change, dropped["table"], schema):
                    continue
                conn.execute(_drop_statement(kind, schema, change.name))
                dropped[kind].append(change.name)
        # The ledger belongs to the migrations being undone; the restore brings back the one of the backup.
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(OWN_SCHEMA)))
    parts = [f"{len(names)} {catalog.kind_words(kind)}(s) ({', '.join(names)})" for kind, names in dropped.items()
             if names]
    return f"dropped what was created after the backup: {'; '.join(parts) or 'nothing'}"


def _writer(run: Phase4Run) -> psycopg.Connection[Any]:
    # The same lock_timeout as migrations: a session holding a lock fails the step instead of hanging it.
    run.end_reads()
    return run.target.connect(read_only=False, autocommit=False, settings={"lock_timeout": run.lock_timeout})


def _gone_with(change: snapshot.Change, tables: list[str], schema: str) -> bool:
    """An index or owned sequence of a table already dropped went with it."""
    return any(f" ON {schema}.{t} " in change.after or f" owned by {t}." in change.after for t in tables)


def _drop_statement(kind: str, schema: str, name: str) -> sql.Composed:
    if kind == "function":  # "name(identity arguments)", as the catalog prints them
        proname, args = name.split("(", 1)
        return sql.SQL("DROP ROUTINE IF EXISTS {}({}) CASCADE").format(
            sql.Identifier(schema, proname), sql.SQL(args.removesuffix(")")))
    what = {"view": "VIEW", "matview": "MATERIALIZED VIEW", "table": "TABLE", "index": "INDEX",
            "sequence": "SEQUENCE", "type": "TYPE"}[kind]
    return sql.SQL("DROP {} IF EXISTS {} CASCADE").format(sql.SQL(what), sql.Identifier(schema, name))


def restore_full(run: Phase4Run, state: RollbackState) -> str:
    assert state.folder is not None
    archive = state.folder / backup.DUMP
    run.end_reads()
    backup.restore(tools(run), run.target.dsn, archive, run.target.secrets, clean=True)
    return f"pg_restore --clean --if-exists --single-transaction of {archive}"


def prove(run: Phase4Run, state: RollbackState, what: str) -> str:
    """Row counts, checksums or the catalog fingerprint equal the snapshot stored with the backup."""
    assert state.saved is not None
    saved = state.saved
    now = snapshot.take(run.ro, saved.schema)
    if what == "row_counts":
        diffs = [line for line in compare(saved, now) if line.startswith("rows of")]
        observed = f"{len(now.counts)} tables, {sum(now.counts.values()):,} rows as in the backup's snapshot"
    elif what == "checksums":
        diffs = [line for line in compare(saved, now) if line.startswith("checksum of")]
        observed = f"{len(now.checksums)} tables: every column's content checksum as in the backup's snapshot"
    else:
        changes = snapshot.diff(saved.fingerprint, now.fingerprint)
        diffs = snapshot.table_lines(changes) if changes else []
        observed = f"{len(now.fingerprint)} catalog objects as in the backup's snapshot"
    if diffs:
        raise CheckFailed(f"{what.replace('_', ' ')} equal to the snapshot stored with the backup",
                          f"{len(diffs)} difference(s)", f"schema {saved.schema}", details=diffs[:40],
                          hint="the rollback did not bring back the backup's state: restore manually with the "
                               f"command in {state.folder}/{backup.INFO}")
    return observed


# -- partial rollback: the dropped columns only --------------------------------------------------------------
def dropped_columns(run: Phase4Run, state: RollbackState) -> dict[str, list[tuple[str, str]]]:
    """table -> [(column, "type[ not null]")] present in the backup's snapshot and absent now."""
    assert state.saved is not None
    now = snapshot.fingerprint(run.ro, state.saved.schema)
    found: dict[str, list[tuple[str, str]]] = {}
    for key, definition in state.saved.fingerprint.items():
        kind, name = key.split(" ", 1)
        table = name.split(".", 1)[0]
        if kind == "column" and key not in now and f"table {table}" in now:
            found.setdefault(table, []).append((name.split(".", 1)[1], definition))
    return found


def restore_scratch(run: Phase4Run, state: RollbackState) -> str:
    assert state.folder is not None
    name = f"{run.ro.info.dbname}_phase4_columns"[:63]
    backup.create_database(run.target.dsn, name)
    state.scratch = name
    backup.restore(tools(run), backup.with_dbname(run.target.dsn, name), state.folder / backup.DUMP,
                   run.target.secrets, clean=False, owner=False)
    return f"backup restored into scratch database {name}"


def refill_columns(run: Phase4Run, state: RollbackState) -> str:
    """Re-add each dropped column and copy its values back by primary key, in one transaction."""
    assert state.scratch is not None
    schema = run.plan.schema
    missing = dropped_columns(run, state)
    if not missing:
        raise CheckFailed("columns dropped since the backup", "none: every column of the backup exists",
                          f"schema {schema}", hint="nothing to restore; use --phase4-rollback for a full rollback")
    scratch_dsn = backup.with_dbname(run.target.dsn, state.scratch)
    total = 0
    with psycopg.connect(scratch_dsn) as src, _writer(run) as dst, \
            dst.transaction():
        for table, cols in missing.items():
            key = catalog.primary_key(dst, schema, table)
            if not key:
                raise CheckFailed(f"a primary key on {schema}.{table} to copy the columns back by", "none",
                                  f"{schema}.{table}")
            for col, definition in cols:
                coltype = definition.removesuffix(" not null")
                dst.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                    sql.Identifier(schema, table), sql.Identifier(col), sql.SQL(coltype)))
            total += _copy_back(src, dst, schema, table, key, [c for c, _ in cols])
            for col, definition in cols:
                if definition.endswith(" not null"):
                    dst.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET NOT NULL").format(
                        sql.Identifier(schema, table), sql.Identifier(col)))
            state.restored_columns[table] = [c for c, _ in cols]
    names = [f"{t}.{c}" for t, cs in state.restored_columns.items() for c in cs]
    return f"{len(names)} column(s) re-added and refilled ({total:,} rows): {', '.join(names)}"


def _copy_back(src: psycopg.Connection[Any], dst: psycopg.Connection[Any], schema: str, table: str,
               key: list[str], cols: list[str]) -> int:
    both = [*key, *cols]
    ids = sql.SQL(", ").join(sql.Identifier(c) for c in both)
    dst.execute(sql.SQL("CREATE TEMP TABLE phase4_refill ON COMMIT DROP AS SELECT {} FROM {} LIMIT 0").format(
        ids, sql.Identifier(schema, table)))
    rows = 0
    with src.cursor().copy(sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT (FORMAT BINARY)").format(
            ids, sql.Identifier(schema, table))) as out, dst.cursor().copy(
            sql.SQL("COPY phase4_refill ({}) FROM STDIN (FORMAT BINARY)").format(ids)) as into:
        for data in out:
            into.write(data)
    dst.execute(sql.SQL("UPDATE {} AS t SET {} FROM phase4_refill AS r WHERE {}").format(
        sql.Identifier(schema, table),
        sql.SQL(", ").join(sql.SQL("{} = r.{}").format(sql.Identifier(c), sql.Identifier(c)) for c in cols),
        sql.SQL(" AND ").join(sql.SQL("t.{} = r.{}").format(sql.Identifier(k), sql.Identifier(k)) for k in key)))
    rows = int(dst.execute("SELECT count(*) FROM phase4_refill").fetchone()[0])  # type: ignore[index]
    dst.execute("DROP TABLE phase4_refill")
    return rows


def prove_columns(run: Phase4Run, state: RollbackState) -> str:
    """Checksum of (primary key, restored columns) per table equals that of the backup's copy."""
    assert state.scratch is not None
    schema = run.plan.schema
    diffs, seen = [], []
    with psycopg.connect(backup.with_dbname(run.target.dsn, state.scratch), autocommit=True) as src:
        for table, cols in state.restored_columns.items():
            both = [*catalog.primary_key(run.ro, schema, table), *cols]
            a = snapshot.checksum(src, schema, table, both)
            b = snapshot.checksum(run.ro, schema, table, both)
            seen.append(f"{table}({', '.join(cols)}): {b.rows:,} rows")
            if a != b:
                diffs.append(f"{schema}.{table}: backup {a.describe()}; now {b.describe()}")
    if diffs or not seen:
        raise CheckFailed("every restored column's values equal the backup's", f"{len(diffs)} table(s) differ",
                          f"schema {schema}", details=diffs)
    return "values equal the backup's, by checksum: " + "; ".join(seen)


def drop_scratch(run: Phase4Run, state: RollbackState) -> None:
    if state.scratch is not None:
        backup.drop_database(run.target.dsn, state.scratch)
        state.scratch = None


# -- rehearsal -----------------------------------------------------------------------------------------------
def rehearse(run: Phase4Run, rootdir: Path) -> str:
    """Run the whole plan against a scratch copy restored from this run's backup, in a child pytest."""
    s = run.safety
    if s.folder is None or not s.verified:
        raise CheckFailed("a verified backup made by this run to rehearse on", "none", "backup stage",
                          hint="the rehearsal restores this run's backup: keep the backup stage selected")
    name = f"{run.ro.info.dbname}_phase4_rehearsal"[:63]
    with backup.scratch_database(run.target.dsn, name) as dsn:
        backup.restore(tools(run), dsn, s.folder / backup.DUMP, run.target.secrets, clean=False, owner=False)
        env = dict(os.environ, PHASE4_DSN=dsn)  # in the environment: a password never reaches the command line
        args = [sys.executable, "-m", "pytest", "--phase4", f"--phase4-plan={run.plan.path}",
                "--phase4-confirm-destructive", f"--phase4-backup-dir={s.folder / 'rehearsal'}",
                f"--html={s.folder / 'rehearsal.html'}", "-p", "no:cacheprovider", "-q", "-rfEs",
                f"--rootdir={rootdir}"]
        proc = subprocess.run(args, cwd=rootdir, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, check=False)
    output = run.target.scrub(proc.stdout + proc.stderr)
    lines = [line for line in output.splitlines() if line.strip()]
    summary = lines[-1].strip("= ") if lines else "no output"
    if proc.returncode != 0:
        failed = [line for line in lines if re.match(r"^(FAILED|ERROR) ", line)]
        raise CheckFailed("the whole plan green on a scratch copy restored from the backup",
                          f"exit {proc.returncode}: {summary}", f"scratch database {name}",
                          details=failed[:20] or lines[-20:],
                          hint="nothing was done to the target: fix the plan or migration, then run again")
    return f"rehearsal on {name} green: {summary}; report {s.folder / 'rehearsal.html'}"
