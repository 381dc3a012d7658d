"""Data safety for one run (runbook Parts 2 and 4): the backup stage's checks, the before/after snapshot
checks, and the gate in front of a destructive migration. No pytest here: the pytest layer sets `ask`.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from pytest_phase4.db import catalog, inventory, ledger
from pytest_phase4.db.pool import count_all
from pytest_phase4.errors import CheckFailed, sql_error, timeout_hint
from pytest_phase4.kinds.base import Column, Kind, Param, register
from pytest_phase4.kinds.context import CheckSkipped, NoBaseline
from pytest_phase4.plan.model import CheckSpec, Migration, Plan
from pytest_phase4.rls import personas
from pytest_phase4.safety import backup, catdiff, snapshot

if TYPE_CHECKING:
    from pytest_phase4.run import Phase4Run



@dataclass
class SafetyState:
    """Options and what this run has made and proven so far."""

    backup_root: Path | None = None  # <root>/<timestamp>/ per run
    verify_restore: bool = False
    rehearse: bool = False
    rollback: str | None = None  # None, "full" or "columns"
    ask: Callable[[str], bool | None] | None = None  # yes/no on a terminal; None when there is none
    tools: backup.Tools | None = None
    folder: Path | None = None  # this run's backup
    sha256: str | None = None
    verified: bool = False  # pg_restore read the whole archive
    restore_verified: bool = False
    backup_snapshot: snapshot.Snapshot | None = None
    catalog_changes: list[tuple[snapshot.Change, bool]] | None = None  # (change, expected by the plan)

    def has_backup_stage(self, plan: Plan) -> bool:
        return any(s.kind == "backup" for s in plan.stages.get("backup", ()))


def kept_columns(run: Phase4Run) -> dict[str, list[str]]:
    """Columns that must survive, per table named by a checksum_unchanged check: every column the table has
    now except those the plan drops (its column_absent checks)."""
    plan = run.plan
    dropped = {(c.table, c.column) for step in plan.steps for s in step.checks if s.kind == "column_absent"
               for c in [s.element] if isinstance(c, Column)}
    tables = [s.element for step in plan.steps for s in step.checks if s.kind == "checksum_unchanged"]
    return {t: [c for c in catalog.columns(run.ro, plan.schema, t) if (t, c) not in dropped]
            for t in dict.fromkeys(tables)}


def capture(run: Phase4Run) -> snapshot.Snapshot:
    """The run's baseline: row counts, kept-column checksums, the fingerprint and the inventory that catalog_diff
    compares, with the settings the checksums were computed under, the database's identity and what was applied."""
    try:
        counts = count_all(run.ro, run.pool(), run.plan.schema)
        snap = snapshot.take(run.ro, run.plan.schema, kept_columns(run), pool=run.pool(), counts=counts)
    except psycopg.Error as exc:
        raise CheckFailed(f"row counts of every table in schema {run.plan.schema}, recorded before migrating",
                          sql_error(exc), f"schema {run.plan.schema}",
                          hint=timeout_hint(exc, run.check_timeout)) from None
    snap.objects = [o.to_json() for o in inventory.take(run.ro).values()]
    snap.settings, snap.formula = snapshot.pinned_settings(run.plan.schema), dict(snapshot.FORMULA)
    snap.taken_at = datetime.now(UTC).isoformat()
    snap.source, snap.markers = run.identity(), sorted(ledger.backup_markers(run.ro))
    snap.applied = sorted(set(ledger.read(run.ro)) | {f for f, s in run.states.items() if s.applied})
    snap.plan = {"name": run.plan.name, "path": str(run.plan.path), "sha256": run.plan.sha256}
    snap.personas = personas.for_baseline(run, snap.applied)  # a re-run compares with what they saw then
    return snap




def baseline(run: Phase4Run, checksums: bool = False) -> snapshot.Snapshot:
    """The baseline the comparisons use, or CheckSkipped saying why there is none (or, for checksums, why its
    checksums cannot be compared with those computed now)."""
    choice = run.baseline()
    if choice.baseline is None:
        raise NoBaseline(choice.why_not)
    snap = choice.baseline.snap
    if checksums and (why := snap.comparable()):
        raise NoBaseline(f"the baseline {choice.baseline.label} cannot be compared: {why}")
    return snap


def since(snap: snapshot.Snapshot) -> str:
    """For a hint: when the baseline was taken, since which the application's own writes count too."""
    return f"; compared with the baseline taken {snap.taken_at}: rows written since then count too" \
        if snap.taken_at else ""


def _server_major(run: Phase4Run) -> int:
    return run.ro.info.server_version // 10000


def tools(run: Phase4Run) -> backup.Tools:
    if run.safety.tools is None:
        run.safety.tools = backup.find_tools(_server_major(run))
    return run.safety.tools


def backup_folder(run: Phase4Run) -> Path:
    s = run.safety
    if s.folder is None:
        root = s.backup_root or Path("_backups") / backup.slug(run.plan.name)
        stamp = run.started_at.strftime("%Y%m%dT%H%M%SZ")
        s.folder = root / stamp
        for n in range(2, 100):  # a second run within the same second: never write into another run's backup
            if not s.folder.exists():
                break
            s.folder = root / f"{stamp}-{n:02d}"
    return s.folder


# the backup stage's steps, in order
BACKUP_STEPS = ("dump", "schema", "snapshot", "info", "verify", "restore")


# -- check kinds ---------------------------------------------------------------------------------------------
def _guarded(fn: Callable[[Phase4Run, CheckSpec], str]) -> Callable[[Any, CheckSpec], str]:
    """The kind's code, with an SQL error or a file that cannot be written turned into a failure naming the check."""

    @functools.wraps(fn)
    def run_check(run: Phase4Run, spec: CheckSpec) -> str:
        try:
            return fn(run, spec)
        except CheckFailed as exc:
            exc.origin = exc.origin or spec.where
            exc.hint = exc.hint or spec.hint
            raise
        except psycopg.Error as exc:
            raise CheckFailed(f"check {spec.test_id} to run", run.target.scrub(sql_error(exc)), spec.where,
                              hint=spec.hint or timeout_hint(exc, run.check_timeout)) from None
        except OSError as exc:  # a full disk or a folder that cannot be written: a failed step, not a crash
            where = exc.filename or (run.safety.folder if spec.kind == "backup" else None) or spec.where
            raise CheckFailed(f"{spec.test_id} to write its files", f"{exc.strerror or exc}", str(where),
                              hint="free space there or choose another --phase4-backup-dir; nothing in the database "
                                   "was changed") from None

    return run_check


def backup_step(run: Phase4Run, spec: CheckSpec) -> str:
    s, step = run.safety, spec.element
    folder = backup_folder(run)
    secrets = run.target.secrets
    if step == "dump":
        if folder.exists() and any(folder.iterdir()):
            raise CheckFailed("an empty folder for this run's backup", "a folder that already holds files",
                              str(folder), hint="never overwrite a backup: choose another --phase4-backup-dir")
        archive = one_moment(run, folder)
        s.sha256 = backup.sha256_of(archive)
        marker = s.backup_snapshot.backup_id if s.backup_snapshot else "?"
        return (f"{archive}: {archive.stat().st_size:,} bytes, sha256 {s.sha256[:16]}; with {backup.SCHEMA} and "
                f"{backup.SNAPSHOT}, of one exported snapshot (marker {marker})")
    archive = folder / backup.DUMP
    if s.sha256 is None or s.backup_snapshot is None:
        raise CheckFailed("a dump made by this run", "none: the dump step did not succeed", str(folder))
    if step == "schema":
        path = folder / backup.SCHEMA
        return f"{path}: {path.stat().st_size:,} bytes, the same moment as {backup.DUMP}"
    if step == "snapshot":
        snap = snapshot.Snapshot.from_json((folder / backup.SNAPSHOT).read_text())
        every = sum(c.rows for t in snap.tables.values() for c in t.values())
        return (f"{folder / backup.SNAPSHOT}: {len(snap.counts)} tables, {sum(snap.counts.values()):,} rows in "
                f"{snap.schema} ({every:,} rows in {sum(len(t) for t in snap.tables.values())} tables of every "
                f"schema), {len(snap.objects)} catalog objects, the same moment as {backup.DUMP}")
    if step == "info":
        command = backup.restore_command(tools(run), run.target.dsn, archive)
        path = backup.write_info(folder, plan=run.plan.name, source=run.target.label, server=run.server_version,
                                 tools=tools(run), archive=archive, sha=s.sha256, command=command,
                                 made_at=datetime.now(UTC))
        return f"{path}: restore with {command}"
    if step == "verify":
        entries = backup.verify_archive(tools(run), archive, s.sha256, secrets)
        s.verified = True
        return f"pg_restore read {archive.name} whole: {entries} entries, sha256 {s.sha256[:16]} matches"
    if step == "restore":
        if not s.verify_restore:
            raise CheckSkipped("restore into a scratch database not requested (--phase4-verify-restore)")
        return verify_restore(run, archive)
    raise AssertionError(step)


def one_moment(run: Phase4Run, folder: Path) -> Path:
    """Write the backup's marker row, then dump, schema-dump and snapshot (counts, checksums, fingerprint,
    inventory) one exported snapshot: the files describe one moment even while the application writes."""
    s, secrets = run.safety, run.target.secrets
    backup_id = str(uuid.uuid4())
    with run.target.connect(read_only=False, autocommit=False, settings={"lock_timeout": run.lock_timeout}) as w:
        ledger.mark_backup(w, backup_id, folder.name)
    run.store.identity = None  # read again: the database may now hold its first marker (snapshot.identity)
    pool = run.pool()
    with run.target.connect(read_only=True, autocommit=False,
                            settings={"statement_timeout": run.check_timeout}) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        row = conn.execute("SELECT pg_catalog.pg_export_snapshot()").fetchone()
        exported = str(row[0]) if row else None
        try:
            if pool is not None and exported:
                pool.adopt(exported)
            archive = backup.dump(tools(run), run.target.dsn, folder, secrets, exported=exported)
            backup.dump_schema(tools(run), run.target.dsn, folder, secrets, exported=exported)
            snap = snapshot.take_all(conn, run.plan.schema, pool)
            snap.applied = sorted(ledger.read(conn))
            snap.source = snapshot.identity(conn)
            snap.backup_id = backup_id
            row = conn.execute("SELECT pg_catalog.pg_current_snapshot()::text").fetchone()
            snap.xid_snapshot = str(row[0]) if row else ""
        finally:
            if pool is not None:
                pool.end()
            conn.rollback()
    backup.write_private(folder / backup.SNAPSHOT, snap.to_json())
    s.backup_snapshot = snap
    return archive


def verify_restore(run: Phase4Run, archive: Path) -> str:
    s = run.safety
    if s.backup_snapshot is None:
        raise CheckFailed("the snapshot step to have run", "no snapshot in this run", str(archive.parent))
    with backup.scratch_database(run.target.dsn, _dbname(run), "verify") as made:
        scratch, dsn = made.name, made.dsn
        backup.restore(tools(run), dsn, archive, run.target.secrets, clean=False, owner=False)
        with psycopg.connect(dsn, autocommit=True) as conn:
            copy = snapshot.take(conn, run.plan.schema)
    count, problems = differences(s.backup_snapshot, copy)
    if problems:
        raise CheckFailed("the restored copy to equal the source (row counts, checksums, catalog)",
                          f"{count} difference(s)", f"scratch database {scratch}", details=problems[:40])
    s.restore_verified = True
    return (f"restored into {scratch}: {len(copy.counts)} tables, {sum(copy.counts.values()):,} rows, "
            "checksums and catalog fingerprint equal the source")


def _dbname(run: Phase4Run) -> str:
    return str(run.ro.info.dbname)


def compare(expected: snapshot.Snapshot, found: snapshot.Snapshot) -> list[str]:
    """Every difference in row counts, content checksums and catalog, as lines (empty when equal)."""
    return differences(expected, found)[1]


def differences(expected: snapshot.Snapshot, found: snapshot.Snapshot) -> tuple[int, list[str]]:
    """How many differences (a catalog table's header row is not one), and the lines that show them."""
    lines = []
    for table in sorted(set(expected.counts) | set(found.counts)):
        a, b = expected.counts.get(table), found.counts.get(table)
        if a != b:
            shown = ["no such table" if n is None else f"{n:,}" for n in (a, b)]
            lines.append(f"rows of {expected.schema}.{table}: expected {shown[0]}, found {shown[1]}")
        ea, fb = expected.checksums.get(table), found.checksums.get(table)
        if ea and fb and ea.columns == fb.columns and ea.sum != fb.sum:
            lines.append(f"checksum of {expected.schema}.{table}: expected {ea.sum}, found {fb.sum}")
    count = len(lines)
    changes = snapshot.diff(expected.fingerprint, found.fingerprint)
    if changes:
        lines += snapshot.table_lines(changes)
    return count + len(changes), lines


def checksum_unchanged(run: Phase4Run, spec: CheckSpec) -> str:
    table = spec.element
    before = baseline(run, checksums=True)
    recorded = before.checksums.get(table)
    where = f"{run.plan.schema}.{table}"
    if recorded is None:
        found = "none: the table did not exist then" if table not in before.counts else \
            "none: the plan had no checksum_unchanged check of it when the baseline was taken"
        raise CheckFailed(f"a checksum of {where} recorded before the first migration", found, where)
    now = snapshot.checksum(run.ro, run.plan.schema, table, recorded.columns, like=recorded)
    if now != recorded:
        rows = f"{now.rows:,} rows ({now.rows - recorded.rows:+,})" if now.rows != recorded.rows else \
            f"{now.rows:,} rows, same count"
        raise CheckFailed(f"{where}: {recorded.describe()} (recorded before migrating)",
                          f"{rows}, checksum {now.sum}", where,
                          hint=spec.hint or f"a migration changed or deleted rows of {table} that must be kept: "
                                            "put the backup's rows back (--phase4-rollback=restore)" + since(before))
    return f"{where}: {now.describe()}, as before"


def row_counts_match(run: Phase4Run, spec: CheckSpec) -> str:
    snap = baseline(run)
    deltas: dict[str, int] = spec.params["deltas"]
    schema = run.plan.schema
    unknown = sorted(set(deltas) - set(snap.counts))
    now = {t: catalog.count_rows(run.ro, schema, t) for t in catalog.tables(run.ro, schema) if t in snap.counts}
    rows = [("table", "before", "delta allowed", "expected", "found")]
    for table, before in sorted(snap.counts.items()):
        want = before + deltas.get(table, 0)
        found = now.get(table)
        if found != want:
            rows.append((table, f"{before:,}", f"{deltas.get(table, 0):+,}", f"{want:,}",
                         "table gone" if found is None else f"{found:,}"))
    if unknown or len(rows) > 1:
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = [" | ".join(r[i].ljust(widths[i]) for i in range(5)).rstrip() for r in rows] if len(rows) > 1 else []
        lines += [f"deltas name {t}, which had no row count before migrating" for t in unknown]
        raise CheckFailed(f"every table's row count as before migrating, plus the plan's deltas ({len(deltas)})",
                          f"{len(rows) - 1} table(s) differ" + (f", {len(unknown)} unknown delta(s)" if unknown
                                                                 else ""),
                          f"schema {schema}", details=lines,
                          hint=spec.hint or "rows were lost or added: put the backup's rows back "
                                            "(--phase4-rollback=restore), or declare the intended change in deltas"
                                            + since(snap))
    total = sum(now.values())
    return f"{len(now)} tables, {total:,} rows: every count as before" + (
        f", with deltas {', '.join(f'{t} {d:+,}' for t, d in sorted(deltas.items()))}" if deltas else "")


def catalog_diff(run: Phase4Run, spec: CheckSpec) -> str:
    before = baseline(run)
    if not before.objects:
        raise CheckSkipped("the baseline holds no catalog inventory (written by an older version): nothing to "
                           "compare the catalog with")
    found = catdiff.diff(catdiff.objects(before.objects), inventory.take(run.ro).values(), run.plan.schema)
    judged = catdiff.judge(found, catdiff.Expected.of(run.plan, spec.params["expect"]))
    run.safety.catalog_changes = judged
    unexpected = [c for c, ok in judged if not ok]
    if unexpected:
        raise CheckFailed("every catalog change to be expected by the plan",
                          f"{len(unexpected)} unexpected change(s) of {len(judged)}", "every schema",
                          details=snapshot.table_lines(unexpected),
                          hint=spec.hint or "if a migration is meant to make the change, say so in the plan: a "
                                            "verify check naming it, or its name in catalog_diff's expect; else "
                                            "find the migration that made it")
    kinds: dict[str, int] = {}
    for change, _ in judged:
        key = f"{change.label} {change.change}"
        kinds[key] = kinds.get(key, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "no change"
    return f"{len(judged)} catalog change(s), all expected by the plan: {summary}"


def _backup_steps(params: Mapping[str, Any]) -> str | None:
    steps = params["steps"]
    if any(s not in BACKUP_STEPS for s in steps) or list(steps) != sorted(steps, key=BACKUP_STEPS.index):
        return f"steps must be some of {list(BACKUP_STEPS)}, in that order"
    return None


_tables = Param("names")
# Data safety (the backup stage, the comparisons with the baseline): they need the whole run, not one connection,
# and read at their own moment (a backup's snapshot describes the dump). None describes what a migration left.
register(
    Kind("backup", "pg_dump of the whole database, schema dump, snapshot, BACKUP_INFO.txt, verified",
         {"steps": Param("names", False, BACKUP_STEPS)}, expand="steps", constraint=_backup_steps,
         run_whole=_guarded(backup_step), state=False),
    Kind("checksum_unchanged", "the kept columns' content checksum equals the one recorded before migrating",
         {"tables": _tables}, expand="tables", run_whole=_guarded(checksum_unchanged), state=False, compares=True),
    Kind("row_counts_match", "every table's row count equals the one recorded before migrating, plus its delta",
         {"deltas": Param("deltas", False, {})}, label_fn=lambda p, _: "every_table",
         run_whole=_guarded(row_counts_match), state=False, compares=True),
    Kind("catalog_diff", "every catalog change since before the first migration is expected by the plan",
         {"expect": Param("names", False, ())}, label_fn=lambda p, _: "schema", run_whole=_guarded(catalog_diff),
         state=False, compares=True),
)


# -- the point of no return ----------------------------------------------------------------------------------
def gate(run: Phase4Run, migration: Migration) -> str | None:
    """Why the destructive migration must not run now, or None when every condition holds."""
    s = run.safety
    head = f"stopped at the point of no return: {migration.file} is destructive ({migration.title})"
    if run.halt is not None:
        return f"{head} and an earlier step failed ({run.halt.step})"
    if s.has_backup_stage(run.plan):
        if s.folder is None or s.sha256 is None or not s.verified:
            return (f"{head} and this run made no verified backup; run the backup stage with it (do not deselect "
                    "it with -m or -k)")
        if s.verify_restore and not s.restore_verified:
            return f"{head} and the backup was not restored and compared (--phase4-verify-restore)"
        try:  # the file may have changed since it was verified: check it again, right before the change
            backup.verify_archive(tools(run), s.folder / backup.DUMP, s.sha256, run.target.secrets)
        except CheckFailed as exc:
            return f"{head} and the backup no longer verifies: {exc.summary} ({exc.where})"
    if run.confirm_destructive:
        return None
    if s.ask is not None:
        where = f"; backup {s.folder / backup.DUMP} verified" if s.folder and s.verified else ""
        answer = s.ask(f"{migration.file} is destructive ({migration.title}){where}. Run it now? [yes/no] ")
        if answer is True:
            return None
        if answer is False:
            return f"{head} and the confirmation prompt was answered no"
    return (f"{head} and was not confirmed; verify the backup, then rerun with --phase4-confirm-destructive")

