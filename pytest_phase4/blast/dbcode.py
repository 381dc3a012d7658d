"""The database's own code checked against its schema: every SQL and PL/pgSQL function, procedure and trigger
function (no pytest here; read-only: nothing is created, replaced or run).

- SQL bodies: the language's validator (`fmgr_sql_validator`) with `check_function_bodies = on` parses and
  analyses the body again against the schema as it is now, as CREATE FUNCTION would; it creates nothing. It does
  not analyse a body with polymorphic arguments (anyelement...): each of its statements is PREPAREd instead.
- PL/pgSQL bodies: `plpgsql_check` when it is installed (trigger functions once per table their triggers are
  on, so `NEW.col` is checked against that table); otherwise each static query of the body is PREPAREd
  (plpgsql_static.py) and each `NEW.col` / `OLD.col` looked up in the trigger's table.
Each function runs with its own `search_path` when it sets one. A problem names the function, the body's line
and column (as PL/pgSQL numbers lines: `... line 4 at SQL statement`), the server's message and the line, shown
without its comments and string literals (a key written in a body stays out of the report).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import DiagnosticField, ExecStatus

from pytest_phase4.blast import plpgsql_static
from pytest_phase4.db import sqltext

PLPGSQL_CHECK, PREPARE = "plpgsql_check", "prepare"
SKIPPED_SCHEMAS = ("pg_catalog", "information_schema", "pytest_phase4")

_ROUTINES = """
SELECT p.oid, format('%%I.%%I(%%s)', n.nspname, p.proname, pg_catalog.oidvectortypes(p.proargtypes)), n.nspname,
       l.lanname, p.prokind,
       p.prorettype = 'pg_catalog.trigger'::regtype, p.prorettype = 'pg_catalog.event_trigger'::regtype,
       p.prosrc, (SELECT substr(c, 13) FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%%'),
       p.pronargs, ARRAY(SELECT format_type(t, NULL) FROM unnest(p.proargtypes) t),
       CASE WHEN p.proargmodes IS NULL THEN coalesce(p.proargnames, '{}')
            ELSE ARRAY(SELECT a FROM unnest(p.proargnames, p.proargmodes) u(a, m) WHERE m IN ('i', 'b', 'v')) END,
       EXISTS (SELECT 1 FROM unnest(p.proargtypes) t JOIN pg_catalog.pg_type y ON y.oid = t
               WHERE y.typtype = 'p' AND y.typname ~ '^any.')
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
JOIN pg_catalog.pg_language l ON l.oid = p.prolang
WHERE l.lanname IN ('sql', 'plpgsql') AND p.prokind IN ('f', 'p')
  AND n.nspname <> ALL (%s) AND n.nspname !~ '^pg_(toast|temp_)'
  AND (cardinality(%s::text[]) = 0 OR n.nspname = ANY (%s))
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_proc'::regclass
                  AND d.objid = p.oid AND d.deptype = 'e')
ORDER BY 2
"""
_TRIGGERS = """
SELECT t.tgfoid, t.tgrelid, format('%I.%I', n.nspname, c.relname), t.tgname FROM pg_catalog.pg_trigger t
JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE NOT t.tgisinternal ORDER BY 3, 4
"""
_COLUMNS = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
"""
# The name a message is about, to find where the body uses it.
_NAMED = [re.compile(p) for p in (r'column (?:\S+\.)?"?([^"\s.]+)"? does not exist', r'has no field "([^"]+)"',
                                  r'relation "(?:[^"]+\.)?([^"]+)" does not exist',
                                  r'missing FROM-clause entry for table "([^"]+)"',
                                  r'type "(?:[^"]+\.)?([^"]+)" does not exist', r"function (?:\S+\.)?(\w+)\(")]


@dataclass(frozen=True)
class Routine:
    oid: int
    signature: str  # public.ticket_card(uuid)
    schema: str
    language: str
    kind: str  # "function", "procedure", "trigger function", "event trigger function"
    source: str
    search_path: str | None
    nargs: int
    arg_types: tuple[str, ...]
    triggers: tuple[tuple[int, str, str], ...] = ()  # (table oid, table, trigger name)
    arg_names: tuple[str, ...] = ()  # of the input arguments, "" for an unnamed one
    polymorphic: bool = False  # an argument of type anyelement, anyarray, anycompatible...

    @cached_property
    def shown(self) -> list[str]:
        """The body's lines as a report may show them: comments and string literals masked (sqltext.redact)."""
        return sqltext.redact(self.source).splitlines()

    @property
    def label(self) -> str:
        language = "SQL" if self.language == "sql" else "PL/pgSQL"
        return f"{language} {self.kind} {self.signature}"


@dataclass(frozen=True)
class Breakage:
    """A problem the server reports for one function: where in its body, and what."""

    routine: str  # its label: "PL/pgSQL trigger function public.f()"
    line: int  # 0 when the server names no line
    column: int
    message: str
    text: str = ""  # the body's line
    via: str = ""  # "trigger x on public.t" for a trigger function checked against its table
    path: str = ""  # "search_path crm, as role crm_app runs it": checked with a role's own, not the run's

    @property
    def key(self) -> tuple[str, str, str]:
        return self.routine, self.via + self.path, self.message

    def describe(self) -> str:
        where = f", line {self.line}" + (f", column {self.column}" if self.column else "") if self.line else ""
        via = f" (as {self.via})" if self.via else ""
        via += f" (with {self.path})" if self.path else ""
        shown = f"\n      {self.line} | {self.text.strip()}" if self.text.strip() else ""
        return f"{self.routine}{via}{where}: {self.message}{shown}"


@dataclass
class CodeReport:
    method: str  # how PL/pgSQL bodies were checked
    checked: list[str] = field(default_factory=list)  # routine labels
    problems: list[Breakage] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # what could not be checked, and why
    dynamic: int = 0  # EXECUTE statements in PL/pgSQL bodies: never checked


def plpgsql_check_schema(conn: psycopg.Connection[Any]) -> str | None:
    row = conn.execute("SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n"
                       " ON n.oid = e.extnamespace WHERE e.extname = 'plpgsql_check'").fetchone()
    return str(row[0]) if row else None


def routines(conn: psycopg.Connection[Any], schemas: Sequence[str] = ()) -> list[Routine]:
    by_function: dict[int, list[tuple[int, str, str]]] = {}
    for fn, relid, table, name in conn.execute(_TRIGGERS).fetchall():
        by_function.setdefault(int(fn), []).append((int(relid), str(table), str(name)))
    found = []
    for oid, sig, nsp, lang, prokind, trigger, event, src, path, nargs, args, names, poly in conn.execute(
            _ROUTINES, (list(SKIPPED_SCHEMAS), list(schemas), list(schemas))).fetchall():
        kind = ("event trigger function" if event else "trigger function" if trigger
                else "procedure" if prokind == "p" else "function")
        found.append(Routine(int(oid), str(sig), str(nsp), str(lang), kind, str(src or ""), path, int(nargs),
                             tuple(args), tuple(by_function.get(int(oid), ())), tuple(names or ()), bool(poly)))
    return found


def examine(conn: psycopg.Connection[Any], found: list[Routine], method: str,
            role_paths: dict[str, str] | None = None) -> CodeReport:
    """Check each routine; `conn` is in autocommit (each check its own transaction) and may be read-only. A routine
    without a search_path of its own runs with its caller's: it is checked with the run's and with each one a role
    has of its own (`role_paths`, appqueries.role_paths), so `FROM sales` in an application's function is looked up
    where that application finds it."""
    report = CodeReport(method)
    default_path = str(conn.execute("SHOW search_path").fetchone()[0])  # type: ignore[index]
    others: dict[str, list[str]] = {}
    for role, path in sorted((role_paths or {}).items()):
        if path != default_path:
            others.setdefault(path, []).append(role)
    check_schema = plpgsql_check_schema(conn) if method == PLPGSQL_CHECK else None
    conn.execute("SELECT pg_catalog.set_config('check_function_bodies', 'on', false)")
    try:
        for routine in found:
            if routine.kind == "event trigger function":
                report.skipped.append(f"{routine.label}: an event trigger function (no table to check it against)")
                continue
            if routine.kind == "trigger function" and not routine.triggers:
                report.skipped.append(f"{routine.label}: no trigger uses it, so NEW and OLD have no table")
                continue
            report.checked.append(routine.label)
            paths = [(routine.search_path, "")] if routine.search_path is not None else [(default_path, ""), *(
                (p, f"search_path {p}, as role{'s' if len(r) > 1 else ''} {', '.join(r)} run{'' if len(r) > 1 else 's'}"
                    " it") for p, r in others.items())]
            for n, (path, note) in enumerate(paths):
                conn.execute("SELECT pg_catalog.set_config('search_path', %s, false)", (path,))
                problems = _one(conn, routine, method, check_schema, report if n == 0 else CodeReport(method))
                report.problems += [replace(b, path=note) for b in problems]
    finally:
        conn.execute("SELECT pg_catalog.set_config('search_path', %s, false)", (default_path,))
    return report


def _one(conn: psycopg.Connection[Any], routine: Routine, method: str, check_schema: str | None,
         report: CodeReport) -> list[Breakage]:
    if routine.language == "sql":
        return _sql_body(conn, routine)
    if check_schema is not None:
        problems = _plpgsql_check(conn, routine, check_schema)
        if any(not b.line for b in problems):  # it does not compile: plpgsql_check can say no more
            problems = _prepared(conn, routine, CodeReport(method)) or problems
        return problems
    return _prepared(conn, routine, report)


def _sql_body(conn: psycopg.Connection[Any], routine: Routine) -> list[Breakage]:
    if routine.polymorphic:
        return _sql_statements(conn, routine)
    try:
        conn.execute("SELECT pg_catalog.fmgr_sql_validator(%s)", (routine.oid,))
    except psycopg.Error as exc:
        position = int(exc.diag.internal_position or 0)
        if position:
            line, column = _line_col(routine.source, position)
            return [Breakage(routine.label, line, column, _message(exc), _line_text(routine.shown, line))]
        return [_located(routine, 1, _message(exc))]
    return []


def _sql_statements(conn: psycopg.Connection[Any], routine: Routine) -> list[Breakage]:
    """A SQL body the validator does not analyse (polymorphic arguments: their types are the caller's): each
    statement PREPAREd, arguments as parameters, a polymorphic one's type left to the server (text when it cannot
    tell)."""
    name = routine.signature.partition("(")[0].rpartition(".")[2].strip('"')
    try:
        queries = plpgsql_static.sql_body(routine.source, routine.arg_names, name)
    except plpgsql_static.BodyError as exc:
        return [Breakage(routine.label, 0, 0, f"PostgreSQL's parser rejects the body: {exc}")]
    types = [0 if t.startswith("any") else _type_oid(conn, t) for t in routine.arg_types]
    return [_located(routine, line, error[1]) for line, text in queries
            if (error := prepare(conn, text, types)) is not None]


def _plpgsql_check(conn: psycopg.Connection[Any], routine: Routine, schema: str) -> list[Breakage]:
    query = sql.SQL("SELECT lineno, message FROM {}(%s::oid::regprocedure, relid => %s::oid::regclass, "
                    "fatal_errors => false, other_warnings => false, performance_warnings => false, "
                    "extra_warnings => false) WHERE level = 'error'").format(
        sql.Identifier(schema, "plpgsql_check_function_tb"))
    targets = [(relid, f"trigger {name} on {table}") for relid, table, name in routine.triggers] or [(0, "")]
    found = []
    for relid, via in _each_table(targets):
        for lineno, message in conn.execute(query, (routine.oid, relid)).fetchall():
            found.append(_located(routine, int(lineno or 0), str(message), via))
    return found


def _each_table(targets: list[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    seen: set[int] = set()
    for relid, via in targets:  # two triggers on one table check the same thing
        if relid not in seen:
            seen.add(relid)
            yield relid, via


def _prepared(conn: psycopg.Connection[Any], routine: Routine, report: CodeReport) -> list[Breakage]:
    definition = str(conn.execute("SELECT pg_catalog.pg_get_functiondef(%s)", (routine.oid,)).fetchone()[0])  # type: ignore[index]
    try:
        body = plpgsql_static.analyse(definition, routine.nargs, routine.arg_types,
                                      routine.kind == "trigger function")
    except plpgsql_static.BodyError as exc:
        return [Breakage(routine.label, 0, 0, f"PostgreSQL's PL/pgSQL parser rejects the body: {exc}")]
    report.dynamic += body.dynamic
    found = [_located(routine, line, message) for line, message in _declared(conn, body)]
    tables = [(relid, f"trigger {name} on {table}", dict(conn.execute(_COLUMNS, (relid,)).fetchall()))
              for relid, table, name in routine.triggers]
    for _, via, columns in tables:
        for use in body.fields:
            if use.field not in columns:
                found.append(_located(routine, use.line, f'record "{use.record}" has no field "{use.field}"', via))
    rows = {r: _row_columns(conn, r) for r in dict.fromkeys(u.relation for u in body.row_fields)}
    for use in body.row_fields:
        if (fields := rows[use.relation]) is not None and use.field not in fields:
            found.append(_located(routine, use.line, f'record "{use.record}" has no field "{use.field}"'))
    for query in body.queries:
        types = [_column_type(t, tables) if t[:4] in ("new.", "old.") else _row_type(t, rows)
                 if t.startswith(_ROW) else t for t in query.types]
        if (error := prepare(conn, query.sql, [_type_oid(conn, t) for t in types])) is not None:
            found.append(_located(routine, query.line, error[1]))
    return list({(*b.key, str(b.line)): b for b in found}.values())


def _declared(conn: psycopg.Connection[Any], body: plpgsql_static.Body) -> Iterator[tuple[int, str]]:
    """%TYPE and %ROWTYPE declarations whose column or table does not exist."""
    for line, name, typname in body.declared:
        reference, _, suffix = typname.rpartition("%")
        parts = reference.split(".")
        if suffix.lower() == "rowtype":
            if conn.execute("SELECT to_regclass(%s)", (reference,)).fetchone() == (None,):
                yield line, f'relation "{reference}" does not exist (variable {name} is declared {typname})'
        elif len(parts) >= 2:
            relation, column = ".".join(parts[:-1]), parts[-1]
            row = conn.execute("SELECT to_regclass(%s) IS NOT NULL, EXISTS (SELECT 1 FROM pg_catalog.pg_attribute "
                               "WHERE attrelid = to_regclass(%s) AND attname = %s AND attnum > 0 AND NOT "
                               "attisdropped)", (relation, relation, column)).fetchone()
            if row is not None and not row[1]:
                what = f"column {relation}.{column}" if row[0] else f'relation "{relation}"'
                yield line, f"{what} does not exist (variable {name} is declared {typname})"


def _column_type(ref: str, tables: list[tuple[int, str, dict[str, str]]]) -> str:
    column = ref.split(".", 1)[1]
    return next((columns[column] for _, _, columns in tables if column in columns), "")


_ROW = "%rowtype "  # a parameter standing for a field of a t%ROWTYPE variable: "%rowtype t.col"


def _row_columns(conn: psycopg.Connection[Any], relation: str) -> dict[str, str] | None:
    """The columns of a %ROWTYPE variable's table (None when it does not exist: _declared says so)."""
    try:
        row = conn.execute("SELECT to_regclass(%s)::oid", (relation,)).fetchone()
    except psycopg.Error:  # not a name to_regclass can read
        return None
    if row is None or row[0] is None:
        return None
    return {str(n): str(t) for n, t in conn.execute(_COLUMNS, (row[0],)).fetchall()}


def _row_type(ref: str, rows: dict[str, dict[str, str] | None]) -> str:
    relation, _, column = ref.removeprefix(_ROW).rpartition(".")
    return (rows.get(relation) or {}).get(column, "")


def _type_oid(conn: psycopg.Connection[Any], typname: str) -> int:
    if not typname:
        return 0
    try:
        row = conn.execute("SELECT coalesce(to_regtype(%s)::oid, 0)", (typname,)).fetchone()
    except psycopg.Error:  # a type name to_regtype cannot read: let the server infer it
        return 0
    return int(row[0]) if row else 0


def prepare(conn: psycopg.Connection[Any], text: str, types: Sequence[int] = (),
            search_path: str | None = None) -> tuple[str, str] | None:
    """PREPARE without running: None when the server accepts the statement, else (SQLSTATE, message); with the
    given search_path (a role's own), else the session's. A parameter whose type the server cannot infer
    (`SELECT $1`) is tried again as text."""
    if search_path is None:
        return _prepare(conn, text, types)
    was = str(conn.execute("SHOW search_path").fetchone()[0])  # type: ignore[index]
    try:
        conn.execute("SELECT pg_catalog.set_config('search_path', %s, false)", (search_path,))
        return _prepare(conn, text, types)
    except psycopg.Error as exc:  # not a list the server accepts as a search_path
        return exc.sqlstate or "", _message(exc)
    finally:
        conn.execute("SELECT pg_catalog.set_config('search_path', %s, false)", (was,))


def _prepare(conn: psycopg.Connection[Any], text: str, types: Sequence[int]) -> tuple[str, str] | None:
    param_types = list(types)
    for _ in range(8):
        result = conn.pgconn.prepare(b"phase4_blast", text.encode(), param_types or None)
        if result.status == ExecStatus.COMMAND_OK:
            conn.pgconn.exec_(b"DEALLOCATE phase4_blast")
            return None
        state = (result.error_field(DiagnosticField.SQLSTATE) or b"").decode()
        message = (result.error_field(DiagnosticField.MESSAGE_PRIMARY) or b"").decode(errors="replace")
        m = re.search(r"parameter \$(\d+)", message)
        if state != "42P18" or not m:
            return state, message
        n = int(m.group(1))
        param_types += [0] * (n - len(param_types))
        param_types[n - 1] = 25  # text
    return state, message


def _message(exc: psycopg.Error) -> str:
    return exc.diag.message_primary or str(exc).strip().splitlines()[0]


def _line_col(source: str, position: int) -> tuple[int, int]:
    before = source[: max(position - 1, 0)]
    return before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1


def _line_text(lines: Sequence[str], line: int) -> str:
    return lines[line - 1] if 0 < line <= len(lines) else ""


def _located(routine: Routine, line: int, message: str, via: str = "") -> Breakage:
    """Where the name the message is about is used in the body, from the statement's line on."""
    name = next((m.group(1) for p in _NAMED if (m := p.search(message))), None)
    lines = routine.source.splitlines()
    if name and lines:
        # the name with its qualifier, as the server points at a column reference: t.gone, NEW.gone
        pattern = re.compile(rf'(?<![\w$."])(?:"?[\w$]+"?\.)?"?{re.escape(name)}\b', re.IGNORECASE)
        for n in range(max(line, 1), len(lines) + 1):
            if m := pattern.search(lines[n - 1]):
                return Breakage(routine.label, n, m.start() + 1, message, _line_text(routine.shown, n), via)
    return Breakage(routine.label, line, 0, message, _line_text(routine.shown, line), via)
