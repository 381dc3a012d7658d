"""What each persona of the plan sees, counted as that persona, at one moment.

Each persona is a role and the settings that make it one user (as PostgREST does per request: `SET LOCAL ROLE`
and `set_config('request.jwt.claims', ..., true)`). Every table, view and materialized view of the exposed
schemas (and the plan's schema) is counted as each persona, grouped by tenant where the relation has the
tenant column; a view is also counted through its own definition run with the persona's rights (what it would
show with security_invoker; for a security_invoker view that is its own count, not read twice). Everything is
read in one REPEATABLE READ READ ONLY transaction on the verification connection, under its check timeout: one
snapshot for every persona and relation, so a view and its tables are compared at the same moment. Each
persona's role and settings end with a rollback to its savepoint. No pytest here.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql

from pytest_phase4.db import catalog, inventory
from pytest_phase4.errors import CheckFailed, sql_error
from pytest_phase4.plan.model import Persona
from pytest_phase4.rls import persona_writes
from pytest_phase4.rls.persona_seen import Counted, Relation, Seen
from pytest_phase4.rls.under_sql import with_under

# The relations counted, with what the comparison needs: RLS, the tenant column, the owner, security_invoker, the
# RLS tables under a view (through views, recursively) and its definition, deparsed with every name qualified.
_RELATIONS = with_under("""rel AS (
  SELECT c.oid, n.nspname, c.relname, c.relkind, c.relrowsecurity, c.relowner, c.reloptions
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
   WHERE c.relkind IN ('r', 'p', 'v', 'm') AND n.nspname = ANY(%(schemas)s) AND NOT c.relispartition
     -- an extension's own relations (pg_stat_statements: not even MVCC) are not the application's rows
     AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e WHERE e.classid = 'pg_catalog.pg_class'::regclass
                       AND e.objid = c.oid AND e.deptype = 'e')
)""", "rel", """
SELECT r.oid::int8, r.nspname::text, r.relname::text,
       pg_catalog.quote_ident(r.nspname) || '.' || pg_catalog.quote_ident(r.relname), r.relkind::text,
       r.relrowsecurity, r.relowner::regrole::text,
       coalesce(r.reloptions, '{}')::text[] && ARRAY['security_invoker=true', 'security_invoker=on',
                                                    'security_invoker=yes', 'security_invoker=1'],
       EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = r.oid AND a.attname = %(tenant)s
                 AND a.attnum > 0 AND NOT a.attisdropped),
       coalesce((SELECT array_agg(DISTINCT pg_catalog.quote_ident(tn.nspname) || '.'
                                           || pg_catalog.quote_ident(t.relname))
                 FROM under u JOIN pg_catalog.pg_class t ON t.oid = u.rel
                 JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace
                 WHERE u.view = r.oid AND t.relkind IN ('r', 'p') AND t.relrowsecurity), '{}'),
       CASE WHEN r.relkind IN ('v', 'm') THEN pg_catalog.pg_get_viewdef(r.oid) END
  FROM rel r ORDER BY 2, 3
""")


class PersonaError(CheckFailed):
    """A persona cannot be taken on (a missing role, no right to SET ROLE, a user_query without its row)."""


def can_become(conn: psycopg.Connection[Any], personas: Sequence[Persona]) -> None:
    """Every persona's role exists and the session may SET ROLE to it; raise PersonaError naming what is missing.

    SET ROLE needs the session user to be a superuser or a member of the role (PostgreSQL 16+: with the SET
    option); SET LOCAL ROLE inside a read-only transaction needs nothing more."""
    option = "SET" if conn.info.server_version >= 160000 else "MEMBER"
    rows = conn.execute("SELECT r.rolname::text, pg_catalog.pg_has_role(session_user, r.oid, %s), r.rolsuper,"
                        " r.rolbypassrls FROM pg_catalog.pg_roles r WHERE r.rolname = ANY(%s)",
                        (option, sorted({p.role for p in personas}))).fetchall()
    found = {r[0]: r[1:] for r in rows}
    me = str(conn.execute("SELECT session_user").fetchone()[0])  # type: ignore[index]
    problems = []
    for p in personas:
        if p.role not in found:
            problems.append(f"persona {p.name}: role {p.role} does not exist on this server; create it (roles are "
                            f"cluster-wide: CREATE ROLE {p.role} NOLOGIN) or fix the persona's role")
        elif not found[p.role][0]:
            problems.append(f"persona {p.name}: the checking role {me} may not SET ROLE {p.role}: SET ROLE needs "
                            f"membership in the role{' with the SET option' if option == 'SET' else ''}; as a "
                            f"superuser or a role with ADMIN OPTION on it: GRANT {p.role} TO {me} (on Supabase, "
                            "postgres is a member of anon, authenticated and service_role already)")
        elif found[p.role][1] or found[p.role][2]:
            problems.append(f"persona {p.name}: role {p.role} is a superuser or has BYPASSRLS: it sees every row, "
                            "whatever the policies; a persona stands for a role subject to row-level security")
    if problems:
        raise PersonaError("each persona's role to exist and to be one the checking role may SET ROLE to",
                           f"{len(problems)} problem(s)", "the plan's [[persona]] entries", details=problems)


def resolve_claims(conn: psycopg.Connection[Any], persona: Persona) -> dict[str, Any] | None:
    """The persona's claims, with the columns of its user_query's one row (run as the checking role)."""
    if persona.claims is None:
        return None
    claims = dict(persona.claims)
    if persona.user_query:
        try:
            cur = conn.execute(persona.user_query.encode())
            rows = cur.fetchall()
        except psycopg.Error as exc:
            raise PersonaError(f"persona {persona.name}'s user_query to return one row", sql_error(exc),
                               f"[[persona]] {persona.name}", sql=persona.user_query) from None
        if len(rows) != 1 or cur.description is None:
            raise PersonaError(f"persona {persona.name}'s user_query to return one row", f"{len(rows)} row(s)",
                               f"[[persona]] {persona.name}", sql=persona.user_query,
                               hint="pick one real user, e.g. ... ORDER BY id LIMIT 1")
        claims.update({col.name: _json_value(v) for col, v in zip(cur.description, rows[0], strict=True)})
    return claims


def _json_value(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool) or value is None else str(value)


def relations(conn: psycopg.Connection[Any], schemas: Sequence[str], tenant_column: str) -> dict[str, Relation]:
    with inventory.qualified(conn):  # definitions deparsed with every name schema-qualified
        rows = conn.execute(_RELATIONS, {"schemas": list(schemas), "tenant": tenant_column}).fetchall()
    return {r[3]: Relation(r[3], r[1], r[2], r[4], bool(r[5]), str(r[6]), bool(r[7]), bool(r[8]),
                           tuple(sorted(r[9])), str(r[10]).strip().rstrip(";") if r[10] else None) for r in rows}


def count(conn: psycopg.Connection[Any], personas: Sequence[Persona], claims: Mapping[str, dict[str, Any] | None],
          schemas: Sequence[str], tenant_column: str) -> Counted:
    """Count every relation as the checking role and as each persona, and what each persona may write of each
    table (persona_writes), in one snapshot."""
    rels = relations(conn, schemas, tenant_column)
    tenant = sql.Identifier(tenant_column)
    with catalog.one_snapshot(conn):
        tables = [r for r in rels.values() if not r.is_view]
        active = conn.execute("SELECT c.relname_q FROM unnest(%s::text[]) AS c(relname_q)"
                              " WHERE pg_catalog.row_security_active(c.relname_q::regclass)",
                              ([t.name for t in tables],)).fetchall()
        found = Counted(rels, {r.name: _count(conn, r, tenant) for r in rels.values()}, {str(r[0]) for r in active},
                        fingerprint=fingerprint(conn, schemas))
        for persona in personas:
            found.seen[persona.name] = _as_persona(conn, persona, claims.get(persona.name), rels, tenant,
                                                   tenant_column)
            found.writes[persona.name] = persona_writes.count(conn, persona, _settings(persona, claims.get(
                persona.name)), tables, tenant_column)
    return found


# What decides what a role sees besides the rows: roles and memberships (a GRANT of a role inside a DO block too),
# grants on relations and columns, row-level security and policies, function bodies, the API's schemas.
_FINGERPRINT = """
SELECT md5(concat_ws('|',
  (SELECT string_agg(m.roleid::regrole::text || '>' || m.member::regrole::text, ',' ORDER BY 1)
     FROM pg_catalog.pg_auth_members m),
  (SELECT string_agg(concat_ws(':', r.rolname, r.rolsuper, r.rolbypassrls, r.rolinherit), ',' ORDER BY 1)
     FROM pg_catalog.pg_roles r),
  (SELECT string_agg(concat_ws(':', c.oid, c.relacl, c.relrowsecurity, c.relforcerowsecurity,
                               (SELECT string_agg(a.attname || '=' || a.attacl::text, ',' ORDER BY a.attnum)
                                  FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attacl IS NOT NULL)),
                     ',' ORDER BY c.oid)
     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = ANY(%(schemas)s) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')),
  (SELECT string_agg(concat_ws(':', p.oid, p.polcmd, p.polpermissive, p.polroles, p.polqual, p.polwithcheck), ','
                     ORDER BY p.oid) FROM pg_catalog.pg_policy p),
  (SELECT string_agg(concat_ws(':', p.oid, md5(p.prosrc), p.prosecdef, p.proacl, p.proconfig), ',' ORDER BY p.oid)
     FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')),
  (SELECT string_agg(s.setconfig::text, ',' ORDER BY s.setdatabase, s.setrole) FROM pg_catalog.pg_db_role_setting s)
))
"""


def fingerprint(conn: psycopg.Connection[Any], schemas: Sequence[str]) -> str:
    row = conn.execute(_FINGERPRINT.encode(), {"schemas": list(schemas)}).fetchone()
    return str(row[0]) if row else ""


def _settings(persona: Persona, claims: dict[str, Any] | None) -> dict[str, str]:
    settings = dict(persona.settings)
    if claims is not None:
        settings[persona.claims_setting] = json.dumps(claims, sort_keys=True)
    return settings


_ALLOWED = """
SELECT c.name, pg_catalog.has_schema_privilege(%(role)s, c.schema, 'USAGE'),
       pg_catalog.has_table_privilege(%(role)s, c.name::regclass, 'SELECT'),
       pg_catalog.has_any_column_privilege(%(role)s, c.name::regclass, 'SELECT'),
       CASE WHEN c.tenant THEN pg_catalog.has_column_privilege(%(role)s, c.name::regclass, %(column)s, 'SELECT') END
  FROM unnest(%(names)s::text[], %(schemas)s::text[], %(tenant)s::bool[]) AS c(name, schema, tenant)
"""


def _as_persona(conn: psycopg.Connection[Any], persona: Persona, claims: dict[str, Any] | None,
                rels: Mapping[str, Relation], tenant: sql.Identifier, tenant_column: str) -> dict[str, Seen]:
    rows = conn.execute(_ALLOWED, {"role": persona.role, "column": tenant_column, "names": list(rels),
                                   "schemas": [r.schema for r in rels.values()],
                                   "tenant": [r.tenant for r in rels.values()]}).fetchall()
    allowed = {str(r[0]): (bool(r[1]) and bool(r[3]), bool(r[2]), bool(r[4])) for r in rows}
    seen: dict[str, Seen] = {}
    with conn.transaction():  # a savepoint: its rollback ends the role and the settings
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(persona.role)))
        for name, value in _settings(persona, claims).items():
            conn.execute("SELECT pg_catalog.set_config(%s, %s, true)", (name, value))
        for rel in rels.values():
            may, whole, by_tenant = allowed.get(rel.name, (False, False, False))
            if not may:
                seen[rel.name] = Seen(note="no SELECT privilege")
                continue
            # Column privileges only: count(*) needs SELECT on any column; by tenant, on the tenant column.
            shown = rel if whole or by_tenant else dataclasses.replace(rel, tenant=False)
            seen[rel.name] = counted = _count(conn, shown, tenant, persona.role)
            if not whole:
                counted.note = "column privileges only" + (f"; {counted.note}" if counted.note else "")
            if rel.invoker and counted.rows is not None:  # it reads with the persona's rights: its own count
                counted.own, counted.own_tenants = counted.rows, counted.tenants
            elif rel.definition is not None and counted.rows is not None and whole:
                _own(conn, rel, tenant, counted, persona.role)
            _still(conn, persona.role)
        raise psycopg.Rollback()
    return seen


class RoleEscaped(Exception):
    """A read as a persona ended as another role (its SQL set the role back, e.g. set_config('role', ...))."""


def _still(conn: psycopg.Connection[Any], role: str) -> None:
    """The persona's role is still the current one: each read's savepoint is rolled back, so a role the SQL set
    ends with it; were it otherwise every later count would be the checking role's, so stop."""
    now = conn.execute("SELECT current_user::text").fetchone()
    if now is None or now[0] != role:
        raise PersonaError(f"every count as persona role {role} to run as {role}", f"current_user {now}",
                           "the personas check", hint="report this: the role a read set was not undone")


def _select(rel: Relation, tenant: sql.Identifier, source: sql.Composable) -> sql.Composed:
    if rel.tenant:
        return sql.SQL("SELECT {t}::text, count(*) FROM {s} GROUP BY 1").format(t=tenant, s=source)
    return sql.SQL("SELECT NULL::text, count(*) FROM {}").format(source)


def _rows(conn: psycopg.Connection[Any], rel: Relation, query: sql.Composed,
          role: str | None = None) -> tuple[int, dict[str, int] | None, str]:
    """The query's rows, in a savepoint always rolled back: whatever the SQL set (a role, a setting) ends with
    it. With role: also the role the read ended as, when it is not that one (the SQL set it back)."""
    escaped = ""
    with conn.transaction():
        rows = conn.execute(query).fetchall()
        if role is not None:
            now = conn.execute("SELECT current_user::text").fetchone()
            escaped = str(now[0]) if now is not None and now[0] != role else ""
        raise psycopg.Rollback()
    tenants = {("NULL" if t is None else str(t)): int(n) for t, n in rows} if rel.tenant else None
    return sum(int(n) for _, n in rows), tenants, escaped


def _count(conn: psycopg.Connection[Any], rel: Relation, tenant: sql.Identifier, role: str | None = None) -> Seen:
    try:
        rows, tenants, escaped = _rows(conn, rel, _select(rel, tenant, sql.Identifier(rel.schema, rel.relname)),
                                       role)
    except psycopg.errors.InsufficientPrivilege as exc:  # e.g. a security_invoker view over a table it may not read
        return Seen(0, {} if rel.tenant else None, note=exc.diag.message_primary or "permission denied")
    except psycopg.Error as exc:
        return Seen(note=sql_error(exc))
    return Seen(rows, tenants, escaped=escaped)


def _own(conn: psycopg.Connection[Any], rel: Relation, tenant: sql.Identifier, seen: Seen, role: str) -> None:
    """The view's definition read as the persona itself: what the view shows it with security_invoker. Not
    allowed to read a table under it: it sees none of its rows."""
    assert rel.definition is not None
    source = sql.SQL("({}) AS v").format(sql.SQL(rel.definition))  # the catalog's own SQL, deparsed
    try:
        seen.own, seen.own_tenants, escaped = _rows(conn, rel, _select(rel, tenant, source), role)
        seen.escaped = seen.escaped or escaped
    except psycopg.errors.InsufficientPrivilege as exc:
        seen.own, seen.own_tenants = 0, {} if rel.tenant else None
        seen.note = f"with its own rights: {exc.diag.message_primary or 'permission denied'}"
    except psycopg.Error as exc:
        seen.note = f"its definition could not be read with its own rights: {sql_error(exc)}"
