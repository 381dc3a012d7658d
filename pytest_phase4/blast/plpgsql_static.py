"""The static SQL of a PL/pgSQL body, ready to PREPARE: what the blast radius checks when plpgsql_check is not
there (no database, no pytest here).

PostgreSQL's own PL/pgSQL parser (libpg_query, through pglast) gives each statement's line and every SQL query
or expression in it. Each becomes a statement the server can PREPARE: variables become parameters (`$n`, typed
as declared where the type is known), `NEW.col` / `OLD.col` and the fields of a `t%ROWTYPE` variable become
parameters too and are listed apart, to be checked against the columns of the trigger's table or of `t`. Names are
read as PostgreSQL reads them (`NEW."customerName"` keeps its case). Dynamic SQL (`EXECUTE ...`) is text built at
run time: it is counted, never checked.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pglast import ast, parse_plpgsql, parse_sql
from pglast.parser import ParseError
from pglast.stream import RawStream
from pglast.visitors import Visitor

_EXPR = "PLpgSQL_expr"
_DYNAMIC = {"PLpgSQL_stmt_dynexecute": "query", "PLpgSQL_stmt_dynfors": "query", "PLpgSQL_stmt_open": "dynquery"}
_ASSIGN = re.compile(r"^\s*(?P<target>[^:=]+?)\s*:?=\s*(?P<expr>.*)$", re.DOTALL)
_RECORDS = ("new", "old")
_PREPARABLE = (ast.SelectStmt, ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)


@dataclass(frozen=True)
class Query:
    line: int  # line of the statement in the function body, as PL/pgSQL numbers it
    text: str  # as written (an expression is shown as written, without its SELECT)
    sql: str  # what is PREPAREd: SELECT-wrapped expressions, variables as $n
    types: tuple[str, ...]  # type name per $n ("" when unknown: the server infers it)


@dataclass(frozen=True)
class FieldUse:
    line: int
    record: str  # "new" or "old", or a %ROWTYPE variable
    field: str  # as PostgreSQL reads it: folded to lower case unless quoted
    relation: str = ""  # a %ROWTYPE variable's table, as declared ("" for NEW / OLD: the trigger's table)


@dataclass
class Body:
    queries: list[Query] = field(default_factory=list)
    fields: list[FieldUse] = field(default_factory=list)  # NEW.x / OLD.x, in trigger functions
    row_fields: list[FieldUse] = field(default_factory=list)  # v.x of a variable declared t%ROWTYPE
    declared: list[tuple[int, str, str]] = field(default_factory=list)  # (line, variable, "t.col%TYPE")
    dynamic: int = 0  # EXECUTE statements: built at run time, not checkable


class BodyError(Exception):
    """PostgreSQL's PL/pgSQL parser rejects the definition (it could not be created as it is)."""


def analyse(definition: str, nargs: int, arg_types: tuple[str, ...], trigger: bool) -> Body:
    """The preparable queries of a CREATE FUNCTION/PROCEDURE ... LANGUAGE plpgsql text (pg_get_functiondef)."""
    try:
        tree = parse_plpgsql(definition)
    except ParseError as exc:
        raise BodyError(str(exc.args[0] if exc.args else exc)) from None
    fn = tree[0]["PLpgSQL_function"]
    datums = fn.get("datums", [])
    scope = _Scope(nargs, arg_types, trigger, _function_name(definition))
    body = Body()
    for datum in datums:
        scope.declare(datum, body)
    scope.labels |= set(_labels(fn.get("action")))
    for line, expr, mode in _expressions(fn.get("action"), 0, body):
        scope.add(body, line, expr, mode)
    for datum in datums:  # defaults and cursor queries, at their declaration's line
        inner = next(iter(datum.values())) if isinstance(datum, dict) else {}
        for key in ("default_val", "cursor_explicit_expr"):
            if isinstance(e := inner.get(key), dict) and _EXPR in e:
                scope.add(body, int(inner.get("lineno", 0)), e[_EXPR]["query"], int(e[_EXPR].get("parseMode", 0)))
    return body


def _function_name(definition: str) -> str:
    m = re.search(r"(?:FUNCTION|PROCEDURE)\s+(?:[\w\"]+\.)?\"?([^\s\"(]+)", definition, re.IGNORECASE)
    return m.group(1).lower() if m else ""


def _labels(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("label"), str):
            yield node["label"]
        for value in node.values():
            yield from _labels(value)
    elif isinstance(node, list):
        for value in node:
            yield from _labels(value)


def _expressions(node: Any, line: int, body: Body) -> Iterator[tuple[int, str, int]]:
    """(line, query text, parse mode) of every static expression under node, in order."""
    if isinstance(node, list):
        for value in node:
            yield from _expressions(value, line, body)
        return
    if not isinstance(node, dict):
        return
    for kind, inner in node.items():
        if not isinstance(inner, dict):
            continue
        if kind == _EXPR:
            yield line, str(inner.get("query", "")), int(inner.get("parseMode", 0))
            continue
        here = int(inner.get("lineno", line) or line)
        skip = _DYNAMIC.get(kind)
        if skip and skip in inner:
            body.dynamic += 1
        for key, value in inner.items():
            if key != skip and key != "var":  # a FOR loop's variable is a declaration, not an expression
                yield from _expressions(value, here, body)


class _Scope:
    def __init__(self, nargs: int, arg_types: tuple[str, ...], trigger: bool, name: str) -> None:
        self.nargs, self.arg_types, self.trigger = nargs, arg_types, trigger
        self.scalars: dict[str, str] = {}  # variable -> declared type name ("" when not a plain type)
        self.records: set[str] = set()  # record and row variables
        self.rows: dict[str, str] = {}  # variables declared t%ROWTYPE -> t: their fields are t's columns
        self.labels: set[str] = {name} if name else set()

    def declare(self, datum: Any, body: Body) -> None:
        if not isinstance(datum, dict):
            return
        kind, inner = next(iter(datum.items()))
        name = str(inner.get("refname", ""))  # folded unless quoted, as in the queries' parse trees
        if kind == "PLpgSQL_row" and self.trigger:  # an INTO target list: SELECT ... INTO NEW.col
            for target in inner.get("fields", []):
                rec, _, column = str(target.get("name", "")).partition(".")  # "new.customerName": as read
                if rec in _RECORDS and column:
                    body.fields.append(FieldUse(int(inner.get("lineno", 0)), rec, column))
        if not name or name.startswith("("):
            return
        if kind == "PLpgSQL_rec" or (kind == "PLpgSQL_var" and _typname(inner).endswith("%rowtype")):
            self.records.add(name)
            if kind == "PLpgSQL_var":
                body.declared.append((int(inner.get("lineno", 0)), name, _typname(inner)))
                self.rows[name] = _typname(inner)[: -len("%rowtype")]
        elif kind == "PLpgSQL_var":
            typname = _typname(inner)
            if typname.lower().endswith("%type"):
                body.declared.append((int(inner.get("lineno", 0)), name, typname))
                typname = ""
            self.scalars[name] = typname

    def add(self, body: Body, line: int, text: str, mode: int) -> None:
        shown, target = text, None
        if mode in (3, 4, 5):  # an assignment: "target := expression"
            m = _ASSIGN.match(text)
            if not m:
                return
            target, text = m.group("target"), m.group("expr")
            parts = _names(target)
            if self.trigger and len(parts) == 2 and parts[0] in _RECORDS:
                body.fields.append(FieldUse(line, parts[0], parts[1]))
        sql_text = text if mode == 0 else f"SELECT {text}"
        try:
            stmts = parse_sql(sql_text)
        except ParseError:
            return  # not SQL the server would accept either: the function's own error, before and after
        if len(stmts) != 1 or not isinstance(stmts[0].stmt, _PREPARABLE):
            return  # CALL, utility statements: PREPARE takes only these
        rewriter = _Rewriter(self, line, body)
        rewriter(stmts[0])
        types = [*self.arg_types[: self.nargs], *rewriter.types]
        body.queries.append(Query(line, shown.strip(), RawStream()(stmts[0]), tuple(types)))


def _names(target: str) -> list[str]:
    """An assignment's target as PostgreSQL reads it: `NEW."customerName"` is ["new", "customerName"]."""
    try:
        stmts = parse_sql(f"SELECT {target}")
        node = stmts[0].stmt.targetList[0].val  # type: ignore[union-attr]
    except (ParseError, AttributeError, IndexError, TypeError):
        return []
    if not isinstance(node, ast.ColumnRef):
        return []
    return [str(f.sval) if isinstance(f, ast.String) else "*" for f in node.fields or ()]


def _typname(inner: dict[str, Any]) -> str:
    datatype = inner.get("datatype", {})
    return str(datatype.get("PLpgSQL_type", {}).get("typname", "")) if isinstance(datatype, dict) else ""


class _Rewriter(Visitor):
    """Variables and record fields become parameters numbered after the function's own arguments."""

    def __init__(self, scope: _Scope, line: int, body: Body) -> None:
        super().__init__()
        self.scope, self.line, self.body = scope, line, body
        self.numbers: dict[tuple[str, ...], int] = {}
        self.types: list[str] = []

    def _param(self, key: tuple[str, ...], typname: str) -> ast.ParamRef:
        if key not in self.numbers:
            self.types.append(typname)
            self.numbers[key] = self.scope.nargs + len(self.types)
        return ast.ParamRef(number=self.numbers[key])

    def visit_ColumnRef(self, parent: Any, node: ast.ColumnRef) -> Any:
        names = [str(f.sval) if isinstance(f, ast.String) else "*" for f in node.fields or ()]  # folded as read
        s = self.scope
        if "*" in names:
            return None
        if len(names) == 1 and names[0] in s.scalars:
            return self._param((names[0],), s.scalars[names[0]])
        if len(names) >= 2 and names[0] in s.labels and names[1] in s.scalars and len(names) == 2:
            return self._param((names[1],), s.scalars[names[1]])
        rec = names[1:] if len(names) == 3 and names[0] in s.labels else names
        if len(rec) == 2 and (rec[0] in s.records or (s.trigger and rec[0] in _RECORDS)):
            if s.trigger and rec[0] in _RECORDS:
                self.body.fields.append(FieldUse(self.line, rec[0], rec[1]))
                return self._param(tuple(rec), ".".join(rec))  # typed as the trigger table's column
            if rec[0] in s.rows:
                self.body.row_fields.append(FieldUse(self.line, rec[0], rec[1], s.rows[rec[0]]))
                return self._param(tuple(rec), f"%rowtype {s.rows[rec[0]]}.{rec[1]}")  # typed as its column
            return self._param(tuple(rec), "")
        return None


def sql_body(source: str, arg_names: tuple[str, ...], function: str) -> list[tuple[int, str]]:
    """(line, text to PREPARE) of each query of a SQL function body, its arguments as `$n` (by name or
    `function.name`; a column of the same name would take precedence in PostgreSQL, which this cannot see)."""
    try:
        stmts = parse_sql(source)
    except ParseError as exc:
        raise BodyError(str(exc.args[0] if exc.args else exc)) from None
    numbers = {n: i + 1 for i, n in enumerate(arg_names) if n}

    class _Args(Visitor):
        def visit_ColumnRef(self, parent: Any, node: ast.ColumnRef) -> Any:
            names = [str(f.sval) if isinstance(f, ast.String) else "*" for f in node.fields or ()]
            if len(names) == 2 and names[0] == function:
                names = names[1:]
            return ast.ParamRef(number=numbers[names[0]]) if len(names) == 1 and names[0] in numbers else None

    found = []
    for raw in stmts:
        if isinstance(raw.stmt, _PREPARABLE):
            _Args()(raw.stmt)
            found.append((source.count("\n", 0, raw.stmt_location or 0) + 1, RawStream()(raw.stmt)))
    return found
