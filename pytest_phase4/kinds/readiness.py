"""Environment readiness (runbook Part 1 D, Part 3's pre-execution checks and the Index Creation Failures
appendix): other sessions on the database, the role's privileges for what the migrations do, and client tools
that can back the database up."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from pytest_phase4.db import catalog, hazards, sqltext
from pytest_phase4.db.target import APPLICATION_NAME
from pytest_phase4.errors import CheckFailed
from pytest_phase4.kinds.base import Kind, Param, register
from pytest_phase4.kinds.context import Context
from pytest_phase4.plan.model import CheckSpec
from pytest_phase4.safety import backup


class ReadinessWarning(UserWarning):
    """Something a DBA should look at that does not stop the run (pytest lists it in its warnings summary)."""


_SESSIONS = b"""
SELECT pid, coalesce(usename, '?'), coalesce(application_name, ''), coalesce(client_addr::text, 'local'),
       coalesce(state, '?')
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
ORDER BY pid
"""


def active_connections(ctx: Context, spec: CheckSpec) -> str:
    p = spec.params
    rows = [r for r in ctx.conn.execute(_SESSIONS).fetchall() if r[2] != APPLICATION_NAME]  # not our own
    others = [r for r in rows if r[2] not in p["allow"]]
    shown = [f"pid {pid}: user {user}, application {app or '(none)'}, from {addr}, {state}"
             for pid, user, app, addr, state in others]
    allowed = len(rows) - len(others)
    note = f" ({allowed} allowed session(s) not counted)" if allowed else ""
    limit = p["warn_max"] if p["warn_max"] is not None else p["max"]
    if len(others) > limit:
        raise CheckFailed(f"at most {limit} other connection(s) to the database", f"{len(others)}{note}",
                          "pg_stat_activity of the current database", details=shown[:20],
                          hint=spec.hint or "stop the applications using this database before migrating, or "
                                            "list their application_name in allow")
    if len(others) > p["max"]:
        warnings.warn(ReadinessWarning(f"{len(others)} other connection(s) to the database (more than "
                                       f"{p['max']}): " + "; ".join(shown[:5])), stacklevel=1)
        return f"{len(others)} other connection(s){note}: warned (more than {p['max']}, at most {limit})"
    return f"{len(others)} other connection(s){note}"


def touched_tables(sql_text: str) -> list[str]:
    """Tables a migration alters, indexes, or puts policies and triggers on (these need ownership of the table), by
    name without schema, in order of first mention; as PostgreSQL's parser reads the file (none if it cannot)."""
    try:
        statements = sqltext.split(sql_text)
    except sqltext.SqlSyntaxError:
        return []  # the migration_files check and the migration itself say why
    return list(dict.fromkeys(hazards.owned_tables(statements)))


def role_privileges(ctx: Context, spec: CheckSpec) -> str:
    conn, schema = ctx.conn, ctx.schema
    role, superuser = conn.execute(
        b"SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()  # type: ignore[misc]
    if superuser:
        return f"role {role} is a superuser: it may do everything the migrations do"
    tables = list(spec.params["tables"])
    if not tables:
        for m in ctx.plan.migrations:
            if m.path.is_file():
                tables += touched_tables(m.path.read_text(errors="replace"))
        tables = list(dict.fromkeys(tables))
    existing = set(catalog.tables(conn, schema))
    problems: list[str] = []
    can_create = conn.execute(b"SELECT has_schema_privilege(current_user, %s, 'CREATE')", (schema,)).fetchone()
    if not (can_create and can_create[0]):
        problems.append(f"no CREATE on schema {schema}: the migrations create views, tables and indexes")
    owners = dict(conn.execute(
        b"SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_class c JOIN pg_namespace n ON n.oid = "
        b"c.relnamespace WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT pg_has_role(current_user, "
        b"c.relowner, 'USAGE')", (schema,)).fetchall())
    checked = [t for t in tables if t in existing]  # the others are created by the migrations themselves
    problems += [f"cannot ALTER {schema}.{t}: owned by {owners[t]}, and {role} is not a member of that role"
                 for t in checked if t in owners]
    if problems:
        raise CheckFailed(f"role {role} may CREATE in schema {schema} and ALTER the {len(checked)} table(s) the "
                          "migrations touch", f"{len(problems)} missing privilege(s)", f"role {role}",
                          details=problems[:20],
                          hint=spec.hint or "run as the owner of the tables (Index Creation Failures appendix: "
                                            "SELECT grantee, privilege_type FROM information_schema.table_privileges)")
    return f"role {role}: CREATE on schema {schema}, owns the {len(checked)} table(s) the migrations touch"




def client_tools(ctx: Context, spec: CheckSpec) -> str:
    """The tool as the backup stage will find it (PATH, pg_config --bindir, /usr/lib/postgresql/*/bin)."""
    tool = spec.element
    server_major = ctx.conn.info.server_version // 10000
    found = backup.locate(tool)
    where = "PATH, pg_config --bindir, /usr/lib/postgresql/*/bin"
    if not found:
        raise CheckFailed(f"{tool} installed", "not found", where,
                          hint=spec.hint or f"install the PostgreSQL {server_major} client tools: the runbook's "
                                            "backup (Part 2) and rollback (Part 7) need them")
    usable = [f for f in found if f.major >= server_major]
    if not usable:
        seen = ", ".join(f"{tool} {f.version} in {f.bindir}" for f in found)
        raise CheckFailed(f"{tool} {server_major} or newer (the server's major version)", seen, where,
                          hint=spec.hint or "an older pg_dump refuses a newer server (server version mismatch): "
                                            f"install postgresql-client-{server_major}")
    best = usable[0]
    return f"{best.path(tool)}: {tool} {best.version} (server {server_major})"


def _warn_max(params: Mapping[str, Any]) -> str | None:
    warn_max = params.get("warn_max")
    return "warn_max must be at least max" if warn_max is not None and warn_max < params["max"] else None


register(
    Kind("active_connections", "at most max other client connections to the database (warn up to warn_max)",
         {"max": Param("int", False, 0), "warn_max": Param("int", False), "allow": Param("names", False, ())},
         label_fn=lambda p, _: f"<={p['max']}", constraint=_warn_max, run=active_connections, state=False),
    Kind("role_privileges", "the current role may do what the migrations do: CREATE on the schema, own the tables",
         {"tables": Param("names", False, ())}, label_fn=lambda p, _: "migrations", run=role_privileges,
         state=False),
    Kind("client_tools", "each tool is installed where the backup looks, and not older than the server",
         {"tools": Param("names", False, ("pg_dump", "pg_restore"))}, expand="tools", run=client_tools,
         state=False),
)
