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
from psycopg import sql

from pytest_phase4.db.inventory import Obj
from pytest_phase4.errors import CheckFailed
from pytest_phase4.safety import pgscript, revert, snapshot
from pytest_phase4.safety.backup import Tools
from pytest_phase4.safety.refill import Refill, Source, load, prove_values, refill_table
from pytest_phase4.safety.revert import Net

# Parts dropped before the objects they belong to; then relations (views before tables), routines, types.
_DROP_ORDER = ["publication relation", "default acl", "event trigger", "trigger", "policy", "rule",
               "table constraint", "index", "statistics object", "table column", "materialized view", "view",
               "foreign table", "table", "sequence", "function", "procedure", "aggregate", "composite type", "domain",
               "type", "collation", "publication", "extension", "schema"]
# Entries restored after the dropped columns are back: they may need them.
_LATE = {"VIEW", "MATERIALIZED VIEW", "MATERIALIZED VIEW DATA", "TABLE DATA", "SEQUENCE OWNED BY", "SEQUENCE SET",
         "DEFAULT", "CONSTRAINT", "FK CONSTRAINT", "CHECK CONSTRAINT", "INDEX", "INDEX ATTACH", "TRIGGER", "POLICY",
         "ROW SECURITY", "RULE", "ACL", "COMMENT", "SECURITY LABEL", "STATISTICS", "PUBLICATION TABLE",
         "PUBLICATION TABLES IN SCHEMA"}
_DERIVED = ("ACL", "COMMENT", "SECURITY LABEL")
_WHOLE = ("table", "view", "materialized view", "foreign table")
# What changed in a view or routine that replacing it by the backup's definition undoes.
_FROM_BACKUP = {"def", "md5", "security_definer", "config", "body", "attributes"}


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
    plan_xids: list[int] = field(default_factory=list)  # 32-bit ids of the plan's transactions (rows' xmin)
    snapshot: str = ""  # the chosen backup's pg_current_snapshot()
    prepared: bool = False  # refills loaded (in the rollback's transaction, before any change)

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
        """Original objects to bring back: dropped by the plan, or changed in a way only re-creating undoes."""
        return [o for o, _ in self.restores()]

    def restores(self) -> list[tuple[Obj, Net]]:
        return [(n.original, n) for n in self.nets if n.original is not None and
                (n.action == "restore" or (n.action == "alter" and self._recreate(n)))]

    def primary(self) -> Source:
        return Source("", self.archive, self.toc, frozenset(), self.snapshot)

    def entry_for(self, obj: Obj, files: frozenset[str] | set[str]) -> tuple[Source, pgscript.Entry] | None:
        """The object's entry in the newest backup taken before any of `files` (the migrations that changed
        it): what it was just before the plan changed it."""
        for source in [*self.sources, self.primary()]:
            if files & source.applied:
                continue
            if (e := next((e for e in source.toc if e.catalog == obj.classid and e.oid == obj.objid), None)):
                return source, e
        return None

    @staticmethod
    def _recreate(net: Net) -> bool:
        a, b = net.original, net.current
        assert a is not None
        assert b is not None
        changed = revert.changed_keys(a, b)
        return a.type in ("materialized view", "index", "table constraint", "rule", "statistics object") and \
            bool(changed - {"acl", "owner", "validated", "enforced"})

    def _with_constraint(self, obj: Obj) -> bool:
        """An index a restored constraint (primary key, unique, exclusion) creates with itself."""
        return obj.type == "index" and any(
            o.type == "table constraint" and (o.names[0], o.names[-1]) == (obj.names[0], obj.names[-1])
            for o in self.to_restore())

    def missing_copies(self) -> list[str]:
        """Objects to restore that the backup has no copy of (created after it, then dropped by the plan)."""
        restored = {o.identity for o in self.to_restore() if o.type in _WHOLE}
        lines = []
        for obj, net in self.restores():
            if obj.parent in restored or obj.type == "table column" or _inline_check(obj) or \
                    self._with_constraint(obj):
                continue
            if self.entry_for(obj, set(net.files)) is None:
                lines.append(f"{obj.type} {obj.identity}: not in any backup taken before {net.files[0]} (it was "
                             "created after the backup)")
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
            refill = by_table.setdefault((obj.parent, net.files[-1]),
                                         Refill(obj, key, [], net.files[-1], n=len(by_table)))
            refill.columns.append(obj)
            refill.files |= frozenset(net.files)
        for refill in by_table.values():
            t = refill.table
            refill.source = next((s for s in [*self.sources, self.primary()] if not refill.files & s.applied
                                  and pgscript.table_data(s.toc, t.objid, *t.names[:2]) is not None), None)
        return list(by_table.values())

    def prepare(self, conn: psycopg.Connection[Any]) -> None:
        """Load the refills' backup rows, and tell the rows written since apart, before anything changes (a
        change rewrites rows: their xmin would be the rollback's own)."""
        self.refills = self.plan_refills()
        for refill in self.refills:
            if refill.source is not None and refill.key:
                load(self, refill, conn)
        self.prepared = True

    # -- the steps ------------------------------------------------------------------------------------------
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
                                      f"{now.identity}", ", ".join(net.files), hint=RESTORE_HINT)
                statements.append(rename)
                now = _renamed(now, was)
            for statement in statements:
                self.conn.execute(statement)
            self._definition_back(was, now, net)
            done.append(f"{was.type} {was.identity}")
        return done

    def _definition_back(self, was: Obj, now: Obj, net: Net) -> None:
        a = was.definition
        changed = revert.changed_keys(was, now)
        out: list[sql.Composed] = []
        if "owner" in changed:  # first: ALTER OWNER rewrites the privileges the next statements start from
            for statement in revert.owner_statements(was, now):
                self.conn.execute(statement)
        if "acl" in changed:  # from the privileges as they are now, to exactly the recorded ones
            column = was.names[2] if was.type == "table column" else None
            live = revert.live_acl(self.conn, now)
            out += revert.acl_statements(now, list(a.get("acl") or []),
                                         list(now.definition.get("acl") or []) if live is None else live, column)
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
            self._replace_from_backup(was, now, net)
        elif rest:
            raise CheckFailed("changes the rollback can undo", f"{was.type} {was.identity}: {', '.join(sorted(rest))} "
                              f"changed ({', '.join(net.files)})", "the migrations' record", hint=RESTORE_HINT)
        for statement in out:
            self.conn.execute(statement)

    def _replace_from_backup(self, was: Obj, now: Obj, net: Net) -> None:
        found = self.entry_for(was, set(net.files))
        if found is None:
            raise CheckFailed(f"{was.type} {was.identity} in a backup taken before {net.files[0]}", "no copy of it",
                              str(self.archive), hint=RESTORE_HINT)
        source, entry = found
        try:
            with self.conn.transaction():
                pgscript.run(self.conn, self.tools, source.archive, self.secrets, [entry], or_replace=True)
        except psycopg.Error:  # e.g. a view whose columns changed: OR REPLACE cannot drop columns
            with self.conn.transaction():
                statement = revert.drop_statement(now)
                assert statement is not None
                self.conn.execute(statement)
                pgscript.run(self.conn, self.tools, source.archive, self.secrets, [entry])

    def restore_dropped(self) -> list[str]:
        """Dropped objects back from the newest backup taken before the migrations that changed them (tables
        with their rows), dropped columns re-added and refilled, CHECK constraints of kept tables from the record."""
        pairs = self.restores()
        restored = {o.identity for o, _ in pairs if o.type in _WHOLE}
        if not self.prepared:
            self.prepare(self.conn)
        main: dict[str, tuple[Source, list[pgscript.Entry]]] = {}
        for obj, net in pairs:
            if obj.type == "table column" or _inline_check(obj) or self._with_constraint(obj):
                continue
            if found := self.entry_for(obj, set(net.files)):
                main.setdefault(found[0].name, (found[0], []))[1].append(found[1])
        early: list[tuple[Source, list[pgscript.Entry]]] = []
        late: list[tuple[Source, list[pgscript.Entry]]] = []
        for source, entries in sorted(main.values(), key=lambda m: m[0].name):  # "" (the chosen backup) first
            columns = [(c.names[1], c.names[2], c.names[0]) for r in self.refills if r.source == source
                       for c in r.columns]
            chosen = [e for e in source.toc if e in entries or _derived(e, entries, columns, restored)]
            early.append((source, [e for e in chosen if e.desc not in _LATE]))
            late.append((source, [e for e in chosen if e.desc in _LATE]))
        others = {r.source.name: r.source for r in self.refills if r.source is not None and r.source.name not in main}
        for source in others.values():
            columns = [(c.names[1], c.names[2], c.names[0]) for r in self.refills if r.source == source
                       for c in r.columns]
            late.append((source, [e for e in source.toc if _derived(e, [], columns, restored)]))
        done: list[str] = []
        for source, entries in early:
            self._run(source, entries)
            done += [_entry(e) + _from(source) for e in entries if e.desc != "BLOBS"]
        for refill in self.refills:
            done.append(refill_table(self, refill))
        for source, entries in late:
            self._run(source, entries)
            done += [_entry(e) + _from(source) for e in entries if e.desc not in _DERIVED]
        for obj, _ in pairs:
            if _inline_check(obj) and obj.parent not in restored:
                self.conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}{}").format(
                    revert.relation(obj), sql.Identifier(obj.names[2]), sql.SQL(str(obj.definition["def"])),
                    sql.SQL("" if obj.definition.get("validated", True) else " NOT VALID")))
                done.append(f"constraint {obj.identity}")
        return done

    def _run(self, source: Source, entries: list[pgscript.Entry]) -> None:
        blobs = {e.oid for e in entries if e.desc == "BLOB"}
        try:
            pgscript.run(self.conn, self.tools, source.archive, self.secrets, entries, blobs=blobs)
        except psycopg.Error as exc:
            names = ", ".join(f"{e.desc.lower()} {e.schema}.{e.tag}" for e in entries[:6])
            raise CheckFailed(f"the backup's copies to be created again ({names}{', ...' if len(entries) > 6 else ''})",
                              f"{exc.diag.message_primary or exc} [{exc.sqlstate}]",
                              str(source.archive),
                              hint="nothing was changed. An object the plan did not create may hold one of their "
                                   "names now, or depend on something they need: rename or drop it, then rerun "
                                   "--phase4-rollback; or use --phase4-rollback=restore (it lists what it would "
                                   "lose first)") from None

    def prove_values(self) -> list[tuple[str, bool, str]]:
        return prove_values(self)


def revert_bare(obj: Obj) -> dict[str, Any]:
    return {k: v for k, v in obj.definition.items() if k != "key"}


def _renamed(now: Obj, was: Obj) -> Obj:
    """The object as it is once renamed back: its original name, its current definition."""
    return Obj(now.classid, now.objid, now.objsubid, now.type, was.identity, was.names, was.args, now.definition,
               was.parent)


def _entry(e: pgscript.Entry) -> str:
    return f"large object {e.tag}" if e.desc == "BLOB" else f"{e.desc.lower()} {e.schema}.{e.tag}"


def _from(source: Source) -> str:
    return f" (from backup {source.name})" if source.name else ""


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
        if m.desc == "BLOB" and (entry.desc == "BLOBS" or (entry.desc in _DERIVED and
                                                           entry.tag == f"LARGE OBJECT {m.tag}")):
            return True  # the data of every large object (run for the chosen ones only), their privileges
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


RESTORE_HINT = ("nothing was changed; this change cannot be reverted in place: use --phase4-rollback=restore "
                 "(it lists what a full restore would lose first)")
