"""Every catalog object of a database that a migration can create, alter or drop, in any schema, by identity.

One query returns, for each object, its catalog address (classid, objid, objsubid), its identity as
PostgreSQL prints it (`pg_identify_object`), the address to find it again later (`pg_identify_object_as_address`)
and a definition (a dict) that changes when the object is altered. Two inventories taken inside one migration's
transaction, before and after its SQL, say what it created, altered and dropped; this needs no superuser, unlike
event triggers. Objects of extensions, of system schemas and of pytest-phase4's own schema are left out.

Definitions are read with search_path pinned to pg_catalog, so every name in them is schema-qualified whatever
the session's path. No pytest here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from pytest_phase4.db.ledger import SCHEMA as OWN_SCHEMA
from pytest_phase4.safety.checksums import PINNED

# Kinds the rollback knows how to drop, by pg_identify_object's type.
TOP_LEVEL = ("schema", "table", "view", "materialized view", "sequence", "foreign table", "composite type",
             "function", "procedure", "aggregate", "type", "domain", "extension", "statistics object", "collation",
             "default acl", "publication", "event trigger")
PARTS = ("table column", "table constraint", "trigger", "policy", "rule", "index", "publication relation")

_USER_NS = """
  nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', '""" + OWN_SCHEMA + """')
  AND nspname NOT LIKE 'pg\\_temp\\_%' AND nspname NOT LIKE 'pg\\_toast\\_temp\\_%'"""

_ACL = re.compile(r"ACL\(([a-z.]+),\s+([^,]+),\s+([a-z.]+)\)")  # ACL(acl column, acldefault's kind, owner)
_XID = re.compile(r"XID\(([a-z.]+)\)")  # a catalog row's xmin as a number

_QUERY = """
WITH ns AS (SELECT oid, nspname FROM pg_catalog.pg_namespace WHERE {user_ns}),
objs AS (
  SELECT 'pg_catalog.pg_namespace'::regclass AS classid, n.oid AS objid, 0 AS objsubid, ARRAY[XID(n.xmin)] AS xs,
         jsonb_build_object('owner', n.nspowner::regrole::text, 'acl', ACL(n.nspacl, 'n', n.nspowner)) AS def,
         NULL::oid AS parent
    FROM pg_catalog.pg_namespace n JOIN ns ON ns.oid = n.oid
  UNION ALL
  SELECT 'pg_catalog.pg_class'::regclass, c.oid, 0,
         ARRAY[XID(c.xmin)] || ARRAY(SELECT XID(r.xmin) FROM pg_catalog.pg_rewrite r WHERE r.ev_class = c.oid
                                     AND r.rulename = '_RETURN')
                            || ARRAY(SELECT XID(i.xmin) FROM pg_catalog.pg_index i WHERE i.indexrelid = c.oid
                                        OR (i.indrelid = c.oid AND i.indisreplident))
                            || ARRAY(SELECT XID(q.xmin) FROM pg_catalog.pg_sequence q WHERE q.seqrelid = c.oid)
                            || ARRAY(SELECT XID(h.xmin) FROM pg_catalog.pg_inherits h WHERE h.inhrelid = c.oid),
         jsonb_build_object('relkind', c.relkind, 'owner', c.relowner::regrole::text,
                            'acl', ACL(c.relacl, CASE c.relkind WHEN 'S' THEN 's' WHEN 'i' THEN NULL
                                                      WHEN 'I' THEN NULL ELSE 'r' END,
                                       c.relowner),  -- an index has no privileges of its own
                            'rls', c.relrowsecurity, 'force_rls', c.relforcerowsecurity,
                            'options', coalesce(array_to_string(c.reloptions, ','), ''),
                            'persistence', c.relpersistence,
                            'replident', CASE WHEN c.relkind IN ('r', 'p')
                              THEN c.relreplident::text || coalesce(' ' || (
                              SELECT quote_ident(ic.relname) FROM pg_catalog.pg_index i
                              JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
                              WHERE i.indrelid = c.oid AND i.indisreplident), '') END,
                            'inherits', (SELECT array_agg(h.inhparent::regclass::text ORDER BY h.inhseqno)
                                         FROM pg_catalog.pg_inherits h WHERE h.inhrelid = c.oid),
                            'partition', pg_catalog.pg_get_expr(c.relpartbound, c.oid),
                            'sequence', (SELECT jsonb_build_object('type', q.seqtypid::regtype::text,
                                                'start', q.seqstart, 'increment', q.seqincrement, 'min', q.seqmin,
                                                'max', q.seqmax, 'cache', q.seqcache, 'cycle', q.seqcycle)
                                         FROM pg_catalog.pg_sequence q WHERE q.seqrelid = c.oid),
                            'def', CASE WHEN c.relkind IN ('v', 'm') THEN pg_catalog.pg_get_viewdef(c.oid)
                                        WHEN c.relkind IN ('i', 'I') THEN pg_catalog.pg_get_indexdef(c.oid) END,
                            'key', CASE WHEN c.relkind IN ('r', 'p') THEN (
                              SELECT array_agg(a.attname::text ORDER BY k.n) FROM pg_catalog.pg_index i
                              CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
                              JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                              WHERE i.indrelid = c.oid AND i.indisprimary) END),
         CASE WHEN c.relkind IN ('i', 'I') THEN (SELECT i.indrelid FROM pg_catalog.pg_index i
                                                  WHERE i.indexrelid = c.oid)
              WHEN c.relkind = 'S' THEN (SELECT d.refobjid FROM pg_catalog.pg_depend d
                                         WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
                                           AND d.refclassid = 'pg_catalog.pg_class'::regclass
                                           AND d.deptype IN ('a', 'i') LIMIT 1) END
    FROM pg_catalog.pg_class c JOIN ns ON ns.oid = c.relnamespace
   WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'i', 'I', 'f', 'c')
  UNION ALL
  SELECT 'pg_catalog.pg_class'::regclass, a.attrelid, a.attnum,
         ARRAY[XID(a.xmin)] || ARRAY(SELECT XID(d.xmin) WHERE d.xmin IS NOT NULL),
         jsonb_build_object('type', pg_catalog.format_type(a.atttypid, a.atttypmod), 'notnull', a.attnotnull,
                            'default', CASE WHEN a.attgenerated = '' THEN pg_catalog.pg_get_expr(d.adbin, d.adrelid)
                                       END,
                            'generated', CASE WHEN a.attgenerated <> '' THEN pg_catalog.pg_get_expr(d.adbin, d.adrelid)
                                         END,
                            'identity', a.attidentity,
                            'collation', CASE WHEN a.attcollation <> t.typcollation
                                              THEN (SELECT quote_ident(cn.nspname) || '.' || quote_ident(co.collname)
                                                    FROM pg_catalog.pg_collation co
                                                    JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace
                                                    WHERE co.oid = a.attcollation) END,
                            'acl', ACL(a.attacl, 'c', c.relowner),
                            'key', (SELECT array_agg(ka.attname::text ORDER BY k.n) FROM pg_catalog.pg_index i
                              CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
                              JOIN pg_catalog.pg_attribute ka ON ka.attrelid = i.indrelid AND ka.attnum = k.attnum
                              WHERE i.indrelid = a.attrelid AND i.indisprimary)),
         a.attrelid
    FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
    JOIN ns ON ns.oid = c.relnamespace JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
    LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
   WHERE c.relkind IN ('r', 'p', 'f') AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
  SELECT 'pg_catalog.pg_constraint'::regclass, k.oid, 0,
         -- a foreign key's internal triggers: ALTER TABLE ... DISABLE TRIGGER ALL writes them, not the constraint
         ARRAY[XID(k.xmin)] || ARRAY(SELECT XID(g.xmin) FROM pg_catalog.pg_trigger g WHERE g.tgconstraint = k.oid),
         jsonb_build_object('contype', k.contype, 'def', pg_catalog.pg_get_constraintdef(k.oid),
                            'validated', k.convalidated,
                            -- a foreign key is enforced by internal triggers: DISABLE TRIGGER ALL turns them off
                            'enforced', CASE WHEN k.contype = 'f' THEN NOT EXISTS (
                              SELECT 1 FROM pg_catalog.pg_trigger g WHERE g.tgconstraint = k.oid
                                AND g.tgenabled NOT IN ('O', 'A')) END),
         k.conrelid
    FROM pg_catalog.pg_constraint k JOIN ns ON ns.oid = k.connamespace WHERE k.conrelid <> 0
  UNION ALL
  SELECT 'pg_catalog.pg_trigger'::regclass, g.oid, 0, ARRAY[XID(g.xmin)],
         jsonb_build_object('def', pg_catalog.pg_get_triggerdef(g.oid), 'enabled', g.tgenabled), g.tgrelid
    FROM pg_catalog.pg_trigger g JOIN pg_catalog.pg_class c ON c.oid = g.tgrelid JOIN ns ON ns.oid = c.relnamespace
   WHERE NOT g.tgisinternal
  UNION ALL
  SELECT 'pg_catalog.pg_policy'::regclass, p.oid, 0, ARRAY[XID(p.xmin)],
         jsonb_build_object('permissive', p.polpermissive, 'cmd', p.polcmd,
                            'roles', (SELECT array_agg(CASE WHEN r = 0 THEN 'public' ELSE r::regrole::text END
                                                       ORDER BY 1) FROM unnest(p.polroles) r),
                            'using', pg_catalog.pg_get_expr(p.polqual, p.polrelid),
                            'check', pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid)),
         p.polrelid
    FROM pg_catalog.pg_policy p JOIN pg_catalog.pg_class c ON c.oid = p.polrelid JOIN ns ON ns.oid = c.relnamespace
  UNION ALL
  SELECT 'pg_catalog.pg_rewrite'::regclass, r.oid, 0, ARRAY[XID(r.xmin)],
         jsonb_build_object('def', pg_catalog.pg_get_ruledef(r.oid), 'enabled', r.ev_enabled), r.ev_class
    FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_class c ON c.oid = r.ev_class JOIN ns ON ns.oid = c.relnamespace
   WHERE r.rulename <> '_RETURN'
  UNION ALL
  SELECT 'pg_catalog.pg_proc'::regclass, p.oid, 0, ARRAY[XID(p.xmin)],
         jsonb_build_object('md5', CASE WHEN p.prokind IN ('f', 'p') THEN md5(pg_catalog.pg_get_functiondef(p.oid))
                                   END, 'owner', p.proowner::regrole::text, 'acl', ACL(p.proacl, 'f', p.proowner),
                            'security_definer', p.prosecdef, 'config', p.proconfig,
                            'body', md5(coalesce(p.prosrc, '') || coalesce(p.probin, '')),
                            'attributes', concat_ws(', ', (SELECT l.lanname FROM pg_catalog.pg_language l
                                                           WHERE l.oid = p.prolang),
                              CASE p.provolatile WHEN 'i' THEN 'immutable' WHEN 's' THEN 'stable' ELSE 'volatile' END,
                              CASE WHEN p.proisstrict THEN 'strict' END, CASE WHEN p.proleakproof THEN 'leakproof' END,
                              CASE p.proparallel WHEN 's' THEN 'parallel safe' WHEN 'r' THEN 'parallel restricted' END,
                              'returns ' || pg_catalog.pg_get_function_result(p.oid))),
         NULL::oid
    FROM pg_catalog.pg_proc p JOIN ns ON ns.oid = p.pronamespace
  UNION ALL
  SELECT 'pg_catalog.pg_type'::regclass, t.oid, 0,
         ARRAY[XID(t.xmin)] || ARRAY(SELECT XID(e.xmin) FROM pg_catalog.pg_enum e WHERE e.enumtypid = t.oid)
                            || ARRAY(SELECT XID(k.xmin) FROM pg_catalog.pg_constraint k WHERE k.contypid = t.oid),
         jsonb_build_object('typtype', t.typtype, 'owner', t.typowner::regrole::text,
                            'acl', ACL(t.typacl, 'T', t.typowner),
                            'labels', (SELECT array_agg(e.enumlabel::text ORDER BY e.enumsortorder)
                                       FROM pg_catalog.pg_enum e WHERE e.enumtypid = t.oid),
                            'base', CASE WHEN t.typtype = 'd'
                                         THEN pg_catalog.format_type(t.typbasetype, t.typtypmod) END,
                            'notnull', t.typnotnull, 'default', t.typdefault,
                            'checks', (SELECT array_agg(pg_catalog.pg_get_constraintdef(k.oid) ORDER BY k.conname)
                                       FROM pg_catalog.pg_constraint k WHERE k.contypid = t.oid)),
         NULL::oid
    FROM pg_catalog.pg_type t JOIN ns ON ns.oid = t.typnamespace WHERE t.typtype IN ('e', 'd', 'r')
  UNION ALL
  SELECT 'pg_catalog.pg_extension'::regclass, e.oid, 0, ARRAY[XID(e.xmin)],
         jsonb_build_object('version', e.extversion), NULL::oid
    FROM pg_catalog.pg_extension e
  UNION ALL
  SELECT 'pg_catalog.pg_statistic_ext'::regclass, s.oid, 0, ARRAY[XID(s.xmin)],
         jsonb_build_object('def', pg_catalog.pg_get_statisticsobjdef(s.oid)), s.stxrelid
    FROM pg_catalog.pg_statistic_ext s JOIN ns ON ns.oid = s.stxnamespace
  UNION ALL
  SELECT 'pg_catalog.pg_collation'::regclass, co.oid, 0, ARRAY[XID(co.xmin)],
         jsonb_build_object('provider', co.collprovider), NULL::oid
    FROM pg_catalog.pg_collation co JOIN ns ON ns.oid = co.collnamespace
  UNION ALL  -- ALTER DEFAULT PRIVILEGES: what every table, function, ... created later grants
  SELECT 'pg_catalog.pg_default_acl'::regclass, d.oid, 0, ARRAY[XID(d.xmin)],
         jsonb_build_object('objtype', d.defaclobjtype, 'acl', ACL(d.defaclacl, null, null)), NULL::oid
    FROM pg_catalog.pg_default_acl d WHERE d.defaclnamespace = 0 OR d.defaclnamespace IN (SELECT oid FROM ns)
  UNION ALL  -- publications (Supabase Realtime streams the changes of their tables) and their tables
  SELECT 'pg_catalog.pg_publication'::regclass, pb.oid, 0, ARRAY[XID(pb.xmin)],
         jsonb_build_object('owner', pb.pubowner::regrole::text, 'all_tables', pb.puballtables,
                            'publish', concat_ws(', ', CASE WHEN pb.pubinsert THEN 'insert' END,
                                                 CASE WHEN pb.pubupdate THEN 'update' END,
                                                 CASE WHEN pb.pubdelete THEN 'delete' END,
                                                 CASE WHEN pb.pubtruncate THEN 'truncate' END),
                            'via_root', pb.pubviaroot), NULL::oid
    FROM pg_catalog.pg_publication pb
  UNION ALL
  SELECT 'pg_catalog.pg_publication_rel'::regclass, pr.oid, 0, ARRAY[XID(pr.xmin)], {pubrel}, pr.prrelid
    FROM pg_catalog.pg_publication_rel pr JOIN pg_catalog.pg_class c ON c.oid = pr.prrelid
    JOIN ns ON ns.oid = c.relnamespace
  UNION ALL
  SELECT 'pg_catalog.pg_event_trigger'::regclass, e.oid, 0, ARRAY[XID(e.xmin)],
         jsonb_build_object('event', e.evtevent, 'enabled', e.evtenabled, 'tags', e.evttags,
                            'function', e.evtfoid::regprocedure::text, 'owner', e.evtowner::regrole::text), NULL::oid
    FROM pg_catalog.pg_event_trigger e
  {pubns}
)
SELECT o.classid::oid::int8, o.objid::int8, o.objsubid, i.type, i.identity, a.object_names, a.object_args, o.def,
       o.xs,
       (SELECT pi.identity FROM pg_catalog.pg_identify_object('pg_catalog.pg_class'::regclass, o.parent, 0) pi),
       {mine}
  FROM objs o
 CROSS JOIN (SELECT {cur}) cur
 CROSS JOIN LATERAL pg_catalog.pg_identify_object(o.classid, o.objid, o.objsubid) i
 CROSS JOIN LATERAL pg_catalog.pg_identify_object_as_address(o.classid, o.objid, o.objsubid) a
 WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = o.classid AND d.objid = o.objid
                     AND d.deptype = 'e')
   AND (o.classid <> 'pg_catalog.pg_extension'::regclass OR i.identity <> 'plpgsql')
"""
# A privilege list as a sorted array of text; NULL (the defaults) as what it means (acldefault): a GRANT then a
# REVOKE leave the owner's privileges written out, the same privileges.
_QUERY = _ACL.sub(r'''coalesce((SELECT array_agg(x::text ORDER BY x::text) FROM unnest(coalesce(\1, '''
                  r'''pg_catalog.acldefault((\2)::"char", \3))) x), '{}')''', _QUERY)
_QUERY = _XID.sub(r"(\1)::text::int8", _QUERY).replace("{user_ns}", _USER_NS)


def full_xid(x: str, ref: str) -> str:
    """SQL: the 32-bit xid `x` as the full xid nearest to the full xid `ref` (a row's xmin is within 2^31 of
    now, or frozen)."""
    return f"greatest(({ref}) + mod(({x}) - (({ref}) & 4294967295) + 6442450944, 4294967296) - 2147483648, 3)"


def mine_sql(x: str, top: str, xmax: str) -> str:
    """SQL: a visible row version whose 32-bit xmin is `x` was written by this transaction (`top`) or one of its
    subtransactions: its xid is still in progress (a visible row's can only be ours), or newer than every xid that
    had completed when the statement began (`xmax`, pg_snapshot_xmax): ours too (pg_xact_status is not asked
    about it: it refuses a xid it takes for one of the future)."""
    full = full_xid(x, top)
    return (f"(CASE WHEN {full} >= ({xmax}) THEN true"
            f" ELSE pg_catalog.pg_xact_status({full}::text::xid8) = 'in progress' END)")


# Written by this transaction (or one of its subtransactions): an object counts as the migration's when one of
# its catalog rows is; what another session committed meanwhile is not.
_MINE = "EXISTS (SELECT 1 FROM unnest(o.xs) x WHERE {ours})".replace("{ours}", mine_sql("x", "cur.top", "cur.xmax"))
_CUR = ("pg_catalog.pg_current_xact_id()::text::int8 AS top,"
        " pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())::text::int8 AS xmax")
# Publications' tables (and, from PostgreSQL 15, their schemas, row filters and column lists).
_PUBREL = {True: "jsonb_build_object('where', pg_catalog.pg_get_expr(pr.prqual, pr.prrelid), 'columns',"
                 " (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_catalog.pg_attribute a"
                 " WHERE a.attrelid = pr.prrelid AND a.attnum = ANY(pr.prattrs)))",
           False: "'{}'::jsonb"}
_PUBNS = """UNION ALL
  SELECT 'pg_catalog.pg_publication_namespace'::regclass, pn.oid, 0, ARRAY[(pn.xmin)::text::int8], '{}'::jsonb,
         NULL::oid
    FROM pg_catalog.pg_publication_namespace pn JOIN ns ON ns.oid = pn.pnnspid"""


@dataclass(frozen=True)
class Obj:
    classid: int
    objid: int
    objsubid: int
    type: str  # pg_identify_object's type: "table", "table column", "view", "function", ...
    identity: str  # e.g. public.sales, public.sales.customer_name, c_check on public.orders
    names: tuple[str, ...]  # pg_identify_object_as_address: finds the object again by name
    args: tuple[str, ...]
    definition: dict[str, Any] = field(compare=False)
    parent: str | None = None  # the table (or view) a column, constraint, index, trigger, policy belongs to
    mine: bool = True
    versions: tuple[int, ...] = field(default=(), compare=False)  # xmin of each of its catalog rows

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.classid, self.objid, self.objsubid)

    def to_json(self) -> dict[str, Any]:
        return {"classid": self.classid, "objid": self.objid, "objsubid": self.objsubid, "type": self.type,
                "identity": self.identity, "names": list(self.names), "args": list(self.args),
                "def": self.definition, "parent": self.parent, "xs": list(self.versions)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Obj:
        return cls(int(data["classid"]), int(data["objid"]), int(data["objsubid"]), str(data["type"]),
                   str(data["identity"]), tuple(data["names"]), tuple(data["args"]), dict(data["def"]),
                   data.get("parent"), versions=tuple(int(x) for x in data.get("xs") or ()))


@contextmanager
def qualified(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """search_path = pg_catalog (every name deparsed schema-qualified) and the pinned settings of checksums (a
    default's timestamp or float deparsed the same whatever the session's) for what runs inside; then the
    settings the session had: inside a migration, its SQL must run with the ones it expects."""
    wanted = {**PINNED, "search_path": "pg_catalog"}
    names = list(wanted)
    row = conn.execute("SELECT array_agg(pg_catalog.current_setting(n) ORDER BY o) FROM unnest(%s::text[])"
                       " WITH ORDINALITY AS s(n, o)", (names,)).fetchone()
    saved = list(row[0]) if row and row[0] else []
    in_tx = conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
    _set(conn, names, list(wanted.values()), in_tx)
    try:
        yield
    finally:
        if not conn.broken and conn.info.transaction_status != psycopg.pq.TransactionStatus.INERROR:
            _set(conn, names, saved, in_tx)


def _set(conn: psycopg.Connection[Any], names: list[str], values: list[str], local: bool) -> None:
    conn.execute("SELECT pg_catalog.set_config(n, v, %s) FROM unnest(%s::text[], %s::text[]) AS s(n, v)",
                 (local, names, values))


def take(conn: psycopg.Connection[Any], mine: bool = False) -> dict[tuple[int, int, int], Obj]:
    """Every object, by catalog address. With mine, each says whether this transaction wrote one of its catalog
    rows (PostgreSQL 13+; older servers: every object counts as written by it)."""
    mine = mine and conn.info.server_version >= 130000
    pg15 = conn.info.server_version >= 150000
    query = _QUERY.replace("{mine}", _MINE if mine else "true").replace(
        "{cur}", _CUR if mine else "0 AS top, 0 AS xmax").replace(
        "{pubrel}", _PUBREL[pg15]).replace("{pubns}", _PUBNS if pg15 else "")
    with qualified(conn):
        rows = conn.execute(query.encode()).fetchall()
    found = {}
    for classid, objid, subid, kind, identity, names, args, definition, xs, parent, is_mine in rows:
        data = definition if isinstance(definition, dict) else json.loads(definition)
        obj = Obj(int(classid), int(objid), int(subid), str(kind), str(identity), tuple(names or ()),
                  tuple(args or ()), data, parent, bool(is_mine), tuple(int(x) for x in xs or ()))
        found[obj.key] = obj
    return found


def still_there(conn: psycopg.Connection[Any], objs: list[Obj]) -> set[tuple[int, int, int]]:
    """Which of the objects exist as `conn` sees them, by catalog address alone (no definition is read, so
    nothing waits for a lock another session holds on them)."""
    found: set[tuple[int, int, int]] = set()
    by_catalog: dict[int, list[Obj]] = {}
    for obj in objs:
        by_catalog.setdefault(obj.classid, []).append(obj)
    for classid, group in by_catalog.items():
        columns = [o for o in group if o.objsubid]
        if columns:
            rows = conn.execute("SELECT attrelid::int8, attnum FROM pg_catalog.pg_attribute"
                                " WHERE (attrelid::int8, attnum::int) IN (SELECT * FROM unnest(%s::int8[], %s::int[]))"
                                " AND NOT attisdropped",
                                ([o.objid for o in columns], [o.objsubid for o in columns])).fetchall()
            found |= {(classid, int(r[0]), int(r[1])) for r in rows}
        whole = [o.objid for o in group if not o.objsubid]
        if whole:
            row = conn.execute("SELECT CASE WHEN %s::regclass = 'pg_catalog.pg_largeobject'::regclass"
                               " THEN 'pg_largeobject_metadata' ELSE relname END FROM pg_catalog.pg_class"
                               " WHERE oid = %s", (classid, classid)).fetchone()
            if row is None:
                continue
            rows = conn.execute(sql.SQL("SELECT oid::int8 FROM pg_catalog.{} WHERE oid::int8 = ANY(%s)").format(
                sql.Identifier(str(row[0]))), (whole,)).fetchall()
            found |= {(classid, int(r[0]), 0) for r in rows}
    return found
