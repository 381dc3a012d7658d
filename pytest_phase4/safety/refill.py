"""Dropped columns back with their values: re-added as recorded (type, collation, generated expression), refilled
from the backup's rows by the table's key with the table's triggers and ON UPDATE rules disabled (ALTER TABLE ...
DISABLE TRIGGER / DISABLE RULE: need only ownership of the table, unlike session_replication_role, which needs
superuser), then their default and NOT NULL; and the proof that their values equal the backup's. Runs inside the
rollback's transaction; no pytest.

A key is not enough to tell a row apart: a row deleted since the backup and inserted again under the same key
(another person signing up as 'alice') is not the backup's row. A row is refilled when the backup's own version
of it is still there (its xmin is visible to the backup's snapshot), when only the plan's migrations wrote it
since, or when its key is one the database generates (identity, a sequence, a random uuid: not reused). Any
other row the application wrote since under a backup key cannot be told from an edit of the same row: it gets no
value, like a row inserted since, and the rollback asks consent for it first (revert_assess).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg import sql

from pytest_phase4.db import inventory
from pytest_phase4.db.inventory import Obj
from pytest_phase4.errors import CheckFailed
from pytest_phase4.safety import pgscript, snapshot
from pytest_phase4.safety.backup import Tools


@dataclass(frozen=True)
class Source:
    """A backup of this database the dropped columns' values can come from."""

    name: str  # its folder's name
    archive: Path
    toc: list[pgscript.Entry]
    applied: frozenset[str]  # the plan's migrations applied when it was taken
    snapshot: str = ""  # its pg_current_snapshot(): which row versions it holds ("" for an older backup)


@dataclass
class Refill:
    table: Obj  # a dropped column's Obj stands for its table (names[0:2], objid = the table's oid)
    key: list[str]
    columns: list[Obj]
    dropped_by: str = ""  # the migration that dropped the columns
    source: Source | None = None  # the newest backup taken before that migration (its rows are the refill's)
    files: frozenset[str] = frozenset()  # every migration that changed the columns: the source is older
    n: int = 0  # its number among the refills (names its temporary tables)
    temp: str = ""  # the source's rows of the table (refill.load)
    since: str = ""  # keys of rows written since the source by others ("" when the key is generated)
    generated: bool = False
    ambiguous: int = 0  # rows written since under a key the source holds: not told apart from a new row
    without_value: int = 0  # rows of the table now that get no value (inserted since, or ambiguous)
    refilled: int = 0


class Reverter(Protocol):
    """What refilling needs of revert_apply.Reverter (which imports this module): the rollback's connection, the
    client tools, the secrets to mask, the plan's transactions and the refills it planned."""

    conn: psycopg.Connection[Any]
    tools: Tools
    secrets: list[str]
    refills: list[Refill]
    schema: str
    plan_xids: list[int]

_RESTORE_HINT = "nothing was changed; use --phase4-rollback=restore (it lists what a full restore would lose first)"
# Key defaults that never hand out a key twice.
_GENERATED = r"(nextval|gen_random_uuid|uuid_generate_v[0-9]|uuidv[47])\("
# A row written since the backup's snapshot, by someone other than the plan's migrations (a xmin newer than every
# completed xid is no real one: a frozen row's, as old as can be).
_FULL = inventory.full_xid("t.xmin::text::int8", "c.xmax")
_SINCE = ("(CASE WHEN " + _FULL + " >= c.xmax THEN false ELSE NOT pg_catalog.pg_visible_in_snapshot(" + _FULL +
          "::text::xid8, {snap}) END) AND (t.xmin::text::int8) <> ALL({plan})")
_XMAX = "(SELECT pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())::text::int8 AS xmax) c"


def load(rv: Reverter, refill: Refill, conn: psycopg.Connection[Any]) -> None:
    """The source backup's rows of the table into a temporary table (the rollback's, or a throwaway session's),
    and the keys of the rows written since by others into another; the count of those the backup holds a row
    of is refill.ambiguous."""
    source = refill.source
    assert source is not None
    data = pgscript.table_data(source.toc, refill.table.objid, *refill.table.names[:2])
    assert data is not None
    refill.temp = f"phase4_refill_{refill.table.objid}_{refill.n}"

    def into(line: bytes) -> bytes:
        _, names = pgscript.copy_columns(line)
        conn.execute(sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(
            sql.Identifier(refill.temp), sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(n))
                                                           for n in names)))
        return sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(refill.temp), sql.SQL(", ").join(sql.Identifier(n) for n in names)).as_bytes(conn)

    pgscript.run(conn, rv.tools, source.archive, rv.secrets, [data], copy_into=into)
    table = sql.SQL(str(refill.table.parent))
    row = conn.execute("SELECT coalesce(bool_and(a.attidentity <> '' OR coalesce(pg_catalog.pg_get_expr(d.adbin,"
                       " d.adrelid), '') ~ %s), false) FROM pg_attribute a LEFT JOIN pg_attrdef d ON"
                       " d.adrelid = a.attrelid AND d.adnum = a.attnum WHERE a.attrelid = %s::regclass"
                       " AND a.attname = ANY(%s)", (_GENERATED, refill.table.parent, refill.key)).fetchone()
    refill.generated = bool(row and row[0])
    if refill.generated:
        return
    refill.since = f"phase4_since_{refill.table.objid}_{refill.n}"
    keys = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(k)) for k in refill.key)
    snap = sql.Literal(source.snapshot) if source.snapshot else sql.SQL("NULL")
    conn.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} AS t, {} WHERE {}").format(
        sql.Identifier(refill.since), keys, table, sql.SQL(_XMAX),
        sql.SQL(_SINCE).format(snap=snap, plan=sql.Literal(rv.plan_xids)) if source.snapshot else
        sql.SQL("(t.xmin::text::int8) <> ALL({})").format(sql.Literal(rv.plan_xids))))
    row = conn.execute(sql.SQL("SELECT count(*) FROM {} AS t WHERE EXISTS (SELECT 1 FROM {} AS b WHERE {})").format(
        sql.Identifier(refill.since), sql.Identifier(refill.temp), match(conn, refill))).fetchone()
    refill.ambiguous = int(row[0]) if row else 0


def _refillable(refill: Refill) -> sql.Composable:
    """The rows of `t` that are the backup's rows (see the module's docstring)."""
    if not refill.since:
        return sql.SQL("true")
    same = sql.SQL(" AND ").join(sql.SQL("s.{k} = t.{k}").format(k=sql.Identifier(k)) for k in refill.key)
    return sql.SQL("NOT EXISTS (SELECT 1 FROM {} AS s WHERE {})").format(sql.Identifier(refill.since), same)


def refill_table(rv: Reverter, refill: Refill) -> str:
    table = sql.SQL(str(refill.table.parent))  # the server's own quoted identity of the table
    name = str(refill.table.parent)
    current_key = [str(r[0]) for r in rv.conn.execute(
        "SELECT a.attname FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY k(n, o)"
        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n"
        " WHERE i.indrelid = %s::regclass AND i.indisprimary ORDER BY k.o", (name,)).fetchall()]
    if current_key != refill.key:
        raise CheckFailed(f"{name} keyed by ({', '.join(refill.key)}) as when its column(s) were dropped",
                          f"primary key ({', '.join(current_key) or 'none'})", name, hint=_RESTORE_HINT)
    if not refill.temp:
        load(rv, refill, rv.conn)
    for col in refill.columns:
        d = col.definition
        if d.get("identity"):
            raise CheckFailed("dropped columns the rollback can re-add", f"identity column {col.identity}",
                              name, hint=_RESTORE_HINT)
        extra = sql.SQL(" COLLATE {}").format(sql.SQL(d["collation"])) if d.get("collation") else sql.SQL("")
        if d.get("generated"):
            extra = sql.SQL(" GENERATED ALWAYS AS ({}) STORED").format(sql.SQL(d["generated"]))
        rv.conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {}{}").format(
            table, sql.Identifier(col.names[2]), sql.SQL(d["type"]), extra))
    source = refill.source
    assert source is not None
    stored = [c for c in refill.columns if not c.definition.get("generated")]
    triggers = rv.conn.execute("SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = %s::regclass"
                               " AND NOT tgisinternal AND tgenabled <> 'D'", (name,)).fetchall()
    for tg, _ in triggers:  # the refill must not fire them (an updated_at trigger would rewrite every row)
        rv.conn.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER {}").format(table, sql.Identifier(tg)))
    rules = rv.conn.execute("SELECT rulename, ev_enabled FROM pg_rewrite WHERE ev_class = %s::regclass"
                            " AND ev_type = '2' AND ev_enabled <> 'D'", (name,)).fetchall()
    for rule, _ in rules:  # nor rules, which DISABLE TRIGGER leaves on (an ON UPDATE ... DO ALSO audit insert)
        rv.conn.execute(sql.SQL("ALTER TABLE {} DISABLE RULE {}").format(table, sql.Identifier(rule)))
    on = sql.SQL("{} AND {}").format(match(rv.conn, refill), _refillable(refill))
    if stored:
        cur = rv.conn.execute(sql.SQL("UPDATE {} AS t SET {} FROM {} AS b WHERE {}").format(
            table, sql.SQL(", ").join(sql.SQL("{} = b.{}::{}").format(
                sql.Identifier(c.names[2]), sql.Identifier(c.names[2]), sql.SQL(c.definition["type"]))
                for c in stored), sql.Identifier(refill.temp), on))
        refill.refilled = max(cur.rowcount, 0)
    row = rv.conn.execute(sql.SQL("SELECT count(*) FROM {} AS t WHERE NOT EXISTS (SELECT 1 FROM {} AS b"
                                  " WHERE {})").format(table, sql.Identifier(refill.temp), on)).fetchone()
    refill.without_value = int(row[0]) if row else 0
    defaults = [c for c in stored if c.definition.get("default")]
    if refill.without_value and defaults:  # as ADD COLUMN ... DEFAULT would have filled them
        rv.conn.execute(sql.SQL("UPDATE {} AS t SET {} WHERE NOT EXISTS (SELECT 1 FROM {} AS b WHERE {})").format(
            table, sql.SQL(", ").join(sql.SQL("{} = {}").format(sql.Identifier(c.names[2]),
                                                              sql.SQL(c.definition["default"])) for c in defaults),
            sql.Identifier(refill.temp), on))
    for c in stored:
        if c.definition.get("default"):
            rv.conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET DEFAULT {}").format(
                table, sql.Identifier(c.names[2]), sql.SQL(c.definition["default"])))
        if c.definition.get("notnull"):
            nulls = rv.conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {} IS NULL").format(
                table, sql.Identifier(c.names[2]))).fetchone()
            if nulls and nulls[0]:
                raise CheckFailed(f"{c.identity} NOT NULL again, as before the plan dropped it",
                                  f"{nulls[0]:,} row(s) with no value (inserted since the backup, and the "
                                  "column had no default)", name,
                                  hint="nothing was changed: use --phase4-rollback=restore, or give those rows "
                                       "a value after the rollback by hand")
            rv.conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET NOT NULL").format(
                table, sql.Identifier(c.names[2])))
    for tg, enabled in triggers:
        mode = {"O": "ENABLE", "A": "ENABLE ALWAYS", "R": "ENABLE REPLICA"}[str(enabled)]
        rv.conn.execute(sql.SQL("ALTER TABLE {} {} TRIGGER {}").format(table, sql.SQL(mode),
                                                                       sql.Identifier(tg)))
    for rule, enabled in rules:
        mode = {"O": "ENABLE", "A": "ENABLE ALWAYS", "R": "ENABLE REPLICA"}[str(enabled)]
        rv.conn.execute(sql.SQL("ALTER TABLE {} {} RULE {}").format(table, sql.SQL(mode), sql.Identifier(rule)))
    cols = ", ".join(c.names[2] for c in refill.columns)
    which = f" {source.name} (the newest taken before {refill.dropped_by})" if source.name else ""
    since = (f" ({refill.ambiguous:,} of them written since under a key the backup holds: not told apart from "
             "a new row, no value given back)" if refill.ambiguous else "")
    return (f"{name}: re-added {cols}; {refill.refilled:,} row(s) refilled from the backup{which} by "
            f"({', '.join(refill.key)}), {refill.without_value:,} inserted since the backup{since} "
            + ("got the column default" if defaults else "have no value (NULL)"))


def match(conn: psycopg.Connection[Any], refill: Refill) -> sql.Composable:
    types = dict(conn.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
                              " WHERE attrelid = %s::regclass AND attnum > 0", (refill.table.parent,)).fetchall())
    return sql.SQL(" AND ").join(sql.SQL("t.{} = b.{}::{}").format(sql.Identifier(k), sql.Identifier(k),
                                                                  sql.SQL(types[k])) for k in refill.key)


def prove_values(rv: Reverter) -> list[tuple[str, bool, str]]:
    """Each refilled column's values, for every row the backup holds that is the backup's row, equal the
    backup's (checksums of key and columns, computed both sides in this transaction under the pinned settings)."""
    found = []
    for refill in rv.refills:
        stored = [c for c in refill.columns if not c.definition.get("generated")]
        if not stored:
            continue
        on = sql.SQL("{} AND {}").format(match(rv.conn, refill), _refillable(refill))
        keys = [sql.SQL("t.{}").format(sql.Identifier(k)) for k in refill.key]
        live = sql.SQL(", ").join([*keys, *(sql.SQL("t.{}").format(sql.Identifier(c.names[2])) for c in stored)])
        kept = sql.SQL(", ").join([*keys, *(sql.SQL("b.{}::{}").format(sql.Identifier(c.names[2]),
                                                                      sql.SQL(c.definition["type"]))
                                            for c in stored)])
        sums = []
        for row_expr in (live, kept):
            with snapshot.pinned(rv.conn, rv.schema):
                row = rv.conn.execute(sql.SQL(
                    "SELECT count(*), coalesce(sum(hashtextextended(ROW({})::text, 0)), 0) FROM {} AS t"
                    " JOIN {} AS b ON {}").format(row_expr, sql.SQL(str(refill.table.parent)),
                                                  sql.Identifier(refill.temp), on)).fetchone()
            sums.append((int(row[0]), str(row[1])) if row else (0, ""))
        cols = ", ".join(c.names[2] for c in stored)
        found.append((f"{refill.table.parent}({cols})", sums[0] == sums[1],
                      f"{sums[0][0]:,} rows, checksum {sums[0][1]} (backup: {sums[1][1]})"))
    return found
