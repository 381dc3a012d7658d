"""--phase4-rollback=restore: the whole backup back, only with consent. Before touching anything, list what a
full restore would lose (rows added, changed, deleted per table since the backup; objects not in the backup);
then, in the rollback's one transaction, drop what is not in the backup, run pg_restore's --clean script and
prove every table and object equal to the backup's snapshot. No pytest here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from pytest_phase4.db import inventory
from pytest_phase4.db.inventory import Obj
from pytest_phase4.errors import CheckFailed
from pytest_phase4.safety import backup, normalize, pgscript, revert, snapshot
from pytest_phase4.safety.checks import tools
from pytest_phase4.safety.rollback import RollbackState, begin, to_undo

if TYPE_CHECKING:
    from pytest_phase4.run import Phase4Run

_TOP_ORDER = ["default acl", "event trigger", "materialized view", "view", "foreign table", "table", "sequence",
              "function", "procedure", "aggregate", "composite type", "domain", "type", "statistics object",
              "collation", "publication", "extension", "schema"]
_PARTS = ("publication relation", "publication namespace", "trigger", "policy", "rule", "table constraint", "index",
          "table column")


def assess(run: Phase4Run, state: RollbackState) -> str:
    """What a full restore would lose, listed before anything changes; refused without --phase4-accept-loss."""
    assert state.saved is not None
    assert state.folder is not None
    state.files = to_undo(run, state)
    lines = loss(run, state, run.ro)
    if lines and not state.accept_loss:
        raise CheckFailed("consent to what a full restore of the backup loses (--phase4-accept-loss)",
                          f"{len(lines)} difference(s) since the backup that the restore would undo",
                          "the database now", details=lines,
                          hint="nothing was changed. Prefer the default --phase4-rollback (revert: keeps every write "
                               "made since); or rerun with --phase4-accept-loss: the current state is dumped first")
    state.notes = state.accepted = lines
    state.recheck = lambda conn: loss(run, state, conn)  # once every table is locked, in the rollback's transaction
    return (f"restore the backup over {len(state.files)} applied migration(s): " +
            (f"{len(lines)} loss(es) accepted: " + "; ".join(lines) if lines else "nothing would be lost"))


def loss(run: Phase4Run, state: RollbackState, ro: psycopg.Connection[Any]) -> list[str]:
    """Every difference a full restore undoes: objects not in the backup (dropped, with their rows or values),
    definitions changed since (put back), rows added, changed and deleted since (per table)."""
    saved = state.saved
    assert saved is not None
    assert state.folder is not None
    known = {(o["type"], o["identity"]) for o in saved.objects}
    live = list(inventory.take(ro).values())
    extra = sorted((o for o in live if (o.type, o.identity) not in known), key=lambda o: (o.type, o.identity))
    whole = {o.identity for o in extra if o.type not in _PARTS}
    lines: list[str] = []
    for obj in extra:
        if obj.parent in whole:
            continue
        if obj.type == "table":
            row = ro.execute(sql.SQL("SELECT count(*) FROM {}").format(revert.relation(obj))).fetchone()
            lines.append(f"table {obj.identity}: not in the backup, dropped with its {int(row[0]) if row else 0:,} "
                         "row(s)")
        elif obj.type == "table column":
            row = ro.execute(sql.SQL("SELECT count({}) FROM {}").format(sql.Identifier(obj.names[2]),
                                                                       revert.relation(obj))).fetchone()
            lines.append(f"column {obj.identity}: not in the backup, dropped with its {int(row[0]) if row else 0:,} "
                         "value(s)")
        else:
            lines.append(f"{obj.type} {obj.identity}: not in the backup, dropped")
    lines += _definitions(saved, live)
    changed = []
    for ns, tables in sorted(saved.tables.items()):
        for table, was in sorted(tables.items()):
            cols = _columns(ro, ns, table)
            if cols is None:
                continue  # gone now: the restore brings it back
            if set(was.columns) <= set(cols) and \
                    snapshot.checksum(ro, ns, table, was.columns, pin=saved.schema, like=was) == was:
                continue
            changed.append((ns, table, cols))
    if changed:
        lines += _row_losses(run, state, changed, None if ro is run.ro else ro)
    return lines


def _definitions(saved: snapshot.Snapshot, live: list[Obj]) -> list[str]:
    """Objects in the backup whose definition, owner or privileges changed since: the restore puts the backup's
    back (a function's new body, a GRANT, a table added to a publication is a new object, listed above)."""
    was = {(o["type"], o["identity"]): Obj.from_json(o) for o in saved.objects}
    lines = []
    for obj in sorted(live, key=lambda o: (o.type, o.identity)):
        old = was.get((obj.type, obj.identity))
        if old is None:
            continue
        a, b = _bare(old), _bare(obj)
        if a.keys() != b.keys() or normalize.same_definition(obj.type, a, b):
            continue  # an inventory of another version reads other properties: not a change
        what = []
        for key in sorted(k for k in a if a[k] != b[k]):
            if key == "acl":
                added = revert.grants(list(b[key] or [])) - revert.grants(list(a[key] or []))
                gone = revert.grants(list(a[key] or [])) - revert.grants(list(b[key] or []))
                what.append("privileges" + "".join(
                    f"; {'granted' if g in added else 'revoked'} since: {g[1]} to {g[0] or 'PUBLIC'}"
                    for g in sorted(added | gone)))
            else:
                what.append({"md5": "definition", "def": "definition"}.get(key, key))
        lines.append(f"{obj.type} {obj.identity}: changed since the backup ({', '.join(what)}): put back as it was")
    return lines


def _columns(conn: psycopg.Connection[Any], ns: str, table: str) -> dict[str, str] | None:
    rows = conn.execute("SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
                        " JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
                        " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p') AND a.attnum > 0"
                        " AND NOT a.attisdropped ORDER BY a.attnum", (ns, table)).fetchall()
    return {str(r[0]): str(r[1]) for r in rows} or None


def _row_losses(run: Phase4Run, state: RollbackState, changed: list[tuple[str, str, dict[str, str]]],
                conn: psycopg.Connection[Any] | None) -> list[str]:
    """Rows added, changed and deleted since the backup in each table whose checksum moved: the backup's rows
    loaded into a temporary table (in a transaction that is rolled back: a session of its own, or a savepoint of
    the rollback's `conn`) and compared by primary key."""
    assert state.folder is not None
    assert state.saved is not None
    archive = state.folder / backup.DUMP
    toc = pgscript.listing(tools(run), archive, run.target.secrets)
    lines: list[str] = []

    def compare(conn: psycopg.Connection[Any]) -> None:
        assert state.saved is not None
        for ns, table, cols in changed:
            entry = next((e for e in toc if e.desc == "TABLE DATA" and (e.schema, e.tag) == (ns, table)), None)
            if entry is None:
                lines.append(f"table {ns}.{table}: not in the backup's data")
                continue
            if line := _compare_table(run, conn, archive, entry, ns, table, cols, state.saved.schema):
                lines.append(line)

    if conn is not None:
        with conn.transaction(force_rollback=True):
            compare(conn)
        return lines
    run.end_reads()
    with run.target.connect(read_only=False, autocommit=False) as own:
        try:
            compare(own)
        finally:
            own.rollback()
    return lines


def _compare_table(run: Phase4Run, conn: psycopg.Connection[Any], archive: Any, entry: pgscript.Entry, ns: str,
                   table: str, cols: dict[str, str], pin: str) -> str | None:
    temp = f"phase4_was_{entry.oid}"
    backup_cols: list[str] = []

    def into(line: bytes) -> bytes:
        backup_cols.extend(pgscript.copy_columns(line)[1])
        conn.execute(sql.SQL("CREATE TEMP TABLE {} ({})").format(
            sql.Identifier(temp),
            sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(c)) for c in backup_cols)))
        return sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(temp), sql.SQL(", ").join(sql.Identifier(c) for c in backup_cols)).as_bytes(conn)

    pgscript.run(conn, tools(run), archive, run.target.secrets, [entry], copy_into=into)
    live = sql.Identifier(ns, table)
    common = [c for c in cols if c in backup_cols]
    key = [str(r[0]) for r in conn.execute(
        "SELECT a.attname FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY k(n, o)"
        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n"
        " WHERE i.indrelid = %s::regclass AND i.indisprimary ORDER BY k.o",
        (live.as_string(conn),)).fetchall()]

    def row(alias: str, names: list[str]) -> sql.Composable:
        if alias == "t":
            return sql.SQL("ROW({})::text").format(sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c))
                                                                     for c in names))
        return sql.SQL("ROW({})::text").format(sql.SQL(", ").join(
            sql.SQL("b.{}::{}").format(sql.Identifier(c), sql.SQL(cols[c])) for c in names))

    with snapshot.pinned(conn, pin):
        if key and all(k in backup_cols for k in key):
            match = sql.SQL(" AND ").join(sql.SQL("t.{} = b.{}::{}").format(sql.Identifier(k), sql.Identifier(k),
                                                                           sql.SQL(cols[k])) for k in key)
            found = conn.execute(sql.SQL(
                "SELECT (SELECT count(*) FROM {live} t WHERE NOT EXISTS (SELECT 1 FROM {tmp} b WHERE {m})),"
                " (SELECT count(*) FROM {tmp} b WHERE NOT EXISTS (SELECT 1 FROM {live} t WHERE {m})),"
                " (SELECT count(*) FROM {live} t JOIN {tmp} b ON {m} WHERE {lr} IS DISTINCT FROM {br})").format(
                live=live, tmp=sql.Identifier(temp), m=match, lr=row("t", common), br=row("b", common))).fetchone()
        else:
            found = conn.execute(sql.SQL(
                "WITH l AS (SELECT md5({lr}) h, count(*) n FROM {live} t GROUP BY 1),"
                " k AS (SELECT md5({br}) h, count(*) n FROM {tmp} b GROUP BY 1)"
                " SELECT coalesce(sum(greatest(coalesce(l.n, 0) - coalesce(k.n, 0), 0)), 0),"
                " coalesce(sum(greatest(coalesce(k.n, 0) - coalesce(l.n, 0), 0)), 0), 0"
                " FROM l FULL JOIN k ON k.h = l.h").format(
                live=live, tmp=sql.Identifier(temp), lr=row("t", common), br=row("b", common))).fetchone()
    added, deleted, changed = (int(x) for x in (found or (0, 0, 0)))
    if not (added or deleted or changed):
        return None  # only columns the plan dropped differ: the restore brings them back, nothing is lost
    how = f"by ({', '.join(key)})" if key and all(k in backup_cols for k in key) else "by whole rows (no key)"
    return (f"table {ns}.{table}: {added:,} row(s) added, {changed:,} changed, {deleted:,} deleted since the "
            f"backup ({how}): a restore undoes them")


def drop_extra(run: Phase4Run, state: RollbackState) -> str:
    """Drop what is not in the backup, and pytest-phase4's own schema (the backup's comes back; the history of
    earlier rollbacks is kept and written again). Never with CASCADE, and never anything the pre-rollback dump
    does not hold (an object created since it was taken, by another session: refused, rerun): what blocks a drop
    and is in the backup (a view the plan redefined over its function) is dropped first, the restore creates it
    again."""
    assert state.saved is not None
    assert state.safety_dump is not None
    conn = begin(run, state)
    known = {(o["type"], o["identity"]) for o in state.saved.objects}
    live = inventory.take(conn)
    extra = [o for o in live.values() if (o.type, o.identity) not in known]
    whole = {o.identity for o in extra if o.type not in _PARTS}
    parts = [o for o in extra if o.type in _PARTS and o.parent not in whole]
    tops = sorted((o for o in extra if o.type not in _PARTS),
                  key=lambda o: _TOP_ORDER.index(o.type) if o.type in _TOP_ORDER else len(_TOP_ORDER))
    dumped = {(e.catalog, e.oid) for e in pgscript.listing(tools(run), state.safety_dump, run.target.secrets)}
    dropped: list[str] = []
    remaining = [*parts, *tops]
    while remaining:
        blocked = []
        for obj in remaining:
            if not _in_dump(conn, obj, dumped):
                raise CheckFailed("everything the restore drops to be in the pre-rollback dump",
                                  f"{obj.type} {obj.identity}: created after it was taken", str(state.safety_dump),
                                  hint="nothing was changed: rerun the rollback (a new dump will hold it)")
            statement = revert.drop_statement(obj)
            if statement is None:
                raise CheckFailed("objects not in the backup that the restore can drop", f"{obj.type} {obj.identity}",
                                  "the database now", hint="drop it by hand, then rerun")
            try:
                with conn.transaction():
                    conn.execute(statement)
            except psycopg.errors.DependentObjectsStillExist as exc:
                blocked.append((obj, exc.diag.message_detail or str(exc)))
                continue
            dropped.append(f"{obj.type} {obj.identity}")
        if len(blocked) == len(remaining):
            remaining = _dependents(conn, blocked, live, known, dumped)
        else:
            remaining = [o for o, _ in blocked]
    row = conn.execute("SELECT to_regclass('pytest_phase4.rollbacks') IS NOT NULL").fetchone()
    if row and row[0]:
        state.history = [tuple(r) for r in conn.execute(
            "SELECT at, mode, backup, migrations, safety_dump, summary FROM pytest_phase4.rollbacks").fetchall()]
    conn.execute("DROP SCHEMA IF EXISTS pytest_phase4 CASCADE")
    return f"dropped {len(dropped)} object(s) not in the backup" + (f": {', '.join(dropped)}" if dropped else "")


_DEPENDENTS = """
SELECT DISTINCT
       CASE d.classid WHEN 'pg_rewrite'::regclass THEN 'pg_class'::regclass WHEN 'pg_attrdef'::regclass
            THEN 'pg_class'::regclass ELSE d.classid END::oid::int8,
       coalesce(r.ev_class, ad.adrelid, d.objid)::int8,
       CASE WHEN r.oid IS NOT NULL THEN 0 ELSE coalesce(ad.adnum, d.objsubid) END,
       pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid)
  FROM pg_catalog.pg_depend d
  LEFT JOIN pg_catalog.pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND r.oid = d.objid
  LEFT JOIN pg_catalog.pg_attrdef ad ON d.classid = 'pg_attrdef'::regclass AND ad.oid = d.objid
 WHERE d.refclassid = %s AND d.refobjid = %s AND (%s = 0 OR d.refobjsubid = %s) AND d.deptype = 'n'
"""


def _dependents(conn: psycopg.Connection[Any], blocked: list[tuple[Obj, str]], live: dict[tuple[int, int, int], Obj],
                known: set[tuple[str, str]], dumped: set[tuple[int, int]]) -> list[Obj]:
    """What blocks the drops: objects of the backup (the restore creates them again) to drop first, with the
    blocked ones after them; anything else is refused, named."""
    first: list[Obj] = []
    others: list[str] = []
    for obj, _ in blocked:
        for classid, objid, subid, description in conn.execute(
                _DEPENDENTS, (obj.classid, obj.objid, obj.objsubid, obj.objsubid)).fetchall():
            found = live.get((int(classid), int(objid), int(subid)))
            if found is not None and (found.type, found.identity) in known and _in_dump(conn, found, dumped):
                if found not in first:
                    first.append(found)
            else:
                others.append(f"{description} depends on {obj.type} {obj.identity} and is not in the backup")
    if others or not first:
        raise CheckFailed("every object not in the backup to be droppable", f"{len(blocked)} blocked",
                          "the database now", details=others or [f"{o.type} {o.identity}: {d}" for o, d in blocked],
                          hint="nothing was changed: drop those objects first (after saving them), then rerun")
    return [*first, *(o for o, _ in blocked)]


def _in_dump(conn: psycopg.Connection[Any], obj: Obj, dumped: set[tuple[int, int]]) -> bool:
    """The object (or the table it is part of) was in the database when the pre-rollback dump was taken."""
    if (obj.classid, obj.objid) in dumped:
        return True
    if obj.parent:
        row = conn.execute("SELECT to_regclass(%s)::oid::int8", (obj.parent,)).fetchone()
        return bool(row and row[0] is not None and (1259, int(row[0])) in dumped)
    return False


def restore(run: Phase4Run, state: RollbackState) -> str:
    assert state.folder is not None
    archive = state.folder / backup.DUMP
    rows = pgscript.run(begin(run, state), tools(run), archive, run.target.secrets, extra=("--clean", "--if-exists"))
    return f"pg_restore --clean --if-exists script of {archive} run in the rollback's transaction ({rows:,} rows)"


def prove(run: Phase4Run, state: RollbackState, what: str) -> str:
    """Every table's rows and checksum, or every object, equal the backup's snapshot (in the transaction)."""
    saved = state.saved
    assert saved is not None
    assert state.conn is not None
    conn = state.conn
    if (why := saved.comparable()) and what != "fingerprint":
        raise CheckFailed("a snapshot computed the way this version computes checksums", why, str(state.folder))
    wrong: list[str] = []
    total = 0
    if what in ("row_counts", "checksums"):
        for ns, tables in sorted(saved.tables.items()):
            for table, was in sorted(tables.items()):
                total += 1
                now = snapshot.checksum(conn, ns, table, was.columns, pin=saved.schema, like=was)
                if what == "row_counts" and now.rows != was.rows:
                    wrong.append(f"rows of {ns}.{table}: expected {was.rows:,}, found {now.rows:,}")
                elif what == "checksums" and now.sum != was.sum:
                    wrong.append(f"checksum of {ns}.{table}: expected {was.sum}, found {now.sum}")
        observed = f"{total} tables of every schema: " + ("rows" if what == "row_counts" else "content checksums") \
            + " as in the backup's snapshot"
    else:
        now_objs = {(o.type, o.identity): o for o in inventory.take(conn).values()}
        was_objs = {(o["type"], o["identity"]): Obj.from_json(o) for o in saved.objects}
        for key in sorted(set(now_objs) | set(was_objs)):
            a, b = was_objs.get(key), now_objs.get(key)
            if a is None or b is None:
                wrong.append(f"{key[0]} {key[1]}: {'not in the backup' if a is None else 'missing'}")
            elif not normalize.same_definition(a.type, _bare(a), _bare(b)):
                wrong.append(f"{key[0]} {key[1]}: {_bare(b)} instead of {_bare(a)}")
        diff = snapshot.diff(saved.fingerprint, snapshot.fingerprint(conn, saved.schema))
        wrong += snapshot.table_lines(diff)[1:] if diff else []
        total = len(was_objs)
        observed = f"{total} catalog objects of every schema as in the backup's snapshot"
    if wrong:
        raise CheckFailed(f"{what.replace('_', ' ')} equal to the snapshot stored with the backup",
                          f"{len(wrong)} difference(s)", "the restored database (not committed)", details=wrong[:40],
                          hint="the transaction was rolled back: nothing changed")
    return observed


def _bare(obj: Obj) -> dict[str, Any]:
    return {k: v for k, v in obj.definition.items() if k != "key"}
