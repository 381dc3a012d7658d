"""Statements of a pending migration that are not tried on the blast radius's copy of the schema, and why (no
pytest here).

The copy may be a database on the target's server (--phase4-blast-copy=target), and a throwaway server's state
is the run's own to keep: what a statement does to the server itself (roles, databases,
tablespaces, ALTER SYSTEM, replication slots), to another server (subscriptions, dblink, user mappings that would
let a foreign table reach its remote), to the server's files (COPY TO/FROM a file or program, lo_export) or to
other sessions would happen for real during `-m preflight`. Such statements are found with PostgreSQL's own
parser (pglast) and left out; publications and event triggers are left out too, since the copy has none (see
scratch.py). What a DO block runs statically is looked at as well; SQL built at run time (EXECUTE), and what a
called function or a fired trigger runs, cannot be: that is why the copy goes to a throwaway server by default.
"""

from __future__ import annotations

import re
from typing import Any

from pglast import ast, parse_plpgsql, parse_sql
from pglast.enums import ObjectType
from pglast.visitors import Visitor

from pytest_phase4.db import sqltext

_SERVER = "roles, databases and tablespaces belong to the whole server, not to the copy"
_WHOLE_SERVER: dict[type[ast.Node], str] = {
    ast.CreateRoleStmt: _SERVER, ast.AlterRoleStmt: _SERVER, ast.AlterRoleSetStmt: _SERVER,
    ast.DropRoleStmt: _SERVER, ast.GrantRoleStmt: _SERVER, ast.CreatedbStmt: _SERVER, ast.DropdbStmt: _SERVER,
    ast.AlterDatabaseStmt: _SERVER, ast.AlterDatabaseSetStmt: _SERVER, ast.AlterDatabaseRefreshCollStmt: _SERVER,
    ast.CreateTableSpaceStmt: _SERVER, ast.DropTableSpaceStmt: _SERVER, ast.AlterTableSpaceOptionsStmt: _SERVER,
    ast.ReassignOwnedStmt: "REASSIGN OWNED also changes the owner of the server's databases and tablespaces",
    ast.DropOwnedStmt: "DROP OWNED also revokes rights on the server's databases and tablespaces",
    ast.AlterSystemStmt: "ALTER SYSTEM changes the server's configuration",
    ast.CreateSubscriptionStmt: "a subscription connects to another server",
    ast.AlterSubscriptionStmt: "a subscription connects to another server",
    ast.DropSubscriptionStmt: "a subscription connects to another server",
    ast.CreateUserMappingStmt: "the copy has no user mappings, so that no foreign table reaches a remote server",
    ast.AlterUserMappingStmt: "the copy has no user mappings, so that no foreign table reaches a remote server",
    ast.DropUserMappingStmt: "the copy has no user mappings, so that no foreign table reaches a remote server",
    ast.ImportForeignSchemaStmt: "it reads a remote server's catalog, and the copy has no user mappings",
    ast.CreatePublicationStmt: "the copy has no publications",
    ast.AlterPublicationStmt: "the copy has no publications",
    ast.CreateEventTrigStmt: "the copy has no event triggers",
    ast.AlterEventTrigStmt: "the copy has no event triggers",
}
_SHARED_OBJECTS = {ObjectType.OBJECT_DATABASE, ObjectType.OBJECT_ROLE, ObjectType.OBJECT_TABLESPACE,
                   ObjectType.OBJECT_PARAMETER_ACL}
_LEFT_OUT_OF_COPY = {ObjectType.OBJECT_PUBLICATION: "the copy has no publications",
                     ObjectType.OBJECT_EVENT_TRIGGER: "the copy has no event triggers"}
_RUNS = (ast.SelectStmt, ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.CreateTableAsStmt, ast.CallStmt)
# String constants, shown as '***' when a statement is named: a setting's value may be a secret (a JWT secret).
_LITERAL = re.compile(r"[Ee]'(?:[^'\\]|\\.|'')*'?|'(?:[^']|'')*'?|\$(\w*)\$.*?(?:\$\1\$|$)", re.S)
# Functions that act beyond the database they are called in.
_BEYOND = {"dblink", "dblink_exec", "dblink_connect", "dblink_connect_u", "dblink_send_query", "dblink_open",
           "pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf", "pg_rotate_logfile", "pg_promote",
           "pg_switch_wal", "pg_create_restore_point", "pg_create_physical_replication_slot",
           "pg_create_logical_replication_slot", "pg_drop_replication_slot", "pg_copy_physical_replication_slot",
           "pg_copy_logical_replication_slot", "pg_replication_origin_create", "pg_replication_origin_drop",
           "lo_export", "lo_import", "pg_file_write", "pg_file_rename", "pg_file_unlink", "http", "http_post",
           "http_get", "http_put", "http_patch", "http_delete", "http_head", "net.http_post", "net.http_get",
           "net.http_delete", "pg_replication_slot_advance", "pg_backup_start", "pg_backup_stop", "pg_start_backup",
           "pg_stop_backup",
           # the server's statistics (shared memory), not the copy's: every database's history would be wiped
           "pg_stat_statements_reset", "pg_stat_reset_shared", "pg_stat_reset_slru", "pg_stat_reset_replication_slot"}


def not_on_copy(statement: sqltext.Statement, absent: set[str] | None = None,
                missing: set[str] | None = None) -> str | None:
    """Why this statement must not run on the copy, or None when it may. `absent` gathers, across the pending
    migrations, the roles that statements not tried create: a statement naming one (GRANT ... TO it, OWNER TO it,
    a policy for it) would fail on the copy only because of that, so it is not tried either. `missing` holds the
    relations and functions the copy lacks (`name` and `schema.name`: those of the extensions left out of it), and
    gathers what statements not tried for that reason create."""
    try:
        why = _why(statement.node, statement.text)
        if absent is None:
            return why
        inner = _inner(statement.node, statement.text)
        if why is not None:
            absent.update(str(n.role) for n in inner if isinstance(n, ast.CreateRoleStmt))
        elif named := _names_role(inner, absent):
            why = f"it names role {named}, which a statement not tried on the copy creates"
        elif missing and (used := _uses(inner, missing)):
            why = f"it uses {used}, which the copy lacks (an extension left out of it, or what a statement not tried " \
                  "creates)"
            missing.update(_creates(inner))
        return why
    except Exception:  # a tree this module does not know: the statement runs as before
        return None


def shown(statement: sqltext.Statement) -> str:
    """How a report names a statement left out: its first line, every string constant masked."""
    first = _LITERAL.sub(lambda m: "$$***$$" if m.group(0).startswith("$") else "'***'", statement.text)
    first = first.strip().splitlines()[0] if first.strip() else ""
    return first if len(first) <= 100 else first[:99] + "\u2026"


def _why(node: Any, text: str) -> str | None:
    if node is None:
        return None
    if (why := _WHOLE_SERVER.get(type(node))) is not None:
        return why
    if isinstance(node, ast.GrantStmt) and node.objtype in _SHARED_OBJECTS:
        return _SERVER
    if isinstance(node, (ast.CommentStmt, ast.SecLabelStmt)) and node.objtype in _SHARED_OBJECTS:
        return _SERVER
    if isinstance(node, ast.RenameStmt) and node.renameType in _SHARED_OBJECTS:
        return _SERVER
    if isinstance(node, ast.AlterOwnerStmt) and node.objectType in _SHARED_OBJECTS:
        return _SERVER
    if isinstance(node, (ast.DropStmt, ast.RenameStmt, ast.AlterOwnerStmt, ast.CommentStmt)):
        kind = getattr(node, "removeType", None) or getattr(node, "renameType", None) \
            or getattr(node, "objectType", None) or getattr(node, "objtype", None)
        if kind in _LEFT_OUT_OF_COPY:
            return _LEFT_OUT_OF_COPY[kind]
    if isinstance(node, ast.CopyStmt) and (node.filename or node.is_program):
        return "it reads or writes a file or a program on the database server"
    if isinstance(node, ast.DoStmt):
        return _do_block(text)
    if isinstance(node, _RUNS) and (called := _beyond(node)):
        return f"{called}() acts beyond the database"
    return None


def _beyond(node: Any) -> str | None:
    found: list[str] = []

    class Calls(Visitor):
        def visit_FuncCall(self, ancestors: Any, call: ast.FuncCall) -> None:
            names = [getattr(n, "sval", "") for n in call.funcname or ()]
            if names and (names[-1].lower() in _BEYOND or ".".join(names[-2:]).lower() in _BEYOND):
                found.append(".".join(names))

    Calls()(node)
    return found[0] if found else None


def _do_block(text: str) -> str | None:
    """Why a statement a DO block runs (not built at run time) must not run on the copy."""
    for query, node in _do_statements(text):
        if why := _why(node, query):  # shown as the statement is: every literal and comment masked
            shown = " ".join(sqltext.redact(query, leading=False).split())
            return f"it runs {shown if len(shown) <= 60 else shown[:59] + chr(0x2026)}: {why}"
    return None


def _do_statements(text: str) -> list[tuple[str, Any]]:
    """(SQL text, parse tree) of each statement and expression a DO block runs, as far as it is written out."""
    try:
        tree = parse_plpgsql(text)
    except Exception:  # another language, or a body the parser does not take
        return []
    found = []
    for query in _queries(tree):
        for source in (query, f"SELECT {query}"):
            try:
                parsed = parse_sql(source)
            except Exception:  # an expression, not a statement: tried as SELECT <expr>
                continue
            found += [(query, raw.stmt) for raw in parsed]
            break
    return found


def _inner(node: Any, text: str) -> list[Any]:
    """The statement itself, or what a DO block runs."""
    return [n for _, n in _do_statements(text)] if isinstance(node, ast.DoStmt) else [node]


def _names_role(nodes: list[Any], roles: set[str]) -> str | None:
    found: list[str] = []

    class Roles(Visitor):
        def visit_RoleSpec(self, ancestors: Any, spec: ast.RoleSpec) -> None:
            if spec.rolename in roles:
                found.append(spec.rolename)

    for node in nodes:
        Roles()(node)
    return found[0] if found else None


def _forms(names: Any) -> list[str]:
    """`name` and, when qualified, `schema.name`, of a list of String nodes."""
    parts = [str(getattr(n, "sval", "")) for n in names or ()]
    return [parts[-1], ".".join(parts[-2:])] if len(parts) > 1 else parts


def _uses(nodes: list[Any], missing: set[str]) -> str | None:
    found: list[str] = []

    class Uses(Visitor):
        def visit_RangeVar(self, ancestors: Any, rel: ast.RangeVar) -> None:
            name = f"{rel.schemaname}.{rel.relname}" if rel.schemaname else str(rel.relname)
            if name in missing:
                found.append(name)

        def visit_FuncCall(self, ancestors: Any, call: ast.FuncCall) -> None:
            forms = _forms(call.funcname)
            if forms and forms[-1] in missing:
                found.append(forms[-1])

    for node in nodes:
        Uses()(node)
    return found[0] if found else None


def _creates(nodes: list[Any]) -> set[str]:
    """The names (bare and qualified) of the relations and functions these statements create."""
    out: set[str] = set()
    for node in nodes:
        rel = (node.view if isinstance(node, ast.ViewStmt) else node.relation if isinstance(node, ast.CreateStmt)
               else node.into.rel if isinstance(node, ast.CreateTableAsStmt) and node.into else None)
        if rel is not None:
            out.update({str(rel.relname)} | ({f"{rel.schemaname}.{rel.relname}"} if rel.schemaname else set()))
        elif isinstance(node, ast.CreateFunctionStmt):
            out.update(_forms(node.funcname))
    return out


def _queries(tree: Any) -> list[str]:
    """Every SQL text of a PL/pgSQL tree (statements and expressions), in order."""
    out: list[str] = []
    if isinstance(tree, dict):
        if isinstance(expr := tree.get("PLpgSQL_expr"), dict) and isinstance(expr.get("query"), str):
            out.append(expr["query"])
        for value in tree.values():
            out.extend(_queries(value))
    elif isinstance(tree, list):
        for value in tree:
            out.extend(_queries(value))
    return out
