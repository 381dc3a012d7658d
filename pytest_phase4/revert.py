"""What a revert must do, from the migrations' records alone: the net change of the migrations being undone,
object by object (created, dropped, altered), what it cannot undo without losing a write made since, and the
SQL that names each object. No pytest here; the work itself is in revert_apply.py.

The net change folds the records in the order the migrations were applied: an object the plan created and
dropped again needs nothing; one it dropped and created again under the same name (a new object) is replaced
by the original; one renamed is followed to its current name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

from pytest_phase4.changes import Record
from pytest_phase4.errors import CheckFailed
from pytest_phase4.inventory import Obj

# pg_identify_object types of relations and what DROP/ALTER call them.
RELATION_KW = {"table": "TABLE", "view": "VIEW", "materialized view": "MATERIALIZED VIEW", "sequence": "SEQUENCE",
               "index": "INDEX", "foreign table": "FOREIGN TABLE"}
ROUTINE_KW = {"function": "FUNCTION", "procedure": "PROCEDURE", "aggregate": "AGGREGATE"}
TYPE_KW = {"type": "TYPE", "composite type": "TYPE", "domain": "DOMAIN"}
OTHER_KW = {"schema": "SCHEMA", "extension": "EXTENSION", "statistics object": "STATISTICS", "collation": "COLLATION"}
ON_TABLE_KW = {"trigger": "TRIGGER", "policy": "POLICY", "rule": "RULE"}


@dataclass
class Net:
    original: Obj | None  # before the first migration being undone (None: the plan created it)
    current: Obj | None  # now, as the last record left it (None: the plan dropped it)
    files: list[str] = field(default_factory=list)
    replaced: bool = False  # dropped and created again: a new object under the original's name

    @property
    def obj(self) -> Obj:
        found = self.current or self.original
        assert found is not None
        return found

    @property
    def action(self) -> str:
        if self.original is None:
            return "drop" if self.current is not None else "none"
        if self.current is None:
            return "restore"
        if self.replaced or self.current.identity != self.original.identity or \
                _bare(self.current) != _bare(self.original):
            return "alter"
        return "none"

    def describe(self) -> str:
        return f"{self.obj.type} {self.obj.identity} ({', '.join(self.files)})"


def _bare(obj: Obj) -> dict[str, object]:
    return {k: v for k, v in obj.definition.items() if k != "key"}


def net_changes(records: list[Record]) -> list[Net]:
    """Fold the records (in the order applied) into one net change per object."""
    state: dict[tuple[str, str], Net] = {}
    for record in records:
        for change in record.changes:
            if change.action == "created":
                a = change.after
                assert a is not None
                found = state.get((a.type, a.identity))
                if found is not None and found.current is None:
                    found.current, found.replaced = a, True
                else:
                    found = state.setdefault((a.type, a.identity), Net(None, a))
            elif change.action == "dropped":
                b = change.before
                assert b is not None
                found = state.setdefault((b.type, b.identity), Net(b, b))
                found.current = None
            else:
                b, a = change.before, change.after
                assert a is not None
                assert b is not None
                found = state.pop((b.type, b.identity), None) or Net(b, b)
                found.current = a
                state[(a.type, a.identity)] = found
            if record.file not in found.files:
                found.files.append(record.file)
    return [n for n in state.values() if n.action != "none"]


# -- naming objects in SQL --------------------------------------------------------------------------------------
def relation(obj: Obj) -> sql.Composable:
    """schema.name of a relation, or of the table a column, constraint, trigger, policy or rule belongs to."""
    return sql.Identifier(obj.names[0], obj.names[1])


def routine(obj: Obj) -> sql.Composable:
    # the argument types as the server printed them (pg_identify_object_as_address), already quoted by it
    return sql.Composed([sql.Identifier(*obj.names), sql.SQL("("),
                         sql.SQL(", ").join(sql.SQL(a) for a in obj.args), sql.SQL(")")])


def type_name(obj: Obj) -> sql.Composable:
    return sql.SQL(obj.names[0])  # a type's address is its name as the server prints it, quoted by it


def drop_statement(obj: Obj) -> sql.Composed | None:
    """DROP ... IF EXISTS without CASCADE: PostgreSQL refuses when anything else depends on the object."""
    t = obj.type
    if t in RELATION_KW:
        return sql.SQL("DROP {} IF EXISTS {}").format(sql.SQL(RELATION_KW[t]), relation(obj))
    if t in ROUTINE_KW:
        return sql.SQL("DROP {} IF EXISTS {}").format(sql.SQL(ROUTINE_KW[t]), routine(obj))
    if t in TYPE_KW:
        return sql.SQL("DROP {} IF EXISTS {}").format(sql.SQL(TYPE_KW[t]), type_name(obj))
    if t in OTHER_KW:
        target = sql.Identifier(*obj.names)
        return sql.SQL("DROP {} IF EXISTS {}").format(sql.SQL(OTHER_KW[t]), target)
    if t == "table column":
        return sql.SQL("ALTER TABLE IF EXISTS {} DROP COLUMN IF EXISTS {}").format(
            relation(obj), sql.Identifier(obj.names[2]))
    if t == "table constraint":
        return sql.SQL("ALTER TABLE IF EXISTS {} DROP CONSTRAINT IF EXISTS {}").format(
            relation(obj), sql.Identifier(obj.names[2]))
    if t in ON_TABLE_KW:
        return sql.SQL("DROP {} IF EXISTS {} ON {}").format(sql.SQL(ON_TABLE_KW[t]), sql.Identifier(obj.names[2]),
                                                            relation(obj))
    return None


def rename_statement(now: Obj, was: Obj) -> sql.Composed | None:
    """Give a renamed object its original name back (same schema only)."""
    t, old = now.type, was.names[-1]
    if t in RELATION_KW and now.names[0] == was.names[0]:
        return sql.SQL("ALTER {} {} RENAME TO {}").format(sql.SQL(RELATION_KW[t]), relation(now), sql.Identifier(old))
    if t == "table column":
        return sql.SQL("ALTER TABLE {} RENAME COLUMN {} TO {}").format(relation(now), sql.Identifier(now.names[2]),
                                                                     sql.Identifier(old))
    if t == "table constraint":
        return sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
            relation(now), sql.Identifier(now.names[2]), sql.Identifier(old))
    if t in ("trigger", "policy"):
        return sql.SQL("ALTER {} {} ON {} RENAME TO {}").format(
            sql.SQL(ON_TABLE_KW[t]), sql.Identifier(now.names[2]), relation(now), sql.Identifier(old))
    if t in ROUTINE_KW and now.names[0] == was.names[0]:
        return sql.SQL("ALTER {} {} RENAME TO {}").format(sql.SQL(ROUTINE_KW[t]), routine(now), sql.Identifier(old))
    if t == "schema":
        return sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(sql.Identifier(now.names[0]), sql.Identifier(old))
    return None


def own_name(obj: Obj) -> str:
    return obj.names[-1] if obj.names else obj.identity


def same_but_parent(net: Net) -> bool:
    """A part (column, constraint, ...) whose only change is its table's name: renaming the table back is enough."""
    a, b = net.original, net.current
    return (a is not None and b is not None and not net.replaced and a.parent != b.parent and
            own_name(a) == own_name(b) and _bare(a) == _bare(b))


# -- privileges -----------------------------------------------------------------------------------------------
_PRIVILEGES = {"r": "SELECT", "w": "UPDATE", "a": "INSERT", "d": "DELETE", "D": "TRUNCATE", "x": "REFERENCES",
               "t": "TRIGGER", "X": "EXECUTE", "U": "USAGE", "C": "CREATE", "c": "CONNECT", "T": "TEMPORARY",
               "m": "MAINTAIN"}


def grants(acl: list[str]) -> set[tuple[str, str, bool]]:
    """aclitem texts (grantee=privileges/grantor) as (grantee, privilege, with grant option); '' is PUBLIC."""
    found = set()
    for item in acl:
        grantee, _, rest = item.partition("=")
        letters = rest.split("/", 1)[0]
        for i, letter in enumerate(letters):
            if letter in _PRIVILEGES:
                found.add((grantee.strip('"'), _PRIVILEGES[letter], letters[i + 1:i + 2] == "*"))
    return found


def acl_statements(obj: Obj, was: list[str], now: list[str], column: str | None = None) -> list[sql.Composed]:
    """GRANT/REVOKE that turn the privileges `now` back into `was` (an empty list: the defaults, i.e. the owner's
    own privileges, which are left alone)."""
    target = _acl_target(obj)
    if target is None:
        return []
    owner = str(obj.definition.get("owner", ""))
    before, after = grants(was), grants(now)
    if not was:  # defaults: only grants to others were added
        after = {g for g in after if g[0] != owner}
    cols = sql.SQL(" ({})").format(sql.Identifier(column)) if column else sql.SQL("")
    out: list[sql.Composed] = []
    for grantee, privilege, _ in sorted(after - before):
        who = sql.SQL("PUBLIC") if grantee == "" else sql.Identifier(grantee)
        out.append(sql.SQL("REVOKE {}{} ON {} FROM {}").format(sql.SQL(privilege), cols, target, who))
    for grantee, privilege, option in sorted(before - after):
        who = sql.SQL("PUBLIC") if grantee == "" else sql.Identifier(grantee)
        out.append(sql.SQL("GRANT {}{} ON {} TO {}{}").format(sql.SQL(privilege), cols, target, who,
                                                             sql.SQL(" WITH GRANT OPTION" if option else "")))
    return out


def _acl_target(obj: Obj) -> sql.Composable | None:
    t = obj.type
    if t in ("table", "view", "materialized view", "foreign table", "table column"):
        return sql.Composed([sql.SQL("TABLE "), relation(obj)])
    if t == "sequence":
        return sql.Composed([sql.SQL("SEQUENCE "), relation(obj)])
    if t in ROUTINE_KW:
        return sql.Composed([sql.SQL("ROUTINE "), routine(obj)])
    if t == "schema":
        return sql.Composed([sql.SQL("SCHEMA "), sql.Identifier(obj.names[0])])
    if t in TYPE_KW:
        return sql.Composed([sql.SQL("TYPE "), type_name(obj)])
    return None


RESTORE_HINT = ("nothing was changed; this change cannot be reverted in place: use --phase4-rollback=restore "
                "(it lists what a full restore would lose first)")


def column_back(now: Obj, a: dict[str, Any], rest: set[str]) -> list[sql.Composed]:
    """ALTER TABLE statements that give a column its original type, default and NOT NULL back."""
    if rest - {"type", "notnull", "default"}:
        raise CheckFailed("changes the rollback can undo", f"column {now.identity}: "
                          f"{', '.join(sorted(rest - {'type', 'notnull', 'default'}))} changed",
                          "the migrations' record", hint=RESTORE_HINT)
    table, col = relation(now), sql.Identifier(now.names[2])
    out: list[sql.Composed] = []
    if "default" in rest or "type" in rest:
        out.append(sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP DEFAULT").format(table, col))
    if "type" in rest:
        out.append(sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE {} USING {}::{}").format(
            table, col, sql.SQL(a["type"]), col, sql.SQL(a["type"])))
    if a.get("default") and ("default" in rest or "type" in rest):
        out.append(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET DEFAULT {}").format(table, col, sql.SQL(a["default"])))
    if "notnull" in rest:
        out.append(sql.SQL("ALTER TABLE {} ALTER COLUMN {} {} NOT NULL").format(
            table, col, sql.SQL("SET" if a["notnull"] else "DROP")))
    return out


def policy_back(now: Obj, a: dict[str, Any]) -> sql.Composed:
    roles = sql.SQL(", ").join(sql.SQL("PUBLIC") if r == "public" else sql.Identifier(r) for r in a["roles"] or [])
    parts: list[sql.Composable] = [sql.SQL("ALTER POLICY {} ON {} TO {}").format(
        sql.Identifier(now.names[2]), relation(now), roles)]
    if a.get("using"):
        parts.append(sql.SQL("USING ({})").format(sql.SQL(a["using"])))
    if a.get("check"):
        parts.append(sql.SQL("WITH CHECK ({})").format(sql.SQL(a["check"])))
    return sql.SQL(" ").join(parts)
