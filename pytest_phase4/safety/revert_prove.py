"""The revert's locks and proof: which existing tables it locks and checksums before any change, and, once it has
changed them, that every object the plan touched is as it was before the plan and that the locked tables hold the
same rows as before the revert. No pytest here; runs in the rollback's transaction.
"""

from __future__ import annotations

from pytest_phase4.db import changes, inventory
from pytest_phase4.safety import normalize, snapshot
from pytest_phase4.safety.revert_apply import Reverter, revert_bare


def tables_to_lock(rv: Reverter) -> list[str]:
    """Existing tables whose columns, constraints, triggers or rows the revert touches, and the tables the plan
    created: their rows stay as counted while the rollback runs (rollback.lock locks them)."""
    parts = {o.parent for n in rv.nets for o in (n.original, n.current)
             if o is not None and o.parent and o.type in ("table column", "table constraint", "trigger",
                                                          "policy", "index")}
    created = {n.current.identity for n in rv.nets if n.action == "drop" and n.current is not None}
    found = []
    for name in sorted(t for t in parts | {n.current.identity for n in rv.nets if n.action == "drop"
                                           and n.current is not None and n.current.type == "table"} if t):
        row = rv.conn.execute("SELECT (SELECT relkind FROM pg_class WHERE oid = to_regclass(%s))",
                                (name,)).fetchone()
        if row and row[0] in ("r", "p"):
            found.append(name)
    rv._kept = [name for name in found if name not in created]
    return found


def record_kept(rv: Reverter) -> None:
    """Checksums of the locked existing tables' kept columns, before any change: prove_kept compares."""
    for name in rv._kept:
        rv.kept_before[name] = _kept_checksum(rv, name)


def _kept_columns(rv: Reverter, table: str) -> list[str]:
    leaving = {o.names[2] for o in rv.to_drop() if o.type == "table column" and o.parent == table}
    changing = {n.current.names[2] for n in rv.nets if n.current is not None and n.action == "alter"
                and n.current.type == "table column" and n.current.parent == table}
    cols = [r[0] for r in rv.conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped"
        " ORDER BY attnum", (table,)).fetchall()]
    return [c for c in cols if c not in leaving and c not in changing]


def _kept_checksum(rv: Reverter, table: str, like: snapshot.Checksum | None = None) -> snapshot.Checksum:
    ns, name = rv.conn.execute("SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON"
                                 " n.oid = c.relnamespace WHERE c.oid = %s::regclass", (table,)).fetchone() \
        or ("", "")
    columns = like.columns if like is not None else _kept_columns(rv, table)
    return snapshot.checksum(rv.conn, str(ns), str(name), columns, pin=rv.schema, like=like)


def prove_catalog(rv: Reverter) -> tuple[int, list[str]]:
    """Every object the plan touched is as it was before the plan: one it created is gone (by its catalog address,
    and no object of another origin holds its name unless an original does), the others are there (by name:
    one brought back from a backup is a new object) with their original definition, owner and privileges."""
    objs = {**inventory.take(rv.conn), **changes.large_objects(rv.conn)}
    now = {(o.type, o.identity): o for o in objs.values()}
    originals = {(n.original.type, n.original.identity) for n in rv.nets if n.original is not None}
    wrong = []
    for net in rv.nets:
        if net.original is None:
            assert net.current is not None
            c = net.current
            if c.key in objs or ((c.type, c.identity) in now and (c.type, c.identity) not in originals):
                wrong.append(f"{c.type} {c.identity}: still there")
            continue
        found = now.get((net.original.type, net.original.identity))
        if found is None:
            wrong.append(f"{net.original.type} {net.original.identity}: missing")
        elif not normalize.same_definition(found.type, revert_bare(net.original), revert_bare(found)):
            wrong.append(f"{net.original.type} {net.original.identity}: {revert_bare(found)} instead of "
                         f"{revert_bare(net.original)}")
    return len(rv.nets), wrong


def prove_kept(rv: Reverter) -> list[tuple[str, bool, str]]:
    """The tables the revert locked hold the same rows as before it, in every column the plan did not
    add or change: triggers did not fire, nothing else was written."""
    out = []
    for table, before in rv.kept_before.items():
        after = _kept_checksum(rv, table, before)
        out.append((table, after == before, f"{after.rows:,} rows, checksum {after.sum} of {len(after.columns)} "
                                            f"column(s)"))
    return out
