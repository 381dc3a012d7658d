"""Static hazards of a migration, read from PostgreSQL's parse tree: statements that hold a strong lock on an
existing table for as long as the table is big. `find` needs no database; weigh.py then checks each one
against the live catalog (does the table exist, is the default volatile, does the type change rewrite, ...)
and weighs it by the table's live size."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pglast import ast, enums
from pglast.stream import RawStream

from pytest_phase4.db.sqltext import Statement

CREATE_INDEX = "create_index_not_concurrently"
VOLATILE_DEFAULT = "add_column_volatile_default"
SET_NOT_NULL = "set_not_null_without_check"
NOT_VALID = "constraint_without_not_valid"
TYPE_REWRITE = "column_type_rewrite"
DROP_VIEWED = "drop_column_read_by_views"
NO_LOCK_TIMEOUT = "no_lock_timeout"

# kind -> (what it is, what it does to the table, what to do instead)
TEXTS = {
    CREATE_INDEX: ("CREATE INDEX without CONCURRENTLY",
                   "holds SHARE on the table (INSERT, UPDATE and DELETE wait) while the whole index is built",
                   "CREATE INDEX CONCURRENTLY, in a migration of its own with transaction = false"),
    VOLATILE_DEFAULT: ("ADD COLUMN with a volatile default",
                       "rewrites every row of the table under ACCESS EXCLUSIVE (reads and writes wait)",
                       "add the column with no default or a constant one, then fill it in batches"),
    SET_NOT_NULL: ("SET NOT NULL without a validated CHECK",
                   "reads every row of the table under ACCESS EXCLUSIVE to prove it",
                   "in earlier migrations ADD CONSTRAINT ... CHECK (col IS NOT NULL) NOT VALID, then VALIDATE "
                   "CONSTRAINT; SET NOT NULL then skips the scan"),
    NOT_VALID: ("ADD CONSTRAINT (FOREIGN KEY or CHECK) without NOT VALID",
                "reads every row of the table to validate it while holding the lock the constraint takes",
                "ADD CONSTRAINT ... NOT VALID here and VALIDATE CONSTRAINT in a later migration (it takes only "
                "SHARE UPDATE EXCLUSIVE)"),
    TYPE_REWRITE: ("ALTER COLUMN TYPE that rewrites",
                   "rewrites the table and rebuilds its indexes under ACCESS EXCLUSIVE",
                   "add a new column, fill it in batches and switch over; or make a binary-compatible change "
                   "(varchar(n) to a longer varchar or to text)"),
    DROP_VIEWED: ("DROP COLUMN still read by views outside the plan",
                  "fails on those views, or with CASCADE drops them with it",
                  "change or drop those views first, in this plan, or keep the column"),
    NO_LOCK_TIMEOUT: ("no lock_timeout",
                      "waits without limit for a lock behind any long transaction, and every later query on the "
                      "table queues behind the wait",
                      "SET lock_timeout = '5s' at the top of the file, or run with --phase4-lock-timeout"),
}
_SERIAL = {"serial", "serial2", "serial4", "serial8", "smallserial", "bigserial"}
_TABLES = (enums.ObjectType.OBJECT_TABLE, enums.ObjectType.OBJECT_MATVIEW)


@dataclass(frozen=True)
class Candidate:
    """A statement that is a hazard if its table exists (and, for some kinds, if the catalog agrees)."""

    kind: str
    line: int
    statement: str  # the statement's first line
    schema: str | None  # as written; None: found through the search_path
    table: str
    column: str = ""
    what: str = ""  # the default, constraint or new type as written
    functions: tuple[tuple[str | None, str], ...] = ()  # the functions a default calls
    volatile: bool = False  # volatile by construction: serial, identity, stored generated column
    new_type: str = ""
    typmods: tuple[int, ...] = ()
    using: bool = False  # ALTER COLUMN TYPE ... USING
    lock_timeout: str | None = None  # NO_LOCK_TIMEOUT: the file's own setting there; None: the session's
    dropped_before: frozenset[str] = frozenset()  # DROP_VIEWED: views the file drops before the statement


def find(statements: list[Statement]) -> list[Candidate]:
    """Every hazard candidate of a migration, in file order; tables the file creates itself are left out."""
    created: set[str] = set()
    dropped: set[str] = set()
    timeout: str | None = None
    found: list[Candidate] = []
    for stmt in statements:
        node = stmt.node
        created |= _created(node)
        if isinstance(node, ast.DropStmt) and node.removeType in (enums.ObjectType.OBJECT_VIEW,
                                                                   enums.ObjectType.OBJECT_MATVIEW):
            dropped.update(str(names[-1].sval) for names in node.objects or ())
        timeout = _lock_timeout(node, timeout)
        for c in _candidates(stmt, frozenset(dropped)):
            if c.table not in created:
                found.append(c)
        if timeout is None or is_zero(timeout):
            found += [Candidate(NO_LOCK_TIMEOUT, stmt.line, stmt.head, rv.schemaname, rv.relname,
                                lock_timeout=timeout) for rv in _locked(node) if rv.relname not in created]
    return found


def _candidates(stmt: Statement, dropped: frozenset[str]) -> Iterator[Candidate]:
    node = stmt.node
    if isinstance(node, ast.IndexStmt) and not node.concurrent:
        yield _at(stmt, CREATE_INDEX, node.relation, what=node.idxname or "")
    if not isinstance(node, ast.AlterTableStmt) or node.objtype not in _TABLES:
        return
    for cmd in node.cmds or ():
        sub = cmd.subtype
        if sub == enums.AlterTableType.AT_AddColumn:
            yield from _add_column(stmt, node.relation, cmd.def_)
        elif sub == enums.AlterTableType.AT_AlterColumnType:
            type_name = cmd.def_.typeName
            mods = tuple(int(m.val.ival or 0) for m in type_name.typmods or () if isinstance(m, ast.A_Const)
                         and isinstance(m.val, ast.Integer))
            yield _at(stmt, TYPE_REWRITE, node.relation, cmd.name, f"TYPE {_sql(type_name)}",
                      new_type=_sql(type_name), typmods=mods, using=cmd.def_.raw_default is not None)
        elif sub == enums.AlterTableType.AT_SetNotNull:
            yield _at(stmt, SET_NOT_NULL, node.relation, cmd.name)
        elif sub == enums.AlterTableType.AT_AddConstraint and _validates(cmd.def_):
            yield _at(stmt, NOT_VALID, node.relation, what=_sql(cmd.def_))
        elif sub == enums.AlterTableType.AT_DropColumn:
            yield _at(stmt, DROP_VIEWED, node.relation, cmd.name, dropped_before=dropped)


def _add_column(stmt: Statement, relation: Any, column: Any) -> Iterator[Candidate]:
    type_words = [str(n.sval) for n in column.typeName.names] if column.typeName else []
    for con in column.constraints or ():
        if con.contype == enums.ConstrType.CONSTR_DEFAULT:
            calls = tuple(_calls(con.raw_expr))
            if calls:
                yield _at(stmt, VOLATILE_DEFAULT, relation, column.colname, f"DEFAULT {_sql(con.raw_expr)}",
                          functions=calls)
        elif con.contype == enums.ConstrType.CONSTR_IDENTITY:
            yield _at(stmt, VOLATILE_DEFAULT, relation, column.colname, "GENERATED AS IDENTITY", volatile=True)
        elif con.contype == enums.ConstrType.CONSTR_GENERATED and getattr(con, "generated_kind", "s") != "v":
            yield _at(stmt, VOLATILE_DEFAULT, relation, column.colname,
                      f"GENERATED ALWAYS AS ({_sql(con.raw_expr)}) STORED", volatile=True)
        elif con.contype in (enums.ConstrType.CONSTR_FOREIGN, enums.ConstrType.CONSTR_CHECK):
            yield _at(stmt, NOT_VALID, relation, column.colname, _sql(con))
    if type_words and type_words[-1].lower() in _SERIAL:
        yield _at(stmt, VOLATILE_DEFAULT, relation, column.colname, type_words[-1], volatile=True)


def _at(stmt: Statement, kind: str, relation: Any, column: str = "", what: str = "", **more: Any) -> Candidate:
    return Candidate(kind, stmt.line, stmt.head, relation.schemaname, relation.relname, column or "", what,
                     **more)


def _validates(con: Any) -> bool:
    return (isinstance(con, ast.Constraint) and not con.skip_validation
            and con.contype in (enums.ConstrType.CONSTR_FOREIGN, enums.ConstrType.CONSTR_CHECK))


def _calls(expr: Any) -> Iterator[tuple[str | None, str]]:
    """The functions an expression calls, as written: (schema or None, name)."""
    if isinstance(expr, ast.FuncCall):
        names = [str(n.sval) for n in expr.funcname or ()]
        yield (names[-2] if len(names) > 1 else None), names[-1]
    if isinstance(expr, ast.Node):
        for attr in expr:
            yield from _calls(getattr(expr, attr))
    elif isinstance(expr, tuple | list):
        for item in expr:
            yield from _calls(item)


def _locked(node: Any) -> list[Any]:
    """The existing tables a statement takes a lock on that makes others wait (the RangeVars it names)."""
    if isinstance(node, ast.AlterTableStmt) and node.objtype in _TABLES:
        refs = [cmd.def_.pktable for cmd in node.cmds or () if isinstance(cmd.def_, ast.Constraint)
                and cmd.def_.contype == enums.ConstrType.CONSTR_FOREIGN]
        return [node.relation, *refs]
    if isinstance(node, ast.IndexStmt | ast.CreateTrigStmt | ast.RuleStmt | ast.ClusterStmt | ast.ReindexStmt):
        return [node.relation] if node.relation is not None else []
    if isinstance(node, ast.RefreshMatViewStmt) and not node.concurrent:
        return [node.relation]
    if isinstance(node, ast.TruncateStmt | ast.LockStmt):
        return list(node.relations or ())
    if isinstance(node, ast.CreatePolicyStmt | ast.AlterPolicyStmt):
        return [node.table]
    if isinstance(node, ast.RenameStmt) and node.relation is not None:
        return [node.relation]
    if isinstance(node, ast.DropStmt) and node.removeType in _TABLES:
        return [ast.RangeVar(schemaname=str(n[-2].sval) if len(n) > 1 else None, relname=str(n[-1].sval))
                for n in node.objects or ()]
    return []


def _lock_timeout(node: Any, current: str | None) -> str | None:
    """The file's own lock_timeout after this statement: SET [LOCAL], RESET, or set_config('lock_timeout')."""
    if isinstance(node, ast.VariableSetStmt) and node.name == "lock_timeout":
        if node.kind == enums.VariableSetKind.VAR_SET_VALUE and node.args:
            return _const(node.args[0])
        return None  # RESET / SET ... TO DEFAULT: back to the session's setting
    if isinstance(node, ast.SelectStmt):
        for target in node.targetList or ():
            call = target.val
            if (isinstance(call, ast.FuncCall) and str((call.funcname or ())[-1].sval) == "set_config" and call.args
                    and _const(call.args[0]) == "lock_timeout" and len(call.args) > 1):
                return _const(call.args[1])
    return current


def _const(node: Any) -> str:
    value = node.val if isinstance(node, ast.A_Const) else None
    if isinstance(value, ast.Integer):
        return str(value.ival)
    if isinstance(value, ast.String):
        return str(value.sval)
    return "?"


def is_zero(setting: str) -> bool:
    """lock_timeout 0 (in any unit) turns the limit off."""
    digits = setting.strip().rstrip("abcdefghijklmnopqrstuvwxyz ").strip()
    return digits.isdigit() and int(digits) == 0


def _sql(node: Any) -> str:
    try:
        return str(RawStream()(node))
    except Exception:  # pglast cannot print every node; the statement's line still names it
        return ""


def owned_tables(statements: list[Statement]) -> list[str]:
    """The tables these statements alter, index, or put policies and triggers on: work only their owner may do."""
    names = []
    for stmt in statements:
        node: Any = stmt.node
        if (isinstance(node, ast.AlterTableStmt) and node.objtype in _TABLES) or isinstance(
                node, ast.IndexStmt | ast.CreateTrigStmt):
            names.append(_relname(node.relation))
        elif isinstance(node, ast.CreatePolicyStmt):
            names.append(_relname(node.table))
    return names


def plan_views(statements: list[Statement]) -> set[str]:
    """Names of the views and materialized views these statements create."""
    names: set[str] = set()
    for stmt in statements:
        node: Any = stmt.node
        if isinstance(node, ast.ViewStmt):
            names.add(_relname(node.view))
        elif isinstance(node, ast.CreateTableAsStmt) and node.objtype == enums.ObjectType.OBJECT_MATVIEW:
            names.add(_relname(getattr(node.into, "rel", None)))
    return names


def _created(node: Any) -> set[str]:
    if isinstance(node, ast.CreateStmt):
        return {_relname(node.relation)}
    if isinstance(node, ast.CreateTableAsStmt):
        return {_relname(getattr(node.into, "rel", None))}
    return set()


def _relname(rv: Any) -> str:
    return str(getattr(rv, "relname", "") or "")
