"""What a revert must do, from the migrations' records alone: the net change of the migrations being undone,
object by object (created, dropped, altered), what it cannot undo without losing a write made since, and the
SQL that names each object. No pytest here; the work itself is in revert_apply.py.

The net change folds the records in the order the migrations were applied, object by object as PostgreSQL
knows it (its catalog address, never its name): an object the plan created and dropped again needs nothing; one
renamed is followed to its current name; one it dropped while a new object took its name (a table swapped for
a new one, DROP then RENAME) is two changes: the new object is dropped, the original brought back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from pytest_phase4.db.changes import Record
from pytest_phase4.db.inventory import Obj
from pytest_phase4.errors import CheckFailed

# pg_identify_object types of relations and what DROP/ALTER call them.
RELATION_KW = {"table": "TABLE", "view": "VIEW", "materialized view": "MATERIALIZED VIEW", "sequence": "SEQUENCE",
               "index": "INDEX", "foreign table": "FOREIGN TABLE"}
ROUTINE_KW = {"function": "FUNCTION", "procedure": "PROCEDURE", "aggregate": "AGGREGATE"}
TYPE_KW = {"type": "TYPE", "composite type": "TYPE", "domain": "DOMAIN"}
OTHER_KW = {"schema": "SCHEMA", "extension": "EXTENSION", "statistics object": "STATISTICS", "collation": "COLLATION",
            "publication": "PUBLICATION", "event trigger": "EVENT TRIGGER"}
ON_TABLE_KW = {"trigger": "TRIGGER", "policy": "POLICY", "rule": "RULE"}


@dataclass
class Net:
    original: Obj | None  # before the first migration being undone (None: the plan created it)
    current: Obj | None  # now, as the last record left it (None: the plan dropped it)
    files: list[str] = field(default_factory=list)

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
        if self.current.identity != self.original.identity or \
                changed_keys(self.original, self.current):
            return "alter"
        return "none"

    def describe(self) -> str:
        return f"{self.obj.type} {self.obj.identity} ({', '.join(self.files)})"


def changed_keys(a: Obj, b: Obj) -> set[str]:
    """The fields of the definition that differ. A field only one side has was not recorded by the version that
    wrote the other (an older record): unknown, not changed. The table's key is only kept to refill by."""
    return {k for k in a.definition.keys() & b.definition.keys() if k != "key" and a.definition[k] != b.definition[k]}


def net_changes(records: list[Record]) -> list[Net]:
    """Fold the records (in the order applied) into one net change per object, by catalog address."""
    state: dict[tuple[int, int, int], Net] = {}
    for record in records:
        for change in record.changes:
            b, a = change.before, change.after
            if change.action == "created":
                assert a is not None
                found = state.setdefault(a.key, Net(None, a))
                found.current = a
            else:
                assert b is not None
                found = state.setdefault(b.key, Net(b, b))
                found.current = a  # None when dropped
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


def drop_statement(obj: Obj, cascade: bool = False) -> sql.Composed | None:
    """DROP ... IF EXISTS, without CASCADE unless asked: PostgreSQL refuses when anything else depends on the
    object. Default privileges and a table's place in a publication are not dropped but taken back."""
    t = obj.type
    if t == "publication relation":
        return sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(sql.Identifier(obj.args[0]), relation(obj))
    if t == "default acl":
        return sql.SQL("; ").join(default_acl_statements(obj, None, list(obj.definition.get("acl") or [])))
    found = _drop(obj)
    return found if found is None or not cascade else sql.Composed([found, sql.SQL(" CASCADE")])


def _drop(obj: Obj) -> sql.Composed | None:
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
    if t == "large object":
        return sql.SQL("SELECT pg_catalog.lo_unlink(l.oid) FROM pg_catalog.pg_largeobject_metadata l"
                       " WHERE l.oid = {}").format(sql.Literal(obj.objid))
    if t == "publication namespace":
        return sql.SQL("ALTER PUBLICATION {} DROP TABLES IN SCHEMA {}").format(sql.Identifier(obj.args[0]),
                                                                             sql.Identifier(obj.names[0]))
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
    return (a is not None and b is not None and a.parent != b.parent and
            own_name(a) == own_name(b) and not changed_keys(a, b))


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
    if obj.type == "default acl":
        return default_acl_statements(obj, was, now)
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


# What ALTER DEFAULT PRIVILEGES calls each pg_default_acl.defaclobjtype, and what PUBLIC gets by default.
_DEFAULT_ON = {"r": "TABLES", "S": "SEQUENCES", "f": "FUNCTIONS", "T": "TYPES", "n": "SCHEMAS"}
_PUBLIC_DEFAULT = {"f": "EXECUTE", "T": "USAGE"}


def default_acl_statements(obj: Obj, was: list[str] | None, now: list[str]) -> list[sql.Composed]:
    """ALTER DEFAULT PRIVILEGES statements that turn the default privileges `now` back into `was`, or (None)
    into the built-in defaults, at which PostgreSQL removes the pg_default_acl row."""
    role = obj.names[0]
    kind = str(obj.definition.get("objtype") or (obj.args[0] if obj.args else "r"))
    head = sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {}").format(sql.Identifier(role))
    if len(obj.names) > 1:
        head = sql.SQL("{} IN SCHEMA {}").format(head, sql.Identifier(obj.names[1]))
    on = sql.SQL(_DEFAULT_ON.get(kind, "TABLES"))

    def who(grantee: str) -> sql.Composable:
        return sql.SQL("PUBLIC") if grantee == "" else sql.Identifier(grantee)

    after = grants(now)
    if was is not None:
        before = grants(was)
    elif len(obj.names) > 1:  # a schema's row only adds to the global defaults: it goes when it grants nothing
        before = set()
    else:
        public = _PUBLIC_DEFAULT.get(kind)
        before = {g for g in after if g[0] == role} | ({("", public, False)} if public else set())
    out = [sql.SQL("{} REVOKE {} ON {} FROM {}").format(head, sql.SQL(p), on, who(g))
           for g, p, _ in sorted(after - before)]
    if was is None and len(obj.names) == 1:
        out.append(sql.SQL("{} GRANT ALL ON {} TO {}").format(head, on, sql.Identifier(role)))
    out += [sql.SQL("{} GRANT {} ON {} TO {}{}").format(head, sql.SQL(p), on, who(g),
                                                      sql.SQL(" WITH GRANT OPTION" if option else ""))
            for g, p, option in sorted(before - after)]
    return out


_LIVE_ACL = {
    "relation": "SELECT coalesce(relacl, pg_catalog.acldefault((CASE relkind WHEN 'S' THEN 's' ELSE 'r' END)::\"char\","
                " relowner)) FROM pg_catalog.pg_class WHERE oid = %s",
    "column": "SELECT coalesce(attacl, '{}') FROM pg_catalog.pg_attribute WHERE attrelid = %s AND attnum = %s",
    "routine": "SELECT coalesce(proacl, pg_catalog.acldefault('f', proowner)) FROM pg_catalog.pg_proc WHERE oid = %s",
    "schema": "SELECT coalesce(nspacl, pg_catalog.acldefault('n', nspowner)) FROM pg_catalog.pg_namespace"
              " WHERE oid = %s",
    "type": "SELECT coalesce(typacl, pg_catalog.acldefault('T', typowner)) FROM pg_catalog.pg_type WHERE oid = %s",
}


def live_acl(conn: psycopg.Connection[Any], obj: Obj) -> list[str] | None:
    """The object's privileges as they are now (the defaults written out, as the inventory reads them); None for
    a kind not read here (default privileges: the record's)."""
    t = obj.type
    kind = "column" if t == "table column" else "relation" if t in RELATION_KW else "routine" if t in ROUTINE_KW \
        else "type" if t in TYPE_KW else t
    if kind not in _LIVE_ACL:
        return None
    args = (obj.objid, obj.objsubid) if kind == "column" else (obj.objid,)
    row = conn.execute(sql.SQL("SELECT array_agg(x::text) FROM ({}) a(acl), unnest(a.acl) x").format(
        sql.SQL(_LIVE_ACL[kind])), args).fetchone()
    return list(row[0] or []) if row else []


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


_OWNED_KW = {**RELATION_KW, **ROUTINE_KW, **TYPE_KW, "schema": "SCHEMA", "publication": "PUBLICATION",
             "event trigger": "EVENT TRIGGER"}


def owner_statements(was: Obj, now: Obj) -> list[sql.Composed]:
    """ALTER ... OWNER TO the original owner (after any rename back: `now` carries the original name)."""
    kw = _OWNED_KW.get(was.type)
    if kw is None or was.type == "index" or (was.type == "sequence" and was.parent):
        return []  # an index's and an owned sequence's owner follow their table's
    target = routine(now) if was.type in ROUTINE_KW else type_name(now) if was.type in TYPE_KW else \
        relation(now) if was.type in RELATION_KW else sql.Identifier(now.names[0])
    owner = sql.Identifier(str(was.definition["owner"]))
    return [sql.SQL("ALTER {} {} OWNER TO {}").format(sql.SQL(kw), target, owner)]


def table_back(now: Obj, a: dict[str, Any], rest: set[str]) -> list[sql.Composed]:
    """Row level security (enabled, forced) and replica identity back to `a`'s."""
    out = []
    if "rls" in rest:
        out.append(sql.SQL("ALTER TABLE {} {} ROW LEVEL SECURITY").format(
            relation(now), sql.SQL("ENABLE" if a["rls"] else "DISABLE")))
    if "force_rls" in rest:
        out.append(sql.SQL("ALTER TABLE {} {} FORCE ROW LEVEL SECURITY").format(
            relation(now), sql.SQL("" if a["force_rls"] else "NO")))
    if "replident" in rest:
        mode, _, index = str(a["replident"]).partition(" ")
        how: sql.Composable = {"d": sql.SQL("DEFAULT"), "n": sql.SQL("NOTHING"), "f": sql.SQL("FULL")}.get(mode) or \
            sql.SQL("USING INDEX {}").format(sql.SQL(index))  # quoted by the server (quote_ident)
        out.append(sql.SQL("ALTER TABLE {} REPLICA IDENTITY {}").format(relation(now), how))
    return out


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
