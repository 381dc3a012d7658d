"""What a revert will do, keep and lose, read before anything changes and read again once its locks are held.

Nothing is lost without being listed and consented to (--phase4-accept-loss): rows written since by others in
tables the plan created, values others wrote into columns the plan added, objects others changed after the plan
changed them, values that do not fit a column's original type, rows of a refilled table that cannot be told apart
from a new row under the same key. Some things cannot be reverted at all (a value that cannot be cast back, an
object that took the name of one to bring back): those are refused. No pytest here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from pytest_phase4.db import changes, inventory, ledger, migrate
from pytest_phase4.db.inventory import Obj
from pytest_phase4.errors import CheckFailed
from pytest_phase4.safety import backup, normalize, pgscript, revert
from pytest_phase4.safety.checks import tools
from pytest_phase4.safety.refill import load
from pytest_phase4.safety.revert import Net
from pytest_phase4.safety.revert_apply import Reverter
from pytest_phase4.safety.rollback import RollbackState, to_undo
from pytest_phase4.safety.rollback_sources import later_backups

if TYPE_CHECKING:
    from pytest_phase4.run import Phase4Run

_OTHERS = "(t.xmin::text::int8) <> ALL({})"  # a row whose current version none of the plan's transactions wrote


def assess_revert(run: Phase4Run, state: RollbackState) -> str:
    """Read the records of the migrations to undo and say what the revert will do, keep and cannot undo;
    refuse before any change when it cannot be done, or would lose anything without --phase4-accept-loss."""
    assert state.folder is not None
    assert state.saved is not None
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
                  schema=run.plan.schema, snapshot=state.saved.xid_snapshot)
    rv.plan_xids = plan_xids(run.ro, state.files, records)
    skipped: list[str] = []
    if rv.plan_refills() or rv.to_restore():
        rv.sources = later_backups(run, state, skipped)
    if missing := rv.missing_copies():
        raise CheckFailed("a copy in the backup of everything the plan dropped", f"{len(missing)} missing",
                          str(state.folder), details=missing, hint="nothing was changed: use --phase4-rollback=restore")
    state.records, state.reverter = records, rv
    state.kept = _kept(run, state)
    run.end_reads()
    with run.target.connect(read_only=False, autocommit=False) as scratch:  # temporary tables only, rolled back
        try:
            losses, notes = revert_losses(scratch, state)
        finally:
            scratch.rollback()
    if losses and not state.accept_loss:
        raise CheckFailed("a revert that loses nothing written since the backup", f"{len(losses)} loss(es)",
                          "the database now", details=losses,
                          hint="nothing was changed: move or keep those first, or accept their loss with "
                               "--phase4-accept-loss (they stay in the pre-rollback dump)")
    state.accepted = losses
    state.notes = losses + notes + skipped

    def recheck(conn: psycopg.Connection[Any]) -> list[str]:
        rv.conn = conn
        rv.prepare(conn)  # the refills' rows, read once the locks are held and before any change
        return revert_losses(conn, state)[0]

    state.recheck = recheck
    counts = {a: sum(n.action == a for n in nets) for a in ("drop", "restore", "alter")}
    return (f"revert {len(state.files)} migration(s), newest first ({', '.join(reversed(state.files))}): "
            f"{counts['drop']} object(s) to drop, {counts['restore']} to bring back, {counts['alter']} to alter "
            "back" + (f"; {len(state.notes)} note(s): " + "; ".join(state.notes) if state.notes else ""))


def plan_xids(conn: psycopg.Connection[Any], files: list[str], records: dict[str, changes.Record]) -> list[int]:
    """The 32-bit ids (as a row's xmin reads) of every transaction and subtransaction of the migrations."""
    found = {int(r[0]) for r in conn.execute("SELECT xid FROM pytest_phase4.ledger WHERE file = ANY(%s)"
                                             " AND xid IS NOT NULL", (files,)).fetchall()}
    for record in records.values():
        found |= record.xids or set()
    return sorted({x & 0xFFFFFFFF for x in found})


def _kept(run: Phase4Run, state: RollbackState) -> dict[str, tuple[str, str]]:
    """The migrations whose row changes of kept tables the revert keeps: a later run must not apply them again."""
    assert state.reverter is not None
    dropped = {n.obj.identity for n in state.reverter.nets if n.action in ("drop", "restore")}
    applied = ledger.read(run.ro)
    kept = {}
    for file, record in state.records.items():
        rows = [r for r in record.rows or [] if r.relation not in dropped and (r.inserted or r.updated or r.deleted)]
        if rows or record.rows is None:
            entry = applied.get(file)
            migration = next((m for m in run.plan.migrations if m.file == file), None)
            sha = entry.sha256 if entry else migrate.file_sha256(migration) if migration else ""
            kept[file] = (sha, "; ".join(f"{r.relation}: {r.describe()}" for r in rows) or "not recorded")
    return kept


def revert_losses(conn: psycopg.Connection[Any], state: RollbackState) -> tuple[list[str], list[str]]:
    """(what the revert would lose, each needing consent; notes: what it keeps or cannot undo). Raises when
    something cannot be reverted at all. `conn` may create temporary tables (its transaction is rolled back, or
    is the rollback's)."""
    rv = state.reverter
    assert rv is not None
    losses: list[str] = []
    hard: list[str] = []
    live = {**inventory.take(conn), **changes.large_objects(conn)}
    _follow(rv.nets, live)
    unknown = [f for f, r in state.records.items() if r.rows is None]
    tables = {n.obj.identity: n.obj for n in rv.nets if n.action == "drop" and n.obj.type == "table"}
    for table, obj in sorted(tables.items()):
        n = _count(conn, sql.SQL("SELECT count(*) FROM {} AS t WHERE {}").format(
            revert.relation(obj), sql.SQL(_OTHERS).format(sql.Literal(rv.plan_xids))))
        if n:
            losses.append(f"{table}: {n:,} row(s) written or changed since by others (not by the plan's migrations)"
                          " would be dropped with it" + (f" (or by {', '.join(unknown)}, whose statements ran "
                                                         "outside the record: not told apart)" if unknown else ""))
    for net in rv.nets:
        if net.action == "drop" and net.obj.type == "table column" and net.obj.parent not in tables:
            losses += _added_values(conn, rv, net.obj)
        if net.action == "alter" and net.obj.type == "table column":
            hard += _narrowing(conn, net, losses)
        hard += _changed_since(net, live, set(rv.plan_xids), losses)
    hard += _names_taken(rv, live)
    hard += _inheritance(conn, rv.nets)
    for net in rv.nets:
        if net.action == "alter" and net.obj.type == "type":
            hard += _enum_values(conn, net)
    refills = rv.refills if rv.prepared else rv.plan_refills()
    for refill in refills:
        if refill.source is None or not refill.key:
            continue
        if not rv.prepared:
            load(rv, refill, conn)
        if refill.ambiguous:
            losses.append(f"{refill.table.parent}: {refill.ambiguous:,} row(s) written since the backup by others "
                          f"under a key the backup holds ({', '.join(refill.key)}): an edit of the same row or a new "
                          "row under a reused key cannot be told apart, so they get no value back for "
                          f"{', '.join(c.names[2] for c in refill.columns)} (the backup keeps them)")
    if hard:
        raise CheckFailed("changes the revert can undo", f"{len(hard)} it cannot", "the database now", details=hard,
                          hint="nothing was changed: do what each line says, or use --phase4-rollback=restore (it "
                               "lists what it would lose first)")
    return losses, _notes(rv, state, tables)


def _follow(nets: list[Net], live: dict[tuple[int, int, int], Obj]) -> None:
    """Name each object the plan created or altered as it is named now (found by its catalog address): a table
    renamed since takes its columns' and constraints' names with it."""
    for net in nets:
        c = net.current
        if c is not None and (o := live.get(c.key)) is not None and revert.own_name(o) == revert.own_name(c):
            net.current = Obj(c.classid, c.objid, c.objsubid, c.type, o.identity, o.names, o.args, c.definition,
                              o.parent, c.mine, c.versions)


def _count(conn: psycopg.Connection[Any], query: sql.Composed) -> int:
    row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def _added_values(conn: psycopg.Connection[Any], rv: Reverter, col: Obj) -> list[str]:
    """Values others wrote into a column the plan added (not NULL, not its default): dropped with the column."""
    d = col.definition
    if d.get("generated"):
        return []
    default = str(d.get("default") or "")
    same = sql.SQL(" AND t.{} IS DISTINCT FROM ({})").format(sql.Identifier(col.names[2]), sql.SQL(default)) \
        if default and "nextval(" not in default else sql.SQL("")  # never advance a sequence to compare
    n = _count(conn, sql.SQL("SELECT count(*) FROM {} AS t WHERE t.{} IS NOT NULL{} AND {}").format(
        revert.relation(col), sql.Identifier(col.names[2]), same, sql.SQL(_OTHERS).format(sql.Literal(rv.plan_xids))))
    if not n:
        return []
    return [f"column {col.identity} (added by the plan): {n:,} value(s) in rows written since by others (the "
            "application may have written them) would be dropped with it"]


def _narrowing(conn: psycopg.Connection[Any], net: Net, losses: list[str]) -> list[str]:
    """A column whose type the plan changed: the values that would not survive the cast back (cut, rounded)."""
    was, now = net.original, net.current
    assert was is not None
    assert now is not None
    old, new = str(was.definition.get("type")), str(now.definition.get("type"))
    if old == new:
        return []
    col = sql.Identifier(now.names[2])
    key = [str(k) for k in now.definition.get("key") or []]
    label = sql.SQL(" || ', ' || ").join(sql.SQL("t.{}::text").format(sql.Identifier(k)) for k in key) \
        if key else sql.SQL("t.ctid::text")
    try:
        with conn.transaction():
            row = conn.execute(sql.SQL(
                "SELECT count(*), (array_agg({label} ORDER BY {label}))[1:3] FROM {t} AS t WHERE t.{c} IS NOT NULL"
                " AND ((t.{c}::{old})::{new})::text IS DISTINCT FROM t.{c}::text").format(
                label=label, t=revert.relation(now), c=col, old=sql.SQL(old), new=sql.SQL(new))).fetchone()
    except psycopg.Error as exc:
        return [f"column {now.identity}: its values cannot all be cast back to {old} "
                f"({exc.diag.message_primary or exc}): change them first, or keep the column as it is"]
    if row and row[0]:
        which = ", ".join(str(k) for k in row[1] or [])
        losses.append(f"column {now.identity}: {int(row[0]):,} value(s) do not fit {old} (rows "
                      f"{'(' + ', '.join(key) + ') ' if key else ''}{which}{', ...' if int(row[0]) > 3 else ''}): "
                      "the revert would cut or round them")
    return []


def _changed_since(net: Net, live: dict[tuple[int, int, int], Obj], plan: set[int], losses: list[str]) -> list[str]:
    """An object the plan created or altered that someone else changed since (one of its catalog rows was
    written by a transaction not the plan's, and it reads differently): the revert would undo that change."""
    cur = net.current
    if cur is None:
        return []
    now = live.get(cur.key)
    if now is None:
        return [f"{cur.type} {cur.identity} ({', '.join(net.files)}): dropped since by someone else: it cannot be "
                "altered back"] if net.action == "alter" else []
    if not [x for x in now.versions if x not in cur.versions and x not in plan]:
        return []
    common = cur.definition.keys() & now.definition.keys() - {"key"}
    a, b = {k: cur.definition[k] for k in common}, {k: now.definition[k] for k in common}
    if revert.own_name(cur) == revert.own_name(now) and normalize.same_definition(cur.type, a, b):
        return []
    what = ", ".join(sorted(k for k in common if a[k] != b[k])) or "name"
    undo = "drop it" if net.action == "drop" else "put the version from before the plan back"
    losses.append(f"{cur.type} {now.identity}: changed since the plan ({what}) by someone else: the revert would "
                  f"{undo} over that change")
    return []


def _names_taken(rv: Reverter, live: dict[tuple[int, int, int], Obj]) -> list[str]:
    """Objects to bring back whose name an object the plan did not create holds now."""
    leaving = {n.current.key for n in rv.nets if n.current is not None and n.action in ("drop", "alter")}
    by_name = {(o.type, o.identity): o for o in live.values()}
    restored = {o.identity for o in rv.to_restore() if o.type in ("table", "view", "materialized view")}
    out = []
    for obj, net in rv.restores():
        holder = by_name.get((obj.type, obj.identity))
        if obj.parent in restored or holder is None or holder.key in leaving:
            continue
        out.append(f"{obj.type} {obj.identity} ({', '.join(net.files)} dropped it) cannot come back: an object the "
                   "plan did not create has its name now: rename or drop that one, then rerun")
    return out


_INHERITORS = """
SELECT (pg_catalog.pg_identify_object('pg_catalog.pg_class'::regclass, i.inhrelid, 0)).identity,
       (pg_catalog.pg_identify_object('pg_catalog.pg_class'::regclass, i.inhparent, 0)).identity
  FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
 WHERE NOT c.relispartition
   AND (pg_catalog.pg_identify_object('pg_catalog.pg_class'::regclass, i.inhparent, 0)).identity = ANY(%s)
 ORDER BY 1, 2
"""


def _inheritance(conn: psycopg.Connection[Any], nets: list[Net]) -> list[str]:
    """Tables that INHERIT from a table the plan changed (legacy inheritance, not partitions): a column or a
    constraint added back to the parent reaches the child too, a dropped one left it, and the revert reverts each
    table on its own, so it would fail half-way with an SQL error."""
    changed: dict[str, list[str]] = {}
    for net in nets:
        obj = net.current or net.original  # a dropped column's table is there (as named now: _follow)
        if obj is None or obj.type not in ("table", "table column", "table constraint"):
            continue
        table = obj.identity if obj.type == "table" else obj.parent
        if table:
            changed.setdefault(table, []).extend(f for f in net.files if f not in changed.get(table, []))
    if not changed:
        return []
    created = {n.obj.identity for n in nets if n.action == "drop" and n.obj.type == "table"}  # dropped with it
    return [f"table {child} inherits from {parent} (INHERITS), which the plan changed ({', '.join(changed[parent])}):"
            " the revert undoes each table on its own and does not follow inheritance; use --phase4-rollback=restore "
            "(it lists what it would lose first)"
            for child, parent in conn.execute(_INHERITORS, (sorted(changed),)).fetchall() if child not in created]


_ENUM_COLUMNS = """
SELECT (pg_catalog.pg_identify_object('pg_catalog.pg_class'::regclass, a.attrelid, 0)).identity, a.attname::text,
       a.atttypid = t.oid
  FROM pg_catalog.pg_type t
  JOIN pg_catalog.pg_attribute a ON a.atttypid IN (t.oid, t.typarray) AND a.attnum > 0 AND NOT a.attisdropped
  JOIN pg_catalog.pg_class c ON c.oid = a.attrelid AND c.relkind = 'r'
 WHERE t.oid = %s
 ORDER BY 1, 2
"""


def _enum_values(conn: psycopg.Connection[Any], net: Net) -> list[str]:
    """An enum value the plan added: PostgreSQL cannot drop one, so the revert cannot take it back; say which
    rows hold it (each table read on its own: ONLY), so the user knows what a restore would change."""
    was, now = net.original, net.current
    assert was is not None
    assert now is not None
    added = [v for v in now.definition.get("labels") or [] if v not in (was.definition.get("labels") or [])]
    if not added:
        return []
    columns = conn.execute(_ENUM_COLUMNS, (now.objid,)).fetchall()
    out = []
    for value in added:
        used = []
        for table, column, scalar in columns:
            test = sql.SQL("t.{c}::text = {v}" if scalar else "{v} = ANY(t.{c}::text[])").format(
                c=sql.Identifier(column), v=sql.Literal(value))
            n = _count(conn, sql.SQL("SELECT count(*) FROM ONLY {} AS t WHERE {}").format(
                sql.SQL(table), test))  # the table as the server quotes it
            if n:
                used.append(f"{n:,} row(s) of {table}.{column}")
        where = f"is used by {', '.join(used)}" if used else "is used by no row yet"
        out.append(f"type {now.identity}: value '{value}' (added by {', '.join(net.files)}) {where}; PostgreSQL "
                   "cannot drop an enum value, so the revert cannot take it back: use --phase4-rollback=restore (it "
                   "lists what it would lose first" + (": those rows get the backup's values)" if used else ")"))
    return out


def _notes(rv: Reverter, state: RollbackState, tables: dict[str, Obj]) -> list[str]:
    notes = []
    restored = {n.obj.identity for n in rv.nets if n.action == "restore"}
    for file, record in state.records.items():
        for r in record.rows or []:
            if r.relation in tables or r.relation in restored or not (r.inserted or r.updated or r.deleted):
                continue
            notes.append(f"{file} {r.describe()} of {r.relation}: kept (undoing them would overwrite "
                         "writes made since; --phase4-rollback=restore puts the backup's rows back)")
    for file in state.kept:
        notes.append(f"{file} keeps its row changes: the ledger remembers it, and a later run refuses to apply the "
                     "same file again (it would change those rows a second time)")
    return notes
