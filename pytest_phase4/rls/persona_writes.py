"""What each persona may write: the rows of each table it could UPDATE or DELETE, and the rows it could INSERT as
they are, by tenant, found without writing anything.

A persona's writes are decided by its privileges and, on a table with row-level security, by the policies for the
command that apply to its role: permissive ones OR'ed, restrictive ones AND'ed (UPDATE and DELETE: USING; INSERT:
WITH CHECK, or USING for a FOR ALL policy without one). Those expressions are evaluated over the table's rows in a
rolled-back savepoint of the read-only snapshot, with the persona's settings (its claims) in place, as the checking
role: the table's own SELECT policies are not what an UPDATE or DELETE without a WHERE clause obeys, so the rows
cannot be read as the persona. INSERT is measured on the rows there are: a tenant's rows that would pass its
checks mean the persona may write rows into that tenant. What the expressions read in subqueries is read with the
checking role's rights, and current_user in them is the checking role: both the same at every moment, so a change
between moments is the policies'. No pytest here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql

from pytest_phase4.errors import sql_error
from pytest_phase4.plan.model import Persona
from pytest_phase4.rls.persona_seen import Relation, Seen

COMMANDS = {"UPDATE": ("w", "*"), "DELETE": ("d", "*"), "INSERT": ("a", "*")}

_PRIVILEGES = """
SELECT c.name,
       pg_catalog.has_schema_privilege(%(role)s, c.schema, 'USAGE'),
       pg_catalog.has_table_privilege(%(role)s, c.name::regclass, 'UPDATE')
         OR pg_catalog.has_any_column_privilege(%(role)s, c.name::regclass, 'UPDATE'),
       pg_catalog.has_table_privilege(%(role)s, c.name::regclass, 'DELETE'),
       pg_catalog.has_table_privilege(%(role)s, c.name::regclass, 'INSERT')
         OR pg_catalog.has_any_column_privilege(%(role)s, c.name::regclass, 'INSERT')
  FROM unnest(%(names)s::text[], %(schemas)s::text[]) AS c(name, schema)
"""

# The policies that apply to the role (it has the rights of one of their roles, or they are for PUBLIC).
_POLICIES = """
SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname), p.polname::text,
       p.polcmd::text, p.polpermissive, pg_catalog.pg_get_expr(p.polqual, p.polrelid),
       pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid)
  FROM pg_catalog.pg_policy p JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE (pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname)) = ANY(%(names)s)
   AND EXISTS (SELECT 1 FROM unnest(p.polroles) r
               WHERE r = 0 OR pg_catalog.pg_has_role(%(role)s, r, 'USAGE'))
 ORDER BY 1, 2
"""


def count(conn: psycopg.Connection[Any], persona: Persona, settings: Mapping[str, str], tables: Sequence[Relation],
          tenant_column: str) -> dict[str, dict[str, Seen]]:
    """table -> command -> the rows the persona may write (by tenant), with the policies that decided it."""
    if not tables:
        return {}
    names = [t.name for t in tables]
    rights = {str(r[0]): (bool(r[1]) and bool(r[2]), bool(r[1]) and bool(r[3]), bool(r[1]) and bool(r[4]))
              for r in conn.execute(_PRIVILEGES, {"role": persona.role, "names": names,
                                                  "schemas": [t.schema for t in tables]}).fetchall()}
    policies: dict[str, list[tuple[str, str, bool, str | None, str | None]]] = {}
    for table, *policy in conn.execute(_POLICIES, {"role": persona.role, "names": names}).fetchall():
        policies.setdefault(str(table), []).append((str(policy[0]), str(policy[1]), bool(policy[2]), policy[3],
                                                    policy[4]))
    tenant = sql.Identifier(tenant_column)
    found: dict[str, dict[str, Seen]] = {}
    with conn.transaction():  # a savepoint: its rollback ends the persona's settings
        for name, value in settings.items():
            conn.execute("SELECT pg_catalog.set_config(%s, %s, true)", (name, value))
        for table in tables:
            found[table.name] = {cmd: _one(conn, table, tenant, cmd, allowed, policies.get(table.name, []))
                                 for cmd, allowed in zip(COMMANDS, rights.get(table.name, (False,) * 3), strict=True)}
        raise psycopg.Rollback()
    return found


def _one(conn: psycopg.Connection[Any], table: Relation, tenant: sql.Identifier, cmd: str, allowed: bool,
         policies: Sequence[tuple[str, str, bool, str | None, str | None]]) -> Seen:
    if not allowed:
        return Seen(note=f"no {cmd} privilege")
    permissive: list[str] = []
    restrictive: list[str] = []
    used: list[str] = []
    if table.rls:
        for name, polcmd, is_permissive, using, check in policies:
            if polcmd not in COMMANDS[cmd]:
                continue
            expr = using if cmd != "INSERT" else (check if check is not None or polcmd == "a" else using)
            if expr is None:
                continue  # a policy without the expression adds no row
            (permissive if is_permissive else restrictive).append(f"({expr})")
            used.append(name if is_permissive else f"{name} (restrictive)")
        where = sql.SQL("({}) AND {}").format(sql.SQL(" OR ".join(permissive) or "false"),
                                               sql.SQL(" AND ".join(restrictive) or "true"))
    else:
        where = sql.Composed([sql.SQL("true")])
    source = sql.Identifier(table.schema, table.relname)
    if table.tenant:
        query = sql.SQL("SELECT {t}::text, count(*) FROM {s} WHERE {w} GROUP BY 1").format(
            t=tenant, s=source, w=where)
    else:
        query = sql.SQL("SELECT NULL::text, count(*) FROM {s} WHERE {w}").format(s=source, w=where)
    try:
        with conn.transaction():
            rows = conn.execute(query).fetchall()
            raise psycopg.Rollback()
    except psycopg.Error as exc:
        return Seen(note=sql_error(exc), policies=tuple(used))
    tenants = {("NULL" if t is None else str(t)): int(n) for t, n in rows} if table.tenant else None
    note = "" if table.rls else "no row-level security"
    return Seen(sum(int(n) for _, n in rows), tenants, note=note, policies=tuple(used))
