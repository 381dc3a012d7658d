"""catalog_diff's answer: every catalog object of every schema that changed between a baseline's inventory and
now, property by property (a default, a trigger's enabled state, privileges, persistence, ...), and whether the
plan expects each change. No pytest here.

A change is expected only where the plan says so specifically: a migration's verify check or a post check that
names the object in the direction it changes (`column_absent` expects that column removed, `column_present` added,
`view_exists` a view added or redefined, `rls_policies` row level security turned on and the policies it names),
everything of a table or view the plan adds, a constraint, index or trigger that comes or goes with a column the
plan adds or drops, and the plan's `expect` list. A table named anywhere else (a preflight `table_exists`) makes
no change to it expected.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pytest_phase4.db.catalog import like
from pytest_phase4.db.inventory import Obj
from pytest_phase4.kinds.base import KINDS
from pytest_phase4.plan.model import Plan
from pytest_phase4.safety import normalize
from pytest_phase4.safety.snapshot import Change

# pg_identify_object's types as the diff (and a plan's `expect`) calls them.
KIND = {"table column": "column", "table constraint": "constraint", "default acl": "default privileges",
        "publication relation": "publication table", "statistics object": "statistics"}
_KINDS = sorted({*KIND.values(), "table", "view", "materialized view", "matview", "sequence", "index", "trigger",
                 "policy", "rule", "function", "procedure", "aggregate", "type", "domain", "schema", "extension",
                 "collation", "publication", "event trigger", "foreign table", "composite type"}, key=len, reverse=True)
# The properties of an inventory definition, in the words of the diff; the table's key is only kept to refill by.
PROPERTY = {"owner": "owner", "acl": "privileges", "rls": "row level security",
            "force_rls": "forced row level security", "options": "options", "persistence": "persistence",
            "replident": "replica identity",
            "inherits": "inherits", "partition": "partition bound", "sequence": "options", "def": "definition",
            "relkind": "kind", "type": "type", "notnull": "not null", "default": "default", "generated": "generated",
            "identity": "identity", "collation": "collation", "contype": "kind", "validated": "validated",
            "enforced": "enforced", "enabled": "enabled", "permissive": "permissive", "cmd": "command",
            "roles": "roles", "using": "using", "check": "with check", "md5": "definition",
            "security_definer": "security definer", "config": "settings", "body": "body",
            "attributes": "attributes", "typtype": "kind", "labels": "labels",
            "base": "base type", "checks": "checks", "version": "version", "provider": "provider", "objtype": "on",
            "all_tables": "all tables", "publish": "publish", "via_root": "via root", "event": "event",
            "tags": "tags", "function": "function"}
_ALIAS = {"matview": "materialized view"}  # as the fingerprint called it
_ON_OFF = {"rls", "force_rls", "security_definer", "notnull"}
_ENABLED = {"O": "enabled", "D": "disabled", "R": "replica only", "A": "always"}
_WORDS = {"persistence": {"p": "logged", "u": "unlogged", "t": "temporary"},
          "cmd": {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE", "*": "ALL"},
          "identity": {"": "none", "a": "always", "d": "by default"}}
_ROUTINES = ("function", "procedure", "aggregate")
_EXPLAINS_HASH = {"body", "attributes", "security definer", "settings"}  # parts of pg_get_functiondef's text
_PARTS = ("table column", "table constraint", "trigger", "policy", "rule")
_WHOLE = ("table", "view", "materialized view", "foreign table")


def kind_of(obj: Obj) -> str:
    return KIND.get(obj.type, obj.type)


def name_of(obj: Obj, schema: str) -> str:
    """The object's name as a plan writes it: without the plan's schema, qualified in any other."""
    n, t = obj.names, obj.type

    def rel(ns: str, name: str) -> str:
        return name if ns == schema else f"{ns}.{name}"

    if t in _PARTS and len(n) == 3:
        return f"{rel(n[0], n[1])}.{n[2]}"
    if t == "publication relation" and len(n) == 2 and obj.args:
        return f"{rel(n[0], n[1])} in publication {obj.args[0]}"
    if t in _ROUTINES and len(n) == 2:
        return f"{rel(n[0], n[1])}({', '.join(obj.args)})"
    if t in ("type", "domain") and n:
        return n[0].removeprefix(f"{schema}.")
    if t == "default acl":
        return obj.identity
    if len(n) == 2:
        return rel(n[0], n[1])
    return n[0] if n else obj.identity


def value(key: str, v: Any) -> str:
    """A property's value as people read it."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return ("on" if v else "off") if key in _ON_OFF else ("yes" if v else "no")
    if key == "enabled":
        return _ENABLED.get(str(v), str(v))
    if key in _WORDS:
        return _WORDS[key].get(str(v), str(v))
    if key == "replident":
        mode, _, index = str(v).partition(" ")
        return {"d": "default (primary key)", "n": "nothing", "f": "full"}.get(mode, f"using index {index}")
    if key in ("md5", "body"):
        return f"hash {str(v)[:12]}"
    if key == "acl":
        return ", ".join(_acl_item(i) for i in v) or "defaults"
    if isinstance(v, dict):
        return ", ".join(f"{k} {x}" for k, x in sorted(v.items()))
    if isinstance(v, list):
        return ", ".join(str(x) for x in v) or "none"
    return str(v)


def _acl_item(item: str) -> str:
    return f"PUBLIC{item}" if item.startswith("=") else item


def describe(obj: Obj) -> str:
    """What an added or removed object is, in one line."""
    d, t = obj.definition, obj.type
    if t == "table column":
        text = str(d.get("type", ""))
        text += " not null" if d.get("notnull") else ""
        text += f" default {d['default']}" if d.get("default") else ""
        text += f" generated {value('identity', d['identity'])} as identity" if d.get("identity") else ""
        return text + (f" generated {d['generated']}" if d.get("generated") else "")
    if t == "policy":
        text = (f"AS {'PERMISSIVE' if d.get('permissive') else 'RESTRICTIVE'} FOR {value('cmd', d.get('cmd'))} "
                f"TO {value('roles', d.get('roles'))}")
        text += f" USING ({d['using']})" if d.get("using") else ""
        return text + (f" WITH CHECK ({d['check']})" if d.get("check") else "")
    if t in _ROUTINES:
        text = "security definer" if d.get("security_definer") else "security invoker"
        return text + "".join(f", SET {c}" for c in d.get("config") or [])
    if d.get("def"):
        return str(d["def"])
    if t in ("type", "domain"):
        return f"enum {value('labels', d.get('labels'))}" if d.get("labels") else f"domain {d.get('base') or ''}"
    if t == "default acl":
        return value("acl", d.get("acl"))
    if t == "table":
        unlogged = ", unlogged" if d.get("persistence") == "u" else ""
        return "row level security " + value("rls", d.get("rls")) + unlogged
    if t == "sequence":
        return str((d.get("sequence") or {}).get("type", ""))
    if t == "publication":
        return f"publish {d.get('publish')}" + (", all tables" if d.get("all_tables") else "")
    if t == "event trigger":
        return f"on {d.get('event')} execute {d.get('function')}"
    if t == "extension":
        return f"version {d.get('version')}"
    return ""


@dataclass(frozen=True)
class Found:
    change: Change
    obj: Obj  # as it is now (as it was, for a removed object)
    parent: str | None  # identity of the table or view it belongs to


def diff(before: Iterable[Obj], after: Iterable[Obj], schema: str) -> list[Found]:
    """Objects added and removed, and each property of an object of both that changed, by (type, identity)."""
    was = {(o.type, o.identity): o for o in before}
    now = {(o.type, o.identity): o for o in after}
    found = []
    for key in sorted(was.keys() | now.keys()):
        a, b = was.get(key), now.get(key)
        obj = b or a
        assert obj is not None
        kind, name = kind_of(obj), name_of(obj, schema)
        if a is None:
            found.append(Found(Change(kind, name, "added", "", describe(obj)), obj, obj.parent))
        elif b is None:
            found.append(Found(Change(kind, name, "removed", describe(obj)), obj, obj.parent))
        else:
            for prop in sorted(a.definition.keys() & b.definition.keys() - {"key"}):
                x, y = a.definition[prop], b.definition[prop]
                if x == y or normalize.same_definition(obj.type, {prop: x}, {prop: y}):
                    continue
                if prop == "acl":  # only the grants that differ, not every grantee of the object
                    shown = _acl_change(list(x or []), list(y or []), str(b.definition.get("owner", "")))
                else:
                    shown = (value(prop, x), value(prop, y))
                found.append(Found(Change(kind, name, "changed", *shown, what=PROPERTY.get(prop, prop)), obj,
                                   obj.parent))
    return _without_echoes(found)


def _acl_change(was: list[str], now: list[str], owner: str) -> tuple[str, str]:
    """The grants taken away and the grants given; an empty list stands for the defaults (the owner's own)."""
    gone, new = [i for i in was if i not in now], [i for i in now if i not in was]
    if not was or not now:  # from or to the defaults: the owner's own grants are no change
        gone, new = ([i for i in items if not i.startswith(f"{owner}=")] for items in (gone, new))
    return ", ".join(_acl_item(i) for i in gone), ", ".join(_acl_item(i) for i in new)


def _without_echoes(found: list[Found]) -> list[Found]:
    """Leave out what only repeats another change: an index's or owned sequence's owner and persistence that follow
    their table's, and a routine's whole-definition hash when a property that explains it is listed."""
    table_changes = {(f.obj.identity, f.change.what, f.change.before, f.change.after) for f in found
                     if f.obj.type == "table" and f.change.change == "changed"}
    specific = {f.obj.identity for f in found if f.obj.type in _ROUTINES and f.change.what in _EXPLAINS_HASH}
    return [f for f in found if not (
        (f.obj.type in ("index", "sequence") and f.change.what in ("owner", "persistence")
         and (f.parent, f.change.what, f.change.before, f.change.after) in table_changes)
        or (f.obj.type in _ROUTINES and f.change.what == "definition" and f.obj.identity in specific))]


@dataclass
class Expected:
    """What the plan says will change, from its migrations' verify checks and its post checks."""

    schema: str
    tables: set[str] = field(default_factory=set)  # added (table_exists)
    views: set[str] = field(default_factory=set)  # added or redefined (view_exists, view_rowcount_matches, ...)
    views_gone: set[str] = field(default_factory=set)  # removed (views_absent)
    columns: set[str] = field(default_factory=set)  # added (column_present), "table.column"
    columns_gone: set[str] = field(default_factory=set)  # removed (column_absent)
    indexes: set[str] = field(default_factory=set)  # added (index_exists)
    index_likes: list[str] = field(default_factory=list)  # added (index_count's like)
    rls_on: set[str] = field(default_factory=set)  # row level security turned on (rls_policies)
    policies: set[str] = field(default_factory=set)  # added or changed (rls_policies' names), "table.policy"
    explicit: tuple[str, ...] = ()  # catalog_diff's expect

    @classmethod
    def of(cls, plan: Plan, explicit: Iterable[str]) -> Expected:
        found = cls(plan.schema, explicit=tuple(explicit))
        for step in plan.steps:
            if step.stage not in ("migration", "post"):  # a preflight check describes the state before
                continue
            for s in step.checks:
                for what, name in (expects(s) if (expects := KINDS[s.kind].expects) else ()):
                    names = getattr(found, what)  # each kind says which changes it expects (kinds.Kind.expects)
                    names.append(name) if isinstance(names, list) else names.add(name)
        return found

    def named(self, change: Change) -> bool:
        """Whether an `expect` entry names the object: `name`, `kind name`, or a LIKE pattern with %."""
        for entry in self.explicit:
            kind = next((k for k in _KINDS if entry.startswith(k + " ")), None)
            wanted = entry[len(kind) + 1:].strip() if kind else entry
            if kind is not None and _ALIAS.get(kind, kind) != change.kind and not (
                    kind == "view" and change.kind == "materialized view"):
                continue
            if wanted == change.name or ("%" in wanted and like(change.name, wanted)):
                return True
        return False

    def direct(self, f: Found) -> bool:
        """Expected by a check naming the object in the direction it changed, or by `expect`."""
        c = f.change
        if self.named(c):
            return True
        if c.kind == "table":
            return (c.change == "added" and c.name in self.tables) or (
                c.what == "row level security" and c.after == "on" and c.name in self.rls_on)
        if c.kind in ("view", "materialized view"):
            return (c.change == "added" and c.name in self.views) or (
                c.change == "changed" and c.what == "definition" and c.name in self.views) or (
                c.change == "removed" and c.name in self.views_gone)
        if c.kind == "column":
            return (c.change == "added" and c.name in self.columns) or (
                c.change == "removed" and c.name in self.columns_gone)
        if c.kind == "index" and c.change == "added" and (
                c.name in self.indexes or any(like(c.name, p) for p in self.index_likes)):
            return True
        if c.kind == "policy" and c.change in ("added", "changed"):
            return c.name in self.policies
        if c.kind in ("constraint", "index", "trigger") and c.change in ("added", "removed") and f.parent:
            return self._follows_column(f)
        return False

    def _follows_column(self, f: Found) -> bool:
        """A constraint, index or trigger added with a column the plan adds, or removed with one it drops."""
        columns = self.columns if f.change.change == "added" else self.columns_gone
        table = f.change.name.rsplit(".", 1)[0] if f.change.kind != "index" else _table_name(f.parent, self.schema)
        text = f" {f.change.before or f.change.after} "
        for col in columns:
            t, _, c = col.rpartition(".")
            if t == table and re.search(rf"[( ,]\"?{re.escape(c)}\"?[,) ]", text):
                return True
        return False


def _table_name(identity: str | None, schema: str) -> str:
    return (identity or "").removeprefix(f"{schema}.")


def judge(found: list[Found], expected: Expected) -> list[tuple[Change, bool]]:
    """Each change with whether the plan expects it: everything of a table or view it adds is expected with it, and
    the sequence of a serial or identity column it adds to a table (the column's default or identity uses it)."""
    added = {f.obj.identity for f in found if f.change.change == "added" and f.obj.type in _WHOLE
             and expected.direct(f)}
    columns = [f for f in found if f.obj.type == "table column" and f.change.change == "added" and expected.direct(f)]

    def with_column(f: Found) -> bool:
        name = f.obj.names[-1] if f.obj.names else ""
        return f.obj.type == "sequence" and f.change.change == "added" and any(
            c.parent == f.parent and (name in c.change.after or "as identity" in c.change.after) for c in columns)

    return [(f.change, expected.direct(f) or (f.obj.type != "publication relation" and f.parent in added)
             or with_column(f)) for f in found]


def objects(data: Iterable[Mapping[str, Any]]) -> list[Obj]:
    return [Obj.from_json(dict(o)) for o in data]
