"""Undo the net change of the plan's migrations inside the rollback's one transaction: drop what the plan
created (never reaching an object it did not create), give altered objects their original definition, bring
dropped ones back from the backup (tables with their rows; columns re-added and refilled by key with the
table's triggers not firing), then prove it. No pytest here; nothing here commits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors, sql

from pytest_phase4 import inventory, normalize, pgscript, revert, snapshot
from pytest_phase4.backup import Tools
from pytest_phase4.errors import CheckFailed
from pytest_phase4.inventory import Obj
from pytest_phase4.refill import prove_values, refill_table
from pytest_phase4.revert import Net

# Parts dropped before the objects they belong to; then relations (views before tables), routines, types.
_DROP_ORDER = ["publication relation", "default acl", "event trigger", "trigger", "policy", "rule",
               "table constraint", "index", "statistics object", "table column", "materialized view", "view",
               "foreign table", "table", "sequence", "function", "procedure", "aggregate", "composite type", "domain",
               "type", "collation", "publication", "extension", "schema"]
# Entries restored after the dropped columns are back: they may need them.
_LATE = {"VIEW", "MATERIALIZED VIEW", "MATERIALIZED VIEW DATA", "TABLE DATA", "SEQUENCE OWNED BY", "SEQUENCE SET",
         "DEFAULT", "CONSTRAINT", "FK CONSTRAINT", "CHECK CONSTRAINT", "INDEX", "INDEX ATTACH", "TRIGGER", "POLICY",
         "ROW SECURITY", "RULE", "ACL", "COMMENT", "SECURITY LABEL", "STATISTICS"}
_DERIVED = ("ACL", "COMMENT", "SECURITY LABEL")
_WHOLE = ("table", "view", "materialized view", "foreign table")
# What changed in a view or routine that replacing it by the backup's definition undoes.
_FROM_BACKUP = {"def", "md5", "security_definer", "config", "body", "attributes"}


@dataclass(frozen=True)
class Source:
    """A backup of this database the dropped columns' values can come from."""

    name: str  # its folder's name
    archive: Path
    toc: list[pgscript.Entry]
    applied: frozenset[str]  # the plan's migrations applied when it was taken


@dataclass
class Refill:
    table: Obj  # a dropped column's Obj stands for its table (names[0:2], objid = the table's oid)
    key: list[str]
    columns: list[Obj]
    dropped_by: str = ""  # the migration that dropped the columns
    source: Source | None = None  # the newest backup taken before that migration (its rows are the refill's)
    temp: str = ""
    without_value: int = 0  # rows of the table now that the backup does not hold (inserted since)
    refilled: int = 0


@dataclass
class Reverter:
    conn: psycopg.Connection[Any]
    tools: Tools
    archive: Path
    secrets: list[str]
    nets: list[Net]
    toc: list[pgscript.Entry]
    refills: list[Refill] = field(default_factory=list)
    kept_before: dict[str, snapshot.Checksum] = field(default_factory=dict)
    _kept: list[str] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)  # newest first; the chosen backup's archive is the last resort
    schema: str = "public"

    # -- what goes where ------------------------------------------------------------------------------------
    def to_drop(self) -> list[Obj]:
        """Current objects to drop: created by the plan, or new objects under an original's name; parts of a
        relation dropped as a whole go with it."""
        found = [n.current for n in self.nets if n.current is not None and
                 (n.action == "drop" or (n.action == "alter" and self._recreate(n)))]
        whole = {o.identity for o in found if o.type in _WHOLE}
        constraints = {(o.names[0], o.names[-1]) for o in found if o.type == "table constraint"}
        keep = [o for o in found if not (o.parent in whole or (o.type == "index" and tuple(o.names) in constraints))]
        return sorted(keep, key=lambda o: _DROP_ORDER.index(o.type) if o.type in _DROP_ORDER else len(_DROP_ORDER))

    def to_restore(self) -> list[Obj]:
        """Original objects to bring back: dropped by the plan, or replaced by a new object of the same name."""
        return [n.original for n in self.nets if n.original is not None and
                (n.action == "restore" or (n.action == "alter" and self._recreate(n)))]

    @staticmethod
    def _recreate(net: Net) -> bool:
        a, b = net.original, net.current
        assert a is not None
        assert b is not None
        if net.replaced:
            return True
        changed = revert.changed_keys(a, b)
        return a.type in ("materialized view", "index", "table constraint", "rule", "statistics object") and \
            bool(changed - {"acl", "owner", "validated", "enforced"})

    def entry_of(self, obj: Obj) -> pgscript.Entry | None:
        return next((e for e in self.toc if e.catalog == obj.classid and e.oid == obj.objid), None)

    def _with_constraint(self, obj: Obj) -> bool:
        """An index a restored constraint (primary key, unique, exclusion) creates with itself."""
        return obj.type == "index" and any(
            o.type == "table constraint" and (o.names[0], o.names[-1]) == (obj.names[0], obj.names[-1])
            for o in self.to_restore())

    def missing_copies(self) -> list[str]:
        """Objects to restore that the backup has no copy of (created after it, then dropped by the plan)."""
        restored = {o.identity for o in self.to_restore() if o.type in _WHOLE}
        lines = []
        for obj in self.to_restore():
            if obj.parent in restored or obj.type == "table column" or _inline_check(obj) or \
                    self._with_constraint(obj):
                continue
            if self.entry_of(obj) is None:
                lines.append(f"{obj.type} {obj.identity}: not in the backup (it was created after the backup)")
        for refill in self.plan_refills():
            if refill.source is None:
                lines.append(f"table {refill.table.parent}: the backup holds no rows of it to refill "
                             f"{', '.join(c.names[2] for c in refill.columns)} from")
            if not refill.key:
                lines.append(f"table {refill.table.parent}: no primary key to refill its dropped column(s) by")
        return lines

    def plan_refills(self) -> list[Refill]:
        """Dropped columns of kept tables, per table and dropping migration, each with the newest backup taken
        before that migration that holds the table's rows: its values are the latest known before the drop."""
        restored = {o.identity for o in self.to_restore() if o.type in _WHOLE}
        by_table: dict[tuple[str, str], Refill] = {}
        for net in self.nets:
            obj = net.original
            if net.action != "restore" or obj is None or obj.type != "table column" or obj.parent in restored \
                    or not obj.parent:
                continue
            key = [str(k) for k in obj.definition.get("key") or []]
            refill = by_table.setdefault((obj.parent, net.files[-1]), Refill(obj, key, [], net.files[-1]))
            refill.columns.append(obj)
        primary = Source("", self.archive, self.toc, frozenset())
        for refill in by_table.values():
            t = refill.table
            refill.source = next((s for s in [*self.sources, primary] if refill.dropped_by not in s.applied
                                  and pgscript.table_data(s.toc, t.objid, *t.names[:2]) is not None), None)
        return list(by_table.values())

    # -- the steps ------------------------------------------------------------------------------------------
    def tables_to_lock(self) -> list[str]:
        """Existing tables whose columns, constraints, triggers or rows the revert touches, and the tables the plan
        created: their rows stay as counted while the rollback runs (rollback.lock locks them)."""
        parts = {o.parent for n in self.nets for o in (n.original, n.current)
                 if o is not None and o.parent and o.type in ("table column", "table constraint", "trigger",
                                                              "policy", "index")}
        created = {n.current.identity for n in self.nets if n.action == "drop" and n.current is not None}
        found = []
        for name in sorted(t for t in parts | {n.current.identity for n in self.nets if n.action == "drop"
                                               and n.current is not None and n.current.type == "table"} if t):
            row = self.conn.execute("SELECT (SELECT relkind FROM pg_class WHERE oid = to_regclass(%s))",
                                    (name,)).fetchone()
            if row and row[0] in ("r", "p"):
                found.append(name)
        self._kept = [name for name in found if name not in created]
        return found

    def record_kept(self) -> None:
        """Checksums of the locked existing tables' kept columns, before any change: prove_kept compares."""
        for name in self._kept:
            self.kept_before[name] = self._kept_checksum(name)

    def _kept_columns(self, table: str) -> list[str]:
        leaving = {o.names[2] for o in self.to_drop() if o.type == "table column" and o.parent == table}
        changing = {n.current.names[2] for n in self.nets if n.current is not None and n.action == "alter"
                    and n.current.type == "table column" and n.current.parent == table}
        cols = [r[0] for r in self.conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped"
            " ORDER BY attnum", (table,)).fetchall()]
        return [c for c in cols if c not in leaving and c not in changing]

    def _kept_checksum(self, table: str, like: snapshot.Checksum | None = None) -> snapshot.Checksum:
        ns, name = self.conn.execute("SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON"
                                     " n.oid = c.relnamespace WHERE c.oid = %s::regclass", (table,)).fetchone() \
            or ("", "")
        columns = like.columns if like is not None else self._kept_columns(table)
        return snapshot.checksum(self.conn, str(ns), str(name), columns, pin=self.schema, like=like)

    def drop_created(self) -> list[str]:
        """Drop in rounds, each statement without CASCADE in a savepoint: what another object still depends on
        waits for the next round; when a round drops nothing, what is left depends on something the plan did
        not create, and the revert is refused with PostgreSQL's own list of those dependents."""
        targets = self.to_drop()
        self._refuse_auto_dependents(targets)
        done: list[str] = []
        remaining = targets
        while remaining:
            blocked: list[tuple[Obj, str]] = []
            for obj in remaining:
                statement = revert.drop_statement(obj)
                if statement is None:
                    raise CheckFailed("objects the plan created that the rollback can drop", f"{obj.type} "
                                      f"{obj.identity}", "the migrations' record", hint=_RESTORE_HINT)
                try:
                    with self.conn.transaction():
                        self.conn.execute(statement)
                except errors.DependentObjectsStillExist as exc:
                    blocked.append((obj, exc.diag.message_detail or str(exc)))
                    continue
                done.append(f"{obj.type} {obj.identity}")
            if len(blocked) == len(remaining):
                details = [f"{o.type} {o.identity}: {d}" for o, d in blocked]
                raise CheckFailed("every object the plan created to be droppable without reaching anything else",
                                  f"{len(blocked)} object(s) that objects the plan did not create depend on",
                                  "the database now", details=[line for d in details for line in d.splitlines()],
                                  hint="nothing was changed: drop or change those objects first (they are not the "
                                       "plan's), or use --phase4-rollback=restore")
            remaining = [o for o, _ in blocked]
        return done

    def _refuse_auto_dependents(self, targets: list[Obj]) -> None:
        """Indexes, triggers, policies, constraints that PostgreSQL would drop silently with a plan object but
        that the plan did not create (the application's): refuse rather than lose them."""
        created = {(o.type, o.identity) for n in self.nets if n.current is not None and n.original is None
                   for o in [n.current]}
        outside: list[str] = []
        for obj in targets:
            rows = self.conn.execute(
                "SELECT i.type, i.identity FROM pg_depend d"
                " CROSS JOIN LATERAL pg_identify_object(d.classid, d.objid, d.objsubid) i"
                " WHERE d.refclassid = %s AND d.refobjid = %s AND (%s = 0 OR d.refobjsubid = %s) AND d.deptype = 'a'"
                " AND d.classid NOT IN ('pg_attrdef'::regclass, 'pg_type'::regclass)"
                " AND NOT (d.classid = 'pg_class'::regclass AND d.objid = d.refobjid)",
                (obj.classid, obj.objid, obj.objsubid, obj.objsubid)).fetchall()
            for kind, identity in rows:
                if (kind, identity) not in created and kind != "sequence":
                    outside.append(f"{kind} {identity} (not created by the plan) would be dropped with "
                                   f"{obj.type} {obj.identity}")
        if outside:
            raise CheckFailed("every object the plan created to be droppable without reaching anything else",
                              f"{len(outside)} object(s) the plan did not create", "the database now",
                              details=outside, hint="nothing was changed: drop them first if they may go, or use "
                                                    "--phase4-rollback=restore")

    def alter_back(self) -> list[str]:
        """Names, column types, NOT NULL, defaults, row security, trigger states, policies, owners and
        privileges back to what they were; views and functions replaced by their backup definition."""
        done: list[str] = []
        alters = [n for n in self.nets if n.action == "alter" and not self._recreate(n)]
        # relations first: renaming a table back renames its parts' identities back too
        alters.sort(key=lambda n: 0 if n.obj.type in revert.RELATION_KW or n.obj.type == "schema" else 1)
        for net in alters:
            was, now = net.original, net.current
            assert was is not None
            assert now is not None
            if revert.same_but_parent(net):
                continue
            statements: list[sql.Composed] = []
            if revert.own_name(was) != revert.own_name(now):
                rename = revert.rename_statement(now, was)
                if rename is None:
                    raise CheckFailed("a rename the rollback can undo", f"{now.type} {was.identity} renamed to "
                                      f"{now.identity}", ", ".join(net.files), hint=_RESTORE_HINT)
                statements.append(rename)
                now = _renamed(now, was)
            statements += self._definition_back(was, now, net)
            for statement in statements:
                self.conn.execute(statement)
            done.append(f"{was.type} {was.identity}")
        return done

    def _definition_back(self, was: Obj, now: Obj, net: Net) -> list[sql.Composed]:
        a = was.definition
        changed = revert.changed_keys(was, now)
        out: list[sql.Composed] = []
        if "acl" in changed:
            column = was.names[2] if was.type == "table column" else None
            out += revert.acl_statements(now, list(a.get("acl") or []), list(now.definition.get("acl") or []),
                                         column)
        if "owner" in changed:
            out += revert.owner_statements(was, now)
        rest = changed - {"acl", "owner", "validated"}
        if was.type == "table column":
            out += revert.column_back(now, a, rest)
        elif was.type == "table" and rest <= {"rls", "force_rls", "replident"}:
            out += revert.table_back(now, a, rest)
        elif was.type == "table constraint" and rest <= {"enforced"}:
            mode = "ENABLE" if a["enforced"] else "DISABLE"  # its internal triggers, by name (needs a superuser)
            out += [sql.SQL("ALTER TABLE {} {} TRIGGER {}").format(sql.SQL(rel), sql.SQL(mode), sql.Identifier(name))
                    for rel, name in self.conn.execute(
                        "SELECT tgrelid::regclass::text, tgname FROM pg_catalog.pg_trigger WHERE tgconstraint = %s"
                        " ORDER BY 1, 2", (now.objid,)).fetchall()]
        elif was.type == "trigger" and rest <= {"enabled"}:
            mode = {"O": "ENABLE", "A": "ENABLE ALWAYS", "R": "ENABLE REPLICA", "D": "DISABLE"}[str(a["enabled"])]
            out.append(sql.SQL("ALTER TABLE {} {} TRIGGER {}").format(revert.relation(now), sql.SQL(mode),
                                                                     sql.Identifier(now.names[2])))
        elif was.type == "policy" and rest <= {"roles", "using", "check"}:
            out.append(revert.policy_back(now, a))
        elif was.type in ("view", "function", "procedure") and rest <= _FROM_BACKUP:
            self._replace_from_backup(was, now)
        elif rest:
            raise CheckFailed("changes the rollback can undo", f"{was.type} {was.identity}: {', '.join(sorted(rest))} "
                              f"changed ({', '.join(net.files)})", "the migrations' record", hint=_RESTORE_HINT)
        return out

    def _replace_from_backup(self, was: Obj, now: Obj) -> None:
        entry = self.entry_of(was)
        if entry is None:
            raise CheckFailed(f"{was.type} {was.identity} in the backup", "no copy of it", str(self.archive),
                              hint=_RESTORE_HINT)
        try:
            with self.conn.transaction():
                pgscript.run(self.conn, self.tools, self.archive, self.secrets, [entry], or_replace=True)
        except psycopg.Error:  # e.g. a view whose columns changed: OR REPLACE cannot drop columns
            with self.conn.transaction():
                statement = revert.drop_statement(now)
                assert statement is not None
                self.conn.execute(statement)
                pgscript.run(self.conn, self.tools, self.archive, self.secrets, [entry])

    def restore_dropped(self) -> list[str]:
        """Dropped objects back from the backup (tables with their rows), dropped columns re-added and
        refilled, CHECK constraints of kept tables from the record."""
        originals = self.to_restore()
        restored = {o.identity for o in originals if o.type in _WHOLE}
        chosen: list[pgscript.Entry] = []
        main = [e for o in originals if not (o.type == "table column" or _inline_check(o) or self._with_constraint(o))
                and (e := self.entry_of(o)) is not None]
        columns = [(c.names[1], c.names[2], c.names[0]) for r in self.plan_refills() for c in r.columns]
        for entry in self.toc:
            if entry in main or _derived(entry, main, columns, restored):
                chosen.append(entry)
        early = [e for e in chosen if e.desc not in _LATE]
        late = [e for e in chosen if e.desc in _LATE]
        pgscript.run(self.conn, self.tools, self.archive, self.secrets, early)
        done = [f"{e.desc.lower()} {e.schema}.{e.tag}" for e in early]
        self.refills = self.plan_refills()
        for refill in self.refills:
            done.append(refill_table(self, refill))
        pgscript.run(self.conn, self.tools, self.archive, self.secrets, late)
        done += [f"{e.desc.lower()} {e.schema}.{e.tag}" for e in late if e.desc not in _DERIVED]
        for obj in originals:
            if _inline_check(obj) and obj.parent not in restored:
                self.conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}{}").format(
                    revert.relation(obj), sql.Identifier(obj.names[2]), sql.SQL(str(obj.definition["def"])),
                    sql.SQL("" if obj.definition.get("validated", True) else " NOT VALID")))
                done.append(f"constraint {obj.identity}")
        return done

    # -- the proof ------------------------------------------------------------------------------------------
    def prove_catalog(self) -> tuple[int, list[str]]:
        """Every object the plan touched is as it was before the plan (absent, or with its original
        definition, owner and privileges): compared by identity with the catalog now."""
        now = {(o.type, o.identity): o for o in inventory.take(self.conn).values()}
        wrong = []
        for net in self.nets:
            if net.original is None:
                assert net.current is not None
                if (net.current.type, net.current.identity) in now:
                    wrong.append(f"{net.current.type} {net.current.identity}: still there")
                continue
            found = now.get((net.original.type, net.original.identity))
            if found is None:
                wrong.append(f"{net.original.type} {net.original.identity}: missing")
            elif not normalize.same_definition(found.type, revert_bare(net.original), revert_bare(found)):
                wrong.append(f"{net.original.type} {net.original.identity}: {revert_bare(found)} instead of "
                             f"{revert_bare(net.original)}")
        return len(self.nets), wrong

    def prove_values(self) -> list[tuple[str, bool, str]]:
        return prove_values(self)

    def prove_kept(self) -> list[tuple[str, bool, str]]:
        """The tables the revert locked hold the same rows as before it, in every column the plan did not
        add or change: triggers did not fire, nothing else was written."""
        out = []
        for table, before in self.kept_before.items():
            after = self._kept_checksum(table, before)
            out.append((table, after == before, f"{after.rows:,} rows, checksum {after.sum} of {len(after.columns)} "
                                                f"column(s)"))
        return out


def revert_bare(obj: Obj) -> dict[str, Any]:
    return {k: v for k, v in obj.definition.items() if k != "key"}


def _renamed(now: Obj, was: Obj) -> Obj:
    """The object as it is once renamed back: its original name, its current definition."""
    return Obj(now.classid, now.objid, now.objsubid, now.type, was.identity, was.names, was.args, now.definition,
               was.parent)


def _inline_check(obj: Obj) -> bool:
    """A CHECK constraint: pg_dump writes it inside CREATE TABLE, so the backup has no entry of its own."""
    return obj.type == "table constraint" and obj.definition.get("contype") == "c"


def _derived(entry: pgscript.Entry, main: list[pgscript.Entry], columns: list[tuple[str, str, str]],
             restored: set[str]) -> bool:
    """An entry that goes with a restored one: its data, row security, privileges, comments, sequence
    settings, serial defaults; or with a re-added column: its privileges, comment, default."""
    for m in main:
        if entry.catalog == 0 and entry.oid == m.oid and m.catalog == 1259:
            return True  # TABLE DATA, ROW SECURITY, MATERIALIZED VIEW DATA
        if entry.desc in _DERIVED and entry.schema == m.schema and (
                entry.tag.split(" ", 1)[-1] == m.tag or entry.tag.startswith(f"COLUMN {m.tag}.")):
            return True
        if entry.desc in _DERIVED and m.desc == "SCHEMA" and entry.tag == f"SCHEMA {m.tag}":
            return True
        if entry.desc in ("SEQUENCE OWNED BY", "SEQUENCE SET") and m.desc == "SEQUENCE" and \
                (entry.schema, entry.tag) == (m.schema, m.tag):
            return True
        if entry.desc == "DEFAULT" and m.desc == "TABLE" and entry.schema == m.schema and \
                entry.tag.startswith(f"{m.tag} "):
            return True
    for table, column, schema in columns:
        if entry.schema == schema and ((entry.desc in _DERIVED and entry.tag == f"COLUMN {table}.{column}") or
                                       (entry.desc == "DEFAULT" and entry.tag == f"{table} {column}")):
            return True
    return False


_RESTORE_HINT = ("nothing was changed; this change cannot be reverted in place: use --phase4-rollback=restore "
                 "(it lists what a full restore would lose first)")
